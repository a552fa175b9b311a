"""The Feed: this worker's rooms as its Pub/Sub links tell them.

It subscribes a room when a reader needs it and drops it when nobody has for
``CHAT_ROOM_LINGER_SECS``, and it keeps the invariants that come with hearing a
room through Pub/Sub (docs/DESIGN.md):

* Subscribe, then backfill (4): a room is ready only once its subscription is
  confirmed; its readers read the stream after that, and drop ids they already
  delivered (3).
* Self-healing (5): every subscription confirmation, first or after a
  reconnect, reads the room's stream after the last id dispatched there before
  the link reads another live message. So what a room's feed has dispatched is
  the room's stream, gap-free, from its first subscription on; the last
  ``CHAT_HUB_RING`` of it is kept (:class:`RoomFeed`) so a reader that fell behind
  catches up without a Redis call (6).
* The watermark (12): the largest millisecond the link has dispatched.
* Readers see only what survives a failover (11): with replica acknowledgement
  what arrives is held (:class:`HeldByServer`) until an acknowledgement or
  the probe releases it.

It is also every reader's catch-up source (:meth:`recent_after`,
:meth:`catch_up`, :meth:`backlog`).
"""

import logging
import time

import gevent

from chatapp.core.publication import Ack, Signal, decode_payload
from chatapp.delivery.held import HeldByServer
from chatapp.delivery.housekeeping import WATCH_TICK_SECS
from chatapp.delivery.link import PubSubLink
from chatapp.delivery.room_feed import RoomFeed
from chatapp.delivery.shards import ShardLinks
from chatapp.ops.errors import StoreUnavailable
from chatapp.store import keys, topology

log = logging.getLogger(__name__)

RING_PREFILL = 100  # messages read into a room's ring when it is first subscribed
CONTROL = keys.CONTROL_CHANNEL.encode()


