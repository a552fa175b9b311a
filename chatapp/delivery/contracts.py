"""The seams between the objects of live delivery, declared once (typing protocols).

A *stream* (:class:`chatapp.delivery.reader.Stream`: a room's :class:`Reader`, or a
:class:`Multiplex` over many) is what the hub registers, re-checks, pings and closes.
It is consumed either by a WSGI generator that waits for its batches, or through a
:class:`Sink` the hub writes to directly. A reader's live frames are built by its
:class:`Framer`; a long-poll's answers by its :class:`PollKind`.
"""

from typing import Protocol


class Sink(Protocol):
    """Where a stream's bytes go once it has a socket of its own (:class:`chatapp.delivery.socket_sink.SocketSink`)."""

    @property
    def idle(self) -> bool:
        """True while the hub may write to it itself (nothing queued, no drainer)."""

    @property
    def drainer(self):
        """The greenlet writing for the stream while it is behind, or None."""

    def write_now(self, data: bytes) -> None:
        """Send a chunk without blocking (what can't go now goes to a drainer)."""

    def heartbeat(self, ping: bytes, due: float) -> None:
        """Ping if nothing was written since ``due``."""

    def set(self) -> None:
        """The stream's wake-up: something was queued, it fell behind, or it was closed."""


class Framer(Protocol):
    """How a reader's live publication becomes an HTTP chunk, and what ends when its user loses
    access to the room (invariant 16): the reader's own stream
    (:data:`chatapp.delivery.reader.SINGLE_ROOM`), or one room of its multiplexed stream."""

    def live_chunk(self, reader, publication) -> bytes: ...

    def revoked(self, reader, publication) -> None: ...


class PollKind(Protocol):
    """One kind of long-poll (:mod:`chatapp.delivery.longpoll`): a room's or the multiplexed one."""

    def rooms(self, stream) -> list: ...

    def behind(self, stream):
        """Which free pollers of the same credentials a poll of ``stream`` leaves behind."""

    def take(self, stream):
        """What is ready now, or None."""

    def encode(self, stream, found):
        """The answer (body, cursor, delivered) to ``found`` (None: nothing)."""


class TakesOver(Protocol):
    """A response body that can take its socket from gunicorn (:mod:`chatapp.web.takeover`):
    an SSE stream (:class:`chatapp.delivery.event_stream.EventStream`)."""

    def take_over(self, sock, head: bytes) -> None: ...
