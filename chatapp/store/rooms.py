"""Rooms: what each room is (its kind, title, owner, archived flag), the index of public
names, and who holds which role in a room.

Three kinds of room share one machinery (a log, a channel, the same readers):

* ``public``: named by its creator, listed, readable by every account;
* ``private``: named ``p-<random>`` (so a name reveals nothing and can't be guessed), never
  listed, readable only by its members;
* ``dm``: a direct conversation of 2 to 8 people, named ``dm-<digest of its members>``, so
  a set of people has exactly one, whoever starts it.

What a user may do with a room is decided by :mod:`chatapp.accounts.access` from what this
module reads.
"""

import hashlib
import re
import secrets
import time
from typing import NamedTuple

from chatapp.core.ids import ZERO, StreamId
from chatapp.ops.errors import BadRequest, Forbidden
from chatapp.store import keys
from chatapp.store.lua import lua_script, run_many

ROOM_RE = re.compile(r"\A[a-z0-9_-]{1,64}\Z")
DEFAULT_ROOM = "general"
PUBLIC, PRIVATE, DM = "public", "private", "dm"
RESTRICTED = frozenset({PRIVATE, DM})  # kinds only their members can read
OWNER, MODERATOR, MEMBER = "owner", "moderator", "member"
PRIVATE_PREFIX, DM_PREFIX = "p-", "dm-"
TITLE_MAX_CHARS = 80
_UNWANTED_TITLE_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def validate_room_name(name):
    if not isinstance(name, str) or not ROOM_RE.match(name):
        raise BadRequest("Room names are 1 to 64 lowercase letters, digits, '-' or '_'.",
                         code="bad_room")
    return name


def validate_public_name(name):
    """A name a user may give a public room: the generated prefixes are reserved."""
    validate_room_name(name)
    if name.startswith((PRIVATE_PREFIX, DM_PREFIX)):
        raise BadRequest(f"Names starting with {PRIVATE_PREFIX!r} or {DM_PREFIX!r} are reserved.", code="bad_room")
    return name


def clean_title(title):
    """A room's title: 1 to 80 characters, no control characters."""
    if not isinstance(title, str):
        raise BadRequest("'title' must be a string.", code="bad_field")
    title = _UNWANTED_TITLE_CHARS.sub("", title).strip()
    if not 1 <= len(title) <= TITLE_MAX_CHARS:
        raise BadRequest(f"A title is 1 to {TITLE_MAX_CHARS} characters.", code="bad_title")
    return title


def dm_name(members):
    """The one room of a set of people: a digest of their sorted lowercase names."""
    digest = hashlib.sha256("\n".join(sorted({m.lower() for m in members})).encode()).hexdigest()
    return DM_PREFIX + digest[:32]


class Standing(NamedTuple):
    """What one user is in one room, read at one instant (``room_access.lua``)."""

    kind: str
    archived: bool
    title: str
    role: str | None  # owner, moderator, member, or None
    tail: StreamId  # the room's newest id readers may see, read with the role


