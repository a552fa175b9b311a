"""The worker's one Redis Pub/Sub connection: connect, subscribe, read, notice when it dies.

One listener greenlet reads the link and hands every reply to the hub's
callbacks, in order; request greenlets only write to it (SUBSCRIBE,
UNSUBSCRIBE, PING, under a lock). A watchdog greenlet pings it and drops a link
that stops answering; the listener then reconnects with backoff and
subscribes again to everything the hub still reads. What was published while
it was down is the hub's to read back from the streams (invariant 5): every
subscription confirmation, first or not, goes to ``on_subscribed``.
"""

import logging
import os
import random
import time

import gevent
import redis
from gevent.lock import Semaphore

from chatapp.store import topology
from chatapp.store.errors import REDIS_ERRORS

log = logging.getLogger(__name__)

RECONNECT_MIN_SECS = 0.05  # first retry soon: most drops are a CLIENT KILL or a blip
RECONNECT_MAX_SECS = 2.0  # a restarting Redis is back within seconds; don't wait longer
SILENT_PINGS = 3  # a Pub/Sub link this many pings without a reply is dead


class PubSubLink:
    """Subscribes to ``channels()`` whenever it (re)connects and feeds replies to the callbacks:
    ``on_message(channel, payload)``, ``on_subscribed(channel)``, ``on_reconnected(link)``, and
    ``on_lost()`` when the connection is lost.

    ``sharded`` links use SSUBSCRIBE (Redis Cluster's sharded Pub/Sub, one slot per command)
    and report a channel the server dropped (its slot moved) to ``on_unsubscribed(channel)``.
    """

    def __init__(self, where, ping_secs, metrics, *, channels, on_message, on_subscribed, on_reconnected,
                 node=None, sharded=False, on_unsubscribed=None, on_lost=None):
        # RESP2: replies are plain [kind, channel, data] lists. With Sentinel each new
        # connection asks for the current primary; a Cluster's links each go to one node
        # (``node``: (host, port), or a function choosing one at each connection).
        self._where = where
        self._client = topology.client(where, 1, None, protocol=2) if node is None else None
        self.node = node
        self.sharded = sharded
        self._subscribe, self._unsubscribe = ("SSUBSCRIBE", "SUNSUBSCRIBE") if sharded else ("SUBSCRIBE",
                                                                                            "UNSUBSCRIBE")
        self._kinds = (b"smessage", b"ssubscribe", b"sunsubscribe") if sharded else (b"message", b"subscribe",
                                                                                    b"unsubscribe")
        self._on_unsubscribed = on_unsubscribed
        self._on_lost = on_lost
        self.ping_secs = ping_secs
        self._metrics = metrics
        self._channels = channels
        self._on_message = on_message
        self._on_subscribed = on_subscribed
        self._on_reconnected = on_reconnected
        self._conn = None
        self._write_lock = Semaphore()
        self._last_heard = 0.0
        self.address = None  # the server the link listens to (a socket path or (host, port))
        self._greenlets = []
        self.closed = False

    def start(self):
        self._greenlets = [gevent.spawn(self._listen), gevent.spawn(self._watch)]

    @property
    def connected(self):
        conn = self._conn
        return conn is not None and conn.is_connected

    @property
    def alive(self):
        """False if a greenlet of the link died (it shouldn't: the listener restarts itself)."""
        return all(not g.dead for g in self._greenlets)

    def subscribe(self, channel):
        self._send(self._subscribe, channel)

    def unsubscribe(self, channel):
        self._send(self._unsubscribe, channel)

    def close(self):
        self.closed = True
        gevent.killall(self._greenlets, block=False)
        self._disconnect(self._conn)

    def drop(self):
        """Treat the link as silent (as the watchdog would): it is dropped and reconnected."""
        self._last_heard = 0.0

    def _send(self, *args):
        """Write a command on the link; the listener greenlet reads the reply."""
        with self._write_lock:
            # A link the watchdog dropped stays dropped: redis-py would silently
            # reconnect it on write, without our subscriptions.
            if self._conn is None or not self._conn.is_connected:
                return  # the listener subscribes to every channel when it connects
            try:
                self._conn.send_command(*args, check_health=False)
            except REDIS_ERRORS as exc:
                log.info("pubsub: write of %s failed (%s); the listener will reconnect", args[0], exc)

    def _listen(self):
        delay = RECONNECT_MIN_SECS
        connected_before = False
        while not self.closed:
            conn = None
            try:
                conn = self._connect()
                if connected_before:
                    self._on_reconnected(self)
                connected_before = True
                delay = RECONNECT_MIN_SECS
                self._serve(conn)
            except REDIS_ERRORS as exc:
                if self.closed:
                    return
                self._metrics.redis_errors.labels("hub").inc()
                log.warning("pubsub pid=%d: link lost (%s: %s); reconnecting in %.2fs",
                            os.getpid(), type(exc).__name__, exc, delay)
            except Exception:
                log.exception("pubsub pid=%d: listener failed; reconnecting in %.2fs", os.getpid(), delay)
            finally:
                self._disconnect(conn)
                if self._on_lost is not None and not self.closed:
                    self._on_lost(self)
            gevent.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, RECONNECT_MAX_SECS)
            self._metrics.hub_reconnects.inc()

    def _connect(self):
        # A bare connection, not one from the pool: the pool counts what it
        # makes and would refuse after max_connections reconnects.
        if self.node is None:
            conn = topology.bare_connection(self._client)
        else:
            node = self.node() if callable(self.node) else self.node
            conn = topology.bare_connection(topology.node_client(self._where, node, protocol=2))
        try:
            conn.connect()
            if self.sharded:
                # A node that is a replica now (a failed primary restarted) would pass on
                # what its primary publishes only once its first sync is done: what was
                # published meanwhile would be neither in the backfill nor on the link.
                conn.send_command("ROLE", check_health=False)
                role = conn.read_response()
                if not role or role[0] != b"master":
                    raise redis.ConnectionError(f"{node[0]}:{node[1]} is not a primary now")
            with self._write_lock:
                channels = self._channels()
                if self.sharded:  # one slot per SSUBSCRIBE
                    for channel in channels:
                        conn.send_command(self._subscribe, channel, check_health=False)
                elif channels:
                    conn.send_command(self._subscribe, *channels, check_health=False)
                self._conn = conn
        except BaseException:
            conn.disconnect()
            raise
        self._last_heard = time.monotonic()
        self.address = topology.address(conn)
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
            message, subscribed, unsubscribed = self._kinds
            if kind == message:
                self._on_message(reply[1], reply[2])
            elif kind == subscribed:
                self._on_subscribed(reply[1])
            elif kind == unsubscribed and self._on_unsubscribed is not None:
                self._on_unsubscribed(reply[1])

    def _watch(self):
        """Ping the link so a dead one is noticed. Its own greenlet: it must never wait
        on a Redis command (a stalled Redis is exactly what it has to notice)."""
        while not self.closed:
            gevent.sleep(self.ping_secs)
            conn = self._conn
            if conn is None:
                continue
            silent = time.monotonic() - self._last_heard
            if silent > SILENT_PINGS * self.ping_secs:
                log.warning("pubsub pid=%d: link silent for %.1fs; dropping it", os.getpid(), silent)
                self._disconnect(conn)
            else:
                self._send("PING")
