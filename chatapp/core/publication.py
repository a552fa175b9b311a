"""What travels on a room's channel: a :class:`Publication` (a message at its stream position,
encoded once for every reader), a live-only :class:`Signal`, or an :class:`Ack` (replica
acknowledgement); and a stale cursor's :class:`Reset`."""

import json
from typing import NamedTuple

from chatapp.core.ids import StreamId
from chatapp.core.sse import Event, http_chunk

# What travels on a room's channel is one of two kinds, told apart by how its JSON
# starts: a message (stored, with a stream position) or a live-only signal (presence,
# typing: never stored). The Lua scripts write the same shapes.
PUBLICATION_PREFIX = b'{"id":'
SIGNAL_PREFIX = b'{"type":'
ACK_PREFIX = b'{"acked":'  # with replica acknowledgement: "everything published up to this id is safe"
# Entries that aren't messages say what they are in this field (member, room, edit, delete); one
# that ends a user's access to its room (a removal, a leave) names them in the second. A JSON
# string can't hold an unescaped quote, so no message text can forge either.
KIND_FIELD = b'"kind":"'
REVOKES_FIELD = b'"revokes":"'
DELETE = "delete"


class Publication:
    """One message at its stream position, encoded once for every reader."""

    __slots__ = ("_chunk", "_frame", "_mux_chunk", "_mux_frame", "id", "json", "kind", "revokes")

    def __init__(self, id, json_bytes):
        self.id = id
        self.json = json_bytes
        # What the entry is (None: a message), and the user whose access to the room it ends
        # (lowercase), or None: found once per publication here (a message costs one search),
        # so delivering it costs each reader nothing (invariants 16, 17).
        self.kind = _field(json_bytes, KIND_FIELD)
        self.revokes = _field(json_bytes, REVOKES_FIELD) if self.kind is not None else None
        self._frame = None
        self._chunk = None
        self._mux_chunk = None
        self._mux_frame = None

    @property
    def target(self):
        """The id of the message an edit or a deletion is about."""
        return StreamId.parse(json.loads(self.json)["target"])

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
        (:mod:`chatapp.delivery.multiplex`). ``cursor`` None means the common one, just this message's
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


def _field(json_bytes, field):
    """The string value of ``field`` (``b'"name":"'``) in the entry's JSON, or None."""
    start = json_bytes.find(field)
    if start < 0:
        return None
    start += len(field)
    return json_bytes[start:json_bytes.index(b'"', start)].decode()


class Signal:
    """A live-only event (presence, typing): never stored, no stream position, not
    sent to the user it is about."""

    __slots__ = ("chunk", "frame", "id", "json", "kind", "revokes", "user")

    def __init__(self, json_bytes):
        fields = json.loads(json_bytes)
        self.id = None
        self.kind = self.revokes = None
        self.json = json_bytes
        self.user = fields["user"].lower()
        self.frame = Event(json_bytes, event=fields["type"]).encode()
        self.chunk = http_chunk(self.frame)


class Ack(NamedTuple):
    """With replica acknowledgement: the message ``id`` of the channel's room, and every
    message published before it on the same server, is on enough replicas."""

    id: StreamId


def decode_payload(payload):
    """A channel payload as a :class:`Publication`, a :class:`Signal` or an :class:`Ack`;
    ValueError if none."""
    if payload.startswith(PUBLICATION_PREFIX):
        return Publication.from_payload(payload)
    if payload.startswith(SIGNAL_PREFIX):
        return Signal(payload)
    if payload.startswith(ACK_PREFIX):
        return Ack(StreamId.parse(json.loads(payload)["acked"]))
    raise ValueError("neither a message, a signal nor an acknowledgement")


class Reset(NamedTuple):
    """A stale cursor's answer: go on after ``latest``; ``oldest`` is the oldest message kept."""

    latest: StreamId
    oldest: StreamId | None

    def data(self, room=None):
        """What a client is told of it (an SSE ``reset`` event's data, a multiplexed poll's
        ``resets``): ``{["room",] "oldest", "latest"}``."""
        told = {"room": room} if room is not None else {}
        return {**told, "oldest": str(self.oldest) if self.oldest else None, "latest": str(self.latest)}


