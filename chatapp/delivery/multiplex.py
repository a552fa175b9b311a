"""A multiplexed stream: one SSE stream (or long-poll) over every room a user joined.

A :class:`Multiplex` holds one :class:`chatapp.delivery.reader.Reader` per room, so each
room keeps the single-room guarantees (its own cursor, catch-up, reset), and
one sink: the hub writes a room's publication to the stream's socket the way it
does for a single room, framed with the stream's cursor.

The cursor (docs/DESIGN.md, invariant 12) is a list of ``room:id`` pairs, the
first being the event's own. Its millisecond is the watermark ``W``: a room
left out has, on this client, every message of a millisecond before ``W`` and
none after. That holds for a room whose reader is caught up and whose last
message is older than ``W``, because the hub's link hands over publications
in the order Redis ran them and Redis takes every message's millisecond from
one clock (``Hub.watermark``). So a caught-up stream's ids are one pair, the
same for every such stream: the frame is built once per publication and
shared (invariant 7). A room is listed, at its exact position, when it is
behind (queued or catching up), when its last message shares or passes the
event's millisecond, or when the event comes from a read ahead of the link
(a catch-up), where the watermark proves nothing.

Joins and leaves reach an open stream from the control channel
(:meth:`Multiplex.membership_changed`): a joined room starts at its join
point, a left one is dropped, each announced by a frame without an id.
"""

import json
import logging
import os

import gevent

from chatapp.core import sse
from chatapp.core.cursor import format_cursor
from chatapp.core.reasons import Ending
from chatapp.delivery.reader import Reader, ReaderClosed, ReaderReset, Stream

log = logging.getLogger(__name__)

