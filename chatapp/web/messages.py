"""Sending messages and reading a room's history."""

import re
import time

from flask import Blueprint, Response, current_app, request

from chatapp.core.ids import StreamId
from chatapp.core.mentions import mentioned_names
from chatapp.ops.errors import BadRequest, PayloadTooLarge
from chatapp.web.auth import current_user, login_required
from chatapp.web.context import services
from chatapp.web.limits import enforce
from chatapp.web.params import query_cursor, query_number, request_fields, string_field

bp = Blueprint("messages", __name__, url_prefix="/api/rooms")

# C0/C1 control characters except tab and newline, and lone surrogates (which
# JSON can carry but UTF-8 can't), are removed from message text.
_UNWANTED_CHARS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
_IDEMPOTENCY_KEY_RE = re.compile(r"\A[A-Za-z0-9._:-]{1,128}\Z")
HISTORY_DEFAULT_LIMIT = 50


def clean_text(text, max_chars):
    """Normalise newlines and drop control characters; refuse empty or oversize text."""
    text = _UNWANTED_CHARS.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    if not text.strip():
        raise BadRequest("Message text is empty.", code="empty_text")
    if len(text) > max_chars:
        raise PayloadTooLarge(f"Message text is longer than {max_chars} characters.",
                              code="text_too_long")
    return text


def idempotency_key(fields):
    key = request.headers.get("Idempotency-Key") or fields.get("client_id")
    if key is None or key == "":
        return None
    if not isinstance(key, str) or not _IDEMPOTENCY_KEY_RE.match(key):
        raise BadRequest("Idempotency-Key / client_id must be 1 to 128 of A-Z a-z 0-9 . _ : -",
                         code="bad_idempotency_key")
    return key


def json_response(body, status=200):
    return Response(body, status=status, mimetype="application/json")


@bp.post("/<room>/messages")
@login_required
def send(room):
    """Append a message to the room; 201 with the stored message once it is durable. ``@name``
    of an existing account (in a private room or a DM: of a member) is a mention, listed in
    the message's ``mentions``."""
    grant = services().access.post(current_user(), room)
    enforce("CHAT_RATE_MESSAGES", current_user())
    fields = request_fields()
    text = clean_text(string_field(fields, "text"), current_app.config["CHAT_MAX_MESSAGE_CHARS"])
    broker = services().broker
    publication, created = broker.publish(room, current_user(), text, idempotency_key(fields),
                                          mentions=_mentions(grant, text))
    response = json_response(publication.json, 201)
    if created:
        services().metrics.accepted.inc()
    else:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def _mentions(grant, text):
    """Who ``text`` mentions: the first ``MAX_MENTIONS`` distinct ``@names`` that are accounts
    (and, where the room is restricted, its members)."""
    if "@" not in text:  # the common case costs nothing
        return []
    names = mentioned_names(text)
    if not names:
        return []
    if grant.restricted:
        members = services().rooms.members(grant.room)
        return [name for name in names if name in members]
    return services().users.existing(names)


@bp.patch("/<room>/messages/<message>")
@login_required
def edit(room, message):
    """Edit your message (within ``CHAT_EDIT_WINDOW_SECS``): a new entry of the room's log,
    ``kind: "edit"``, naming it in ``target``; readers get it live and in every resume, and
    history shows the message as edited."""
    user = current_user()
    services().access.post(user, room)
    target = StreamId.parse(message)
    enforce("CHAT_RATE_EDITS", user)
    config = current_app.config
    text = clean_text(string_field(request_fields(), "text"), config["CHAT_MAX_MESSAGE_CHARS"])
    oldest = max(0, int(time.time() * 1000) - int(config["CHAT_EDIT_WINDOW_SECS"] * 1000))
    publication = services().broker.edit(room, user, target, text, oldest_editable=oldest,
                                         max_edits=config["CHAT_MAX_EDITS"])
    return json_response(publication.json)


@bp.delete("/<room>/messages/<message>")
@login_required
def delete(room, message):
    """Delete a message (yours, or any in a room you moderate): a new entry, ``kind: "delete"``,
    naming it in ``target``; the message's text leaves Redis (its entry, its edits, its
    idempotency record)."""
    user = current_user()
    grant = services().access.post(user, room)
    target = StreamId.parse(message)
    enforce("CHAT_RATE_EDITS", user)
    moderates = services().access.moderates(user, grant.room)
    publication = services().broker.delete(room, user, target, moderates=moderates)
    return json_response(publication.json)


@bp.get("/<room>/messages")
@login_required
def history(room):
    """A page of history: the newest, ``before=<id>`` (older) or ``after=<id>`` (newer); each
    message in its latest state (edited: ``text`` and ``edited``; deleted: gone, its deletion
    entry is the tombstone)."""
    services().access.read(current_user(), room)
    before, after = query_cursor("before"), query_cursor("after")
    if before and after:
        raise BadRequest("Use either 'before' or 'after', not both.", code="bad_parameter")
    limit = query_number("limit", HISTORY_DEFAULT_LIMIT, 1, current_app.config["CHAT_HISTORY_MAX_LIMIT"])
    page = services().broker.history(room, limit + 1, before=before, after=after)
    more = len(page) > limit
    page = page[:limit] if after is not None else page[-limit:]
    body = b'{"messages":[' + b",".join(p.json for p in page) + b'],"more":'
    return json_response(body + (b"true}" if more else b"false}"))
