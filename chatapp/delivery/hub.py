"""The Hub: this worker's streams, registered, counted, fed and ended.

The hub hands each publication, already encoded, to every local reader of its
room (invariant 7 in docs/DESIGN.md), through its :class:`Feed` (the rooms as
the Pub/Sub links tell them: subscribe-then-backfill, dispatch, the watermark,
held publications). It is started lazily on first use, so it never exists
before the fork.

Beside the hub, not inside it: the control channel (:mod:`chatapp.delivery.control`),
the housekeeping tickers (:mod:`chatapp.delivery.housekeeping`), the kept
long-pollers (:mod:`chatapp.delivery.pollers`), presence upkeep
(:mod:`chatapp.delivery.presence_keeper`) and session re-checks
(:mod:`chatapp.delivery.session_watch`).
"""

import logging
import os

import gevent
import redis

from chatapp.core.reasons import Ending
from chatapp.core.sse import PING, http_chunk
from chatapp.delivery.control import ControlChannel
from chatapp.delivery.feed import Feed
from chatapp.delivery.housekeeping import Housekeeper, Tick, Ticker
from chatapp.delivery.multiplex import Multiplex
from chatapp.delivery.pollers import Pollers
from chatapp.delivery.presence_keeper import SWEEP_SECS, PresenceKeeper
from chatapp.delivery.reader import Reader, ReaderTerms
from chatapp.delivery.session_watch import SessionWatch
from chatapp.ops.errors import StoreUnavailable

log = logging.getLogger(__name__)

PING_CHUNK = http_chunk(PING)
CLOSE_WAIT_SECS = 3.0  # for drainers to end their streams at shutdown (a Redis read is at most 5 s)
HUB_READ_CONNECTIONS = 4  # for the hub's own reads (tails, backfills)


