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
  dispatched for that room, before it reads another live message.
* Bounded slow readers (6): a reader whose queue is full drops it and catches
  up from the stream at its own cursor, then rejoins the live path.
"""

import logging
import os
import random
import time

import gevent
import redis
from gevent.event import Event as Flag
from gevent.lock import Semaphore

from .broker import Publication, room_keys
from .errors import REDIS_ERRORS, StoreUnavailable

log = logging.getLogger(__name__)

RECONNECT_MIN_SECS = 0.05  # first retry soon: most drops are a CLIENT KILL or a blip
RECONNECT_MAX_SECS = 2.0  # a restarting Redis is back within seconds; don't wait longer
SILENT_PINGS = 3  # a Pub/Sub link this many pings without a reply is dead


class ReaderClosed(Exception):
    """The hub closed this reader (shutdown, kick); the client should reconnect or stop."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


class Reader:
    """One SSE stream or long-poll: a bounded queue of publications and a cursor."""

    __slots__ = ("_behind", "_queue", "_wake", "closed_reason", "hub", "last_id", "room")

    def __init__(self, hub, room):
        self.hub = hub
        self.room = room
        self.last_id = None
        self._queue = []
        self._wake = Flag()
        self._behind = False
        self.closed_reason = None

    def open(self, cursor=None, backlog=0):
        """Register with the hub and fix the start; return ``(Position | None, backlog list)``.

        With a cursor, the first batch catches up from it; without one the
        reader starts at the hub's current position ("now"), after ``backlog``
        of the latest messages.
        """
        now = self.hub.attach(self)
        broker = self.hub.broker
        if cursor is not None:
            position = broker.position(self.room, cursor)
            self.last_id = position.cursor
            self._behind = not position.reset
            return position, []
        self.last_id = now
        if not backlog:
            return None, []
        return None, self._advance(broker.read_before(self.room, None, backlog), force=True)

    def offer(self, publication):
        """Queue a publication (called by the listener; never blocks)."""
        if len(self._queue) >= self.hub.queue_limit:
            self._queue = []
            self._behind = True
        else:
            self._queue.append(publication)
        self._wake.set()

    def next_batch(self, timeout):
        """Publications after the cursor, oldest first; ``None`` if ``timeout`` passed idle.

        An empty list means "nothing new after all" (a duplicate was dropped).
        """
        if self.closed_reason:
            raise ReaderClosed(self.closed_reason)
        if not (self._queue or self._behind):
            self._wake.clear()
            if not self._wake.wait(timeout):
                return None
            if self.closed_reason:
                raise ReaderClosed(self.closed_reason)
        if not self._behind:
            return self._advance(self._take())
        self._behind = False
        page_size = self.hub.catchup_page
        page = self.hub.broker.read_after(self.room, self.last_id, page_size)
        self.hub.stats["catchup_pages"] += 1
        if len(page) == page_size or self._behind:
            self._behind = True  # more in the stream, or the queue overflowed again meanwhile
            return self._advance(page)
        return self._advance(page + self._take())

    def close(self, reason):
        self.closed_reason = reason
        self._wake.set()

    def _take(self):
        queue, self._queue = self._queue, []
        self._wake.clear()
        return queue

    def _advance(self, publications, force=False):
        """Keep only ids after the cursor (invariant 3) and move the cursor."""
        last = self.last_id
        fresh = []
        for publication in publications:
            if force or publication.id > last:
                fresh.append(publication)
                last = max(last, publication.id)
        self.last_id = last
        return fresh


class _Room:
    __slots__ = ("channel", "idle_since", "last_id", "name", "readers", "ready", "start_id")

    def __init__(self, name, channel):
        self.name = name
        self.channel = channel
        self.readers = set()
        self.last_id = None  # last id dispatched; None until the first confirmation
        self.start_id = None  # the room's tail when the subscription was first confirmed
        self.ready = Flag()
        self.idle_since = None


