"""Direct delivery: live SSE streams taken out of gunicorn's request loop.

Under gunicorn's gevent worker a stream would otherwise be a greenlet parked in
a WSGI generator: every publication wakes each one (a greenlet switch, the WSGI
iteration, gunicorn's chunk framing and a heartbeat timer per wait), and each
parked greenlet keeps its saved stack. Profiles put that at three quarters of a
fan-out worker's CPU (docs/benchmarks.md). So once a stream's headers and
backlog are written, :class:`SocketTakeover` takes its socket from gunicorn
and the request greenlet ends. From then on:

* the hub writes each publication's chunk (encoded once) to the socket with a
  non-blocking send, in its own loop: no greenlet per stream wakes;
* a read watcher notices the client leaving; the hub's housekeeping sends
  heartbeats to quiet streams;
* a socket that can't take a whole chunk gets a greenlet of its own, the
  drainer, until it has caught up. Meanwhile its reader queues as any reader
  does (bounded, then catch-up at its own cursor), so order, no-gap and no-dup
  stay the reader's job, unchanged (docs/DESIGN.md, invariants 3 and 6).

Anything else (Flask's test client, another WSGI server, TLS terminated by
gunicorn, HTTP/1.0) keeps the WSGI generator, which delivers the same bytes.
"""

import _socket  # the C socket: gevent's monkey-patched one would wait instead of saying "full"
import email.utils
import ssl
import time

import gevent
from gevent import socket as gsocket

from .reader import ReaderClosed, ReaderReset
from .sse import LAST_CHUNK, http_chunk

# A client that takes no byte for this long is gone; TCP alone would take many minutes to say so.
WRITE_STALL_SECS = 60.0
READ_DISCARD_BYTES = 4096  # clients don't talk on an SSE connection; whatever they send is dropped
_HOP_BY_HOP = {"connection", "transfer-encoding", "content-length", "keep-alive", "date"}


class SocketSink:
    """One live stream's socket: written by the hub while idle, by its drainer while behind."""

    __slots__ = ("_drainer", "_partial", "_pending", "_sock", "_watcher", "_writing", "last_write", "reader",
                 "stream")

    def __init__(self, sock, reader, stream):
        self._sock = sock
        self.reader = reader
        self.stream = stream  # has preamble/closed(); see chatapp.streams.EventStream
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
            self.reader.close("client_gone")
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
        reader = self.reader
        while True:
            if self._pending:
                pending, self._pending = self._pending, b""
                self.write_blocking(pending)
            try:
                batch = reader.take_ready()
            except ReaderReset as stale:
                self._pending = http_chunk(self.stream.reset_frame(stale.reset))
                continue
            if batch is None:
                return  # caught up: the hub writes again
            if batch:
                self._pending = http_chunk(reader.encode(batch))

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
        gevent.spawn(self.reader.close, "client_gone")

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
            if reason != "client_gone" and not self._partial:
                try:
                    sock.send(http_chunk(farewell) + LAST_CHUNK)  # best effort; it is closing anyway
                except OSError:
                    pass
        finally:
            sock.close()
            # Reader, sink and stream refer to each other; let reference counting free them
            # now rather than at a full collection, which tune_gc makes rare.
            self.reader.close_queue()
            self.reader = self.stream = None


class SocketTakeover:
    """WSGI middleware: hands a stream's socket to the stream once its headers are known.

    gunicorn's async workers end a connection's keep-alive loop, without
    touching its socket again, when the handler raises ``StopIteration``; the
    socket's file descriptor has been detached by then, so gunicorn's close is
    a no-op and the stream owns the connection.
    """

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        sock = environ.get("gunicorn.socket")
        if not _can_take(environ, sock):
            return self.wsgi_app(environ, start_response)
        started = []

        def defer(status, headers, exc_info=None):
            started[:] = [status, headers, exc_info]
            return _no_write

        body = self.wsgi_app(environ, defer)
        take_over = getattr(body, "take_over", None)
        if take_over is None or not started[0].startswith("200"):
            start_response(*started)
            return body
        head = _response_head(started[0], started[1])
        take_over(_detach(sock), head)
        raise StopIteration  # gunicorn: "close this connection" (it no longer has one)


def _can_take(environ, sock):
    return (isinstance(sock, gsocket.socket) and not isinstance(sock, ssl.SSLSocket)
            and environ.get("SERVER_PROTOCOL") == "HTTP/1.1" and environ.get("REQUEST_METHOD") == "GET")


def _detach(sock):
    raw = _socket.socket(fileno=sock.detach())
    raw.setblocking(False)
    return raw


def _response_head(status, headers):
    lines = [f"HTTP/1.1 {status}", f"Date: {email.utils.formatdate(usegmt=True)}"]
    lines.extend(f"{name}: {value}" for name, value in headers if name.lower() not in _HOP_BY_HOP)
    lines += ["Transfer-Encoding: chunked", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1")


def _no_write(data):
    raise RuntimeError("this middleware does not support the WSGI write() callable")


def init_app(app):
    app.wsgi_app = SocketTakeover(app.wsgi_app)
