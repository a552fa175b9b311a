"""One SSE stream's life: open, backfill, live, heartbeat, close.

:class:`EventStream` is the stream: the frames it starts with (preamble,
``ready`` once subscribed, the backlog), the next frame while live, a reset,
and its end (:meth:`EventStream.closed` settles the hub, presence, metrics
and log, and gives the farewell frame). Two sinks put its frames on the wire:

* the WSGI generator (:meth:`EventStream.__iter__`): a greenlet waits for each
  batch; any WSGI server, Flask's test client, TLS in gunicorn;
* :class:`chatapp.delivery.socket_sink.SocketSink`: under gunicorn's gevent worker, once the start is
  written, :mod:`chatapp.web.takeover` hands the stream its socket and the hub
  writes each publication's chunk to it (see that module for why). A socket
  that can't take a whole chunk gets a drainer greenlet until it catches up.

Either way the bytes are the same, and order, no-gap and no-dup are the
reader's job (docs/DESIGN.md, invariants 3 and 6).
"""

import logging
import os
import time

from chatapp.core import sse
from chatapp.core.reasons import Ending
from chatapp.delivery.reader import ReaderClosed, ReaderReset
from chatapp.delivery.socket_sink import SocketSink
from chatapp.ops.errors import StoreUnavailable
from chatapp.store.errors import REDIS_ERRORS

log = logging.getLogger(__name__)

class EventStream:
    """An SSE response body. A WSGI server iterates it (a greenlet waits for each
    batch); under gunicorn's gevent worker :mod:`chatapp.web.takeover` calls
    :meth:`take_over` with the socket instead, and the hub writes to it."""

    def __init__(self, reader, member, cursor, backlog, config, *, metrics):
        self.reader = reader
        self.metrics = metrics
        self.member = member
        self.cursor = cursor
        self.backlog = backlog
        self.heartbeat = config["CHAT_HEARTBEAT_SECS"]
        self.retry_ms = config["CHAT_RETRY_MS"]
        self.opened = None

    def __iter__(self):
        reason = Ending.CLIENT_GONE  # unless something below says otherwise
        try:
            yield from self._start()
            while True:  # ends only by an exception
                yield self._next_frame()
        except (ReaderClosed, StoreUnavailable, *REDIS_ERRORS) as exc:
            reason = self.ending_reason(exc)
        finally:
            farewell = self.closed(reason)
        yield farewell

    def take_over(self, sock, head):
        """Write the head and the start on ``sock`` (this greenlet), then hand it to the hub."""
        sink = SocketSink(sock, self.reader, self)
        frames = self._start()
        unsent = b""  # the head, while it waits to go with the rest of the start
        try:
            unsent = head + sse.http_chunk(next(frames))
            if not self.opens_at_once():
                sink.write_blocking(unsent)  # before waiting for a subscription: proxies pass the head on
                unsent = b""
            # The start and what the reader has already (a resumed stream's first catch-up) in
            # one send: in a reconnect storm every send and drainer counts.
            start = unsent + b"".join(sse.http_chunk(frame) for frame in frames) + (sink.take_chunk() or b"")
            unsent = b""
            if start:
                sink.write_blocking(start)
        except Exception as exc:  # the socket is ours now: nobody else would close it
            self._head_first(sink, unsent)
            sink.finish(self.ending_reason(exc))
        except BaseException:  # a worker stopping (GreenletExit): still close what we own
            self._head_first(sink, unsent)
            sink.finish(Ending.DRAINING)
            raise
        else:
            self.reader.go_direct(sink)

    @staticmethod
    def _head_first(sink, unsent):
        """The head, if the start failed before it went: the farewell must not be all the
        client gets (a chunk with no status line is an invalid response to a proxy)."""
        if unsent:
            try:
                sink.write_blocking(unsent)
            except OSError:
                pass

    def opens_at_once(self):
        """True if opening won't wait for a subscription (the worker follows the room already)."""
        return self.reader.hub.follows(self.reader.channel)

    def _start(self):
        """The frames before live delivery: preamble, ``ready`` once subscribed, the backlog."""
        reader = self.reader
        self.opened = time.monotonic()
        self.metrics.streams_open.inc()
        # DEBUG: the closing line says all of it (with the duration), and in a reconnect storm
        # a line per open was a quarter of an open's CPU (docs/benchmarks-history.md, issue 15).
        log.debug("stream opened room=%s user=%s", reader.room, reader.user,
                 extra={"room": reader.room, "user": reader.user})
        # First bytes at once: headers get past proxies that wait for a body.
        yield sse.Event(retry=self.retry_ms, comment="stream open").encode()
        yield from self._begin()

    def _begin(self):
        """Open the reader; ``ready``; the backlog."""
        reader = self.reader
        initial = reader.open(self.cursor, self.backlog)
        # Subscribed now, so "now" is defined: "ready" tells the client the stream is
        # live (and lets it tell a buffering proxy from a quiet room).
        yield sse.Event({"worker": os.getpid()}, event="ready").encode()
        reader.hub.join_presence(reader, self.member)
        if initial:
            yield reader.encode(initial)

    def _next_frame(self):
        reader = self.reader
        while True:
            try:
                batch = reader.next_batch(self.heartbeat)
            except ReaderReset as stale:
                return self.reset_frame(stale.reset)
            if batch is None:
                return sse.PING
            if batch:
                return reader.encode(batch)

    def ending_reason(self, exc):
        """Why an exception ended the stream, as told to the client (logged if unexpected)."""
        if isinstance(exc, ReaderClosed):
            return exc.reason
        if isinstance(exc, StoreUnavailable):
            return exc.code
        if isinstance(exc, REDIS_ERRORS):
            self.metrics.redis_errors.labels("stream").inc()
            log.warning("stream room=%s: redis unavailable (%s: %s)", self.reader.room, type(exc).__name__, exc)
            return Ending.STORE_UNAVAILABLE
        if isinstance(exc, OSError):  # the client's socket, including a write stall
            return Ending.CLIENT_GONE
        log.error("stream room=%s failed", self.reader.room, exc_info=exc)
        return Ending.SERVER_ERROR

    @staticmethod
    def reset_frame(reset):
        return sse.Event(reset.data(), event="reset", id=str(reset.latest)).encode()

    def closed(self, reason):
        """Settle the stream's books (hub, presence, metrics, log); return the last frame to send."""
        reader = self.reader
        reader.end()
        if self.opened is not None:
            self.metrics.streams_open.dec()
            seconds = time.monotonic() - self.opened
            log.info("stream closed room=%s user=%s after %.1fs reason=%s", reader.room, reader.user, seconds,
                     reason, extra={"room": reader.room, "user": reader.user, "seconds": round(seconds, 1),
                                    "reason": reason})
        return sse.Event({"reason": reason}, event="retry").encode()


class MultiplexStream(EventStream):
    """The multiplexed stream (:mod:`chatapp.delivery.multiplex`): ``ready`` names its rooms and carries
    the cursor of its start."""

    def __init__(self, mux, member, starts, config, *, metrics):
        super().__init__(mux, member, None, 0, config, metrics=metrics)
        self.starts = starts

    def opens_at_once(self):
        return False  # its rooms' subscriptions are only known as it opens

    def _begin(self):
        mux = self.reader
        starts, self.starts = self.starts, None  # not kept for the stream's life
        mux.open(starts)
        yield mux.ready_frame()
        mux.join_presence(self.member)


