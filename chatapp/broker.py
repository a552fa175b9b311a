"""The Broker: each room's durable log (a Redis Stream) and its live channel.

This module owns every Redis key of a room and every read and write of its
stream. A :class:`Publication` is one message with its stream position; its
JSON and its SSE frame are built once and shared by everyone who sends it.
"""

import json
import re
from importlib import resources
from typing import NamedTuple

from . import keys
from .errors import BadRequest
from .sse import Event, http_chunk

# What travels on a room's channel is one of two kinds, told apart by how its JSON
# starts: a message (stored, with a stream position) or a live-only signal (presence,
# typing: never stored). The Lua scripts write the same shapes.
PUBLICATION_PREFIX = b'{"id":'
SIGNAL_PREFIX = b'{"type":'

_CURSOR_RE = re.compile(r"\A(\d{1,20})-(\d{1,20})\Z")
MAX_SEQ = 2**64 - 1  # the largest part of a stream id


class StreamId(NamedTuple):
    """A Redis stream id; compares as an integer pair, never as a string."""

    ms: int
    seq: int

    @classmethod
    def parse(cls, text):
        """Parse ``<ms>-<seq>`` (or ``0``, meaning before everything); raise BadRequest."""
        if text in ("0", "0-0"):
            return ZERO
        match = _CURSOR_RE.match(text or "")
        if not match:
            raise BadRequest(f"Malformed cursor {text[:40]!r}: expected <ms>-<seq>.",
                             code="bad_cursor")
        ms, seq = int(match[1]), int(match[2])
        # The largest id can't be an exclusive start for Redis ("(max" is refused), and
        # no message ever has it.
        if ms > MAX_SEQ or seq > MAX_SEQ or (ms, seq) == (MAX_SEQ, MAX_SEQ):
            raise BadRequest("Cursor out of range.", code="bad_cursor")
        return cls(ms, seq)

    @classmethod
    def from_bytes(cls, raw):
        ms, _, seq = raw.partition(b"-")
        return cls(int(ms), int(seq))

    def __str__(self):
        return f"{self.ms}-{self.seq}"


ZERO = StreamId(0, 0)


class Publication:
    """One message at its stream position, encoded once for every reader."""

    __slots__ = ("_chunk", "_frame", "_mux_chunk", "_mux_frame", "id", "json")

    def __init__(self, id, json_bytes):
        self.id = id
        self.json = json_bytes
        self._frame = None
        self._chunk = None
        self._mux_chunk = None
        self._mux_frame = None

    @classmethod
    def from_payload(cls, payload):
        """Build from the published JSON, which always starts with ``{"id":"<id>"``."""
        start = len(PUBLICATION_PREFIX) + 1
        end = payload.index(b'"', start)
        return cls(StreamId.from_bytes(payload[start:end]), payload)

    @classmethod
    def from_entry(cls, room_entry):
        """Build from an XRANGE entry ``(id, {b"body": ...})`` the way the script does."""
        raw_id, fields = room_entry
        body = fields[b"body"]
        ms = raw_id.partition(b"-")[0]
        payload = b'{"id":"' + raw_id + b'","ts":' + ms + b"," + body[1:]
        return cls(StreamId.from_bytes(raw_id), payload)

    @property
    def frame(self):
        """The SSE frame; built on first use, then shared by every reader."""
        if self._frame is None:
            self._frame = Event(self.json, event="message", id=str(self.id)).encode()
        return self._frame

    @property
    def chunk(self):
        """The frame as an HTTP chunk, for streams the hub writes directly; also built once."""
        if self._chunk is None:
            self._chunk = http_chunk(self.frame)
        return self._chunk

    def mux_frame(self, room, cursor=None):
        """The frame for a multiplexed stream: its id is a cursor over the stream's rooms
        (:mod:`chatapp.multiplex`). ``cursor`` None means the common one, just this message's
        ``room:id``, built once and shared."""
        if cursor is not None:
            return Event(self.json, event="message", id=cursor).encode()
        if self._mux_frame is None:
            self._mux_frame = Event(self.json, event="message", id=f"{room}:{self.id}").encode()
        return self._mux_frame

    def mux_chunk(self, room):
        """The common multiplexed frame as an HTTP chunk, built once and shared by every
        multiplexed stream that is caught up."""
        if self._mux_chunk is None:
            self._mux_chunk = http_chunk(self.mux_frame(room))
        return self._mux_chunk


class Signal:
    """A live-only event (presence, typing): never stored, no stream position, not
    sent to the user it is about."""

    __slots__ = ("chunk", "frame", "id", "json", "user")

    def __init__(self, json_bytes):
        fields = json.loads(json_bytes)
        self.id = None
        self.json = json_bytes
        self.user = fields["user"].lower()
        self.frame = Event(json_bytes, event=fields["type"]).encode()
        self.chunk = http_chunk(self.frame)


def decode_payload(payload):
    """A channel payload as a :class:`Publication` or a :class:`Signal`; ValueError if neither."""
    if payload.startswith(PUBLICATION_PREFIX):
        return Publication.from_payload(payload)
    if payload.startswith(SIGNAL_PREFIX):
        return Signal(payload)
    raise ValueError("neither a message nor a signal")