class Multiplex(Stream):
    """One user's stream over many rooms: a reader per room, one wake-up, one sink, one cursor."""

    __slots__ = ("_changes", "_ended", "_joining", "_notices", "access_checked_at", "member", "narrowed", "rooms")

    room = "*"  # what logs name as a stream's room

    def __init__(self, hub, user, sid=None, *, lease=None, credential=None, narrowed=None):
        super().__init__(hub, user, sid, lease, credential)
        self.narrowed = narrowed  # the rooms the client asked for, or None: every joined room
        self.rooms = {}  # room -> its Reader, once open
        # Of its private rooms and DMs, the id each room's access was checked at (the opener's
        # chatapp.accounts.access grants): a revocation at or before it is history.
        self.access_checked_at = {}
        self.member = None  # this stream's presence entry, the same in each room
        self._notices = []  # (event, data) of joins and leaves, sent before anything else
        self._joining = {}  # room -> join point, for rooms being opened after a join (listed in ids)
        # Membership changes that arrive before the stream is open (it is registered with the
        # hub before its memberships are read, so none falls between the two): applied once open.
        self._changes = []
        self._ended = False

    # -- opening and closing -----------------------------------------------------

    def open(self, starts):
        """Follow each room of ``{room: start id or None (now)}``: subscribe to all, then wait."""
        # In self.rooms at once, so that end() detaches them all whatever fails below; nothing
        # frames an event before open returns.
        self.rooms = {room: self._reader(room, self.access_checked_at.get(room)) for room in starts}
        for reader in self.rooms.values():
            self.hub.register(reader)  # every subscription on its way before waiting for the first
        for room, reader in list(self.rooms.items()):
            if self.rooms.get(room) is reader:  # not revoked while an earlier room opened (invariant 16)
                reader.open(starts[room])
        changes, self._changes = self._changes, None
        for change in changes:
            change()

    def _reader(self, room, checked_at=None):
        reader = Reader(self.hub, room, self.user, self.sid)
        reader.access_checked_at = checked_at
        reader.follow_for(self, self._wake)
        return reader

    def ready_frame(self):
        """``ready``, with an id listing every room (the stream's start, if nothing else comes)."""
        data = {"worker": os.getpid(), "rooms": sorted(self.rooms)}
        return sse.Event(data, event="ready", id=self.exact_cursor()).encode()

    def exact_cursor(self):
        """A cursor of the whole stream: ``@W`` (the link's watermark) and the rooms that can't be
        left out against it (behind, joining, or with a message of that millisecond or later)."""
        watermark = self.hub.watermark
        listed = [(room, reader.last_id) for room, reader in self.rooms.items()
                  if reader.pending or reader.last_id.ms >= watermark]
        return format_cursor([("@", watermark), *listed, *self._joining.items()])

    def join_presence(self, member):
        self.member = member
        for reader in self.rooms.values():
            self.hub.join_presence(reader, member)

    def end(self):
        """The stream ended, however it ended (its one end): its rooms ended, the stream
        uncounted, its sink dropped (idempotent)."""
        self._ended = True
        self._joining.clear()
        for reader in self.rooms.values():
            reader.end()
        self.hub.remove_stream(self)
        self.sink = None

    def go_direct(self, sink):
        """From now on the hub writes to ``sink`` whenever a room has nothing queued."""
        self.sink = self._wake = sink
        for reader in self.rooms.values():
            reader.go_direct(sink)
        if self._notices or self.closed_reason:
            sink.set()

    # -- membership --------------------------------------------------------------

    def membership_changed(self, room, at):
        """The user joined ``room`` at ``at``, or left it (``at`` None). Called by the hub's
        link: never blocks."""
        if self._ended:
            return
        if self._changes is not None:
            self._changes.append(lambda: self.membership_changed(room, at))
        elif at is None:
            self._leave(room)
        elif room not in self.rooms and room not in self._joining \
                and (self.narrowed is None or room in self.narrowed) and not self.closed_reason:
            self._joining[room] = at
            gevent.spawn(self._join, room, at)

    def reconcile(self, joined):
        """After the link was down: follow exactly the rooms of ``joined`` (``{room: join point}``)."""
        if self._ended:
            return
        if self._changes is not None:
            self._changes.append(lambda: self.reconcile(joined))
            return
        for room in [*self.rooms, *self._joining]:
            if room not in joined:
                self._leave(room)
        for room, at in joined.items():
            self.membership_changed(room, at)

    def _join(self, room, at):
        reader = self._reader(room, checked_at=at)  # a member from its join point on
        try:
            reader.open(at)  # behind from the join point, so it is listed until caught up
        except Exception as exc:
            reader.end()
            if self._joining.get(room) is at and not self._ended:
                log.warning("stream user=%s: joined room %s not followed (%s); ending the stream so it resumes "
                            "with it", self.user, room, exc)
                self.close(Ending.STORE_UNAVAILABLE)
            return
        if self._joining.get(room) is not at or self._ended or self.closed_reason:
            reader.end()  # left (or left and joined again) meanwhile, or the stream ended
            return
        del self._joining[room]
        self.rooms[room] = reader
        if self.member:
            self.hub.join_presence(reader, self.member)
        self._notice("joined", {"room": room, "at": str(at)})
        if self.sink is not None:
            reader.go_direct(self.sink)

    def revoked(self, reader, publication):
        """``reader``'s room may no longer be read by this stream's user from ``publication`` on
        (removed, or left a private room): dropped at once (invariant 16), the client told
        ``left`` with the reason ``removed`` unless they left themselves."""
        if self.rooms.get(reader.room) is reader or reader.room in self._joining:
            removed = json.loads(publication.json).get("change") == "removed"  # rare: parsed here only
            self._leave(reader.room, reason=Ending.REMOVED if removed else None)
        else:
            reader.end()  # a room being joined, or one already left

    def _leave(self, room, reason=None):
        joining = self._joining.pop(room, None)
        reader = self.rooms.pop(room, None)
        if reader is not None:
            reader.end()
        if reader is not None or joining is not None:
            self._notice("left", {"room": room, "reason": str(reason)} if reason else {"room": room})

    def read_moved(self, room, at):
        """The user has read ``room`` up to ``at`` (on this device or another): told live, so
        every tab clears its badge. Rooms it doesn't follow are told too: a read position is the
        user's, not the stream's."""
        if not self._ended:
            self._notice("read", {"room": room, "id": str(at)})

    def _notice(self, event, data):
        self._notices.append((event, data))
        self._wake.set()

    # -- delivery -----------------------------------------------------------------

    def live_chunk(self, reader, publication):
        """The chunk the hub writes for ``publication`` of ``reader``'s room (whose cursor it
        has just moved): the shared one unless other rooms must be listed."""
        if publication.id is None:
            return publication.chunk  # presence, typing: no id
        listed = self._listed(reader, publication.id)
        if not listed:
            return publication.mux_chunk(reader.room)
        return sse.http_chunk(publication.mux_frame(reader.room, format_cursor([(reader.room, publication.id),
                                                                                *listed])))

    def _listed(self, reader, position):
        """The other rooms an id at ``position`` of ``reader``'s room must list (see the module);
        a room being joined always (its messages start at its join point)."""
        ms = position.ms
        exact = ms > self.hub.watermark
        listed = [(room, other.last_id) for room, other in self.rooms.items()
                  if other is not reader and (exact or other.pending or other.last_id.ms >= ms)]
        return [*listed, *self._joining.items()] if self._joining else listed

    @property
    def pending(self):
        return bool(self._notices) or any(reader.pending for reader in self.rooms.values())

    def next_batch(self, timeout):
        """Frames to send, oldest first per room; ``None`` if ``timeout`` passed idle (WSGI)."""
        if not self.wait(timeout):
            return None
        return self.take_ready() or []

    def take_ready(self):
        """The frames ready now (a room's reset is a frame), or None if nothing is pending."""
        if self.closed_reason:
            raise ReaderClosed(self.closed_reason)
        notices, self._notices = self._notices, []
        frames = [sse.Event(data, event=event).encode() for event, data in notices]
        taken = self._take()
        if taken is None:
            return frames or None
        positions, resets, signals, messages = taken
        for room, reset in resets:
            frames.append(sse.Event(reset.data(room), event="reset",
                                    id=format_cursor([*_newest_first(positions), *self._joining.items()])).encode())
        frames.extend(signal.frame for _, signal in signals)
        watermark = self.hub.watermark
        for room, publication in messages:
            positions[room] = position = publication.id
            ms = position.ms
            listed = []
            for other, reader in self.rooms.items():
                at = positions.get(other)
                if at is None:  # joined while this batch was read: behind, at its join point
                    listed.append((other, reader.last_id))
                elif other != room and (ms > watermark or at.ms >= ms or reader.pending):
                    listed.append((other, at))
            listed += self._joining.items()
            cursor = format_cursor([(room, position), *listed]) if listed else None
            frames.append(publication.mux_frame(room, cursor))
        self._delivered += len(messages)
        return frames

    def _take(self):
        """What every room has ready, or None if none had anything pending.

        Returns ``(positions, resets, signals, messages)``: each room's position before
        this take (what the client has), the rooms reset, the live-only signals, and the
        messages of all rooms merged in id order, which keeps their ids short: a message is
        framed after every message of an earlier millisecond.
        """
        positions = {room: reader.last_id for room, reader in self.rooms.items()}
        resets, signals, messages = [], [], []
        taken = False
        for room, reader in list(self.rooms.items()):
            if not reader.pending:
                continue
            taken = True
            try:
                batch = reader.take_ready()
            except ReaderReset as stale:
                resets.append((room, stale.reset))
                positions[room] = stale.reset.latest
                continue
            if self.rooms.get(room) is not reader:  # left while it read
                continue
            for publication in batch or ():
                (messages if publication.id is not None else signals).append((room, publication))
        if not taken:
            return None
        positions = {room: at for room, at in positions.items() if room in self.rooms}  # none left meanwhile
        messages.sort(key=lambda item: item[1].id)
        return positions, resets, signals, messages

    @staticmethod
    def encode(frames):
        return b"".join(frames)

    # -- long-poll -----------------------------------------------------------------

    def take_answer(self):
        """For long-poll: ``(messages, events, resets)`` ready now: messages and events (joins,
        leaves, presence, typing) as JSON, resets as dicts."""
        notices, self._notices = self._notices, []
        events = [json.dumps({"type": event, **data}).encode() for event, data in notices]
        taken = self._take()
        if taken is None:
            return [], events, []
        _, resets, signals, messages = taken
        self._delivered += len(messages)
        return ([publication.json for _, publication in messages], events + [signal.json for _, signal in signals],
                [reset.data(room) for room, reset in resets])

    def poll_answer(self, messages, events, resets):
        """The long-poll answer's JSON and the cursor in it; messages and events are JSON
        already, shared with every reader, so they are joined in, not encoded again."""
        cursor = self.exact_cursor()
        rest = json.dumps({"resets": resets, "rooms": sorted(self.rooms), "cursor": cursor},
                          separators=(",", ":")).encode()
        return b'{"messages":[' + b",".join(messages) + b'],"events":[' + b",".join(events) + b"]," + rest[1:], cursor


def _newest_first(positions):
    """``(room, position)`` pairs, the newest first: its millisecond is the watermark of the
    rooms left out of an id listing every room (those joined later, which start at their
    join point anyway)."""
    return sorted(positions.items(), key=lambda pair: pair[1], reverse=True)
