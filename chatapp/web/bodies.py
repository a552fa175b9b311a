"""Request bodies read within a deadline, and a budget of bodies in flight per client address.

gunicorn's keep-alive timeout covers a request's head only: a client that announces a body
and then sends nothing holds its connection (and a greenlet) for as long as it likes, and the
CSRF check would wait on an anonymous form body before any limit. So before the app sees a
request with a body, this middleware reads the whole body (at most ``CHAT_MAX_BODY_BYTES``)
within ``CHAT_BODY_DEADLINE_SECS``, or answers 408 and closes the connection; and it lets one
client address have at most ``CHAT_BODIES_PER_ADDRESS`` bodies being read at once on a worker
(past it a 429 at once, the connection closed, nothing read). Chat bodies are small: an honest
client's take milliseconds, so neither bound touches it. It runs inside ProxyFix, so behind
nginx the address is the client's (``CHAT_TRUSTED_PROXIES``).
"""

import collections
import io
import json
import logging

import gevent

log = logging.getLogger(__name__)

READ_CHUNK = 16 * 1024


class _BodyTimeout(Exception):
    pass


class BodyDeadline:
    def __init__(self, wsgi_app, *, deadline_secs, per_address, max_bytes):
        self.wsgi_app = wsgi_app
        self.deadline_secs = deadline_secs
        self.per_address = per_address
        self.max_bytes = max_bytes
        self._reading = collections.Counter()  # client address -> bodies being read now (this worker)

    def __call__(self, environ, start_response):
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return self.wsgi_app(environ, start_response)  # the app answers a malformed length
        if (length <= 0 and not chunked) or length > self.max_bytes:
            return self.wsgi_app(environ, start_response)  # nothing to read; or a 413 without reading
        address = environ.get("REMOTE_ADDR", "")
        if self._reading[address] >= self.per_address:
            log.warning("bodies: %s already sends %d bodies to this worker; refused", address, self.per_address)
            return _refuse(start_response, "429 Too Many Requests", "rate_limited",
                           "Too many requests are sending their bodies at once from your address.",
                           [("Retry-After", "5")])
        self._reading[address] += 1
        try:
            body = self._read(environ["wsgi.input"], length if not chunked else None)
        except _BodyTimeout:
            log.warning("bodies: %s sent no whole body within %.0f s; connection closed", address,
                        self.deadline_secs)
            return _refuse(start_response, "408 Request Timeout", "body_timeout",
                           f"The request body didn't arrive within {self.deadline_secs:.0f} s.")
        finally:
            self._reading[address] -= 1
            if not self._reading[address]:
                del self._reading[address]
        if body is None:
            return _refuse(start_response, "413 Request Entity Too Large", "too_large",
                           f"Request bodies are at most {self.max_bytes} bytes.")
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        return self.wsgi_app(environ, start_response)

    def _read(self, stream, length):
        """The body (``length`` bytes, or up to EOF when chunked) within the deadline; None if a
        chunked one passes the size cap."""
        parts, got = [], 0
        with gevent.Timeout(self.deadline_secs, _BodyTimeout):
            while length is None or got < length:
                part = stream.read(READ_CHUNK if length is None else min(READ_CHUNK, length - got))
                if not part:
                    break
                parts.append(part)
                got += len(part)
                if length is None and got > self.max_bytes:
                    return None
        return b"".join(parts)


def _refuse(start_response, status, code, message, headers=()):
    """A JSON error that closes the connection (what is left of the body is never read)."""
    body = json.dumps({"error": code, "message": message}).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                            ("Connection", "close"), *headers])
    return [body]


def init_app(app):
    """Read bodies within a deadline, inside ProxyFix (which must wrap it afterwards)."""
    config = app.config
    app.wsgi_app = BodyDeadline(app.wsgi_app, deadline_secs=config["CHAT_BODY_DEADLINE_SECS"],
                                per_address=config["CHAT_BODIES_PER_ADDRESS"], max_bytes=config["CHAT_MAX_BODY_BYTES"])
