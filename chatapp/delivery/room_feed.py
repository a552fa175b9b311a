"""One room as this worker follows it: its local readers, the last id dispatched, and
the ring of recent publications.

The hub dispatches a room's publications here in stream order, gap-free from
the first subscription on (docs/DESIGN.md, invariant 5); so the ring is
contiguous, and a reader whose cursor it covers catches up from it without a
Redis call, sharing the publications' encodings (invariant 7).
"""

import collections

from gevent.event import Event as Flag

from chatapp.core.publication import DELETE


class RoomFeed:
    __slots__ = ("channel", "idle_since", "last_id", "name", "readers", "ready", "ring", "ring_floor", "start_id")

    def __init__(self, name, channel, ring_size):
        self.name = name
        self.channel = channel
        self.readers = set()
        self.last_id = None  # last id dispatched; None until the first confirmation
        self.start_id = None  # the room's tail when the subscription was first confirmed
        self.ring = collections.deque(maxlen=ring_size)  # recent publications, contiguous
        self.ring_floor = None  # the ring holds every publication after this id
        self.ready = Flag()  # set once subscribed: "now" is defined
        self.idle_since = None

    def restart_at(self, tail):
        """Follow the room from ``tail`` on, forgetting the ring (first subscription, or lost track)."""
        self.last_id = self.ring_floor = tail
        self.ring.clear()

    def start_at(self, recent, tail):
        """Follow the room from ``tail`` on (first subscription), with ``recent``, the room's last
        publications up to ``tail`` (oldest first), in the ring."""
        self.restart_at(tail)
        self.ring.extend(recent)
        if self.ring:
            self.ring_floor = self.ring[0].id  # the ring holds every publication after its first

    def deliver(self, publication):
        """Offer the next publication to every local reader (an id already dispatched is dropped)."""
        if publication.id <= self.last_id:
            return
        if len(self.ring) == self.ring.maxlen:  # the oldest goes (CHAT_HUB_RING 0: the ring holds none)
            self.ring_floor = self.ring[0].id if self.ring else publication.id
        self.ring.append(publication)
        self.last_id = publication.id
        if publication.kind is not None:  # not a message: one check per publication, none per reader
            if publication.revokes is not None:
                self._revoke(publication)
            elif publication.kind == DELETE:
                self._forget(publication.target)
        for reader in tuple(self.readers):  # a failed direct write detaches its reader
            reader.offer(publication)

    def _forget(self, target):
        """A deleted message leaves the ring: a reader catching up from it gets what a reader
        catching up from the log gets, the deletion without the message (invariant 17)."""
        for publication in self.ring:
            if publication.id == target:
                self.ring.remove(publication)
                return

    def _revoke(self, publication):
        """The user ``publication`` names may no longer read the room: their readers end here,
        before anything that follows in the log is offered (docs/DESIGN.md, invariant 16)."""
        for reader in tuple(self.readers):
            if reader.revokes(publication):
                reader.revoke(publication)

    def signal(self, signal):
        """A live-only event: to every local reader but the user it is about."""
        for reader in tuple(self.readers):
            if reader.user != signal.user:
                reader.offer(signal)

    def recent_after(self, cursor):
        """The publications after ``cursor`` from the ring, or None if it doesn't cover it."""
        if self.ring_floor is None or not self.ring_floor <= cursor <= self.last_id:
            return None
        newer = []
        for publication in reversed(self.ring):
            if publication.id <= cursor:
                break
            newer.append(publication)
        newer.reverse()
        return newer
