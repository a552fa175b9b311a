"""Keeps one worker's streams counted in their rooms' presence (:mod:`chatapp.store.presence`)."""

import logging

import redis

from chatapp.core.batch import Batch
from chatapp.store.errors import is_out_of_memory

log = logging.getLogger(__name__)

SWEEP_SECS = 2.0  # how soon after expiry a dead worker's users are announced gone


class PresenceKeeper:
    """Keeps one worker's streams counted in their rooms' presence.

    Joins and leaves are batched per room (:mod:`chatapp.core.batch`); every
    ``SWEEP_SECS`` the hub's housekeeping calls :meth:`tick` with its rooms,
    which sweeps expired entries (announcing a dead worker's users gone) and,
    every ``refresh_secs``, refreshes this worker's own entries.
    """

    def __init__(self, presence):
        self.presence = presence
        self._joins = Batch(self._join)
        self._leaves = Batch(self._leave)
        self._due = {}  # room -> when this worker next refreshes its streams' entries there

    def join(self, reader, member, announce=True):
        """Count ``reader`` as ``member`` (announced within a batch unless ``announce`` is False)."""
        reader.join_presence(member)
        if announce:
            self._joins.add(reader.room, reader)

    def leave(self, reader):
        member = reader.leave_presence()
        if member is not None:
            self._leaves.add(reader.room, member)

    def _join(self, room, readers):
        members = [r.presence_member for r in readers if r.presence_member]  # not those gone already
        if not members:
            return
        try:
            self.presence.join_many(room, members)
        except redis.RedisError as exc:
            self._due[room] = 0.0  # the next sweep adds them
            log.info("presence join in %s deferred (%s)", room, exc)

    def _leave(self, room, members):
        try:
            self.presence.leave_many(room, members)
        except redis.RedisError as exc:
            log.info("%d presence leaves in %s not recorded (%s); they will expire", len(members), room, exc)

    def tick(self, rooms, now):
        """Sweep ``{room: readers}`` and refresh our entries where due; a worker that stops
        doing this (dies) drops out within the TTL."""
        for room, readers in rooms.items():
            members = ()
            if now >= self._due.get(room, 0.0):
                self._due[room] = now + self.presence.refresh_secs
                members = [r.presence_member for r in readers if r.presence_member]
            self.presence.tick(room, members)

    def join_polling(self, user, rooms):
        """Count a long-poll of ``user`` present in ``rooms``; while Redis is full (maxmemory)
        the poll goes on uncounted rather than fail."""
        try:
            self.presence.join_polling(user, rooms)
        except redis.ResponseError as exc:
            if not is_out_of_memory(exc):
                raise
            log.warning("poll in %s not counted in presence: redis is out of memory", ",".join(rooms)[:200])

    def forget(self, room):
        """The worker no longer reads ``room``."""
        self._due.pop(room, None)

    def flush(self):
        """Record pending leaves now (shutdown)."""
        self._leaves.flush()


