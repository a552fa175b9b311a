"""Routes for read positions, unread and mention counts, and muting: what you have read follows
you to every device."""

from flask import Blueprint, jsonify

from chatapp.core.ids import StreamId
from chatapp.ops.errors import BadRequest
from chatapp.store.rooms import DM
from chatapp.web.auth import current_user, login_required
from chatapp.web.context import services
from chatapp.web.limits import enforce
from chatapp.web.params import flag, request_fields, string_field
from chatapp.web.rooms import UNREAD_CAP

bp = Blueprint("reads", __name__, url_prefix="/api")


@bp.post("/rooms/<room>/read")
@login_required
def read(room):
    """You have read ``room`` up to ``id``: stored (never moving back, never past the room's
    newest message) and told to your other tabs and devices live (``event: read``). The answer
    is the position stored, which may be newer than the one sent."""
    user = current_user()
    services().access.read(user, room)
    enforce("CHAT_RATE_READS", user)
    at = StreamId.parse(string_field(request_fields(), "id"))
    stored = services().reads.mark(user, room, min(at, services().broker.tail(room)))
    return jsonify(room=room, read=str(stored))


@bp.post("/rooms/<room>/mute")
@login_required
def mute(room):
    """Mute (``muted: true``) or unmute a room: no unread badge and no notification for it; its
    mentions are still counted."""
    user = current_user()
    services().access.read(user, room)
    enforce("CHAT_RATE_MEMBERSHIP", user)
    muted = flag(request_fields(), "muted")
    if muted is None:
        raise BadRequest("Give 'muted': true or false.", code="bad_field")
    services().reads.mute(user, room, muted)
    return jsonify(room=room, muted=muted)


@bp.get("/me/unread")
@login_required
def unread():
    """For every room you joined: your read position (where none was sent, the join point),
    the messages after it and how many of them mention you (in a DM, every message from the
    other side), each capped at ``cap``, and whether you muted the room."""
    user = current_user()
    enforce("CHAT_RATE_UNREAD", user)
    joined = services().memberships.rooms(user)
    rooms = sorted(services().access.readable(user, list(joined)))
    positions = services().reads.positions(user)
    cursors = {room: max(positions.get(room, joined[room]), joined[room]) for room in rooms}
    dms = {room for room, info in services().rooms.describe(rooms).items() if info["kind"] == DM}
    counts = services().broker.count_after(cursors, UNREAD_CAP, user=user, dms=dms)
    muted = services().reads.muted(user)
    return jsonify(rooms={room: {"read": str(cursors[room]), "unread": messages, "mentions": mentions,
                                 "muted": room in muted}
                          for room, (messages, mentions) in zip(rooms, counts)}, cap=UNREAD_CAP)
