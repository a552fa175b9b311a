"""A Reader: one SSE stream or long-poll, with a bounded queue and its own cursor.

The hub offers it publications; the reader delivers only ids after the last one
it delivered (invariant 3). When its queue overflows, or when it starts from a
cursor, it catches up: from the hub's ring of recent publications when that
covers its cursor (shared objects, no Redis call), else from the stream.

A reader is consumed in one of two ways: a greenlet waits in
:meth:`Reader.next_batch` (long-poll, and SSE under a plain WSGI server), or,
once an SSE stream has a socket of its own (:mod:`chatapp.web.takeover`), the hub
writes each publication straight to that socket while the reader has nothing
queued, and the socket's drainer takes :meth:`Reader.take_ready` batches when
it has.
"""

import functools
import sys
import time
from typing import NamedTuple

from gevent.event import Event as Flag

from chatapp.core.reasons import Ending
from chatapp.store import keys

FIRST_SESSION_CHECK_SECS = 1.0
NO_QUEUE = ()  # shared by every reader with nothing queued
NEVER = float("inf")


@functools.lru_cache(maxsize=4096)
def _channel(room):
    """A room's channel name, one bytes object per room (rooms are capped by CHAT_MAX_ROOMS)."""
    return keys.room_channel(room).encode()


class ReaderTerms(NamedTuple):
    """What every reader of a worker is given (the hub builds one): its bounds and where it
    catches up from (:class:`chatapp.delivery.feed.Feed`: the ring, else the room's stream)."""

    queue_limit: int  # CHAT_READER_QUEUE: queued past this, a reader catches up instead (invariant 6)
    catchup_page: int  # CHAT_CATCHUP_PAGE: entries read per catch-up
    source: object  # recent_after(reader), catch_up(reader, count), backlog(room, count)


class SingleRoom:
    """How a reader of its own frames a live publication: the publication's shared chunk.
    (A room of a multiplexed stream is framed by its :class:`chatapp.delivery.multiplex.Multiplex`.)"""

    @staticmethod
    def live_chunk(reader, publication):
        return publication.chunk

    @staticmethod
    def revoked(reader):
        """The reader's user may no longer read its room: the stream ends (its client is told
        ``removed``; reconnecting, it gets the 404 of a room that doesn't exist)."""
        reader.close(Ending.REMOVED)


SINGLE_ROOM = SingleRoom()


class ReaderClosed(Exception):
    """The hub closed this reader (shutdown, kick, logout); the client should reconnect or stop."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


class ReaderReset(Exception):
    """The reader's cursor is older than the kept log (or from a wiped store)."""

    def __init__(self, reset):
        super().__init__(reset)
        self.reset = reset


class Stream:
    """What the hub's housekeeping needs of a stream or waiting long-poll, whether it reads
    one room (:class:`Reader`) or many (:class:`chatapp.delivery.multiplex.Multiplex`): who it reads
    as, when its session is checked next, its lease, its wake-up and its sink."""

    __slots__ = ("_delivered", "_lease", "_next_session_check", "_wake", "closed_reason", "credential", "hub",
                 "sid", "sink", "user")

    def __init__(self, hub, user, sid, lease, credential):
        self.hub = hub
        self.credential = credential  # HTTP Basic: the account record it was checked against
        self._lease = lease  # this stream's place in the user's count (chatapp.store.stream_slots)
        self.user = sys.intern(user.lower())  # one string per user, however many streams and rooms
        self.sid = sid  # the session it reads under; None for HTTP Basic
        # The hub checks the session (or for HTTP Basic the account) soon after opening,
        # so a logout or kick that raced the stream's start still ends it, then again
        # every CHAT_SESSION_RECHECK_SECS at most.
        self._next_session_check = time.monotonic() + FIRST_SESSION_CHECK_SECS
        # Written but not yet counted in chat_messages_delivered: a multiprocess
        # counter increment per write cost 4% of a fan-out worker's CPU.
        self._delivered = 0
        self._wake = Flag()  # or, once direct, the socket sink (its set() starts its drainer)
        self.sink = None
        self.closed_reason = None

    @property
    def lease(self):
        return self._lease

    def take_lease(self):
        """The stream's lease, once: whoever releases it gets it, nobody twice."""
        lease, self._lease = self._lease, None
        return lease

    def count_delivered(self, count):
        self._delivered += count

    def take_delivered(self):
        """Messages written since the last call (added to the metric in bulk)."""
        delivered, self._delivered = self._delivered, 0
        return delivered

    def session_due(self, now):
        return self._next_session_check <= now

    def check_session_at(self, when):
        self._next_session_check = when

    def close(self, reason):
        self.closed_reason = reason
        self._wake.set()

    @property
    def pending(self):
        """Something to take now (each kind of stream says what)."""
        raise NotImplementedError

    def wait(self, timeout):
        """True once something is pending, False if ``timeout`` passed first; raises
        ReaderClosed once closed."""
        if self.closed_reason:
            raise ReaderClosed(self.closed_reason)
        if self.pending:
            return True
        self._wake.clear()
        if not self._wake.wait(timeout):
            return False
        if self.closed_reason:
            raise ReaderClosed(self.closed_reason)
        return True