class Feed:
    """Rooms subscribed on this worker's links, each a :class:`RoomFeed` of its readers.

    The control channel rides on the same link: its messages and confirmations go to
    ``on_control(payload)`` and ``on_control_subscribed()``, the loss of its link to
    ``on_control_lost()``, and a reconnect to ``on_reconnected()`` (control messages may
    have been missed)."""

    def __init__(self, where, broker, metrics, config, *, on_control, on_control_subscribed, on_control_lost,
                 on_reconnected):
        self.broker = broker  # on a pool of its own (chatapp.services)
        self.metrics = metrics
        self.ring_size = config["CHAT_HUB_RING"]
        self.catchup_page = config["CHAT_CATCHUP_PAGE"]
        self.subscribe_timeout = config["CHAT_SUBSCRIBE_TIMEOUT_SECS"]
        self.linger_secs = config["CHAT_ROOM_LINGER_SECS"]
        self._on_control = on_control
        self._on_control_subscribed = on_control_subscribed
        self._on_control_lost = on_control_lost
        self._on_reconnected = on_reconnected
        self.rooms = {}  # channel -> RoomFeed
        # The largest millisecond of a publication the link has dispatched: every message
        # of an earlier millisecond has reached this worker (docs/DESIGN.md, invariant 12).
        self.watermark = 0
        callbacks = {"on_message": self._on_message, "on_subscribed": self._on_subscribed,
                     "on_reconnected": self._reconnected}
        ping = config["CHAT_HUB_PING_SECS"]
        self.shards = None  # on a Redis Cluster: a sharded link per node for the rooms (chatapp.delivery.shards)
        if where.kind == topology.CLUSTER:
            self.shards = ShardLinks(where, broker.redis, ping, metrics, **callbacks,
                                     on_lost=lambda link: self.held.drop(link.node))
            self.link = PubSubLink(where, ping, metrics, channels=lambda: [CONTROL],
                                   node=lambda: topology.any_primary(broker.redis), on_lost=self._link_lost,
                                   **callbacks)
        else:
            self.link = PubSubLink(where, ping, metrics, channels=lambda: [CONTROL, *self.rooms],
                                   on_lost=self._link_lost, **callbacks)
        self.room_links = self.shards or self.link  # where rooms are subscribed
        # With replica acknowledgement (invariant 11): what was received but isn't known to be
        # on enough replicas, per server (chatapp.delivery.held).
        self.held = HeldByServer(lambda channel: self.shards.node_of(channel) if self.shards is not None else None,
                                 probe=broker.replicated, serves=self._serves, probe_after_secs=WATCH_TICK_SECS)

    # -- rooms -------------------------------------------------------------------

    def add(self, reader):
        """Add ``reader`` to its room, subscribing to the room if it is new here (no wait)."""
        room = self.rooms.get(reader.channel)
        subscribe = room is None
        if subscribe:
            room = self.rooms[reader.channel] = RoomFeed(reader.room, reader.channel, self.ring_size)
        added = reader not in room.readers
        room.readers.add(reader)
        room.idle_since = None
        if subscribe:
            self.room_links.subscribe(reader.channel)
        return added

    def remove(self, reader):
        """Take ``reader`` out of its room; True if it was in it."""
        room = self.rooms.get(reader.channel)
        if room is None or reader not in room.readers:
            return False
        room.readers.remove(reader)
        if not room.readers:
            room.idle_since = time.monotonic()
        return True

    def has(self, channel):
        """True if the room of ``channel`` is subscribed here (ready or not)."""
        return channel in self.rooms

    def follows(self, channel):
        """True if the room of ``channel`` is subscribed and ready now: a reader opens at once."""
        room = self.rooms.get(channel)
        return room is not None and room.ready.is_set()

    def wait_ready(self, reader):
        """Wait for the subscription of ``reader``'s room; return "now" in it (raises
        StoreUnavailable after ``CHAT_SUBSCRIBE_TIMEOUT_SECS``)."""
        room = self.rooms[reader.channel]
        if room.ready.is_set():
            return room.last_id
        if not room.ready.wait(self.subscribe_timeout):
            raise StoreUnavailable("The live feed is not connected; retry shortly.")
        return room.start_id

    def readers(self):
        """Every reader of every room."""
        return [reader for room in self.rooms.values() for reader in room.readers]

    def readers_by_room(self):
        """``{room name: its readers}`` of the rooms someone reads."""
        return {room.name: room.readers for room in self.rooms.values() if room.readers}

    def prune(self, now, forget):
        """Drop the rooms nobody has read for ``CHAT_ROOM_LINGER_SECS`` (``forget(name)`` each)."""
        for channel, room in list(self.rooms.items()):
            if not room.readers and room.idle_since is not None and now - room.idle_since >= self.linger_secs:
                del self.rooms[channel]
                forget(room.name)
                self.room_links.unsubscribe(channel)

    # -- a reader's catch-up source --------------------------------------------------

    def backlog(self, room, count):
        """The newest ``count`` publications of ``room`` (a stream's ``backlog``)."""
        return self.broker.read_before(room, None, count)

    def catch_up(self, reader, count):
        """A page of the reader's room after its cursor, and a Reset if stale. With replica
        acknowledgement, not past what this worker has released to the room's readers."""
        upto = None
        if self.broker.waits_for_replicas:
            room = self.rooms.get(reader.channel)
            upto = room.last_id if room is not None else None
        caught_up = self.broker.catch_up(reader.room, reader.last_id, count, upto=upto)
        self.metrics.catchups.labels("stream").inc()
        return caught_up

    def recent_after(self, reader):
        """Publications after the reader's cursor from the ring, or None if it doesn't cover it."""
        room = self.rooms.get(reader.channel)
        newer = None if room is None else room.recent_after(reader.last_id)
        if newer is not None:
            self.metrics.catchups.labels("ring").inc()
        return newer

    # -- the links ---------------------------------------------------------------------

    def start(self):
        self.link.start()
        if self.shards is not None:
            self.shards.start()

    def close(self):
        self.link.close()
        if self.shards is not None:
            self.shards.close()

    @property
    def alive(self):
        return self.link.alive and (self.shards is None or self.shards.alive)

    def _link_lost(self, link):
        if link is self.link:
            self._on_control_lost()

    def _on_message(self, channel, payload):
        if channel == CONTROL:
            self._on_control(payload)
        else:
            self._dispatch(channel, payload)

    def _on_subscribed(self, channel):
        if channel == CONTROL:
            self._on_control_subscribed()
            return
        room = self.rooms.get(channel)
        if room is None:
            return  # unsubscribed before the confirmation arrived
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

    def _reconnected(self, link):
        """Publications a link held may be on a primary that is gone: dropped (each room's
        resubscription reads its log again). A shard's link loses nothing else; the control
        channel's link may have missed control messages (``on_reconnected``)."""
        if self.shards is None:
            self.held.clear()
        elif link is not self.link:
            self.held.drop(link.node)
            return
        self._on_reconnected()

    def _lost_track(self, room, tail):
        """The link was down longer than the room's retention: every reader checks its own cursor."""
        log.warning("hub: room %s was trimmed past our position while the link was down", room.name)
        room.restart_at(tail)
        for reader in room.readers:
            reader.fall_behind()

    def _dispatch(self, channel, payload):
        room = self.rooms.get(channel)
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

    def release_stale(self, now):
        """Release what the probe finds on enough replicas (held past its time)."""
        self._release(self.held.probe_stale(now, self._room_name))

    def _release(self, released):
        for channel, publication, live in released:
            room = self.rooms.get(channel)
            if room is not None and room.last_id is not None:
                self._deliver(room, publication, live)

    def _serves(self, node, room):
        """Whether the server the feed listens to for ``node`` still serves ``room``."""
        if node is None:
            return self.link.address is not None and self.link.address == self.broker.primary_address()
        return node == self.broker.node_address(room)

    def _room_name(self, channel):
        room = self.rooms.get(channel)
        return room.name if room is not None else None
