"""Rooms: the registry of names and the routes that list and create them."""

import re

from flask import Blueprint, current_app, jsonify

from .auth import login_required
from .errors import BadRequest, NotFound
from .params import request_fields, string_field

bp = Blueprint("rooms", __name__, url_prefix="/api/rooms")

ROOM_RE = re.compile(r"\A[a-z0-9_-]{1,64}\Z")
DEFAULT_ROOM = "general"
ROOMS_KEY = "chat:rooms"


def validate_room_name(name):
    if not isinstance(name, str) or not ROOM_RE.match(name):
        raise BadRequest("Room names are 1 to 64 lowercase letters, digits, '-' or '_'.",
                         code="bad_room")
    return name


class RoomRegistry:
    """Room names in a Redis set; ``general`` always exists."""

    def __init__(self, redis):
        self.redis = redis
        # Rooms are never deleted, so a name seen once needs no second lookup.
        self._known = {DEFAULT_ROOM}

    def exists(self, name):
        if name in self._known:
            return True
        if ROOM_RE.match(name) and self.redis.sismember(ROOMS_KEY, name):
            self._known.add(name)
            return True
        return False

    def require(self, name):
        """Return ``name`` if the room exists; a 404 otherwise."""
        if not self.exists(name):
            raise NotFound(f"No room named {name[:64]!r}.", code="unknown_room")
        return name

    def create(self, name):
        """Create a room; return True if it is new."""
        validate_room_name(name)
        created = name != DEFAULT_ROOM and bool(self.redis.sadd(ROOMS_KEY, name))
        self._known.add(name)
        return created

    def names(self):
        stored = {member.decode() for member in self.redis.smembers(ROOMS_KEY)}
        return sorted(stored | {DEFAULT_ROOM})


def init_app(app):
    app.extensions["chat.rooms"] = RoomRegistry(app.extensions["chat.redis"])


def current_rooms():
    return current_app.extensions["chat.rooms"]


@bp.get("")
@login_required
def list_rooms():
    """Every room with the id of its newest message (clients derive unread counts)."""
    names = current_rooms().names()
    tails = current_app.extensions["chat.broker"].tails(names)
    return jsonify(rooms=[{"name": name, "last_id": str(tail)} for name, tail in zip(names, tails)])


@bp.post("")
@login_required
def create_room():
    """Create a room (201), or return the existing one (200)."""
    name = string_field(request_fields(), "name")
    created = current_rooms().create(name)
    return jsonify(room={"name": name}), 201 if created else 200