class Reader(Stream):
    """One room's reader: a stream of its own, or one room of a multiplexed stream (its framer)."""

    __slots__ = ("_behind", "_presence_member", "_queue", "access_checked_at", "channel", "framer", "last_id", "room",
                 "terms")

    def __init__(self, hub, room, user, sid=None, *, lease=None, credential=None):
        super().__init__(hub, user, sid, lease, credential)
        self.room = room
        self.channel = _channel(room)
        self.last_id = None
        self._presence_member = None  # set while this stream counts in the room's presence
        self._queue = NO_QUEUE  # a list once something is queued: a stream over ten rooms keeps ten of these
        self.terms = hub.terms
        # Framing is chosen once: by the reader itself, or by the multiplexed stream it is a room of.
        self.framer = SINGLE_ROOM
        self._behind = False
        # The room's newest id when the user's access was checked (chatapp.accounts.access): an
        # entry revoking it at or before this is history (they were let back in since).
        self.access_checked_at = None

    def open(self, cursor=None, backlog=0):
        """Register with the hub and fix the start; return the backlog to send first.

        With a cursor, the first batch catches up from it (and may raise
        :class:`ReaderReset`); without one the reader starts at the hub's
        current position ("now"), after ``backlog`` of the latest messages.
        """
        now = self.hub.attach(self)
        if cursor is not None:
            self.last_id = cursor
            self._behind = True
            return []
        self.last_id = now
        if not backlog:
            return []
        return self._advance(self.terms.source.backlog(self.room, backlog), force=True)

    @property
    def standalone(self):
        """A stream of its own (counted against CHAT_MAX_STREAMS), not one room of a multiplexed one."""
        return self.framer is SINGLE_ROOM

    def follow_for(self, mux, wake):
        """Be one room of the multiplexed stream ``mux``: wake it, let it frame what is written."""
        self.framer = mux
        self._wake = wake
        self._next_session_check = NEVER  # the stream checks its session, not each of its rooms

    @property
    def pending(self):
        """Something queued, or behind: the next batch isn't empty-handed."""
        return bool(self._queue or self._behind)

    def end(self):
        """The stream ended, however it ended (its one end): out of the hub and the room's
        presence, its queue and sink dropped (idempotent)."""
        self.hub.detach(self)
        self.hub.leave_presence(self)
        self._queue = NO_QUEUE
        self.sink = None

    def queued(self):
        """What waits in the queue now, oldest first (a copy)."""
        return tuple(self._queue)

    @property
    def presence_member(self):
        return self._presence_member

    def join_presence(self, member):
        self._presence_member = member

    def leave_presence(self):
        """The presence entry to remove, once."""
        member, self._presence_member = self._presence_member, None
        return member

    def go_direct(self, sink):
        """From now on the hub writes to ``sink`` itself whenever nothing is queued."""
        self.sink = self._wake = sink
        if self._queue or self._behind or self.closed_reason:
            sink.set()

    def offer(self, publication):
        """Write or queue a publication (called by the listener; never blocks)."""
        sink = self.sink
        if sink is not None and sink.idle and not self._queue and not self._behind:
            # Nothing queued (the sink's drainer only stops when the queue is
            # empty; if it ever didn't, queueing below restarts it), so the
            # cursor check is all that stands between the publication and the socket.
            if publication.id is not None:
                if publication.id <= self.last_id:
                    return
                self.last_id = publication.id
                self._delivered += 1
            sink.write_now(self.framer.live_chunk(self, publication))
        elif len(self._queue) >= self.terms.queue_limit:
            self.fall_behind()
        else:
            if self._queue:
                self._queue.append(publication)
            else:
                self._queue = [publication]
            self._wake.set()

    def revokes(self, publication):
        """True if ``publication`` ends this reader's access: it revokes its user, after the
        access check this reader was opened on."""
        checked = self.access_checked_at
        return publication.revokes == self.user and (checked is None or publication.id > checked)

    def revoke(self):
        """Its user may no longer read the room: nothing after this point reaches them (the
        framer ends the stream, or drops the room from a multiplexed one)."""
        self.framer.revoked(self)

    def fall_behind(self):
        """Drop the queue; the next batch catches up from this reader's own cursor."""
        self._queue = NO_QUEUE
        self._behind = True
        self._wake.set()

    def next_batch(self, timeout):
        """Publications after the cursor, oldest first; ``None`` if ``timeout`` passed idle.

        An empty list means "nothing new after all" (a duplicate was dropped).
        """
        if not self.wait(timeout):
            return None
        return self._ready()

    def take_ready(self):
        """What :meth:`next_batch` would return, without waiting: ``None`` if nothing is pending."""
        if self.closed_reason:
            raise ReaderClosed(self.closed_reason)
        if not (self._queue or self._behind):
            return None
        return self._ready()

    def _ready(self):
        if self._behind:
            return self._catch_up()
        return self._advance(self._take())

    def _catch_up(self):
        self._behind = False
        source = self.terms.source
        recent = source.recent_after(self)
        if recent is not None:
            return self._advance(recent + self._take())
        page_size = self.terms.catchup_page
        try:
            page, reset = source.catch_up(self, page_size)
        except BaseException:
            self._behind = True  # still behind: whoever retries must not skip ahead
            raise
        if self.closed_reason:  # closed (removed, kicked) while the page was read: none of it goes out
            raise ReaderClosed(self.closed_reason)
        if reset:
            self.last_id = reset.latest
            self._queue = [p for p in self._queue if p.id is None or p.id > reset.latest]
            raise ReaderReset(reset)
        if len(page) == page_size or self._behind:
            self._behind = True  # more in the stream, or the queue overflowed again meanwhile
            return self._advance(page)
        return self._advance(page + self._take())

    def encode(self, batch):
        """``batch`` as one write, counted in ``delivered`` (the hub adds that to the metric in bulk)."""
        self._delivered += len(batch)
        return b"".join(p.frame for p in batch)

    def _take(self):
        queue, self._queue = self._queue, NO_QUEUE
        return queue or []

    def _advance(self, publications, force=False):
        """Keep only ids after the cursor (invariant 3) and move the cursor.

        Live-only signals (no id) pass through and don't move it.
        """
        last = self.last_id
        fresh = []
        for publication in publications:
            if publication.id is None:
                fresh.append(publication)
            elif force or publication.id > last:
                if publication.revokes is not None and not force and self.revokes(publication):
                    # Met in a catch-up or a queue (the feed revokes live readers itself): what
                    # follows it is not this reader's to see (invariant 16).
                    self.last_id = last
                    self._queue = NO_QUEUE
                    self._behind = False
                    self.revoke()
                    return fresh
                fresh.append(publication)
                last = max(last, publication.id)
        self.last_id = last
        return fresh
