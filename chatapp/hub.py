"""The Hub: this worker's readers and its one Redis Pub/Sub connection.

One listener greenlet per worker reads the Pub/Sub link and hands each
publication, already encoded, to every local reader of its room (invariant 7).
The Hub is started lazily on first use, so it never exists before the fork.

How the invariants are kept:

* Subscribe, then backfill (4): a reader is registered before the room's
  subscription is confirmed and only reads the stream after that; anything
  published in between is both in its backfill and in its queue, and the
  reader drops ids it has already delivered (3).
* Self-healing (5): every subscription confirmation, first or after a
  reconnect, makes the listener read the stream after the last id it
  dispatched for that room, before it reads another live message. So the
  publications a room's hub has dispatched are the room's stream, gap-free,
  from its first subscription on; the last ``CHAT_HUB_RING`` of them are kept
  so a reader that fell behind catches up without a Redis call.
* Bounded slow readers (6): a reader whose queue is full drops it and catches
  up at its own cursor (see :mod:`chatapp.reader`), then rejoins the live path.

Request greenlets only write to the Pub/Sub link (SUBSCRIBE, UNSUBSCRIBE,
PING, under a lock); the listener greenlet is its only reader.
"""

import collections
import json
import logging
import os
import random
import time

import gevent
import redis
from gevent.event import Event as Flag
from gevent.lock import Semaphore

from . import keys, sessions
from .broker import Publication, Signal
from .errors import REDIS_ERRORS, StoreUnavailable
from .reader import Reader
from .sse import PING, http_chunk

log = logging.getLogger(__name__)

RECONNECT_MIN_SECS = 0.05  # first retry soon: most drops are a CLIENT KILL or a blip
RECONNECT_MAX_SECS = 2.0  # a restarting Redis is back within seconds; don't wait longer
SILENT_PINGS = 3  # a Pub/Sub link this many pings without a reply is dead
WATCH_TICK_SECS = 0.5  # an expired session's streams must stop within 2 s
PRESENCE_SWEEP_SECS = 2.0  # how soon after expiry a dead worker's users are announced gone
# Joins (and leaves) arriving within this window share one presence call per room:
# 10,000 streams opening at once cost about a hundred Redis calls, not 10,000.
JOIN_BATCH_SECS = 0.05
PING_CHUNK = http_chunk(PING)
CLOSE_WAIT_SECS = 3.0  # for drainers to end their streams at shutdown (a Redis read is at most 5 s)
HUB_READ_CONNECTIONS = 4  # for the listener's own reads (tails, backfills)
_CONTROL = keys.CONTROL_CHANNEL.encode()
_SIGNAL = b'{"type":'  # live-only events; publications start with {"id":


class _Room:
    __slots__ = ("channel", "idle_since", "last_id", "name", "presence_due", "readers", "ready",
                 "ring", "ring_floor", "start_id")

    def __init__(self, name, channel, ring_size):
        self.name = name
        self.channel = channel
        self.readers = set()
        self.last_id = None  # last id dispatched; None until the first confirmation
        self.start_id = None  # the room's tail when the subscription was first confirmed
        self.ring = collections.deque(maxlen=ring_size)  # recent publications, contiguous
        self.ring_floor = None  # the ring holds every publication after this id
        self.ready = Flag()
        self.idle_since = None
        self.presence_due = 0.0  # when this worker next refreshes its readers' presence here

    def restart_at(self, tail):
        self.last_id = self.ring_floor = tail
        self.ring.clear()


