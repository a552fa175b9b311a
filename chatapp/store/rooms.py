"""Rooms: the registry of names and the routes that list and create them."""

import re

from chatapp.ops.errors import BadRequest, Forbidden, NotFound
from chatapp.store import keys
from chatapp.store.lua import lua_script

ROOM_RE = re.compile(r"\A[a-z0-9_-]{1,64}\Z")
DEFAULT_ROOM = "general"
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

    def __init__(self, redis, max_rooms, max_per_user, limits):
        self.redis = redis
        self.limits = limits  # RateLimits: creating counts against CHAT_RATE_ROOMS
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
        self.limits.hit("CHAT_RATE_ROOMS", user.lower())  # only attempts to create count: opening one is free
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
