"""Routes that join and leave rooms, and list yours."""

from flask import Blueprint, jsonify

from chatapp.web.auth import current_user, login_required
from chatapp.web.context import services
from chatapp.web.limits import enforce
from chatapp.web.rooms import describe_many

bp = Blueprint("membership", __name__, url_prefix="/api")


@bp.post("/rooms/<room>/join")
@login_required
def join(room):
    """Join a room: your open streams follow it from now on (its history is yours to fetch). A
    private room or a DM is joined by invitation only: to anyone else it doesn't exist; its
    members may follow it again after leaving their list."""
    user = current_user()
    services().access.read(user, room)
    enforce("CHAT_RATE_MEMBERSHIP", user)
    at = services().memberships.join(user, room)
    return jsonify(room=room, joined=True, at=str(at))


@bp.post("/rooms/<room>/leave")
@login_required
def leave(room):
    """Leave a room: your open streams stop following it at once. Leaving a private room gives
    up access to it (an owner can't leave; a DM can't be left)."""
    user = current_user()
    grant = services().access.read(user, room)
    enforce("CHAT_RATE_MEMBERSHIP", user)
    if grant.restricted:
        services().conversations.leave(user, room)
    else:
        services().memberships.leave(user, room)
    return jsonify(room=room, joined=False)


@bp.get("/me/rooms")
@login_required
def my_rooms():
    """The rooms you joined: ``rooms``, their names; ``joined``, each with its title, kind, your
    role, whether it is archived, its newest id, and for a DM its members."""
    user = current_user()
    names = sorted(services().access.readable(user, list(services().memberships.rooms(user))))
    joined = [{**info, "last_id": str(tail)}
              for info, tail in zip(describe_many(user, names), services().broker.tails(names))]
    return jsonify(rooms=names, joined=joined)