class Hub:
    """Tracks this process's readers and feeds them from one Pub/Sub connection."""

    def __init__(self, redis_url, *, broker, presence, slots, metrics, config):
        self.queue_limit = config["CHAT_READER_QUEUE"]
        self.catchup_page = config["CHAT_CATCHUP_PAGE"]
        self.ring_size = config["CHAT_HUB_RING"]
        self.subscribe_timeout = config["CHAT_SUBSCRIBE_TIMEOUT_SECS"]
        self.ping_secs = config["CHAT_HUB_PING_SECS"]
        self.linger_secs = config["CHAT_ROOM_LINGER_SECS"]
        self.heartbeat_secs = config["CHAT_HEARTBEAT_SECS"]
        self.max_readers = config["CHAT_MAX_STREAMS"]
        self.recheck_secs = config["CHAT_SESSION_RECHECK_SECS"]
        self._reader_count = 0
        # RESP2 on the Pub/Sub link: replies are plain [kind, channel, data] lists.
        self._pubsub_client = redis.Redis.from_url(redis_url, protocol=2, socket_timeout=None,
                                                   socket_connect_timeout=2)
        self.broker = broker  # on a pool of its own (HUB_READ_CONNECTIONS), see chatapp.store
        self.presence = presence
        self.slots = slots
        self.metrics = metrics
        self._rooms = {}
        self._conn = None
        self._write_lock = Semaphore()
        self._pid = None
        self._greenlets = []
        self._last_heard = 0.0
        self._joining = {}  # room name -> readers whose presence join waits for its batch
        self._leaving = {}  # room name -> presence members whose streams ended, likewise
        self._releasing = {}  # user -> stream leases to give back, likewise
        self.closed = False

    # -- readers --------------------------------------------------------------

    def reader(self, room, user, sid=None):
        """A reader for ``user`` in ``room``, holding one of the user's stream slots (raises
        TooManyStreams at ``CHAT_MAX_STREAMS_PER_USER``)."""
        return Reader(self, room, user, sid, self.slots.acquire(user))

    def readers(self):
        return [reader for room in self._rooms.values() for reader in room.readers]

    def reader_count(self):
        return self._reader_count

    def check_capacity(self):
        """Refuse a reader past ``CHAT_MAX_STREAMS``: live streams don't hold gunicorn's
        connection slots (chatapp.direct), so this is what bounds them."""
        if self._reader_count >= self.max_readers:
            raise StoreUnavailable("This worker holds as many streams as it may; retry shortly.", code="busy")

    def attach(self, reader):
        """Register ``reader`` and wait for its room's subscription; return "now"."""
        if self.closed:
            raise StoreUnavailable("This worker is shutting down; reconnect.", code="draining")
        self.check_capacity()  # then count it before anything can yield: a burst can't overshoot
        self._ensure_started()
        room = self._rooms.get(reader.channel)
        subscribe = room is None
        if subscribe:
            room = self._rooms[reader.channel] = _Room(reader.room, reader.channel, self.ring_size)
        if reader not in room.readers:
            room.readers.add(reader)
            self._reader_count += 1
        room.idle_since = None
        if subscribe:
            self._send("SUBSCRIBE", reader.channel)
        if room.ready.is_set():
            return room.last_id
        if not room.ready.wait(self.subscribe_timeout):
            self.detach(reader)
            raise StoreUnavailable("The live feed is not connected; retry shortly.")
        return room.start_id

    def detach(self, reader):
        self._count_delivered([reader])
        lease = reader.take_lease()
        if lease is not None:  # batched: detach runs in the listener's loop too, which must not wait
            self._batch(self._releasing, reader.user, lease, self._flush_releases)
        room = self._rooms.get(reader.channel)
        if room is not None and reader in room.readers:
            room.readers.remove(reader)
            self._reader_count -= 1
            if not room.readers:
                room.idle_since = time.monotonic()

    def join_presence(self, reader, member):
        """Count ``reader`` in its room's presence (announced within ``JOIN_BATCH_SECS``)."""
        reader.presence_member = member
        if reader.channel in self._rooms:
            self._batch(self._joining, reader.room, reader, self._flush_joins)

    def leave_presence(self, reader):
        """Stop counting ``reader`` in its room's presence; leaves are batched like joins."""
        member, reader.presence_member = reader.presence_member, None
        if member is not None:
            self._batch(self._leaving, reader.room, member, self._flush_leaves)

    @staticmethod
    def _batch(pending, room, item, flush):
        if not pending:
            gevent.spawn_later(JOIN_BATCH_SECS, flush)
        pending.setdefault(room, []).append(item)

    def _flush_joins(self):
        joining, self._joining = self._joining, {}
        for name, readers in joining.items():
            members = [r.presence_member for r in readers if r.presence_member]  # not those gone already
            if not members:
                continue
            try:
                self.presence.join_many(name, members)
            except redis.RedisError as exc:
                room = self._rooms.get(readers[0].channel)
                if room is not None:
                    room.presence_due = 0.0  # the next sweep adds them
                log.info("hub: presence join in %s deferred (%s)", name, exc)

    def _flush_leaves(self):
        leaving, self._leaving = self._leaving, {}
        for room, members in leaving.items():
            try:
                self.presence.leave_many(room, members)
            except redis.RedisError as exc:
                log.info("hub: %d presence leaves in %s not recorded (%s); they will expire",
                         len(members), room, exc)

    def _flush_releases(self):
        releasing, self._releasing = self._releasing, {}
        for user, leases in releasing.items():
            try:
                self.slots.release(user, *leases)
            except redis.RedisError as exc:
                log.info("hub: %d stream leases of %s not released (%s); they will run out",
                         len(leases), user, exc)

    def _renew_leases(self, readers):
        held = {}
        for reader in readers:
            if reader.lease is not None:
                held.setdefault(reader.user, []).append(reader.lease)
        self.slots.renew(held)

    def _count_delivered(self, readers):
        total = 0
        for reader in readers:
            total += reader.delivered
            reader.delivered = 0
        if total:
            self.metrics.delivered.inc(total)

    def recent_after(self, reader):
        """Publications after the reader's cursor from the ring, or None if it doesn't cover it."""
        room = self._rooms.get(reader.channel)
        if room is None or room.ring_floor is None \
                or not room.ring_floor <= reader.last_id <= room.last_id:
            return None
        self.metrics.catchups.labels("ring").inc()
        newer = []
        for publication in reversed(room.ring):
            if publication.id <= reader.last_id:
                break
            newer.append(publication)
        newer.reverse()
        return newer

    def close_matching(self, reason, user=None, sid=None):
        """Close the readers of ``user`` (every session) or of one session ``sid``."""
        closed = 0
        for reader in self.readers():
            if (user and reader.user == user) or (sid and reader.sid == sid):
                reader.close(reason)
                closed += 1
        return closed

    def close(self, reason="draining"):
        """Close every reader (their clients resume elsewhere) and stop listening."""
        self.closed = True
        readers = self.readers()
        for reader in readers:
            reader.close(reason)
        gevent.killall(self._greenlets, block=False)
        self._disconnect(self._conn)
        # Drainers still finishing (a catch-up read in flight) end their streams themselves.
        gevent.joinall([r.sink.drainer for r in readers if r.sink is not None and r.sink.drainer is not None],
                       timeout=CLOSE_WAIT_SECS)
        self._flush_leaves()  # now: the worker may exit before a batch timer fires

    @property
    def listening(self):
        """False once started if the listener greenlet died (it shouldn't: it restarts itself)."""
        return self._pid != os.getpid() or all(not g.dead for g in self._greenlets)

    # -- the Pub/Sub link ------------------------------------------------------

    def _ensure_started(self):
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._greenlets = [gevent.spawn(self._listen), gevent.spawn(self._watch_link),
                           gevent.spawn(self._housekeeping)]

    def _send(self, *args):
        """Write a command on the Pub/Sub link; the listener greenlet reads the reply."""
        with self._write_lock:
            # A link the watchdog dropped stays dropped: redis-py would silently
            # reconnect it on write, without our subscriptions.
            if self._conn is None or not self._conn.is_connected:
                return  # the listener subscribes every known room when it connects
            try:
                self._conn.send_command(*args, check_health=False)
            except REDIS_ERRORS as exc:
                log.info("hub: write of %s failed (%s); the listener will reconnect", args[0], exc)

    def _listen(self):
        delay = RECONNECT_MIN_SECS
        connected_before = False
        while not self.closed:
            conn = None
            try:
                conn = self._connect()
                if connected_before:
                    self._recheck_all_sessions()
                connected_before = True
                delay = RECONNECT_MIN_SECS
                self._serve(conn)
            except REDIS_ERRORS as exc:
                if self.closed:
                    return
                self.metrics.redis_errors.labels("hub").inc()
                log.warning("hub pid=%d: Pub/Sub link lost (%s: %s); reconnecting in %.2fs",
                            os.getpid(), type(exc).__name__, exc, delay)
            except Exception:
                log.exception("hub pid=%d: listener failed; reconnecting in %.2fs", os.getpid(), delay)
            finally:
                self._disconnect(conn)
            gevent.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, RECONNECT_MAX_SECS)
            self.metrics.hub_reconnects.inc()

    def _connect(self):
        # A bare connection, not one from the pool: the pool counts what it
        # makes and would refuse after max_connections reconnects.
        pool = self._pubsub_client.connection_pool
        conn = pool.connection_class(**pool.connection_kwargs)
        try:
            conn.connect()
            with self._write_lock:
                conn.send_command("SUBSCRIBE", _CONTROL, *self._rooms, check_health=False)
                self._conn = conn
        except BaseException:
            conn.disconnect()
            raise
        self._last_heard = time.monotonic()
        return conn

    def _disconnect(self, conn):
        if conn is None:
            return
        with self._write_lock:
            if self._conn is conn:
                self._conn = None
        conn.disconnect()

    def _serve(self, conn):
        while True:
            reply = conn.read_response()
            self._last_heard = time.monotonic()
            if not isinstance(reply, list):
                continue  # PONG before the first subscription
            kind = reply[0]
            if kind == b"message" and reply[1] == _CONTROL:
                self._on_control(reply[2])
            elif kind == b"message":
                self._dispatch(reply[1], reply[2])
            elif kind == b"subscribe":
                self._on_subscribed(reply[1])

    def _on_subscribed(self, channel):
        room = self._rooms.get(channel)
        if room is None:
            return  # the control channel, or unsubscribed before the confirmation arrived
        if room.last_id is None:
            room.start_id = self.broker.tail(room.name)
            room.restart_at(room.start_id)
            room.ready.set()
            return
        # A (re)subscription: whatever was published while we were not
        # subscribed is in the stream after the last id we dispatched.
        while True:
            page, reset = self.broker.catch_up(room.name, room.last_id, self.catchup_page)
            if reset:
                self._lost_track(room, reset.latest)
                return
            for publication in page:
                self._deliver(room, publication)
            if len(page) < self.catchup_page:
                return
            gevent.sleep(0)  # let readers write between pages

    def _lost_track(self, room, tail):
        """The link was down longer than the room's retention: every reader checks its own cursor."""
        log.warning("hub: room %s was trimmed past our position while the link was down", room.name)
        room.restart_at(tail)
        for reader in room.readers:
            reader.fall_behind()

    def _on_control(self, payload):
        try:
            message = json.loads(payload)
            self.close_matching(message["reason"], message.get("user"), message.get("sid"))
        except (ValueError, KeyError, TypeError, AttributeError):
            log.error("hub: ignoring malformed control message %r", payload[:200])

    def _dispatch(self, channel, payload):
        room = self._rooms.get(channel)
        if room is None or room.last_id is None:
            return  # a late message of an old subscription; the stream has it
        try:
            if payload.startswith(_SIGNAL):
                signal = Signal(payload)
                for reader in tuple(room.readers):  # a failed direct write detaches its reader
                    if reader.user != signal.user:
                        reader.offer(signal)
                return
            publication = Publication.from_payload(payload)
        except (ValueError, KeyError, TypeError):
            log.error("hub: ignoring malformed message on %r: %r", channel, payload[:200])
            return
        self._deliver(room, publication)

    def _deliver(self, room, publication):
        if publication.id <= room.last_id:
            return
        if len(room.ring) == room.ring.maxlen:
            room.ring_floor = room.ring[0].id
        room.ring.append(publication)
        room.last_id = publication.id
        for reader in tuple(room.readers):  # a failed direct write detaches its reader
            reader.offer(publication)

    # -- housekeeping ------------------------------------------------------------

    def _watch_link(self):
        """Ping the link so a dead one is noticed. Its own greenlet: it must never wait
        on a Redis command (a stalled Redis is exactly what it has to notice)."""
        while not self.closed:
            gevent.sleep(self.ping_secs)
            conn = self._conn
            if conn is None:
                continue
            silent = time.monotonic() - self._last_heard
            if silent > SILENT_PINGS * self.ping_secs:
                log.warning("hub pid=%d: Pub/Sub link silent for %.1fs; dropping it", os.getpid(), silent)
                self._disconnect(conn)
            else:
                self._send("PING")

    def _housekeeping(self):
        """End streams of expired sessions, keep presence fresh, drop rooms nobody reads."""
        next_sweep = next_renewal = 0.0
        while not self.closed:
            gevent.sleep(WATCH_TICK_SECS)
            now = time.monotonic()
            try:
                readers = self.readers()
                self._ping_quiet(readers, now)
                if now >= next_sweep:
                    next_sweep = now + PRESENCE_SWEEP_SECS
                    self._tick_presence(now)
                self._expire_sessions(readers, now)
                self._count_delivered(readers)
                if now >= next_renewal:
                    next_renewal = now + self.slots.renew_secs
                    self._renew_leases(readers)
                self._prune(now)
            except redis.RedisError as exc:  # down, or full (maxmemory): the next tick tries again
                log.info("hub: housekeeping skipped (%s: %s)", type(exc).__name__, exc)
            except Exception:
                log.exception("hub: housekeeping failed")

    def _ping_quiet(self, readers, now):
        """``: ping`` to direct streams with nothing written for a heartbeat (invariant 10);
        WSGI-served streams ping themselves."""
        due = now - self.heartbeat_secs
        for reader in readers:
            if reader.sink is not None:
                reader.sink.heartbeat(PING_CHUNK, due)

    def _tick_presence(self, now):
        """Sweep expired presence in every room read here, refreshing our own streams' entries
        every ``presence.refresh_secs``; a worker that stops doing this (dies) drops out."""
        for room in list(self._rooms.values()):
            if not room.readers:
                continue
            members = ()
            if now >= room.presence_due:
                room.presence_due = now + self.presence.refresh_secs
                members = [r.presence_member for r in room.readers if r.presence_member]
            self.presence.tick(room.name, members)

    def _expire_sessions(self, readers, now):
        """Readers due a session check: ask Redis (one pipeline) and close those whose session
        ended (or, for HTTP Basic, whose account was banned); the rest are checked again within
        ``CHAT_SESSION_RECHECK_SECS``, whatever the control channel did or didn't say."""
        due = [r for r in readers if r.expires_at <= now]
        if not due:
            return
        outcomes = sessions.recheck(self.broker.redis, [(r.user, r.sid) for r in due])
        for reader, (reason, seconds_left) in zip(due, outcomes):
            if reason:
                reader.close(reason)
            else:
                reader.expires_at = now + min(seconds_left or self.recheck_secs, self.recheck_secs)

    def _recheck_all_sessions(self):
        """The link was down: a kick or logout may have been published meanwhile."""
        for reader in self.readers():
            reader.expires_at = 0.0

    def _prune(self, now):
        for channel, room in list(self._rooms.items()):
            if not room.readers and room.idle_since is not None \
                    and now - room.idle_since >= self.linger_secs:
                del self._rooms[channel]
                self._send("UNSUBSCRIBE", channel)
