"""Routes for who is in a room and who is typing."""

from flask import Blueprint, jsonify

from chatapp.web.auth import current_user, login_required
from chatapp.web.context import services
from chatapp.web.limits import enforce

bp = Blueprint("presence", __name__, url_prefix="/api/rooms")

@bp.get("/<room>/presence")
@login_required
def online(room):
    """Who is in the room now (each user once, however many tabs); in a private room or a DM
    only its members (a removed member's last streams may still be closing)."""
    grant = services().access.read(current_user(), room)
    users = services().presence.tick(room)
    if grant.restricted:
        members = services().rooms.members(room)
        users = [user for user in users if user.lower() in members]
    return jsonify(room=room, users=users)


@bp.post("/<room>/typing")
@login_required
def typing(room):
    """Tell the room's readers that you are typing (live only, never stored)."""
    user = current_user()
    services().access.read(user, room)
    enforce("CHAT_RATE_TYPING", user)
    services().broker.signal(room, "typing", user)
    return jsonify(ok=True), 202
