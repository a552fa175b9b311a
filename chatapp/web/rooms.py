"""Routes that list, create, describe and change rooms, and count their unread messages."""

from flask import Blueprint, jsonify, request

from chatapp.core.ids import StreamId
from chatapp.ops.errors import BadRequest
from chatapp.store.rooms import DM, validate_room_name
from chatapp.web.auth import current_user, login_required
from chatapp.web.context import services
from chatapp.web.limits import enforce
from chatapp.web.params import flag, query_number, request_fields, string_field

bp = Blueprint("rooms", __name__, url_prefix="/api/rooms")

ROOMS_PAGE_DEFAULT = 100
ROOMS_PAGE_MAX = 500
# The page asks for unread counts of every room it lists in one request; past this
# many unread it shows "99+", so counting further would only cost Redis time.
UNREAD_CAP = 100
UNREAD_MAX_ROOMS = ROOMS_PAGE_MAX


@bp.get("")
@login_required
def list_rooms():
    """A page of public rooms by name, each with its title and the id of its newest message
    (clients derive unread counts); archived rooms only with ``archived=1``. ``after=<name>``
    continues where ``next`` of the previous page pointed. Private rooms and DMs are never
    listed here (``GET /api/me/rooms`` lists yours)."""
    after = request.args.get("after") or None
    if after is not None:
        validate_room_name(after)
    with_archived = request.args.get("archived") in ("1", "true")
    limit = query_number("limit", ROOMS_PAGE_DEFAULT, 1, ROOMS_PAGE_MAX)
    names, more = services().rooms.page(after, limit)
    described = services().rooms.describe(names)
    tails = dict(zip(names, services().broker.tails(names)))
    rooms = [{"name": name, **described[name], "last_id": str(tails[name])} for name in names
             if with_archived or not described[name]["archived"]]
    return jsonify(rooms=rooms, next=names[-1] if more else None)


@bp.post("")
@login_required
def create_room():
    """Create a public room by ``name`` (201, or 200 with the existing one), or with
    ``"private": true`` a private room titled ``title``, owned by you (201)."""
    fields = request_fields()
    if flag(fields, "private"):
        user = current_user()
        room = services().conversations.create_private(user, string_field(fields, "title"))
        return jsonify(room=describe(user, room)), 201
    name = string_field(fields, "name")
    created = services().rooms.create(name, current_user())
    return jsonify(room={"name": name, "kind": "public"}), 201 if created else 200


@bp.get("/<room>")
@login_required
def show(room):
    """What the room is and your role in it (a DM with its members)."""
    user = current_user()
    services().access.read(user, room)
    return jsonify(room=describe(user, room))


@bp.patch("/<room>")
@login_required
def change(room):
    """Rename (``title``) and/or archive (``archived``: true/false) a room: its owner, its
    moderators, or an operator. Each change is an entry in the room's log."""
    fields = request_fields()
    title, archived = fields.get("title"), flag(fields, "archived")
    if title is None and archived is None:
        raise BadRequest("Give 'title' and/or 'archived'.", code="bad_field")
    user = current_user()
    services().conversations.update(user, room, title=title, archived=archived)
    return jsonify(room=describe(user, room))


def describe(user, room):
    """``{name, title, kind, archived, role[, members]}`` of a room ``user`` may see."""
    return describe_many(user, [room])[0]


def describe_many(user, names):
    """:func:`describe` of each room of ``names``, in order, in three round trips however many."""
    rooms = services().rooms
    described = rooms.describe(names)
    roles = rooms.roles_of(user, names)
    dms = rooms.members_of([name for name in names if described[name]["kind"] == DM])
    infos = []
    for name in names:
        info = {"name": name, **described[name], "role": roles[name]}
        if name in dms:  # named by its members, not by a title
            info.update(title="", members=sorted(dms[name]))
        infos.append(info)
    return infos


@bp.post("/unread")
@login_required
def unread():
    """Unread counts for many rooms in one request: ``{"rooms": {"<room>": "<last seen id>"}}``
    gives ``{"unread": {"<room>": n}}``, n capped at ``UNREAD_CAP`` (means "that many or more")."""
    enforce("CHAT_RATE_UNREAD", current_user())  # up to 500 rooms x 100 entries counted in Redis
    rooms = request_fields().get("rooms")
    if not isinstance(rooms, dict) or len(rooms) > UNREAD_MAX_ROOMS:
        raise BadRequest(f"'rooms' must map at most {UNREAD_MAX_ROOMS} room names to message ids.",
                         code="bad_field")
    cursors = {}
    for name, cursor in rooms.items():
        if not isinstance(cursor, str):
            raise BadRequest("Each room's value must be a message id.", code="bad_cursor")
        cursors[validate_room_name(name)] = StreamId.parse(cursor)
    services().access.read_many(current_user(), list(cursors))
    counts = services().broker.count_after(cursors, UNREAD_CAP)
    return jsonify(unread={room: messages for room, (messages, _) in zip(cursors, counts)}, cap=UNREAD_CAP)
