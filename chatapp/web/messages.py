"""Sending messages and reading a room's history."""

import re

from flask import Blueprint, Response, current_app, request

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
    """Append a message to the room; 201 with the stored message once it is durable."""
    services().access.post(current_user(), room)
    enforce("CHAT_RATE_MESSAGES", current_user())
    fields = request_fields()
    text = clean_text(string_field(fields, "text"), current_app.config["CHAT_MAX_MESSAGE_CHARS"])
    broker = services().broker
    publication, created = broker.publish(room, current_user(), text, idempotency_key(fields))
    response = json_response(publication.json, 201)
    if created:
        services().metrics.accepted.inc()
    else:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@bp.get("/<room>/messages")
@login_required
def history(room):
    """A page of history: the newest, ``before=<id>`` (older) or ``after=<id>`` (newer)."""
    services().access.read(current_user(), room)
    before, after = query_cursor("before"), query_cursor("after")
    if before and after:
        raise BadRequest("Use either 'before' or 'after', not both.", code="bad_parameter")
    limit = query_number("limit", HISTORY_DEFAULT_LIMIT, 1, current_app.config["CHAT_HISTORY_MAX_LIMIT"])
    broker = services().broker
    if after is not None:
        page = broker.read_after(room, after, limit + 1)
        more, page = len(page) > limit, page[:limit]
    else:
        page = broker.read_before(room, before, limit + 1)
        more, page = len(page) > limit, page[-limit:]
    body = b'{"messages":[' + b",".join(p.json for p in page) + b'],"more":'
    return json_response(body + (b"true}" if more else b"false}"))
