"""Private rooms, their members and roles, direct messages and blocks: the changes people make
to who is in a conversation.

Each change that matters to readers is an entry in the room's log, written by the same script
that changes the members (:meth:`chatapp.store.broker.Broker.change`), so it travels the way a
message does, in order with them. A removal or a leave names the user it revokes: every
reader of theirs meets it before anything that follows it, on every worker (invariant 16).
The user's own list of rooms (:mod:`chatapp.store.memberships`) follows, and with it their
multiplexed streams, through the control channel.
"""

import logging

from chatapp.accounts.users import validate_username
from chatapp.ops.errors import BadRequest, Conflict, Forbidden, NotFound
from chatapp.store import keys
from chatapp.store.rooms import DM, MEMBER, MODERATOR, OWNER, PRIVATE, clean_title, dm_name

log = logging.getLogger(__name__)

DM_MAX_MEMBERS = 8  # a group DM is a few people; a bigger group is a private room
MAX_BLOCKS_PER_USER = 1000  # a set per user; each block costs a member of it
ROLES = (MODERATOR, MEMBER)  # what an owner may make a member (ownership isn't handed over)


class Conversations:
    def __init__(self, redis, *, rooms, access, broker, memberships, users, limits, max_members):
        self.redis = redis
        self.rooms = rooms
        self.access = access
        self.broker = broker
        self.memberships = memberships
        self.users = users
        self.limits = limits
        self.max_members = max_members  # CHAT_MAX_ROOM_MEMBERS

    # -- private rooms ------------------------------------------------------------------

    def create_private(self, user, title):
        """A new private room owned by ``user``, who is its first member; return its name."""
        title = clean_title(title)
        self.memberships.require_room_for(user)
        room = self.rooms.create_private(title, user)
        self.memberships.join(user, room)
        return room

    def invite(self, actor, room, member):
        """Add ``member`` to the private room (owners and moderators; no accept step: the room
        appears in their list and streams at once). Returns True if they were added now."""
        grant = self.access.manage(actor, room, kinds=(PRIVATE,))
        member = self._existing_user(member)
        self.limits.hit("CHAT_RATE_INVITES", actor.lower())
        if grant.archived:
            raise Forbidden("This room is archived: unarchive it to invite anyone.", code="room_archived")
        self.memberships.require_room_for(member)
        added = self.broker.change(room, actor, {"kind": "member", "member": member, "change": "added"}, "add",
                                   member=member, value=MEMBER, cap=self.max_members)
        # After the entry: their streams start past it, and only once they may read the room.
        self.memberships.join(member, room)
        return added is not None

    def remove(self, actor, room, member):
        """Remove ``member`` from the private room: their streams stop delivering it at once."""
        grant = self.access.manage(actor, room, kinds=(PRIVATE,))
        member = validate_username(member).lower()
        role = self.rooms.roles_of(member, [room])[room]
        if role is None:
            raise NotFound(f"{member} is not a member of this room.", code="not_member")
        if role == OWNER:
            raise Forbidden("The owner can't be removed.", code="not_allowed")
        if role == MODERATOR and grant.role != OWNER and not self.access.is_operator(actor):
            raise Forbidden("Only the owner (or an operator) removes a moderator.", code="not_allowed")
        self.limits.hit("CHAT_RATE_ROOM_CHANGES", actor.lower())
        self._revoke(room, actor, member, "removed")

    def leave(self, user, room):
        """``user`` leaves the private room, and with it their access to it."""
        grant = self.access.read(user, room)
        if grant.kind == DM:
            raise BadRequest("A direct conversation can't be left; block the other person instead.",
                             code="cannot_leave_dm")
        if grant.role == OWNER:
            raise Conflict("The owner can't leave the room; archive it instead.", code="owner_must_stay")
        self._revoke(room, user, user.lower(), "left")

    def _revoke(self, room, actor, member, change):
        # The entry first, in the room's slot with the members hash: from its id on no reader of
        # the member gets anything of the room. Their room list follows.
        self.broker.change(room, actor, {"kind": "member", "member": member, "change": change, "revokes": member},
                           "remove", member=member)
        self.memberships.leave(member, room)

    def set_role(self, actor, room, member, role):
        """Make ``member`` a moderator or a plain member (the owner, or an operator)."""
        self.access.manage(actor, room, need=OWNER)
        if role not in ROLES:
            raise BadRequest(f"'role' is one of {', '.join(ROLES)}.", code="bad_role")
        member = self._existing_user(member)
        if self.rooms.roles_of(member, [room])[room] == OWNER:
            raise Forbidden("The owner's role can't be changed.", code="not_allowed")
        self.limits.hit("CHAT_RATE_ROOM_CHANGES", actor.lower())
        self.broker.change(room, actor, {"kind": "member", "member": member, "change": "role", "role": role},
                           "role", member=member, value=role)
        return role

    def update(self, actor, room, *, title=None, archived=None):
        """Rename and/or archive (or unarchive) a room (owners, moderators, operators)."""
        self.access.manage(actor, room)
        self.limits.hit("CHAT_RATE_ROOM_CHANGES", actor.lower())
        if title is not None:
            title = clean_title(title)
            self.broker.change(room, actor, {"kind": "room", "change": "renamed", "title": title}, "title",
                               value=title)
        if archived is not None:
            if not isinstance(archived, bool):
                raise BadRequest("'archived' must be true or false.", code="bad_field")
            change = "archived" if archived else "unarchived"
            self.broker.change(room, actor, {"kind": "room", "change": change}, "archive",
                               value="1" if archived else "0")

    # -- direct messages --------------------------------------------------------------

    def open_dm(self, user, others):
        """The conversation of ``user`` with ``others`` (1 to 7 usernames), started if new;
        return ``(room, members, created)``. Whoever starts it, a set of people has one."""
        if not isinstance(others, list) or not 1 <= len(others) <= DM_MAX_MEMBERS - 1:
            raise BadRequest(f"'users' names 1 to {DM_MAX_MEMBERS - 1} other people.", code="bad_field")
        me = user.lower()
        members = {me} | {self._existing_user(other) for other in others}
        if len(members) < 2:
            raise BadRequest("A direct conversation needs someone else.", code="bad_field")
        blocks = self._blocks_of(members)
        for member in sorted(members - {me}):
            if me in blocks[member]:
                raise Forbidden(f"{member} doesn't take messages from you.", code="blocked")
        room = dm_name(members)
        known = self.access.readable(user, [room])
        if room in known:
            return room, sorted(members), False
        if len(members) == 2 and blocks[me]:
            (other,) = members - {me}
            if other in blocks[me]:
                raise Forbidden(f"You blocked {other}: unblock them to write to them.", code="blocked")
        self.limits.hit("CHAT_RATE_DMS", me)
        for member in members:
            self.memberships.require_room_for(member)
        room, created = self.rooms.create_dm(members)
        for member in sorted(members):
            self.memberships.join(member, room)
        return room, sorted(members), created

    # -- blocks ---------------------------------------------------------------------------

    def blocked(self, user):
        """The users ``user`` blocked, sorted."""
        return sorted(name.decode() for name in self.redis.smembers(keys.user_blocks(user)))

    def block(self, user, other):
        """``user`` blocks ``other``: no new DM from them, and their two-person DM goes read-only."""
        other = self._existing_user(other)
        if other == user.lower():
            raise BadRequest("You can't block yourself.", code="bad_field")
        if self.redis.scard(keys.user_blocks(user)) >= MAX_BLOCKS_PER_USER:
            raise Forbidden(f"You have blocked the {MAX_BLOCKS_PER_USER} people an account may block.",
                            code="block_quota")
        self.redis.sadd(keys.user_blocks(user), other)
        self._mark_dm(user, other, True)

    def unblock(self, user, other):
        other = validate_username(other).lower()
        self.redis.srem(keys.user_blocks(user), other)
        self._mark_dm(user, other, False)

    def _mark_dm(self, user, other, blocked):
        # Recorded whether or not their DM exists yet: one started a moment later (the check in
        # open_dm read the blocks before this) is read-only from its first message.
        self.rooms.set_blocked(dm_name({user.lower(), other}), user, blocked)

    def _blocks_of(self, members):
        pipe = self.redis.pipeline(transaction=False)
        for member in members:
            pipe.smembers(keys.user_blocks(member))
        return {member: {name.decode() for name in found} for member, found in zip(members, pipe.execute())}

    # -- helpers ----------------------------------------------------------------------------

    def _existing_user(self, name):
        validate_username(name)
        if not self.users.exists(name):
            raise NotFound(f"No user named {name!r}.", code="unknown_user")
        return name.lower()
