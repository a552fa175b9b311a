"""Routes that list and create rooms, and count their unread messages."""

from flask import Blueprint, jsonify, request

from chatapp.core.ids import StreamId
from chatapp.ops.errors import BadRequest
from chatapp.store.rooms import validate_room_name
from chatapp.web.auth import current_user, login_required
from chatapp.web.context import services
from chatapp.web.limits import enforce
from chatapp.web.params import query_number, request_fields, string_field

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
    """A page of rooms by name, each with the id of its newest message (clients derive unread
    counts). ``after=<name>`` continues where ``next`` of the previous page pointed."""
    after = request.args.get("after") or None
    if after is not None:
        validate_room_name(after)
    limit = query_number("limit", ROOMS_PAGE_DEFAULT, 1, ROOMS_PAGE_MAX)
    names, more = services().rooms.page(after, limit)
    tails = services().broker.tails(names)
    return jsonify(rooms=[{"name": name, "last_id": str(tail)} for name, tail in zip(names, tails)],
                   next=names[-1] if more else None)


@bp.post("")
@login_required
def create_room():
    """Create a room (201), or return the existing one (200)."""
    name = string_field(request_fields(), "name")
    created = services().rooms.create(name, current_user())
    return jsonify(room={"name": name}), 201 if created else 200


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
    services().rooms.require_many(list(cursors))
    counts = services().broker.count_after(cursors, UNREAD_CAP)
    return jsonify(unread=dict(zip(cursors, counts)), cap=UNREAD_CAP)