class Hub:
    """Tracks this process's readers and feeds them from one Pub/Sub connection."""

    def __init__(self, redis_url, broker, config):
        self.broker = broker
        self.queue_limit = config["CHAT_READER_QUEUE"]
        self.catchup_page = config["CHAT_CATCHUP_PAGE"]
        self.subscribe_timeout = config["CHAT_SUBSCRIBE_TIMEOUT_SECS"]
        self.ping_secs = config["CHAT_HUB_PING_SECS"]
        self.linger_secs = config["CHAT_ROOM_LINGER_SECS"]
        # RESP2 on the Pub/Sub link: replies are plain [kind, channel, data] lists.
        self._client = redis.Redis.from_url(
            redis_url, protocol=2, socket_timeout=None, socket_connect_timeout=2)
        self._rooms = {}
        self._conn = None
        self._write_lock = Semaphore()
        self._pid = None
        self._greenlets = []
        self._last_heard = 0.0
        self.closed = False
        self.stats = {"reconnects": 0, "catchup_pages": 0, "dispatched": 0}

    # -- readers --------------------------------------------------------------

    def reader(self, room):
        return Reader(self, room)

    def attach(self, reader):
        """Register ``reader`` and wait for its room's subscription; return "now"."""
        if self.closed:
            raise StoreUnavailable("This worker is shutting down; reconnect.", code="draining")
        self._ensure_started()
        channel = room_keys(reader.room)[1].encode()
        room = self._rooms.get(channel)
        if room is None:
            room = self._rooms[channel] = _Room(reader.room, channel)
            self._send("SUBSCRIBE", channel)
        room.readers.add(reader)
        room.idle_since = None
        if room.ready.is_set():
            return room.last_id
        if not room.ready.wait(self.subscribe_timeout):
            self.detach(reader)
            raise StoreUnavailable("The live feed is not connected; retry shortly.")
        return room.start_id

    def detach(self, reader):
        room = self._rooms.get(room_keys(reader.room)[1].encode())
        if room is not None:
            room.readers.discard(reader)
            if not room.readers:
                room.idle_since = time.monotonic()

    def reader_count(self):
        return sum(len(room.readers) for room in self._rooms.values())

    def close(self, reason="draining"):
        """Close every reader (their clients resume elsewhere) and stop listening."""
        self.closed = True
        for room in self._rooms.values():
            for reader in list(room.readers):
                reader.close(reason)
        gevent.killall(self._greenlets, block=False)
        self._disconnect(self._conn)

    # -- the Pub/Sub link ------------------------------------------------------

    def _ensure_started(self):
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._greenlets = [gevent.spawn(self._listen), gevent.spawn(self._watch)]

    def _send(self, *args):
        """Write a command on the Pub/Sub link; the listener greenlet reads the reply."""
        with self._write_lock:
            if self._conn is None:
                return  # the listener subscribes every known room when it connects
            try:
                self._conn.send_command(*args, check_health=False)
            except REDIS_ERRORS as exc:
                log.info("hub: write of %s failed (%s); the listener will reconnect", args[0], exc)

    def _listen(self):
        delay = RECONNECT_MIN_SECS
        while not self.closed:
            conn = None
            try:
                conn = self._connect()
                delay = RECONNECT_MIN_SECS
                self._serve(conn)
            except REDIS_ERRORS as exc:
                if self.closed:
                    return
                log.warning("hub pid=%d: Pub/Sub link lost (%s: %s); reconnecting in %.2fs",
                            os.getpid(), type(exc).__name__, exc, delay)
            finally:
                self._disconnect(conn)
            gevent.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, RECONNECT_MAX_SECS)
            self.stats["reconnects"] += 1

    def _connect(self):
        conn = self._client.connection_pool.make_connection()
        conn.connect()
        with self._write_lock:
            self._conn = conn
            channels = list(self._rooms)
            if channels:
                conn.send_command("SUBSCRIBE", *channels, check_health=False)
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
            if kind == b"message":
                self._dispatch(reply[1], reply[2])
            elif kind == b"subscribe":
                self._on_subscribed(reply[1])

    def _on_subscribed(self, channel):
        room = self._rooms.get(channel)
        if room is None:
            return  # unsubscribed before the confirmation arrived
        if room.last_id is None:
            room.last_id = room.start_id = self.broker.tail(room.name)
            room.ready.set()
            return
        # A (re)subscription: whatever was published while we were not
        # subscribed is in the stream after the last id we dispatched.
        while True:
            page = self.broker.read_after(room.name, room.last_id, self.catchup_page)
            for publication in page:
                self._deliver(room, publication)
            if len(page) < self.catchup_page:
                return

    def _dispatch(self, channel, payload):
        room = self._rooms.get(channel)
        if room is None or room.last_id is None:
            return  # a late message of an old subscription; the stream has it
        self._deliver(room, Publication.from_payload(payload))

    def _deliver(self, room, publication):
        if publication.id <= room.last_id:
            return
        room.last_id = publication.id
        self.stats["dispatched"] += 1
        for reader in room.readers:
            reader.offer(publication)

    def _watch(self):
        """Ping the link so a dead one is noticed, and drop rooms nobody reads."""
        while not self.closed:
            gevent.sleep(self.ping_secs)
            conn = self._conn
            if conn is not None:
                if time.monotonic() - self._last_heard > SILENT_PINGS * self.ping_secs:
                    log.warning("hub pid=%d: Pub/Sub link silent for %.1fs; dropping it",
                                os.getpid(), time.monotonic() - self._last_heard)
                    conn.disconnect()
                else:
                    self._send("PING")
            self._prune(time.monotonic())

    def _prune(self, now):
        for channel, room in list(self._rooms.items()):
            if not room.readers and room.idle_since is not None \
                    and now - room.idle_since >= self.linger_secs:
                del self._rooms[channel]
                self._send("UNSUBSCRIBE", channel)