class Hub:
    """Tracks this process's streams and feeds them from its Pub/Sub links."""

    def __init__(self, where, *, broker, presence, slots, memberships, metrics, config):
        self.heartbeat_secs = config["CHAT_HEARTBEAT_SECS"]
        self.max_readers = config["CHAT_MAX_STREAMS"]
        self._reader_count = 0
        self.presence = PresenceKeeper(presence)
        self.slots = slots
        self.memberships = memberships
        self.sessions = SessionWatch(broker.redis, config["CHAT_SESSION_RECHECK_SECS"])
        self.metrics = metrics
        # Long-poll readers kept for their clients' next polls (chatapp.delivery.pollers).
        self.pollers = Pollers(config["CHAT_POLL_PACE_MS"] / 1000, config["CHAT_POLL_LINGER_SECS"])
        self.control = ControlChannel(end_streams=self.close_matching, membership_changed=self._membership_changed,
                                      read_moved=self._read_moved)
        self.feed = Feed(where, broker, metrics, config, on_control=self.control.on_message,
                         on_control_subscribed=self.control.subscribed, on_control_lost=self.control.lost,
                         on_reconnected=self._reconnected)
        # What every reader of this worker is given: its bounds and where it catches up from.
        self.terms = ReaderTerms(config["CHAT_READER_QUEUE"], config["CHAT_CATCHUP_PAGE"], self.feed)
        self._muxes = set()  # multiplexed streams (chatapp.delivery.multiplex); their rooms' readers are in the feed
        self.housekeeper = Housekeeper(self._tickers(), self._tick, lambda: self.closed)
        self._pid = None
        self.closed = False

    @property
    def watermark(self):
        """The largest millisecond the link has dispatched (docs/DESIGN.md, invariant 12)."""
        return self.feed.watermark

    # -- streams ------------------------------------------------------------------

    def reader(self, room, user, sid=None, credential=None):
        """A reader for ``user`` in ``room``, holding one of the user's stream slots (raises
        TooManyStreams at ``CHAT_MAX_STREAMS_PER_USER``)."""
        return Reader(self, room, user, sid, lease=self.slots.acquire(user), credential=credential)

    def multiplex(self, user, sid=None, credential=None, narrowed=None):
        """A stream over many rooms for ``user``, holding one of the user's stream slots, and
        registered at once: membership changes from now on reach it (its rooms open later)."""
        mux = Multiplex(self, user, sid, lease=self.slots.acquire(user), credential=credential, narrowed=narrowed)
        try:
            self._admit()
            self._muxes.add(mux)
            self._reader_count += 1
        except BaseException:
            self.slots.release(mux)
            raise
        return mux

    def readers(self):
        """Every room reader, including the rooms of multiplexed streams."""
        return self.feed.readers()

    def streams(self):
        """Every stream and waiting long-poll: the single-room readers and the multiplexed streams."""
        return [reader for reader in self.readers() if reader.standalone] + list(self._muxes)

    def reader_count(self):
        return self._reader_count

    def check_capacity(self):
        """Refuse a reader past ``CHAT_MAX_STREAMS``: live streams don't hold gunicorn's
        connection slots (chatapp.web.takeover), so this is what bounds them."""
        if self._reader_count >= self.max_readers:
            raise StoreUnavailable("This worker holds as many streams as it may; retry shortly.", code="busy")

    def follows(self, channel):
        """True if the room of ``channel`` is subscribed and ready now: a reader opens at once."""
        return self.feed.follows(channel)

    def attach(self, reader):
        """Register ``reader`` and wait for its room's subscription; return "now"."""
        self.register(reader)
        return self.wait_ready(reader)

    def register(self, reader):
        """Register ``reader`` and subscribe to its room if needed, without waiting.

        A room of a multiplexed stream isn't counted against ``CHAT_MAX_STREAMS``: its
        stream is (:meth:`multiplex`)."""
        if reader.standalone:
            self._admit()
        elif self.closed:
            raise StoreUnavailable("This worker is shutting down; reconnect.", code=Ending.DRAINING)
        if self.feed.add(reader) and reader.standalone:
            self._reader_count += 1

    def wait_ready(self, reader):
        """Wait for the subscription of ``reader``'s room; return "now" in it."""
        try:
            return self.feed.wait_ready(reader)
        except StoreUnavailable:
            self.detach(reader)
            raise

    def _admit(self):
        if self.closed:
            raise StoreUnavailable("This worker is shutting down; reconnect.", code=Ending.DRAINING)
        self.check_capacity()  # then count it before anything can yield: a burst can't overshoot
        self._ensure_started()

    def detach(self, reader):
        """The reader's stream ended: unregister it and give back its lease (idempotent)."""
        self._count_delivered([reader])
        self.slots.release(reader)
        if self.feed.remove(reader) and reader.standalone:
            self._reader_count -= 1

    def remove_stream(self, mux):
        """The multiplexed stream ended (its rooms are detached by it): uncount it, give back
        its lease (idempotent)."""
        self._count_delivered([mux])
        self.slots.release(mux)
        if mux in self._muxes:
            self._muxes.remove(mux)
            self._reader_count -= 1

    def join_presence(self, reader, member):
        """Count ``reader`` in its room's presence (announced within a batch window)."""
        self.presence.join(reader, member, announce=self.feed.has(reader.channel))

    def leave_presence(self, reader):
        """Stop counting ``reader`` in its room's presence; leaves are batched like joins."""
        self.presence.leave(reader)

    def _count_delivered(self, readers):
        total = sum(reader.take_delivered() for reader in readers)
        if total:
            self.metrics.delivered.inc(total)

    def close_matching(self, reason, user=None, sid=None):
        """Close the streams of ``user`` (every session) or of one session ``sid``."""
        closed = 0
        for reader in self.streams():
            if (user and reader.user == user) or (sid and reader.sid == sid):
                reader.close(reason)
                closed += 1
        return closed

    # -- life --------------------------------------------------------------------

    def _ensure_started(self):
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self.feed.start()
        self.housekeeper.start()

    def close(self, reason=Ending.DRAINING):
        """Close every stream (their clients resume elsewhere) and stop listening."""
        self.closed = True
        readers = self.streams()
        for reader in readers:
            reader.close(reason)
        self.pollers.end_all()
        self.housekeeper.stop()
        self.feed.close()
        # Drainers still finishing (a catch-up read in flight) end their streams themselves.
        gevent.joinall([r.sink.drainer for r in readers if r.sink is not None and r.sink.drainer is not None],
                       timeout=CLOSE_WAIT_SECS)
        self.presence.flush()  # now: the worker may exit before a batch timer fires
        self.slots.flush()

    @property
    def listening(self):
        """False once started if a greenlet of the hub died (they shouldn't: they restart themselves)."""
        if self._pid != os.getpid():
            return True
        return self.feed.alive and not self.housekeeper.dead

    # -- the control channel (chatapp.delivery.control) -------------------------------

    def control_epoch(self):
        """See :meth:`ControlChannel.epoch` (None once closed); starts the hub."""
        if self.closed:
            return None
        self._ensure_started()
        return self.control.epoch()

    def watch_users(self, callback):
        """Call ``callback(user)`` when a control message ends a user's sessions or streams."""
        self.control.watch_users(callback)

    def _reconnected(self):
        """Control messages published while the link was down are lost: re-check every session
        and every multiplexed stream's rooms."""
        self.sessions.check_all_soon(self.streams())
        if self._muxes:
            gevent.spawn(self._reconcile_memberships, list(self._muxes))

    def _reconcile_memberships(self, muxes):
        try:
            joined = self.memberships.rooms_of(sorted({mux.user for mux in muxes}))
        except redis.RedisError as exc:
            log.warning("hub: memberships not re-read after a reconnect (%s); ending %d multiplexed streams",
                        exc, len(muxes))
            for mux in muxes:  # they resume elsewhere, from their cursors, with the right rooms
                mux.close(Ending.STORE_UNAVAILABLE)
            return
        for mux in muxes:
            mux.reconcile(joined[mux.user])

    def _membership_changed(self, user, room, at):
        """A join (at the id ``at``) or a leave (``at`` None) reaches the user's streams."""
        for mux in self._muxes:
            if mux.user == user:
                mux.membership_changed(room, at)

    def _read_moved(self, user, room, at):
        """The user has read ``room`` up to ``at`` on some device: every stream of theirs says so."""
        for mux in self._muxes:
            if mux.user == user:
                mux.read_moved(room, at)

    # -- housekeeping (chatapp.delivery.housekeeping) ------------------------------------

    def _tick(self, now):
        readers = self.readers()
        return Tick(now, readers, [reader for reader in readers if reader.standalone] + list(self._muxes))

    def _tickers(self):
        """The hub's upkeep, in the order each tick runs it."""
        pollers, feed = self.pollers, self.feed
        return [
            Ticker("pings", lambda tick: self._ping_quiet(tick.streams, tick.now)),
            # Before anything that needs Redis, which may be down.
            Ticker("pollers", lambda tick: (pollers.prune(tick.now), pollers.flush_metrics(self.metrics))),
            Ticker("presence", lambda tick: self.presence.tick(feed.readers_by_room(), tick.now),
                   every_secs=SWEEP_SECS),
            Ticker("sessions", lambda tick: self.sessions.check(tick.streams, tick.now)),
            Ticker("held", lambda tick: feed.release_stale(tick.now)),
            Ticker("delivered", lambda tick: self._count_delivered(tick.readers + list(self._muxes))),
            Ticker("leases", lambda tick: self.slots.renew(tick.streams), every_secs=self.slots.renew_secs),
            Ticker("rooms", lambda tick: feed.prune(tick.now, self.presence.forget)),
        ]

    def _ping_quiet(self, streams, now):
        """``: ping`` to direct streams with nothing written for a heartbeat (invariant 10);
        WSGI-served streams ping themselves."""
        due = now - self.heartbeat_secs
        for stream in streams:
            if stream.sink is not None:
                stream.sink.heartbeat(PING_CHUNK, due)
