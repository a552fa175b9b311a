"""Rooms: the registry of names and the routes that list and create them."""

import re

from flask import Blueprint, current_app, jsonify, request

from chatapp.core.ids import StreamId
from chatapp.ops.errors import BadRequest, Forbidden, NotFound
from chatapp.store import keys
from chatapp.store.lua import lua_script
from chatapp.store.ratelimit import enforce
from chatapp.web.auth import current_user, login_required
from chatapp.web.params import query_number, request_fields, string_field

bp = Blueprint("rooms", __name__, url_prefix="/api/rooms")

ROOM_RE = re.compile(r"\A[a-z0-9_-]{1,64}\Z")
DEFAULT_ROOM = "general"
ROOMS_PAGE_DEFAULT = 100
ROOMS_PAGE_MAX = 500
# The page asks for unread counts of every room it lists in one request; past this
# many unread it shows "99+", so counting further would only cost Redis time.
UNREAD_CAP = 100
UNREAD_MAX_ROOMS = ROOMS_PAGE_MAX


def validate_room_name(name):
    if not isinstance(name, str) or not ROOM_RE.match(name):
        raise BadRequest("Room names are 1 to 64 lowercase letters, digits, '-' or '_'.",
                         code="bad_room")
    return name


class RoomRegistry:
    """Room names in a Redis sorted set (paged by name); ``general`` always exists.

    Creating rooms is bounded twice: ``CHAT_MAX_ROOMS`` in total (each room costs
    memory in every listing and a stream in Redis) and ``CHAT_MAX_ROOMS_PER_USER``
    per creator (so one account can't use up the total).
    """

    def __init__(self, redis, max_rooms, max_per_user):
        self.redis = redis
        self.max_rooms = max_rooms
        self.max_per_user = max_per_user
        self._create = redis.register_script(lua_script("create_room"))
        # Rooms are never deleted, so a name seen once needs no second lookup; the
        # total cap bounds this set.
        self._known = {DEFAULT_ROOM}

    def migrate(self):
        """Make sure the default room is listed (idempotent; run by every worker at start)."""
        self.redis.zadd(keys.ROOM_NAMES, {DEFAULT_ROOM: 0}, nx=True)

    def _first_missing(self, names):
        """The first of ``names`` that is no room, or None (one round trip for those not seen yet;
        a name that can't be a room never reaches Redis)."""
        unseen = [name for name in names if name not in self._known]
        invalid = [name for name in unseen if not ROOM_RE.match(name)]
        if invalid:
            return invalid[0]
        if unseen:
            for name, score in zip(unseen, self.redis.zmscore(keys.ROOM_NAMES, unseen)):
                if score is None:
                    return name
                self._known.add(name)
        return None

    def exists(self, name):
        return self._first_missing([name]) is None

    def require(self, name):
        """Return ``name`` if the room exists; a 404 otherwise."""
        self.require_many([name])
        return name

    def require_many(self, names):
        """``names`` if every room exists; a 404 naming the first that doesn't otherwise."""
        missing = self._first_missing(names)
        if missing is not None:
            raise NotFound(f"No room named {missing[:64]!r}.", code="unknown_room")
        return names

    def create(self, name, user):
        """Create a room for ``user``; return True if it is new. Raises Forbidden at a cap."""
        validate_room_name(name)
        if self.exists(name):
            return False
        enforce("CHAT_RATE_ROOMS", user)  # only attempts to create count: opening one is free
        outcome = self._create([keys.ROOM_NAMES, keys.user_rooms(user)], [name, self.max_rooms, self.max_per_user])
        if outcome == -1:
            raise Forbidden(f"This server holds its maximum of {self.max_rooms} rooms.", code="rooms_full")
        if outcome == -2:
            raise Forbidden(f"You have created the {self.max_per_user} rooms an account may create.",
                            code="room_quota")
        self._known.add(name)
        return outcome == 1

    def page(self, after, limit):
        """Up to ``limit`` names after ``after`` (exclusive) by name, and whether more follow."""
        start = f"({after}" if after else "-"
        names = [n.decode() for n in self.redis.zrange(keys.ROOM_NAMES, start, "+", bylex=True, offset=0,
                                                        num=limit + 1)]
        return names[:limit], len(names) > limit


def init_app(app):
    registry = RoomRegistry(app.extensions["chat.redis"], app.config["CHAT_MAX_ROOMS"],
                            app.config["CHAT_MAX_ROOMS_PER_USER"])
    app.extensions["chat.rooms"] = registry
    try:
        registry.migrate()
    except Exception as exc:  # Redis down at start: the first request that needs it says so
        app.logger.warning("rooms: index not migrated at start (%s); will retry at the next start", exc)


def current_rooms():
    return current_app.extensions["chat.rooms"]


@bp.get("")
@login_required
def list_rooms():
    """A page of rooms by name, each with the id of its newest message (clients derive unread
    counts). ``after=<name>`` continues where ``next`` of the previous page pointed."""
    after = request.args.get("after") or None
    if after is not None:
        validate_room_name(after)
    limit = query_number("limit", ROOMS_PAGE_DEFAULT, 1, ROOMS_PAGE_MAX)
    names, more = current_rooms().page(after, limit)
    tails = current_app.extensions["chat.broker"].tails(names)
    return jsonify(rooms=[{"name": name, "last_id": str(tail)} for name, tail in zip(names, tails)],
                   next=names[-1] if more else None)


@bp.post("")
@login_required
def create_room():
    """Create a room (201), or return the existing one (200)."""
    name = string_field(request_fields(), "name")
    created = current_rooms().create(name, current_user())
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
    current_rooms().require_many(list(cursors))
    counts = current_app.extensions["chat.broker"].count_after(cursors, UNREAD_CAP)
    return jsonify(unread=dict(zip(cursors, counts)), cap=UNREAD_CAP)