class Reset(NamedTuple):
    """A stale cursor's answer: go on after ``latest``; ``oldest`` is the oldest message kept."""

    latest: StreamId
    oldest: StreamId | None


def lua_script(name):
    """The source of ``lua/<name>.lua`` (registered once per client, run with EVALSHA)."""
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text()


class Broker:
    """Saves to history and publishes atomically per room; reads history back."""

    def __init__(self, redis, maxlen, idempotency_ttl):
        self.redis = redis
        self.maxlen = maxlen
        self.idempotency_ttl = idempotency_ttl
        self._append_publish = redis.register_script(lua_script("append_publish"))
        self._count_after = redis.register_script(lua_script("count_after"))

    def publish(self, room, user, text, idempotency_key=None):
        """Append and publish a message; return ``(Publication, created)``.

        With an idempotency key seen before in this room for this user, nothing
        is written and the first message comes back with ``created`` False.
        """
        names = [keys.room_log(room), keys.room_channel(room), keys.room_trimmed(room)]
        if idempotency_key:
            names.append(keys.room_idempotency(room, user, idempotency_key))
        fields = {"room": room, "user": user, "text": text}
        if idempotency_key:
            fields["client_id"] = idempotency_key  # lets the sender's page match its pending copy
        body = json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()
        created, payload = self._append_publish(names, [body, self.maxlen, self.idempotency_ttl])
        return Publication.from_payload(payload), bool(created)

    def signal(self, room, event, user):
        """Publish a live-only event to the room's readers on every worker; nothing is stored.

        Its JSON starts with ``{"type":`` (a publication's with ``{"id":``); presence.lua
        publishes the same shape.
        """
        payload = json.dumps({"type": event, "room": room, "user": user}, separators=(",", ":"))
        self.redis.publish(keys.room_channel(room), payload)

    def publish_control(self, reason, *, user=None, sid=None):
        """Ask every worker to close the readers of ``user`` (any session) or of session ``sid``."""
        message = {"reason": reason, "user": user.lower() if user else None, "sid": sid}
        self.redis.publish(keys.CONTROL_CHANNEL, json.dumps(message))

    def publish_membership(self, user, room, at):
        """Tell every worker that ``user`` joined ``room`` at ``at`` (None: left it)."""
        message = {"user": user.lower(), "room": room, "joined": str(at) if at is not None else None}
        self.redis.publish(keys.CONTROL_CHANNEL, json.dumps(message))

    def read_after(self, room, cursor, count):
        """Up to ``count`` publications strictly after ``cursor``, oldest first."""
        entries = self.redis.xrange(keys.room_log(room), f"({cursor}", "+", count=count)
        return [Publication.from_entry(entry) for entry in entries]

    def read_before(self, room, cursor, count):
        """Up to ``count`` publications strictly before ``cursor`` (or the newest), oldest first."""
        end = "+" if cursor is None else f"({cursor}"
        entries = self.redis.xrevrange(keys.room_log(room), end, "-", count=count)
        return [Publication.from_entry(entry) for entry in reversed(entries)]

    def tail(self, room):
        """The id of the newest message, or ZERO for an empty room."""
        entries = self.redis.xrevrange(keys.room_log(room), "+", "-", count=1)
        return StreamId.from_bytes(entries[0][0]) if entries else ZERO

    def tails(self, rooms):
        """The newest id of each room, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for room in rooms:
            pipe.xrevrange(keys.room_log(room), "+", "-", count=1)
        return [StreamId.from_bytes(e[0][0]) if e else ZERO for e in pipe.execute()]

    def count_after(self, cursors, cap):
        """For each ``{room: cursor}``, how many messages follow the cursor (at most ``cap``), in
        one round trip; the entries are counted inside Redis, never sent."""
        pipe = self.redis.pipeline(transaction=False)
        for room, cursor in cursors.items():
            self._count_after([keys.room_log(room)], [str(cursor), cap], client=pipe)
        return pipe.execute() if cursors else []

    def catch_up(self, room, cursor, count):
        """Up to ``count`` publications after ``cursor``, and a :class:`Reset` if it is stale.

        A cursor is stale when messages after it may have been trimmed away, or
        when it is newer than anything this stream ever held (the store was
        wiped). Then the page is empty and the reader must be told (invariant 8),
        never silently moved on. One transaction, so a trim can't land between
        the reads.
        """
        log, trimmed = keys.room_log(room), keys.room_trimmed(room)
        pipe = self.redis.pipeline(transaction=True)
        pipe.xrange(log, f"({cursor}", "+", count=count)
        pipe.xrange(log, "-", "+", count=1)
        pipe.xrevrange(log, "+", "-", count=1)
        pipe.exists(trimmed)
        entries, first, last, was_trimmed = pipe.execute()
        oldest = StreamId.from_bytes(first[0][0]) if first else None
        newest = StreamId.from_bytes(last[0][0]) if last else ZERO
        if cursor > newest or (was_trimmed and (oldest is None or cursor < oldest)):
            return [], Reset(newest, oldest)
        return [Publication.from_entry(entry) for entry in entries], None

    def bound_to(self, redis):
        """The same broker on another connection pool (the hub reads on its own)."""
        return Broker(redis, self.maxlen, self.idempotency_ttl)
