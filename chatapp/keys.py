"""Every Redis key and channel name, built in one place (the table in docs/DESIGN.md).

A room's keys share the ``{room}`` hash tag, so a Redis Cluster keeps a room on
one shard. Per-user names use the lowercased username. Callers pass only names
already checked against their patterns (rooms, usernames, session ids,
idempotency keys): nothing a client sends becomes part of a key unchecked.
Lua scripts get these names as KEYS (or, where a script walks an index of
session ids, the prefix to build them with).
"""

PREFIX = "chat"
CONTROL_CHANNEL = f"{PREFIX}:control"  # kicks and logouts, to every worker on every host
ROOM_NAMES = f"{PREFIX}:room-names"  # sorted set, every score 0: ZRANGE BYLEX pages it by name
LEGACY_ROOMS = f"{PREFIX}:rooms"  # the plain set earlier releases kept; migrated at start
SESSION_PREFIX = f"{PREFIX}:session:"  # + sid (flask-session builds the key from it)
RATE_LIMIT_PREFIX = f"{PREFIX}:rl"  # the ``limits`` library's windows
DURABILITY_PROBE = f"{PREFIX}:durability-probe"  # a hub's write before a WAIT (replica acknowledgement)


def _room(room):
    return f"{PREFIX}:{{{room}}}"


def room_log(room):
    """The room's stream: its history and the truth."""
    return f"{_room(room)}:log"


def room_channel(room):
    """The room's Pub/Sub channel: the fast path."""
    return f"{_room(room)}:live"


def room_trimmed(room):
    """Set once the room's stream has lost entries to its cap."""
    return f"{_room(room)}:trimmed"


def room_acked(room):
    """With replica acknowledgement: the newest id known to be on enough replicas."""
    return f"{_room(room)}:acked"


def room_idempotency(room, user, key):
    return f"{_room(room)}:idem:{user.lower()}:{key}"


def room_presence(room):
    return f"{_room(room)}:presence"


def room_presence_users(room):
    return f"{_room(room)}:presence-users"


def user(name):
    return f"{PREFIX}:user:{name.lower()}"


def banned(name):
    return f"{PREFIX}:banned:{name.lower()}"


def user_rooms(name):
    """How many rooms the user created."""
    return f"{PREFIX}:user-rooms:{name.lower()}"


def user_sessions(name):
    """The user's session index."""
    return f"{PREFIX}:user-sessions:{name.lower()}"


def user_streams(name):
    """The user's stream leases."""
    return f"{PREFIX}:user-streams:{name.lower()}"


def verified(token):
    """A credential some worker verified recently (``token``: an HMAC of name and password)."""
    return f"{PREFIX}:verified:{token}"


def session(sid):
    return SESSION_PREFIX + sid


def user_memberships(name):
    """The rooms the user joined: a hash of room name to the id its stream starts after."""
    return f"{PREFIX}:memberships:{name.lower()}"
