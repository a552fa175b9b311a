"""A live stream's own socket, once :mod:`chatapp.web.takeover` has taken it from gunicorn:
written by the hub while the stream is caught up, by a drainer greenlet while it is behind.

It is the :class:`chatapp.delivery.reader.Sink` of the stream's reader (or of every room
reader of a multiplexed stream).
"""

import time

import gevent
from gevent import socket as gsocket

from chatapp.core.reasons import Ending
from chatapp.core.sse import LAST_CHUNK, http_chunk
from chatapp.delivery.reader import ReaderClosed, ReaderReset

# A client that takes no byte for this long is gone; TCP alone would take many minutes to say so.
WRITE_STALL_SECS = 60.0
READ_DISCARD_BYTES = 4096  # clients don't talk on an SSE connection; whatever they send is dropped


class SocketSink:
    """One live stream's socket: written by the hub while idle, by its drainer while behind."""

    __slots__ = ("_drainer", "_partial", "_pending", "_sock", "_watcher", "_writing", "last_write", "reader",
                 "stream")

    def __init__(self, sock, reader, stream):
        self._sock = sock
        self.reader = reader
        self.stream = stream  # the EventStream whose frames this socket carries
        self._pending = b""
        self._drainer = None
        self._writing = False  # the drainer is waiting for the socket to drain
        self._partial = False  # a chunk is partly sent: nothing else may be written into it
        self.last_write = time.monotonic()
        self._watcher = gevent.get_hub().loop.io(sock.fileno(), 1)
        self._watcher.start(self._readable)

    @property
    def drainer(self):
        """The greenlet writing for this stream while it is behind, or None."""
        return self._drainer

    @property
    def idle(self):
        """True while the hub may write to the socket itself."""
        return self._drainer is None and self._sock is not None

    def write_now(self, data):
        """Send one chunk without blocking; what the socket can't take now goes to the drainer."""
        self.last_write = time.monotonic()
        try:
            sent = self._sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.reader.close(Ending.CLIENT_GONE)
            return
        if sent < len(data):
            self._partial = sent > 0
            self._pending = data[sent:]
            self._drainer = gevent.spawn(self._drain)

    def heartbeat(self, ping, due):
        """Ping the stream if nothing was written to it since ``due`` (and the hub may write)."""
        if self.idle and self.last_write <= due:
            self.write_now(ping)

    def set(self):
        """The reader's wake-up: something was queued, it fell behind, or it was closed."""
        if self._sock is None:
            return
        reason = self.reader.closed_reason
        if self._drainer is None:
            if reason:
                self.finish(reason)
            else:
                self._drainer = gevent.spawn(self._drain)
        elif reason and self._writing and self._drainer is not gevent.getcurrent():
            # Stuck on a full socket: a kick must not wait for a slow client.
            self._drainer.kill(ReaderClosed(reason), block=False)

    def write_blocking(self, data):
        """Send all of ``data``, waiting (up to ``WRITE_STALL_SECS`` at a time) while the socket is full."""
        view = memoryview(data)
        while view:
            try:
                sent = self._sock.send(view)
            except BlockingIOError:
                self._writing = True
                try:
                    gsocket.wait_write(self._sock.fileno(), WRITE_STALL_SECS, TimeoutError)
                finally:
                    self._writing = False
                continue
            view = view[sent:]
            self._partial = bool(view)
        self.last_write = time.monotonic()

    def _drain(self):
        reason = None
        try:
            self._drain_until_idle()
        except Exception as exc:
            # Whatever it was, end the stream: left open behind a dead drainer, its cursor would skip ahead.
            reason = self.stream.ending_reason(exc)
        finally:
            self._drainer = None
        if reason:
            self.finish(reason)

    def _drain_until_idle(self):
        while True:
            if self._pending:
                pending, self._pending = self._pending, b""
                self.write_blocking(pending)
            chunk = self.take_chunk()
            if chunk is None:
                return  # caught up: the hub writes again
            self._pending = chunk

    def take_chunk(self):
        """The chunk of what the reader has ready (a batch, or a reset): None when nothing is
        pending, ``b""`` when what was pending came to nothing (duplicates dropped)."""
        reader = self.reader
        try:
            batch = reader.take_ready()
        except ReaderReset as stale:
            return http_chunk(self.stream.reset_frame(stale.reset))
        if batch is None:
            return None
        return http_chunk(reader.encode(batch)) if batch else b""

    def _readable(self):
        """The client sent something or hung up (runs in gevent's hub: nothing here may block)."""
        try:
            if self._sock.recv(READ_DISCARD_BYTES):
                return
        except BlockingIOError:
            return
        except OSError:
            pass
        self._watcher.stop()
        gevent.spawn(self.reader.close, Ending.CLIENT_GONE)

    def finish(self, reason):
        """Say goodbye (unless the client is gone or a chunk is half sent), close the socket,
        settle the stream's books."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        self._watcher.stop()
        self._watcher.close()
        try:
            farewell = self.stream.closed(reason)
            # Inside a half-sent chunk the farewell would corrupt it; a client that sees
            # the connection end mid-event drops that event and resumes before it.
            if reason != Ending.CLIENT_GONE and not self._partial:
                try:
                    sock.send(http_chunk(farewell) + LAST_CHUNK)  # best effort; it is closing anyway
                except OSError:
                    pass
        finally:
            sock.close()
            # Reader, sink and stream refer to each other; let reference counting free them
            # now rather than at a full collection, which tune_gc makes rare.
            self.reader = self.stream = None
