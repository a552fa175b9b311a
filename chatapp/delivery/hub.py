"""The Hub: this worker's readers, fed from its one Pub/Sub link (:mod:`chatapp.delivery.link`).

The hub hands each publication, already encoded, to every local reader of its
room (invariant 7 in docs/DESIGN.md). It is started lazily on first use, so it
never exists before the fork.

How the invariants are kept:

* Subscribe, then backfill (4): a reader is registered before the room's
  subscription is confirmed and only reads the stream after that; anything
  published in between is both in its backfill and in its queue, and the
  reader drops ids it has already delivered (3).
* Self-healing (5): every subscription confirmation, first or after a
  reconnect, makes the hub read the stream after the last id it dispatched
  for that room, before the link reads another live message. So the
  publications a room's hub has dispatched are the room's stream, gap-free,
  from its first subscription on; the last ``CHAT_HUB_RING`` of them are kept
  so a reader that fell behind catches up without a Redis call.
* Bounded slow readers (6): a reader whose queue is full drops it and catches
  up at its own cursor (see :mod:`chatapp.delivery.reader`), then rejoins the live path.

Beside the fan-out, one housekeeping greenlet runs every ``WATCH_TICK_SECS``:
pings for quiet direct streams, presence upkeep (:class:`PresenceKeeper`),
session re-checks (:class:`SessionWatch`), stream leases
(:class:`StreamSlots`), the delivered-messages metric, and dropping rooms
nobody reads.
"""

import json
import logging
import os
import time

import gevent
import redis

from chatapp.core.ids import StreamId
from chatapp.core.publication import Ack, Signal, decode_payload
from chatapp.core.reasons import Ending
from chatapp.core.sse import PING, http_chunk
from chatapp.delivery.held import HeldByServer
from chatapp.delivery.link import PubSubLink
from chatapp.delivery.multiplex import Multiplex
from chatapp.delivery.pollers import Pollers
from chatapp.delivery.presence_keeper import SWEEP_SECS, PresenceKeeper
from chatapp.delivery.reader import Reader
from chatapp.delivery.room_feed import RoomFeed
from chatapp.delivery.session_watch import SessionWatch
from chatapp.delivery.shards import ShardLinks
from chatapp.ops.errors import ChatError, StoreUnavailable
from chatapp.store import keys, topology

log = logging.getLogger(__name__)

WATCH_TICK_SECS = 0.5  # an expired session's streams must stop within 2 s
PING_CHUNK = http_chunk(PING)
CLOSE_WAIT_SECS = 3.0  # for drainers to end their streams at shutdown (a Redis read is at most 5 s)
RING_PREFILL = 100  # messages read into a room's ring when it is first subscribed
HUB_READ_CONNECTIONS = 4  # for the hub's own reads (tails, backfills)
_CONTROL = keys.CONTROL_CHANNEL.encode()


