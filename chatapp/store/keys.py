"""Every Redis key and channel name, built in one place (the table in docs/DESIGN.md).

Keys that a script touches together share a hash tag, so a Redis Cluster keeps
them in one slot: a room's keys ``{<room>}``, a user's keys and sessions
``{user:<name>}`` (the lowercased username), the room index and the per-user
creation counters ``{rooms}``. Callers pass only names
already checked against their patterns (rooms, usernames, session ids,
idempotency keys): nothing a client sends becomes part of a key unchecked.
Lua scripts get these names as KEYS (or, where a script walks an index of
session ids, the prefix to build them with).
"""

PREFIX = "chat"
CONTROL_CHANNEL = f"{PREFIX}:control"  # kicks and logouts, to every worker on every host
ROOM_NAMES = f"{PREFIX}:{{rooms}}:names"  # sorted set, every score 0: ZRANGE BYLEX pages it by name
LEGACY_ROOMS = f"{PREFIX}:rooms"  # the plain set early releases kept; migrated at start
SESSION_PREFIX = f"{PREFIX}:session:"  # + sid (flask-session builds the key from it)
RATE_LIMIT_PREFIX = f"{PREFIX}:rl"  # the ``limits`` library's windows


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


def room_probe(room):
    """A hub's write before a WAIT of its own (replica acknowledgement), in the room's slot."""
    return f"{_room(room)}:probe"


def room_idempotency(room, user, key):
    return f"{room_idempotency_prefix(room)}{user.lower()}:{key}"


def room_idempotency_prefix(room):
    """What every idempotency record of the room starts with (a deletion's script forgets the
    deleted message's record: ``<prefix><user>:<key>``)."""
    return f"{_room(room)}:idem:"


def room_edits(room):
    """The room's edited messages: a hash of message id to its latest text, when it was edited
    and the ids of its edit entries."""
    return f"{_room(room)}:edits"


def room_presence(room):
    return f"{_room(room)}:presence"


def room_presence_users(room):
    return f"{_room(room)}:presence-users"


def room_meta(room):
    """What the room is: a hash of ``kind`` (public, private, dm), ``title``, ``owner``,
    ``archived`` and ``created`` (rooms of earlier releases have none: public)."""
    return f"{_room(room)}:meta"


def room_members(room):
    """Who may do what in the room: a hash of lowercase username to role (owner, moderator,
    member). Private rooms and DMs list every member (access is this hash); public rooms only
    their owner and moderators."""
    return f"{_room(room)}:members"


def room_blockers(room):
    """In a two-person DM: the members who blocked the other (a set); while it has any, nobody
    writes there."""
    return f"{_room(room)}:blockers"


def _user(name):
    return f"{PREFIX}:{{user:{name.lower()}}}"


def user(name):
    """The account record."""
    return f"{_user(name)}:account"


def banned(name):
    return f"{_user(name)}:banned"


def user_rooms(name):
    """How many rooms the user created (beside the room index: one script counts both)."""
    return f"{PREFIX}:{{rooms}}:created:{name.lower()}"


def user_private_rooms(name):
    """How many private rooms the user created (a counter beside the room index)."""
    return f"{PREFIX}:{{rooms}}:private:{name.lower()}"


def user_reads(name):
    """How far the user has read each room: a hash of room name to message id (never moves back)."""
    return f"{_user(name)}:reads"


def user_muted(name):
    """The rooms the user muted (a set)."""
    return f"{_user(name)}:muted"


def user_blocks(name):
    """The users this user blocked (a set of lowercase names)."""
    return f"{_user(name)}:blocks"


def user_sessions(name):
    """The user's session index."""
    return f"{_user(name)}:sessions"


def user_streams(name):
    """The user's stream leases."""
    return f"{_user(name)}:streams"


def verified(name, token):
    """A credential of ``name`` some worker verified recently (``token``: an HMAC of name and
    password), beside the account (one MGET reads both)."""
    return f"{_user(name)}:verified:{token}"


def session(sid):
    return SESSION_PREFIX + sid


def session_id(name, token):
    """A new session id for ``name``: its user's hash tag, then ``token``, so the session key
    lives in the slot of the user's index (and of sessions of earlier releases, untagged, in
    none in particular: they are only ever read on one server)."""
    return f"{{user:{name.lower()}}}{token}"


def user_memberships(name):
    """The rooms the user joined: a hash of room name to the id its stream starts after."""
    return f"{_user(name)}:memberships"


# Names of earlier releases, renamed at start (chatapp.store.migrations): old name -> new name
# builder, by the old name's prefix.
RENAMED = {  # bans first: a migration cut short never leaves an account moved without its ban
    f"{PREFIX}:banned:": banned,
    f"{PREFIX}:user:": user,
    f"{PREFIX}:user-sessions:": user_sessions,
    f"{PREFIX}:user-rooms:": user_rooms,
    f"{PREFIX}:memberships:": user_memberships,
}
RENAMED_KEYS = {f"{PREFIX}:room-names": ROOM_NAMES}
SCHEMA = f"{PREFIX}:schema"  # the key layout's version, once migrated
