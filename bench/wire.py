"""The load generator's side of the wire: the requests each system takes (:class:`Target`)
and the parsing of HTTP response heads."""


import json
import time

from measure import basic_auth

MARK = b"bm:"


class Target:
    """How to talk to one system: request bytes for subscribe / poll / publish."""

    def __init__(self, spec):
        self.system = spec["system"]
        self.host = spec.get("host", "127.0.0.1")
        self.port = spec["port"]
        self.hostport = f"{self.host}:{self.port}".encode()
        self.users = [basic_auth(u, p) for u, p in spec.get("users") or []]
        self.posters = [basic_auth(u, p) for u, p in spec.get("posters") or []]
        self.poll_timeout = spec.get("poll_timeout", 25)
        self.resumable = self.system in ("chat", "nchan", "fake")

    def _auth(self, index, pool):
        if self.system != "chat" or not pool:
            return b""
        return b"Authorization: " + pool[index % len(pool)].encode() + b"\r\n"

    def sse_request(self, room, index, last_id=None):
        if self.system == "chat":
            path = f"/api/rooms/{room}/events"
        else:  # nchan, flask-sse and the fake server share /sub/<room>
            path = f"/sub/{room}"
        return self._stream_request(path, index, last_id)

    def mux_request(self, rooms, index, last_id=None):
        """One stream over several rooms: chat's ``/api/events?rooms=a,b`` (the account joined
        every room; ``rooms=`` narrows the stream to these), nchan's ``/msub/a,b`` (a
        multiplexed subscriber: one channel id per room)."""
        names = ",".join(rooms)
        if self.system == "chat":
            path = f"/api/events?rooms={names}"
        elif self.system == "nchan":
            path = f"/msub/{names}"
        else:
            raise ValueError(f"{self.system} has no multiplexed stream")
        return self._stream_request(path, index, last_id)

    def _stream_request(self, path, index, last_id):
        extra = b"Last-Event-ID: " + last_id + b"\r\n" if last_id and self.resumable else b""
        return (b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + self.hostport + b"\r\n"
                + self._auth(index, self.users) + b"Accept: text/event-stream\r\nCache-Control: no-cache\r\n"
                + extra + b"\r\n")

    def poll_request(self, room, index, state):
        """``state``: chat: the cursor (bytes) or None; nchan: (last_modified, etag) or None."""
        if self.system == "chat":
            if state is None:
                path = f"/api/rooms/{room}/poll?timeout=0".encode()
            else:
                path = f"/api/rooms/{room}/poll?timeout={self.poll_timeout}&cursor=".encode() + state
            extra = b""
        elif self.system == "nchan":
            path = f"/lp/{room}".encode()
            extra = (b"If-Modified-Since: " + state[0] + b"\r\nIf-None-Match: " + state[1] + b"\r\n"
                     if state else b"")
        else:
            raise ValueError(f"{self.system} has no long-poll")
        return (b"GET " + path + b" HTTP/1.1\r\nHost: " + self.hostport + b"\r\n"
                + self._auth(index, self.users) + extra + b"\r\n")

    def publish_request(self, room, lane, seq, run_id, want_id=False):
        """(request bytes, send_ns): the send time is taken here, just before the write.
        ``want_id``: ask for an answer :meth:`published_id` can read the message's id from
        (chat always answers ``{"id": ...}``; nchan does with ``Accept: application/json``)."""
        ns = time.time_ns()
        text = f"bm:{lane}:{seq}:{ns}:"
        accept = b""
        if self.system == "chat":
            path = f"/api/rooms/{room}/messages"
            body = json.dumps({"text": text, "client_id": f"{run_id}.{lane}.{seq}"}).encode()
            ctype = b"application/json"
        else:
            path = f"/pub/{room}"
            body = text.encode()
            ctype = b"text/plain"
            if want_id:
                accept = b"Accept: application/json\r\n"
        head = (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: " + self.hostport + b"\r\n"
                + self._auth(lane, self.posters) + accept + b"Content-Type: " + ctype
                + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        return head + body

    def published_id(self, body):
        """The event id a reader resumes after (its ``Last-Event-ID``), from a publish answer:
        chat's ``{"id": "<ms>-<seq>"}`` (the Redis stream id), nchan's JSON channel info
        ``{"last_message_id": "<time>:<tag>", ...}`` (the id of its EventSource frames)."""
        doc = json.loads(body)
        return doc["id"] if self.system == "chat" else doc["last_message_id"]

    def guess_request(self, user, password):
        """A password guess: ``GET /api/auth/me`` with HTTP Basic, one request per connection."""
        return (b"GET /api/auth/me HTTP/1.1\r\nHost: " + self.hostport + b"\r\nAuthorization: "
                + basic_auth(user, password).encode() + b"\r\nConnection: close\r\n\r\n")


class HTTPError(Exception):
    pass


class HeadParser:
    """Mixin: collect the HTTP head, then hand body bytes on (chunked or identity)."""

    def _reset_http(self):
        self.head = b""
        self.in_body = False
        self.chunked = False
        self.length = None  # Content-Length, if any
        self.remaining = 0  # bytes left in the current chunk
        self.crlf = 0  # bytes of CRLF still to skip after a chunk
        self.cbuf = b""  # an incomplete chunk-size line
        self.body_done = False
        self.status = 0
        self.headers = {}

    def _head_or_abort(self, data):
        """Feed response-head bytes; the body bytes that follow, None for "need more",
        or False when the head was malformed (the connection is already aborted)."""
        try:
            return self._feed_head(data)
        except HTTPError as exc:
            self._failed(exc)
            self.transport.abort()
            return False

    def _feed_head(self, data):
        """Return body bytes after the head, or None while the head is incomplete."""
        # A chunked answer's last CRLF may come in the read after its "0\r\n" (a long-poll's next
        # answer on the same connection then starts with it): no status line starts with one.
        head = (self.head + data).lstrip(b"\r\n")
        end = head.find(b"\r\n\r\n")
        if end < 0:
            self.head = head
            return None
        raw, rest = head[:end], head[end + 4:]
        self.head = b""
        lines = raw.split(b"\r\n")
        try:
            self.status = int(lines[0].split(b" ", 2)[1])
        except (IndexError, ValueError):
            raise HTTPError(f"bad status line {lines[0][:40]!r}") from None
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        self.headers = headers
        self.chunked = headers.get(b"transfer-encoding", b"").lower() == b"chunked"
        cl = headers.get(b"content-length")
        self.length = int(cl) if cl is not None and not self.chunked else None
        self.in_body = True
        return rest

    def _dechunk(self, data):
        """Chunked transfer decoding, incremental; returns the payload bytes in ``data``."""
        if self.cbuf:
            data = self.cbuf + data
            self.cbuf = b""
        out = []
        pos, n = 0, len(data)
        while pos < n:
            if self.remaining:
                take = min(self.remaining, n - pos)
                out.append(data[pos:pos + take])
                pos += take
                self.remaining -= take
                if not self.remaining:
                    self.crlf = 2
                continue
            if self.crlf:
                take = min(self.crlf, n - pos)
                pos += take
                self.crlf -= take
                continue
            eol = data.find(b"\r\n", pos)
            if eol < 0:
                self.cbuf = data[pos:]
                break
            size = int(data[pos:eol].split(b";", 1)[0], 16)
            pos = eol + 2
            if size == 0:
                self.body_done = True
                break
            self.remaining = size
        if len(out) == 1:
            return out[0]
        return b"".join(out)
