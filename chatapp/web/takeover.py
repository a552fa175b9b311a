"""Direct delivery: live SSE streams taken out of gunicorn's request loop.

Under gunicorn's gevent worker a stream would otherwise be a greenlet parked in
a WSGI generator: every publication wakes each one (a greenlet switch, the WSGI
iteration, gunicorn's chunk framing and a heartbeat timer per wait), and each
parked greenlet keeps its saved stack. Profiles put that at three quarters of a
fan-out worker's CPU (docs/benchmarks-history.md). So once a stream's headers and
backlog are written, :class:`SocketTakeover` takes its socket from gunicorn
and the request greenlet ends. From then on:

* the hub writes each publication's chunk (encoded once) to the socket with a
  non-blocking send, in its own loop: no greenlet per stream wakes;
* a read watcher notices the client leaving; the hub's housekeeping sends
  heartbeats to quiet streams;
* a socket that can't take a whole chunk gets a greenlet of its own, the
  drainer, until it has caught up (:class:`chatapp.delivery.socket_sink.SocketSink`).
  Meanwhile its reader queues as any reader does (bounded, then catch-up at its
  own cursor), so order, no-gap and no-dup
  stay the reader's job, unchanged (docs/DESIGN.md, invariants 3 and 6).

Anything else (Flask's test client, another WSGI server, TLS terminated by
gunicorn, HTTP/1.0) keeps the WSGI generator, which delivers the same bytes.
"""

import _socket  # the C socket: gevent's monkey-patched one would wait instead of saying "full"
import email.utils
import ssl

from gevent import socket as gsocket
from gunicorn.http.wsgi import Response as GunicornResponse

WHOLE_MAX_BYTES = 256 * 1024  # bodies up to this are joined and sent with their head; larger ones stream
_HOP_BY_HOP = {"connection", "transfer-encoding", "content-length", "keep-alive", "date"}


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
        if not isinstance(getattr(start_response, "__self__", None), GunicornResponse):
            return self.wsgi_app(environ, start_response)  # not gunicorn (tests, another server)
        started = []

        def defer(status, headers, exc_info=None):
            started[:] = [status, headers, exc_info]
            return _no_write

        body = self.wsgi_app(environ, defer)
        status, headers, exc_info = started
        take_over = getattr(body, "take_over", None)
        sock = environ.get("gunicorn.socket")
        if take_over is not None and status.startswith("200") and _can_take(environ, sock):
            take_over(_detach(sock), _response_head(status, headers))
            raise StopIteration  # gunicorn: "close this connection" (it no longer has one)
        length = _content_length(headers)
        if take_over is None and exc_info is None and length is not None and length <= WHOLE_MAX_BYTES:
            try:
                data = b"".join(body)
            finally:
                if hasattr(body, "close"):
                    body.close()
            start_response(status, headers)
            return _send_whole(start_response.__self__, data)
        start_response(*started)
        return body


def _content_length(headers):
    for name, value in headers:
        if name.lower() == "content-length":
            return int(value) if value.isdigit() else None
    return None


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


def respond_whole(start_response, status, headers, body):
    """Start a response whose body is ``body`` and return its WSGI iterable, the head and
    body in one send under gunicorn (see :func:`_send_whole`)."""
    start_response(status, [*headers, ("Content-Length", str(len(body)))])
    response = getattr(start_response, "__self__", None)
    if not isinstance(response, GunicornResponse):
        return [body]
    return _send_whole(response, body)


def _send_whole(response, body):
    """Send the head gunicorn's ``response`` was started with and ``body`` in one send.

    gunicorn sends them apart: two syscalls and, on loopback, two deliveries to the
    reader; a fifth of a small POST's CPU went to sends (docs/benchmarks-history.md)."""
    if response.headers_sent or response.chunked:
        return [body]
    head = [*response.default_headers(), *(f"{name}: {value}\r\n" for name, value in response.headers), "\r\n"]
    response.sock.sendall("".join(head).encode("latin-1") + body)
    response.headers_sent = True  # what gunicorn's own write would have set
    response.sent = len(body)
    return []


def _no_write(data):
    raise RuntimeError("this middleware does not support the WSGI write() callable")


def init_app(app):
    app.wsgi_app = SocketTakeover(app.wsgi_app)
