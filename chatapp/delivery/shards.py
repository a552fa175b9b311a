"""On a Redis Cluster: one sharded Pub/Sub link per node that serves a room this worker follows.

A room's channel (``chat:{room}:live``) lives in its room's slot, and the append
script publishes with SPUBLISH, so only the node serving that slot sends it. The
hub asks :class:`ShardLinks` to subscribe a room; it finds the node for the
channel's slot and subscribes there (one link per node, not per room). When a
link is lost (a node died, a failover), when a node drops a channel (its slot
moved: the server sends ``sunsubscribe``), and every ``REFRESH_SECS`` anyway, it
reads the slot map again and moves each channel whose slot now lives elsewhere;
the new subscription's confirmation makes the hub read the room's log after the
last id it dispatched (invariant 5), so a move costs latency, never messages.
"""

import logging

import gevent
import gevent.event
import redis

from chatapp.delivery.link import PubSubLink

log = logging.getLogger(__name__)

REFRESH_SECS = 2.0  # a slot moved without a word from the server is noticed within this
RETRY_SECS = 0.2  # after a failure, ask for the slot map again this soon (a failover takes seconds)


class ShardLinks:
    def __init__(self, where, cluster, ping_secs, metrics, *, on_message, on_subscribed, on_reconnected,
                 on_lost=None):
        self.where = where
        self.cluster = cluster  # the app's RedisCluster client: its slot map
        self.ping_secs = ping_secs
        self.metrics = metrics
        self._callbacks = {"on_message": on_message, "on_subscribed": on_subscribed,
                           "on_reconnected": on_reconnected}
        self._on_link_lost = on_lost  # the hub drops what that node's link held
        self._node_of = {}  # channel -> (host, port) of the node it is subscribed on
        self._links = {}  # (host, port) -> PubSubLink
        self._stale = gevent.event.Event()
        self._refresher = None
        self.closed = False

    def start(self):
        self._refresher = gevent.spawn(self._refresh_loop)

    @property
    def alive(self):
        return self._refresher is not None and not self._refresher.dead and all(
            link.alive for link in self._links.values())

    def node_of(self, channel):
        return self._node_of.get(channel)

    def subscribe(self, channel):
        node = self._node_for(channel)
        self._node_of[channel] = node
        self._link(node).subscribe(channel)

    def unsubscribe(self, channel):
        node = self._node_of.pop(channel, None)
        link = self._links.get(node)
        if link is not None:
            link.unsubscribe(channel)

    def close(self):
        self.closed = True
        if self._refresher is not None:
            self._refresher.kill(block=False)
        for link in self._links.values():
            link.close()

    def _node_for(self, channel):
        node = self.cluster.nodes_manager.get_node_from_slot(self.cluster.keyslot(channel))
        return node.host, node.port

    def _link(self, node):
        link = self._links.get(node)
        if link is None:
            link = self._links[node] = PubSubLink(
                self.where, self.ping_secs, self.metrics, node=node, sharded=True,
                channels=lambda: [c for c, n in self._node_of.items() if n == node],
                on_unsubscribed=self._on_unsubscribed, on_lost=self._on_lost, **self._callbacks)
            link.start()
        return link

    def _on_unsubscribed(self, channel):
        if channel in self._node_of:  # we didn't ask: the node no longer serves its slot
            log.info("pubsub: %r dropped by its node (slot moved); re-routing", channel)
            self._stale.set()

    def _on_lost(self, link):
        if self._on_link_lost is not None:
            self._on_link_lost(link)
        self._stale.set()

    def _refresh_loop(self):
        while not self.closed:
            self._stale.wait(REFRESH_SECS)
            stale = self._stale.is_set()
            self._stale.clear()
            try:
                self._reroute(refresh=True)
            except redis.RedisError as exc:
                log.warning("pubsub: cluster slot map not read (%s: %s)", type(exc).__name__, exc)
                self._stale.set()
                gevent.sleep(RETRY_SECS)
                continue
            if stale:
                gevent.sleep(RETRY_SECS)  # then once more: a failover settles over a few seconds

    def _reroute(self, refresh):
        if refresh:
            self.cluster.nodes_manager.initialize()
        for channel, node in list(self._node_of.items()):
            now = self._node_for(channel)
            if now != node and self._node_of.get(channel) == node:
                log.info("pubsub: %r moves from %s:%d to %s:%d", channel, *node, *now)
                self._node_of[channel] = now
                old = self._links.get(node)
                if old is not None and old.connected:
                    old.unsubscribe(channel)
                self._link(now).subscribe(channel)
        for node in [n for n in self._links if n not in set(self._node_of.values())]:
            link = self._links.pop(node)
            link.close()  # nothing left to follow there
            if self._on_link_lost is not None:
                self._on_link_lost(link)
