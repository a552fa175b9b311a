"""Routes for direct conversations and blocks."""

from flask import Blueprint, jsonify

from chatapp.web.auth import current_user, login_required
from chatapp.web.context import services
from chatapp.web.params import request_fields, string_field

bp = Blueprint("dms", __name__, url_prefix="/api")


@bp.post("/dms")
@login_required
def open_dm():
    """The conversation with ``users`` (1 to 7 usernames; ``user`` for one), started if new
    (201) or the existing one (200): a set of people has exactly one, whoever starts it."""
    fields = request_fields()
    others = fields.get("users") if "users" in fields else [string_field(fields, "user")]
    room, members, created = services().conversations.open_dm(current_user(), others)
    return jsonify(room={"name": room, "kind": "dm", "title": "", "members": members}), 201 if created else 200


@bp.get("/blocks")
@login_required
def blocked():
    """The people you blocked."""
    return jsonify(blocked=services().conversations.blocked(current_user()))


@bp.post("/blocks")
@login_required
def block():
    """Block someone: they can't start a DM with you, and your DM with them takes no new
    messages (its history stays readable)."""
    user = string_field(request_fields(), "user")
    services().conversations.block(current_user(), user)
    return jsonify(blocked=user.lower())


@bp.delete("/blocks/<user>")
@login_required
def unblock(user):
    """Unblock someone."""
    services().conversations.unblock(current_user(), user)
    return jsonify(unblocked=user.lower())
