"""With replica acknowledgement (docs/DESIGN.md, invariant 11): what a hub received from one
server (one shard on a Cluster) but may not show yet.

Two kinds, released by different proofs:

* publications that came *live*, in the order the server ran them: an acknowledgement
  of one of them (its poster's WAIT succeeded) proves every write the server ran before
  it is on the replicas, so it releases the queue up to that one, whatever the rooms;
* entries *read from a room's log* past its acknowledged marker (at a subscription): read
  later than the link's position, they may be newer than live publications still on
  their way, so only an acknowledgement of their own room at or after them releases
  them, or the hub's probe (a write and WAIT of its own, after them).
"""

import collections
import time


class Held:
    __slots__ = ("from_log", "live", "since")

    def __init__(self):
        self.live = collections.deque()  # (channel, publication), in the server's order
        self.from_log = {}  # channel -> [publication], ascending
        self.since = None  # when the oldest of them was held (monotonic)

    def __bool__(self):
        return bool(self.live or self.from_log)

    def _touch(self):
        if self.since is None:
            self.since = time.monotonic()

    def hold_live(self, channel, publication):
        self._touch()
        self.live.append((channel, publication))

    def hold_from_log(self, channel, publications):
        if publications:
            self._touch()
            self.from_log.setdefault(channel, []).extend(publications)

    def acknowledged(self, channel, position):
        """What an acknowledgement of ``channel``'s message at ``position`` releases, in order,
        as ``(channel, publication, came_live)``."""
        released = [(channel, p, False) for p in self._take_from_log(channel, position)]
        for index, (held_channel, publication) in enumerate(self.live):
            if held_channel == channel and publication.id == position:
                released += self._take_live(index + 1)
                break
        self._settle()
        return released

    def snapshot(self):
        """What a probe sent now covers: ``(last live item or None, {channel: newest from the log}``)."""
        last = self.live[-1] if self.live else None
        return last, {channel: entries[-1].id for channel, entries in self.from_log.items()}

    def probed(self, snapshot):
        """What a successful probe taken at ``snapshot`` releases, in order."""
        last, newest = snapshot
        released = []
        for channel, position in newest.items():
            released += [(channel, p, False) for p in self._take_from_log(channel, position)]
        if last is not None:
            for index, item in enumerate(self.live):
                if item is last:
                    released += self._take_live(index + 1)
                    break
        self._settle()
        return released

    def _take_from_log(self, channel, position, before=False):
        """The log entries of ``channel`` up to ``position`` (``before``: older than it)."""
        entries = self.from_log.get(channel)
        if not entries:
            return []
        taken = [p for p in entries if p.id < position or (not before and p.id == position)]
        rest = [p for p in entries if p.id > position or (before and p.id == position)]
        if rest:
            self.from_log[channel] = rest
        else:
            del self.from_log[channel]
        return taken

    def _take_live(self, count):
        """The first ``count`` live publications, each after its own room's log entries older
        than it: a live message's release proves them replicated too (they ran before it on
        this server), and once a room has shown a message an older one can only be dropped
        (found as a lost message in tests/test_topology_faults.py's Sentinel run)."""
        released = []
        for _ in range(count):
            channel, publication = self.live.popleft()
            released += [(channel, p, False) for p in self._take_from_log(channel, publication.id, before=True)]
            released.append((channel, publication, True))
        return released

    def _settle(self):
        self.since = time.monotonic() if self else None


class HeldByServer:
    """What a hub holds, per server it hears from: one :class:`Held` per shard node on a
    Cluster (replication is ordered per shard), a single one (node None) for one server or
    Sentinel. ``node_of(channel)`` names a channel's node (None without shards); ``probe(room)``
    writes and WAITs in ``room``'s slot (True: enough replicas have everything before it);
    ``serves(node, room)`` says whether the server this hub listens to for ``node`` still
    serves ``room`` (mid-failover what is held came from another server: no probe)."""

    def __init__(self, node_of, probe, serves, probe_after_secs):
        self._by_node = collections.defaultdict(Held)
        self._node_of = node_of
        self._probe = probe
        self._serves = serves
        self.probe_after_secs = probe_after_secs

    def _of(self, channel):
        return self._by_node[self._node_of(channel)]

    def hold_live(self, channel, publication):
        self._of(channel).hold_live(channel, publication)

    def hold_from_log(self, channel, publications):
        self._of(channel).hold_from_log(channel, publications)

    def acknowledged(self, channel, position):
        """What an acknowledgement of ``channel``'s message at ``position`` releases (see Held)."""
        return self._of(channel).acknowledged(channel, position)

    def drop(self, node=None):
        """Forget what came from ``node`` (its link reconnected or was lost: what it held may be
        on a primary that is gone; each room's resubscription reads its log again)."""
        self._by_node.pop(node, None)

    def clear(self):
        self._by_node.clear()

    def probe_stale(self, now, room_of):
        """Release what was held longer than ``probe_after_secs`` with no acknowledgement (its
        poster's WAIT timed out, or its acknowledgement was lost): a write and WAIT on the
        server held from, in the slot of a room held there (``room_of(channel)``, None: the
        room is gone), which covers everything that server ran before. Returns what it releases."""
        released = []
        for node, held in list(self._by_node.items()):
            if not held or now - held.since < self.probe_after_secs:
                continue
            snapshot = held.snapshot()
            last, newest = snapshot
            room = room_of(last[0] if last is not None else next(iter(newest)))
            if room is None or not self._serves(node, room):
                continue
            if self._probe(room):
                released += held.probed(snapshot)
        return released