class RoomRegistry:
    """Room records in Redis; public names in a sorted set (paged by name); ``general`` always
    exists.

    Creating rooms is bounded: ``CHAT_MAX_ROOMS`` public rooms in total (each costs
    memory in every listing and a stream in Redis), ``CHAT_MAX_ROOMS_PER_USER`` public and
    ``CHAT_MAX_PRIVATE_ROOMS_PER_USER`` private rooms per creator (so one account can't use
    up the total). DMs are bounded by their rate limit and by the members' room caps.
    """

    def __init__(self, redis, max_rooms, max_per_user, limits, *, max_private_per_user=20, waits_for_replicas=False):
        self.redis = redis
        self.limits = limits  # RateLimits: creating counts against CHAT_RATE_ROOMS
        self.max_rooms = max_rooms
        self.max_per_user = max_per_user
        self.max_private_per_user = max_private_per_user
        self.waits_for_replicas = waits_for_replicas
        self._create = redis.register_script(lua_script("create_room"))
        self._create_hidden = redis.register_script(lua_script("create_hidden_room"))
        self._claim = redis.register_script(lua_script("claim_quota"))
        self._access = redis.register_script(lua_script("room_access"))
        # A room's kind never changes and public rooms are never deleted, so a name seen public
        # once needs no second lookup; CHAT_MAX_ROOMS bounds this set.
        self._public = {DEFAULT_ROOM}

    def migrate(self):
        """Make sure the default room is listed (idempotent; run by every worker at start)."""
        self.redis.zadd(keys.ROOM_NAMES, {DEFAULT_ROOM: 0}, nx=True)

    # -- what a room is ---------------------------------------------------------------

    def known_public(self, name):
        """True if ``name`` is a public room this worker has seen (no Redis call)."""
        return name in self._public

    def standing(self, room, user):
        """The :class:`Standing` of ``user`` in ``room``, or None if there is no such room."""
        return self.standings([room], user)[0]

    def standings(self, rooms, user):
        """:meth:`standing` for many rooms, in one round trip where the topology allows."""
        user = user.lower()
        replies = run_many(self._access, [([keys.room_meta(room), keys.room_members(room), keys.room_log(room),
                                             keys.room_acked(room)], [user]) for room in rooms])
        legacy = [room for room, reply in zip(rooms, replies) if not reply[0]]
        listed = self._listed(legacy) if legacy else set()
        return [self._standing(room, reply, listed) for room, reply in zip(rooms, replies)]

    def _standing(self, room, reply, listed):
        kind, archived, title, role, newest, acked = (part.decode() if isinstance(part, bytes) else part
                                                      for part in reply)
        if not kind:
            if room not in listed:
                return None
            kind = PUBLIC  # a room of an earlier release: public, no record
        if kind == PUBLIC:
            self._public.add(room)
        tail = StreamId.parse(newest) if newest else ZERO
        if self.waits_for_replicas and acked:
            tail = min(tail, StreamId.parse(acked))
        return Standing(kind, archived == "1", title or room, role or None, tail)

    def _listed(self, names):
        """The names of ``names`` in the public index."""
        return {name for name, score in zip(names, self.redis.zmscore(keys.ROOM_NAMES, names)) if score is not None}

    def describe(self, names):
        """``{name: {"title", "kind", "archived"}}`` of rooms, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.hmget(keys.room_meta(name), "kind", "title", "archived")
        described = {}
        for name, (kind, title, archived) in zip(names, pipe.execute()):
            described[name] = {"title": title.decode() if title else name,
                               "kind": kind.decode() if kind else PUBLIC, "archived": archived == b"1"}
        return described

    def members(self, room):
        """``{user: role}`` of the room (private rooms and DMs: every member; public: its staff)."""
        return self.members_of([room])[room]

    def members_of(self, rooms):
        """:meth:`members` of many rooms, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for room in rooms:
            pipe.hgetall(keys.room_members(room))
        return {room: {user.decode(): role.decode() for user, role in found.items()}
                for room, found in zip(rooms, pipe.execute())}

    def roles_of(self, user, rooms):
        """``{room: role or None}`` of ``user`` in each room, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for room in rooms:
            pipe.hget(keys.room_members(room), user.lower())
        return {room: role.decode() if role else None for room, role in zip(rooms, pipe.execute())}

    # -- creating ----------------------------------------------------------------------

    def create(self, name, user):
        """Create a public room for ``user`` (its owner); return True if it is new. Raises
        Forbidden at a cap."""
        validate_public_name(name)
        if self.standing(name, user) is not None:
            return False
        self.limits.hit("CHAT_RATE_ROOMS", user.lower())  # only attempts to create count: opening one is free
        outcome = self._create([keys.ROOM_NAMES, keys.user_rooms(user)], [name, self.max_rooms, self.max_per_user])
        if outcome == -1:
            raise Forbidden(f"This server holds its maximum of {self.max_rooms} rooms.", code="rooms_full")
        if outcome == -2:
            raise Forbidden(f"You have created the {self.max_per_user} rooms an account may create.",
                            code="room_quota")
        if outcome == 1:
            pipe = self.redis.pipeline(transaction=False)
            pipe.hset(keys.room_meta(name), mapping={"kind": PUBLIC, "title": name, "owner": user.lower(),
                                                     "created": _now_ms()})
            pipe.hset(keys.room_members(name), user.lower(), OWNER)
            pipe.execute()
        self._public.add(name)
        return outcome == 1

    def create_private(self, title, user):
        """Create a private room owned by ``user``; return its name. Raises Forbidden at the cap."""
        self.limits.hit("CHAT_RATE_ROOMS", user.lower())
        if self._claim([keys.user_private_rooms(user)], [self.max_private_per_user]) == -1:
            raise Forbidden(f"You have created the {self.max_private_per_user} private rooms an account may create.",
                            code="private_room_quota")
        name = PRIVATE_PREFIX + secrets.token_hex(10)
        self._create_hidden([keys.room_meta(name), keys.room_members(name)],
                            [PRIVATE, title, user.lower(), _now_ms(), 1, user.lower(), OWNER])
        return name

    def create_dm(self, members):
        """The DM of ``members`` (lowercase names), created if new; return ``(name, created)``."""
        name = dm_name(members)
        args = [DM, "", "", _now_ms(), len(members)]
        for member in sorted(members):
            args += [member, MEMBER]
        created = self._create_hidden([keys.room_meta(name), keys.room_members(name)], args)
        return name, created == 1

    def set_blocked(self, room, user, blocked):
        """Record (or forget) that ``user`` blocked the other member of the DM ``room``."""
        if blocked:
            self.redis.sadd(keys.room_blockers(room), user.lower())
        else:
            self.redis.srem(keys.room_blockers(room), user.lower())

    # -- listing -------------------------------------------------------------------------

    def page(self, after, limit):
        """Up to ``limit`` public names after ``after`` (exclusive) by name, and whether more follow."""
        start = f"({after}" if after else "-"
        names = [n.decode() for n in self.redis.zrange(keys.ROOM_NAMES, start, "+", bylex=True, offset=0,
                                                        num=limit + 1)]
        return names[:limit], len(names) > limit


def _now_ms():
    return int(time.time() * 1000)
