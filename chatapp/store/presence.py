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

import redis
from flask import Blueprint, current_app, jsonify

from chatapp.core.batch import Batch
from chatapp.store import keys
from chatapp.store.lua import room_script, run_many
from chatapp.store.ratelimit import enforce
from chatapp.store.rooms import current_rooms
from chatapp.web.auth import current_user, login_required

log = logging.getLogger(__name__)

bp = Blueprint("presence", __name__, url_prefix="/api/rooms")

POLL_CONNECTION = "poll"  # one presence entry per long-polling user, refreshed by its polls
POLLERS_REMEMBERED = 100_000  # (user, room) pairs a worker remembers refreshing; then it forgets them all
SWEEP_SECS = 2.0  # how soon after expiry a dead worker's users are announced gone


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

    def forget(self, room):
        """The worker no longer reads ``room``."""
        self._due.pop(room, None)

    def flush(self):
        """Record pending leaves now (shutdown)."""
        self._leaves.flush()


def current_presence():
    return current_app.extensions["chat.presence"]


@bp.get("/<room>/presence")
@login_required
def online(room):
    """Who is in the room now (each user once, however many tabs)."""
    current_rooms().require(room)
    return jsonify(room=room, users=current_presence().tick(room))


@bp.post("/<room>/typing")
@login_required
def typing(room):
    """Tell the room's readers that you are typing (live only, never stored)."""
    current_rooms().require(room)
    user = current_user()
    enforce("CHAT_RATE_TYPING", user)
    current_app.extensions["chat.broker"].signal(room, "typing", user)
    return jsonify(ok=True), 202
