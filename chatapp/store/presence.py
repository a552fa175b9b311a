"""Presence: who has a live stream (or a recent long-poll) in a room, join/leave, typing.

Kept in Redis by ``lua/presence.lua`` so every worker and host agrees, with
expiry refreshed by each worker's hub, so a dead worker's users leave by
themselves (within ``CHAT_PRESENCE_TTL_SECS`` plus a sweep). Join, leave
(``event: presence``) and typing (``event: typing``) are live-only: never
stored, never replayed; a reconnecting client reloads the list.
"""

import logging
import secrets
import time

from chatapp.store import keys
from chatapp.store.lua import room_script, run_many

log = logging.getLogger(__name__)

POLL_CONNECTION = "poll"  # one presence entry per long-polling user, refreshed by its polls
POLLERS_REMEMBERED = 100_000  # (user, room) pairs a worker remembers refreshing; then it forgets them all
class Presence:
    def __init__(self, redis, config):
        self._script = room_script(redis, "presence")
        self.ttl_ms = int(config["CHAT_PRESENCE_TTL_SECS"] * 1000)
        self.linger_ms = int(config["CHAT_PRESENCE_LINGER_SECS"] * 1000)
        self.refresh_secs = config["CHAT_PRESENCE_TTL_SECS"] / 3  # two refreshes may fail before expiry
        self._poll_refresh_due = {}  # (user, room) -> when this worker next refreshes a long-poller's entry

    def _run(self, room, op, ttl_ms, members=()):
        users = self._script([keys.room_presence(room), keys.room_presence_users(room), keys.room_channel(room)],
                             [op, ttl_ms, room, *members])
        return [user.decode() for user in users]

    @staticmethod
    def member(user, connection=None):
        """A connection's entry; a new random one per stream."""
        # 48 random bits: unique among one user's streams; an entry per room of every stream
        # is what presence costs in Redis, so it is kept short.
        return f"{user}:{connection or secrets.token_hex(6)}"

    def join(self, room, member):
        return self.join_many(room, [member])

    def join_many(self, room, members):
        return self._run(room, "join", self.ttl_ms, members)

    def join_polling(self, user, rooms):
        """Count a long-poll client of ``user`` present in ``rooms``: one round trip for the rooms
        this worker hasn't refreshed for it within ``refresh_secs`` (a poller asks several times
        a second; its entry lives ``CHAT_PRESENCE_TTL_SECS`` from the last refresh)."""
        now = time.monotonic()
        due = [room for room in rooms if self._poll_refresh_due.get((user, room), 0.0) <= now]
        if not due:
            return
        if len(self._poll_refresh_due) > POLLERS_REMEMBERED:
            self._poll_refresh_due.clear()
        self.join_rooms(due, self.member(user, POLL_CONNECTION))
        for room in due:
            self._poll_refresh_due[(user, room)] = now + self.refresh_secs

    def join_rooms(self, rooms, member):
        """``member`` joins each of ``rooms``, in one round trip (a long-poll over many rooms)."""
        run_many(self._script, [([keys.room_presence(room), keys.room_presence_users(room), keys.room_channel(room)],
                                 ["join", self.ttl_ms, room, member]) for room in rooms])

    def leave_many(self, room, members):
        """Leave after the linger period, unless the user reconnects meanwhile."""
        return self._run(room, "leave", self.linger_ms, members)

    def tick(self, room, members=()):
        """Expire dead connections (announcing leaves) and refresh ``members``; return who is online."""
        return self._run(room, "tick", self.ttl_ms, members)
