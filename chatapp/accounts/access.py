"""Who may do what with a room: decided here, and only here (docs/DESIGN.md, invariant 15).

Every route that takes a room asks :class:`Access` before it touches the room:
streams, both long-polls (the short path serves only a poller a full poll opened
after this check), history, presence, typing, unread counts, posting, joining and
every membership or room change. ``tests/test_private.py`` walks the app's URL map so a
route added without asking fails it.

* A public room: anyone signed in reads it and posts to it (unless archived).
* A private room or a DM: only its members. To anyone else it doesn't exist: the
  answer is :func:`chatapp.ops.errors.unknown_room`, word for word the answer for a
  name never created, so neither a route nor its error tells a private room's name.
* Managing a room (inviting, removing, roles, title, archive): its owner and
  moderators (roles only its owner), and the operator (``CHAT_ADMINS``) in every room.

A check reads the user's role and the room's newest id in one script
(``room_access.lua``); a stream starts from that id, so a removal that follows the
check is in what the stream reads, and ends it (invariant 16). Public rooms need
no read at all once seen: their kind never changes.
"""

from typing import NamedTuple

from chatapp.core.ids import StreamId
from chatapp.ops.errors import BadRequest, Forbidden, unknown_room
from chatapp.store.rooms import DM, MODERATOR, OWNER, PRIVATE, PUBLIC, RESTRICTED, ROOM_RE

# Why a change doesn't apply to a kind of room.
KIND_REFUSALS = {
    PUBLIC: "Anyone may join a public room: members are invited to private rooms only.",
    DM: "A direct conversation's members are fixed, and it has no title, roles or archive.",
}


class Grant(NamedTuple):
    """What a check found: the room, its kind, the user's role, and for a private room or a DM
    the room's newest id when the check was made (a stream over it starts there)."""

    room: str
    kind: str
    role: str | None = None
    archived: bool = False
    title: str = ""
    checked_at: StreamId | None = None

    @property
    def restricted(self):
        return self.kind in RESTRICTED

    def start(self, cursor):
        """Where a stream over the room starts: the client's cursor, or for a private room or a
        DM the id the check was made at (so nothing between the check and the stream's start is
        missed, a removal included); None means "now"."""
        if cursor is not None or not self.restricted:
            return cursor
        return self.checked_at


class Access:
    """The one place that decides whether a user may read, post to or manage a room."""

    def __init__(self, rooms, admins):
        self.rooms = rooms  # chatapp.store.rooms.RoomRegistry
        self.admins = admins  # CHAT_ADMINS: lowercase names

    def is_operator(self, user):
        return user.lower() in self.admins

    def read(self, user, room):
        """The :class:`Grant` of ``user`` to read ``room``; :func:`unknown_room` if it doesn't
        exist or they may not read it."""
        return self.read_many(user, [room])[room]

    def read_many(self, user, rooms):
        """``{room: Grant}`` for every room of ``rooms`` (one round trip for those not known
        public); :func:`unknown_room` naming the first that ``user`` may not read."""
        grants = self._grants(user, rooms)
        for room in rooms:
            if room not in grants:
                raise unknown_room(room)
        return grants

    def readable(self, user, rooms):
        """``{room: Grant}`` of the rooms of ``rooms`` that ``user`` may read (the others left out)."""
        return self._grants(user, rooms)

    def post(self, user, room):
        """The grant to post to ``room``. The append script checks membership, archive and blocks
        again, atomically with the append; this check is what tells a name never created."""
        return self.read(user, room)

    def moderates(self, user, room):
        """True if ``user`` moderates ``room`` (its owner or a moderator, or an operator): they
        may delete anyone's message there. Nobody moderates a DM."""
        if self.is_operator(user):
            return True
        return self.rooms.roles_of(user, [room])[room] in (OWNER, MODERATOR)

    def manage(self, user, room, need=MODERATOR, kinds=(PUBLIC, PRIVATE)):
        """The grant of ``user`` to manage ``room``: ``need`` is the least role it takes
        (moderator, or owner), ``kinds`` the kinds of room the change applies to (a 400
        ``not_private`` otherwise). An outsider of a private room gets :func:`unknown_room`; a
        member without the role a 403 ``not_allowed``. The operator may manage every room."""
        standing = self.rooms.standing(room, user) if ROOM_RE.match(room) else None
        operator = self.is_operator(user)
        if standing is None or (standing.kind in RESTRICTED and standing.role is None and not operator):
            raise unknown_room(room)
        if standing.kind not in kinds:
            raise BadRequest(KIND_REFUSALS[standing.kind], code="not_private")
        allowed = (OWNER,) if need == OWNER else (OWNER, MODERATOR)
        if standing.role not in allowed and not operator:
            raise Forbidden(f"Only the room's {' or '.join(allowed)}s (or an operator) may do that.",
                            code="not_allowed")
        return _grant(room, standing)

    def _grants(self, user, rooms):
        grants = {}
        unknown = []
        for room in rooms:
            if self.rooms.known_public(room):
                grants[room] = Grant(room, PUBLIC)
            elif ROOM_RE.match(room):
                unknown.append(room)
        if unknown:
            for room, standing in zip(unknown, self.rooms.standings(unknown, user)):
                if standing is not None and (standing.kind not in RESTRICTED or standing.role is not None):
                    grants[room] = _grant(room, standing)
        return grants


def _grant(room, standing):
    return Grant(room, standing.kind, standing.role, standing.archived, standing.title, standing.tail)
