"""Routes for a room's members: who they are, invitations, roles and removals."""

from flask import Blueprint, jsonify

from chatapp.web.auth import current_user, login_required
from chatapp.web.context import services
from chatapp.web.params import request_fields, string_field

bp = Blueprint("members", __name__, url_prefix="/api/rooms/<room>/members")


@bp.get("")
@login_required
def members(room):
    """The room's members and their roles (a public room: its owner and moderators)."""
    services().access.read(current_user(), room)
    found = services().rooms.members(room)
    return jsonify(members=[{"user": user, "role": role} for user, role in sorted(found.items())])


@bp.post("")
@login_required
def invite(room):
    """Add a member to a private room (its owner or moderators, or an operator): the room
    appears in their list and on their streams at once."""
    member = string_field(request_fields(), "user")
    added = services().conversations.invite(current_user(), room, member)
    return jsonify(member={"user": member.lower(), "role": "member"}), 201 if added else 200


@bp.put("/<user>")
@login_required
def set_role(room, user):
    """Make a member a ``moderator`` or a plain ``member`` (the owner, or an operator)."""
    role = services().conversations.set_role(current_user(), room, user, string_field(request_fields(), "role"))
    return jsonify(member={"user": user.lower(), "role": role})


@bp.delete("/<user>")
@login_required
def remove(room, user):
    """Remove a member from a private room: none of their streams, on any worker, delivers
    another message of it (docs/DESIGN.md, invariant 16)."""
    services().conversations.remove(current_user(), room, user)
    return jsonify(removed=user.lower())
