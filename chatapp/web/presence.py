"""Routes for who is in a room and who is typing."""

from flask import Blueprint, jsonify

from chatapp.web.auth import current_user, login_required
from chatapp.web.context import services
from chatapp.web.limits import enforce

bp = Blueprint("presence", __name__, url_prefix="/api/rooms")

@bp.get("/<room>/presence")
@login_required
def online(room):
    """Who is in the room now (each user once, however many tabs)."""
    services().rooms.require(room)
    return jsonify(room=room, users=services().presence.tick(room))


@bp.post("/<room>/typing")
@login_required
def typing(room):
    """Tell the room's readers that you are typing (live only, never stored)."""
    services().rooms.require(room)
    user = current_user()
    enforce("CHAT_RATE_TYPING", user)
    services().broker.signal(room, "typing", user)
    return jsonify(ok=True), 202