class Hub:
    """Tracks this process's readers and feeds them from one Pub/Sub connection."""

    def __init__(self, where, *, broker, presence, slots, memberships, metrics, config):
        self.queue_limit = config["CHAT_READER_QUEUE"]
        self.catchup_page = config["CHAT_CATCHUP_PAGE"]
        self.ring_size = config["CHAT_HUB_RING"]
        self.subscribe_timeout = config["CHAT_SUBSCRIBE_TIMEOUT_SECS"]
        self.linger_secs = config["CHAT_ROOM_LINGER_SECS"]
        self.heartbeat_secs = config["CHAT_HEARTBEAT_SECS"]
        self.max_readers = config["CHAT_MAX_STREAMS"]
        self._reader_count = 0
        self.broker = broker  # on a pool of its own (HUB_READ_CONNECTIONS), see chatapp.services
        self.presence = PresenceKeeper(presence)
        self.slots = slots
        self.memberships = memberships
        self.sessions = SessionWatch(broker.redis, config["CHAT_SESSION_RECHECK_SECS"])
        self.metrics = metrics
        # Long-poll readers kept for their clients' next polls (chatapp.delivery.pollers).
        self.pollers = Pollers(config["CHAT_POLL_PACE_MS"] / 1000, config["CHAT_POLL_LINGER_SECS"])
        callbacks = {"on_message": self._on_message, "on_subscribed": self._on_subscribed,
                     "on_reconnected": self._on_reconnected}
        self.shards = None  # on a Redis Cluster: a sharded link per node for the rooms (chatapp.delivery.shards)
        if where.kind == topology.CLUSTER:
            self.shards = ShardLinks(where, broker.redis, config["CHAT_HUB_PING_SECS"], metrics, **callbacks,
                                     on_lost=lambda link: self.held.drop(link.node))
            self.link = PubSubLink(where, config["CHAT_HUB_PING_SECS"], metrics, channels=lambda: [_CONTROL],
                                   node=lambda: topology.any_primary(broker.redis), on_lost=self._control_lost,
                                   **callbacks)
        else:
            self.link = PubSubLink(where, config["CHAT_HUB_PING_SECS"], metrics,
                                   channels=lambda: [_CONTROL, *self._rooms], on_lost=self._control_lost, **callbacks)
        self.room_links = self.shards or self.link  # where rooms are subscribed
        self._rooms = {}
        self._muxes = set()  # multiplexed streams (chatapp.delivery.multiplex); their rooms' readers are in _rooms
        # The largest millisecond of a publication the link has dispatched: every message
        # of an earlier millisecond has reached this worker (docs/DESIGN.md, invariant 12).
        self.watermark = 0
        # With replica acknowledgement (invariant 11): what was received but isn't known to be
        # on enough replicas, per server (chatapp.delivery.held).
        self.held = HeldByServer(lambda channel: self.shards.node_of(channel) if self.shards is not None else None,
                                 probe=broker.replicated, serves=self._serves, probe_after_secs=WATCH_TICK_SECS)
        self._link_address = None
        # Control messages heard since the control channel's last subscription (None: not
        # subscribed now, so whatever is cached on their word can't be trusted).
        self._control_epoch = 0
        self._control_live = False
        self._user_watchers = []  # called with a user whose sessions ended (logout everywhere, ban...)
        self._pid = None
        self._housekeeper = None
        self.closed = False

    # -- readers --------------------------------------------------------------

    def reader(self, room, user, sid=None, credential=None):
        """A reader for ``user`` in ``room``, holding one of the user's stream slots (raises
        TooManyStreams at ``CHAT_MAX_STREAMS_PER_USER``)."""
        return Reader(self, room, user, sid, lease=self.slots.acquire(user), credential=credential)

    def multiplex(self, user, sid=None, credential=None, narrowed=None):
        """A stream over many rooms for ``user``, holding one of the user's stream slots, and
        registered at once: membership changes from now on reach it (its rooms open later)."""
        mux = Multiplex(self, user, sid, lease=self.slots.acquire(user), credential=credential, narrowed=narrowed)
        try:
            self.add_stream(mux)
        except BaseException:
            self.slots.release(mux)
            raise
        return mux

    def readers(self):
        """Every room reader, including the rooms of multiplexed streams."""
        return [reader for room in self._rooms.values() for reader in room.readers]

    def streams(self):
        """Every stream and waiting long-poll: the single-room readers and the multiplexed streams."""
        return [reader for reader in self.readers() if reader.mux is None] + list(self._muxes)

    def reader_count(self):
        return self._reader_count

    def check_capacity(self):
        """Refuse a reader past ``CHAT_MAX_STREAMS``: live streams don't hold gunicorn's
        connection slots (chatapp.web.takeover), so this is what bounds them."""
        if self._reader_count >= self.max_readers:
            raise StoreUnavailable("This worker holds as many streams as it may; retry shortly.", code="busy")

    def attach(self, reader):
        """Register ``reader`` and wait for its room's subscription; return "now"."""
        self.register(reader)
        return self.wait_ready(reader)

    def register(self, reader):
        """Register ``reader`` and subscribe to its room if needed, without waiting.

        A room of a multiplexed stream isn't counted against ``CHAT_MAX_STREAMS``: its
        stream is (:meth:`add_stream`)."""
        if reader.mux is None:
            self._admit()
        elif self.closed:
            raise StoreUnavailable("This worker is shutting down; reconnect.", code=Ending.DRAINING)
        room = self._rooms.get(reader.channel)
        subscribe = room is None
        if subscribe:
            room = self._rooms[reader.channel] = RoomFeed(reader.room, reader.channel, self.ring_size)
        if reader not in room.readers:
            room.readers.add(reader)
            if reader.mux is None:
                self._reader_count += 1
        room.idle_since = None
        if subscribe:
            self.room_links.subscribe(reader.channel)

    def follows(self, channel):
        """True if the room of ``channel`` is subscribed and ready now: a reader opens at once."""
        room = self._rooms.get(channel)
        return room is not None and room.ready.is_set()

    def wait_ready(self, reader):
        """Wait for the subscription of ``reader``'s room; return "now" in it."""
        room = self._rooms[reader.channel]
        if room.ready.is_set():
            return room.last_id
        if not room.ready.wait(self.subscribe_timeout):
            self.detach(reader)
            raise StoreUnavailable("The live feed is not connected; retry shortly.")
        return room.start_id

    def _admit(self):
        if self.closed:
            raise StoreUnavailable("This worker is shutting down; reconnect.", code=Ending.DRAINING)
        self.check_capacity()  # then count it before anything can yield: a burst can't overshoot
        self._ensure_started()

    def detach(self, reader):
        """The reader's stream ended: unregister it and give back its lease (idempotent)."""
        self._count_delivered([reader])
        self.slots.release(reader)
        room = self._rooms.get(reader.channel)
        if room is not None and reader in room.readers:
            room.readers.remove(reader)
            if reader.mux is None:
                self._reader_count -= 1
            if not room.readers:
                room.idle_since = time.monotonic()

    def add_stream(self, mux):
        """Count a multiplexed stream (its rooms register as they open)."""
        self._admit()
        self._muxes.add(mux)
        self._reader_count += 1

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
        self.presence.join(reader, member, announce=reader.channel in self._rooms)

    def leave_presence(self, reader):
        """Stop counting ``reader`` in its room's presence; leaves are batched like joins."""
        self.presence.leave(reader)

    def _count_delivered(self, readers):
        total = sum(reader.take_delivered() for reader in readers)
        if total:
            self.metrics.delivered.inc(total)

    def catch_up(self, reader, count):
        """A page of the reader's room after its cursor, and a Reset if stale. With replica
        acknowledgement, not past what this hub has released to the room's readers."""
        upto = None
        if self.broker.waits_for_replicas:
            room = self._rooms.get(reader.channel)
            upto = room.last_id if room is not None else None
        return self.broker.catch_up(reader.room, reader.last_id, count, upto=upto)

    def recent_after(self, reader):
        """Publications after the reader's cursor from the ring, or None if it doesn't cover it."""
        room = self._rooms.get(reader.channel)
        newer = None if room is None else room.recent_after(reader.last_id)
        if newer is not None:
            self.metrics.catchups.labels("ring").inc()
        return newer

    def close_matching(self, reason, user=None, sid=None):
        """Close the readers of ``user`` (every session) or of one session ``sid``."""
        closed = 0
        for reader in self.streams():
            if (user and reader.user == user) or (sid and reader.sid == sid):
                reader.close(reason)
                closed += 1
        return closed

    def close(self, reason=Ending.DRAINING):
        """Close every reader (their clients resume elsewhere) and stop listening."""
        self.closed = True
        readers = self.streams()
        for reader in readers:
            reader.close(reason)
        self.pollers.end_all()
        if self._housekeeper is not None:
            self._housekeeper.kill(block=False)
        self.link.close()
        if self.shards is not None:
            self.shards.close()
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
        return self.link.alive and not self._housekeeper.dead and (self.shards is None or self.shards.alive)

    # -- what the link says ----------------------------------------------------

    def _ensure_started(self):
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self.link.start()
        if self.shards is not None:
            self.shards.start()
        self._housekeeper = gevent.spawn(self._housekeeping)

    def _on_message(self, channel, payload):
        if channel == _CONTROL:
            self._on_control(payload)
        else:
            self._dispatch(channel, payload)

    # -- control channel: what may be cached on its word -------------------------------

    def control_epoch(self):
        """An epoch that stays the same while no control message can have been missed (the
        control channel subscribed without a break since), or None when that can't be said.
        Caches that a control message invalidates keep entries only within one epoch."""
        if self.closed:
            return None
        self._ensure_started()
        return self._control_epoch if self._control_live else None

    def watch_users(self, callback):
        """Call ``callback(user)`` when a control message ends a user's sessions or streams."""
        self._user_watchers.append(callback)

    def _control_lost(self, link):
        if link is self.link:
            self._control_live = False

    def _on_subscribed(self, channel):
        if channel == _CONTROL:
            self._control_epoch += 1
            self._control_live = True
            return
        room = self._rooms.get(channel)
        if room is None:
            return  # the control channel, or unsubscribed before the confirmation arrived
        if room.last_id is None:
            # The ring starts with the room's latest messages: after a restart or a deploy every
            # client resumes from a cursor seconds old, and those catch-ups then need no Redis read.
            prefill = min(self.ring_size, RING_PREFILL)
            recent = self.broker.read_before(room.name, None, prefill) if prefill else []
            room.start_id = recent[-1].id if recent else self.broker.tail(room.name)
            room.start_at(recent, room.start_id)
            room.ready.set()
            self._hold_unacknowledged(room)
            return
        # A (re)subscription: whatever was published while we were not
        # subscribed is in the stream after the last id we dispatched.
        while True:
            page, reset = self.broker.catch_up(room.name, room.last_id, self.catchup_page)
            if reset:
                self._lost_track(room, reset.latest)
                return
            for publication in page:
                room.deliver(publication)
            if len(page) < self.catchup_page:
                break
            gevent.sleep(0)  # let readers write between pages
        self._hold_unacknowledged(room)

    def _hold_unacknowledged(self, room):
        """With replica acknowledgement: what the room's log has past its acknowledged marker
        is held like a live publication, so the acknowledgement that covers it releases it."""
        if not self.broker.waits_for_replicas:
            return
        self.held.hold_from_log(
            room.channel, self.broker.read_after(room.name, room.last_id, self.catchup_page, acknowledged=False))

    def _on_reconnected(self, link):
        """Control messages published while the link was down are lost: re-check every session
        and every multiplexed stream's rooms. Publications the link held may be on a primary
        that is gone: dropped (each room's resubscription reads its log again)."""
        if self.shards is None:
            self.held.clear()
        elif link is not self.link:  # a shard's link: only its own held publications, nothing else lost
            self.held.drop(link.node)
            return
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

    def _lost_track(self, room, tail):
        """The link was down longer than the room's retention: every reader checks its own cursor."""
        log.warning("hub: room %s was trimmed past our position while the link was down", room.name)
        room.restart_at(tail)
        for reader in room.readers:
            reader.fall_behind()

    def _on_control(self, payload):
        try:
            message = json.loads(payload)
            if "joined" in message:
                self._membership_changed(message["user"], message["room"], message["joined"])
            else:
                user = message.get("user")
                if user:
                    for callback in self._user_watchers:
                        callback(user)
                self.close_matching(message["reason"], user, message.get("sid"))
        except (ValueError, KeyError, TypeError, AttributeError, ChatError):
            log.error("hub: ignoring malformed control message %r", payload[:200])

    def _membership_changed(self, user, room, joined):
        """A join (at the id ``joined``) or a leave (``joined`` None) reaches the user's streams."""
        at = StreamId.parse(joined) if joined is not None else None
        for mux in self._muxes:
            if mux.user == user:
                mux.membership_changed(room, at)

    def _dispatch(self, channel, payload):
        room = self._rooms.get(channel)
        if room is None or room.last_id is None:
            return  # a late message of an old subscription; the stream has it
        try:
            item = decode_payload(payload)
        except (ValueError, KeyError, TypeError):
            log.error("hub: ignoring malformed message on %r: %r", channel, payload[:200])
            return
        if isinstance(item, Signal):
            room.signal(item)
        elif isinstance(item, Ack):
            self._release(self.held.acknowledged(channel, item.id))
        elif self.broker.waits_for_replicas:
            self.held.hold_live(channel, item)
        else:
            self._deliver(room, item, live=True)

    def _deliver(self, room, publication, live):
        # Catch-ups are read ahead of the link: they say nothing of other rooms. On a Cluster
        # each shard has its own clock and link: no watermark, multiplexed ids list every room.
        if live and self.shards is None:
            self.watermark = max(self.watermark, publication.id.ms)
        room.deliver(publication)

    # -- replica acknowledgement (invariant 11) ------------------------------------------

    def _release(self, released):
        for channel, publication, live in released:
            room = self._rooms.get(channel)
            if room is not None and room.last_id is not None:
                self._deliver(room, publication, live)

    def _serves(self, node, room):
        """Whether the server the hub listens to for ``node`` still serves ``room``."""
        if node is None:
            return self.link.address is not None and self.link.address == self.broker.primary_address()
        return node == self.broker.node_address(room)

    def _room_name(self, channel):
        room = self._rooms.get(channel)
        return room.name if room is not None else None

    # -- housekeeping ------------------------------------------------------------

    def _housekeeping(self):
        """End streams of ended sessions, keep presence and leases fresh, drop rooms nobody reads."""
        next_sweep = next_renewal = 0.0
        while not self.closed:
            gevent.sleep(WATCH_TICK_SECS)
            now = time.monotonic()
            try:
                readers, streams = self.readers(), self.streams()
                self._ping_quiet(streams, now)
                self.pollers.prune(now)  # before anything that needs Redis, which may be down
                self.pollers.flush_metrics(self.metrics)
                if now >= next_sweep:
                    next_sweep = now + SWEEP_SECS
                    self.presence.tick({room.name: room.readers for room in self._rooms.values() if room.readers},
                                       now)
                self.sessions.check(streams, now)
                self._release(self.held.probe_stale(now, self._room_name))
                self._count_delivered(readers + list(self._muxes))
                if now >= next_renewal:
                    next_renewal = now + self.slots.renew_secs
                    self.slots.renew(streams)
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

    def _prune(self, now):
        for channel, room in list(self._rooms.items()):
            if not room.readers and room.idle_since is not None \
                    and now - room.idle_since >= self.linger_secs:
                del self._rooms[channel]
                self.presence.forget(room.name)
                self.room_links.unsubscribe(channel)
