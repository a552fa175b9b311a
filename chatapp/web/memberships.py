"""Routes that join and leave rooms, and list yours."""

from flask import Blueprint, jsonify

from chatapp.web.auth import current_user, login_required
from chatapp.web.context import services
from chatapp.web.limits import enforce

bp = Blueprint("membership", __name__, url_prefix="/api")

@bp.post("/rooms/<room>/join")
@login_required
def join(room):
    """Join a room: your open streams follow it from now on (its history is yours to fetch)."""
    services().rooms.require(room)
    user = current_user()
    enforce("CHAT_RATE_MEMBERSHIP", user)
    at = services().memberships.join(user, room)
    return jsonify(room=room, joined=True, at=str(at))


@bp.post("/rooms/<room>/leave")
@login_required
def leave(room):
    """Leave a room: your open streams stop following it at once."""
    services().rooms.require(room)
    user = current_user()
    enforce("CHAT_RATE_MEMBERSHIP", user)
    services().memberships.leave(user, room)
    return jsonify(room=room, joined=False)


@bp.get("/me/rooms")
@login_required
def my_rooms():
    """The rooms you joined, by name."""
    return jsonify(rooms=sorted(services().memberships.rooms(current_user())))
