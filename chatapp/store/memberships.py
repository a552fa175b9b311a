"""Membership: the rooms each user joined, which their multiplexed streams follow.

A membership is the room's name and its join point, the id the room's
messages start after on the user's streams (its earlier history is the page's
to fetch). Joining and leaving are told to every worker over the control
channel, so the user's open streams add or drop the room at once; a worker
whose link was down meanwhile re-reads the memberships when it reconnects.
"""

import sys

from chatapp.core import control
from chatapp.core.ids import StreamId
from chatapp.ops.errors import Forbidden
from chatapp.store import keys
from chatapp.store.lua import lua_script
from chatapp.store.rooms import DEFAULT_ROOM

SET_UP = b"."  # the field that marks a user's memberships as set up (not a room name)


class Memberships:
    def __init__(self, redis, broker, max_per_user):
        self.redis = redis
        self.broker = broker
        self.max_per_user = max_per_user
        self._join = redis.register_script(lua_script("join_room"))

    def join(self, user, room):
        """Make ``user`` a member of ``room``; return its join point. Raises Forbidden at the cap."""
        at = self._join([keys.user_memberships(user)], [room, str(self.broker.tail(room)), self.max_per_user])
        if at == -1:
            raise Forbidden(f"You are in the {self.max_per_user} rooms an account may join; leave one first.",
                            code="membership_quota")
        at = StreamId.from_bytes(at)
        self.broker.publish_control(control.membership_change(user, room, at))
        return at

    def require_room_for(self, user):
        """Raise Forbidden if ``user`` is in as many rooms as an account may be (checked before a
        change that adds them to one: an invite, a new DM)."""
        found = self.redis.hkeys(keys.user_memberships(user))
        if len([room for room in found if room != SET_UP]) >= self.max_per_user:
            raise Forbidden(f"{user} is in the {self.max_per_user} rooms an account may join.",
                            code="membership_quota")

    def join_default(self, user):
        """A new account starts in the default room."""
        return self.join(user, DEFAULT_ROOM)

    def leave(self, user, room):
        self.redis.hdel(keys.user_memberships(user), room)
        self.broker.publish_control(control.membership_change(user, room, None))

    def rooms(self, user):
        """``{room: join point}`` of every room ``user`` joined (an account older than
        memberships joins the default room first)."""
        found = self.redis.hgetall(keys.user_memberships(user))
        if not found:
            self.join_default(user)
            found = self.redis.hgetall(keys.user_memberships(user))
        return _decoded(found)

    def rooms_of(self, users):
        """:meth:`rooms` for many users, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for user in users:
            pipe.hgetall(keys.user_memberships(user))
        return {user: _decoded(found) for user, found in zip(users, pipe.execute())}



def _decoded(found):
    # Interned: every stream of every user names the same room with one string.
    return {sys.intern(room.decode()): StreamId.from_bytes(at) for room, at in found.items() if room != SET_UP}
