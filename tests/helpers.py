"""What the tests share: clients that speak real HTTP (a small JSON client, SSE and
long-poll readers), accounts, and the checks of exactly-once delivery. Servers are
started with ``deploy.launch`` (the same launcher the benchmarks and
``./scripts/cluster`` use)."""

import base64
import contextlib
import http.client
import itertools
import json
import socket
import time
import uuid
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

import gevent
import gevent.queue

from deploy.launch import Gunicorn

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse"
_names = itertools.count()


def unique(prefix):
    """A name no other test uses, for state shared across tests (rooms, users)."""
    return f"{prefix}{next(_names)}-{uuid.uuid4().hex[:6]}"


def operator_account(server, name):
    """An account created the operator's way (``flask users create``), as admins must be."""
    server.create_user(name, PASSWORD)
    return Api(server.url, name, PASSWORD)


def account(server, name=None):
    """A new account on a live server (registered over the API); an :class:`Api` signed in as it."""
    name = name or unique("u")
    response = Api(server.url).post("/api/auth/register", {"username": name, "password": PASSWORD})
    assert response.status in (201, 409), response.body
    return Api(server.url, name, PASSWORD)


def parse_id(text):
    ms, seq = text.split("-")
    return int(ms), int(seq)


class SSEParser:
    """Incremental SSE parser: feed bytes, get complete events as dicts."""

    def __init__(self):
        self._buffer = b""

    def feed(self, chunk):
        self._buffer += chunk.replace(b"\r\n", b"\n")
        events = []
        while b"\n\n" in self._buffer:
            block, self._buffer = self._buffer.split(b"\n\n", 1)
            event = {"comments": []}
            for line in block.decode().split("\n"):
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "":
                    event["comments"].append(value)
                elif field == "data":
                    event["data"] = event["data"] + "\n" + value if "data" in event else value
                else:
                    event[field] = value
            events.append(event)
        return events


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def json(self):
        return json.loads(self.body)

    @property
    def pid(self):
        return int(self.headers["X-Worker-Pid"])


class Api:
    """A JSON client for a live server; one connection per request (like many browsers)."""

    def __init__(self, base_url, user=None, password=None):
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname, parts.port
        self.auth = None
        self.auth_user = user
        if user:
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            self.auth = f"Basic {token}"

    def _headers(self, extra):
        headers = {"Host": f"{self.host}:{self.port}"}
        if self.auth:
            headers["Authorization"] = self.auth
        headers.update(extra or {})
        return headers

    def request(self, method, path, json_body=None, *, headers=None, body=None, timeout=30):
        headers = self._headers(headers)
        if json_body is not None:
            body = json.dumps(json_body)
            headers["Content-Type"] = "application/json"
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return Response(resp.status, dict(resp.getheaders()), resp.read())
        finally:
            conn.close()

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, json_body=None, **kw):
        return self.request("POST", path, json_body=json_body, **kw)

    def stream(self, path, headers=None, timeout=30):
        return SSEStream(self, path, headers, timeout)


class PollReader:
    """Reads a room by long-poll like the page's fallback: cursor in, cursor out, retry on errors."""

    def __init__(self, api, room, last_id, timeout=10, retry_secs=0.3):
        self.api = api
        self.room = room
        self.last_id = self.first_id = last_id
        self.timeout = timeout
        self.retry_secs = retry_secs
        self.ids = []
        self.resets = 0  # answers with "reset": true (a stale cursor)
        self._greenlet = gevent.spawn(self._run)

    def _run(self):
        while True:
            try:
                response = self.api.get(f"/api/rooms/{self.room}/poll?cursor={self.last_id}&timeout={self.timeout}",
                                        timeout=self.timeout + 20)
                if response.status == 200:
                    body = response.json
                    self.ids += [m["id"] for m in body["messages"]]
                    self.resets += bool(body.get("reset"))
                    self.last_id = body["cursor"]
                    continue
            except (OSError, http.client.HTTPException, ValueError):
                pass
            gevent.sleep(self.retry_secs)

    def wait_for(self, last_id, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ids and parse_id(self.ids[-1]) >= parse_id(last_id):
                return True
            gevent.sleep(0.05)
        return False

    def stop(self):
        self._greenlet.kill()


class SSEStream:
    """An open SSE response; ``events()`` yields parsed events as they arrive."""

    def __init__(self, api, path, headers, timeout):
        self.conn = http.client.HTTPConnection(api.host, api.port, timeout=timeout)
        self.conn.request("GET", path, headers=api._headers(headers))
        self._sock = self.conn.sock  # http.client may hand it to the response; keep it for abort()
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.headers = dict(self.response.getheaders())
        self.pid = int(self.headers.get("X-Worker-Pid", 0))
        self._parser = SSEParser()

    def events(self):
        while True:
            chunk = self.response.read1(65536)
            if not chunk:
                return
            yield from self._parser.feed(chunk)

    def messages_until(self, done, timeout=30):
        """Collect message events until ``done(messages)`` is true; returns the list."""
        got = []
        with gevent.Timeout(timeout, False):
            for event in self.events():
                if event.get("event") == "message":
                    got.append(json.loads(event["data"]))
                    if done(got):
                        break
        return got

    def close(self):
        # With "Connection: close" http.client hands the socket to the response.
        self.response.close()
        self.conn.close()

    def abort(self):
        """Cut the socket under a reader that may be blocked on it (from another greenlet)."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed


class LocalStream:
    """An SSE response from Flask's test client, read chunk by chunk."""

    def __init__(self, client, url, headers=None):
        self.response = client.get(url, headers=headers or {}, buffered=False)
        self.status = self.response.status_code
        self._chunks = gevent.queue.Queue()
        self._parser = SSEParser()
        self._pending = []
        # Drain the body continuously, as a server writing to a socket would.
        self._pump = gevent.spawn(self._read_body)

    def _read_body(self):
        for chunk in self.response.response:
            self._chunks.put(chunk)
        self._chunks.put(None)

    def next_event(self, timeout=5):
        """The next event (dict), or None if none came within ``timeout``."""
        with gevent.Timeout(timeout, False):
            while not self._pending:
                chunk = self._chunks.get()
                if chunk is None:
                    return None
                self._pending.extend(self._parser.feed(chunk))
            return self._pending.pop(0)
        return None

    def messages(self, count, timeout=10):
        """The next ``count`` message events' data, skipping pings and comments."""
        got = []
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            event = self.next_event(deadline - time.monotonic())
            if event is None:
                break
            if event.get("event") == "message":
                got.append(json.loads(event["data"]))
        return got

    def close(self):
        self._pump.kill()
        self.response.close()


class _Reconnecting:
    """What a browser's EventSource does, in a greenlet: open ``path``, hand each event to
    ``_on_event``, and reconnect with Last-Event-ID whenever the stream ends, forever."""

    def _start(self, api, path, last_id, retry_secs):
        self.api = api
        self.path = path
        self.last_id = self.first_id = last_id
        self.retry_secs = retry_secs
        self.pids = set()
        self.connects = 0
        self.ready = 0  # "ready" events: the stream is subscribed, "now" is defined
        self.frozen_until = 0.0
        self._stream = None
        self._greenlet = gevent.spawn(self._run)

    def _run(self):
        while True:
            headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
            try:
                self._stream = stream = self.api.stream(self.path, headers, timeout=60)
                self.connects += 1
                if stream.status != 200:
                    raise RuntimeError(f"stream answered {stream.status}")
                self.pids.add(stream.pid)
                for event in stream.events():
                    self._on_event(event)
                    while time.monotonic() < self.frozen_until:  # a stalled client: reads nothing
                        gevent.sleep(0.1)
            except (OSError, http.client.HTTPException, RuntimeError):
                pass
            gevent.sleep(self.retry_secs)

    def freeze(self, seconds):
        self.frozen_until = time.monotonic() + seconds

    def drop(self):
        """Cut the connection, as a network failure would; the reader reconnects by itself."""
        if self._stream is not None:
            self._stream.abort()

    def stop(self):
        self._greenlet.kill()


class ResumingReader(_Reconnecting):
    """Reads a room like a browser's EventSource: reconnects with Last-Event-ID, forever.

    Runs in its own greenlet; ``ids`` is everything it received, in arrival
    order, duplicates included, so tests can check exactly-once and order.
    """

    def __init__(self, api, room, last_id=None, retry_secs=0.2):
        self.room = room
        self.ids = []
        self.resets = 0
        self._start(api, f"/api/rooms/{room}/events", last_id, retry_secs)

    def _on_event(self, event):
        if "id" in event:
            self.last_id = event["id"]
        if event.get("event") == "message":
            self.ids.append(event["id"])
        elif event.get("event") == "reset":
            self.resets += 1
        elif event.get("event") == "ready":
            self.ready += 1

    def wait_for(self, last_id, timeout=30):
        """Wait until ``last_id`` arrived; True if it did."""
        deadline = time.monotonic() + timeout
        target = parse_id(last_id)
        while time.monotonic() < deadline:
            if self.ids and parse_id(self.ids[-1]) >= target:
                return True
            gevent.sleep(0.05)
        return False


def assert_exactly_once_in_order(received, expected, who="reader"):
    """Every expected id once, in order, nothing else; a readable diff otherwise."""
    if received == expected:
        return
    seen = set(received)
    missing = [i for i in expected if i not in seen]
    duplicates = sorted({i for i in received if received.count(i) > 1})
    backwards = [b for a, b in itertools.pairwise(received) if parse_id(b) <= parse_id(a)]
    raise AssertionError(f"{who}: {len(received)} received, {len(expected)} expected; "
                         f"missing {missing[:10]}, duplicates {duplicates[:10]}, "
                         f"out of order {backwards[:10]}")


def all_ids(api, room):
    """Every id in the room's history, oldest first, paging forwards."""
    ids, cursor = [], "0"
    while True:
        page = api.get(f"/api/rooms/{room}/messages?after={cursor}&limit=200").json
        ids += [m["id"] for m in page["messages"]]
        if not page["more"]:
            return ids
        cursor = ids[-1]


def kill_pubsub_repeatedly(client, times=20, every=0.05):
    """CLIENT KILL TYPE pubsub again and again while messages flow: one kill often
    passes even a hub that doesn't backfill (it resubscribes before the next message)."""
    for _ in range(times):
        client.client_kill_filter(_type="pubsub")
        gevent.sleep(every)


@contextlib.contextmanager
def gunicorn_with_redis(folder, workers=2, env=None):
    """A gunicorn and an embedded Redis of their own, under ``folder``; yields (server, redis)."""
    from chatapp.store.embedded_redis import EmbeddedRedis

    store = EmbeddedRedis(Path(folder) / "redis")
    store.start()
    try:
        with Gunicorn(store.url, workers=workers, env=env) as server:
            yield server, store
    finally:
        store.stop()


class _RoomCounts:
    """What a reader of many rooms received: ``received[room]``, every message id of that room
    in arrival order, duplicates included."""

    def has(self, room, last_id):
        ids = self.received.get(room)
        return bool(ids) and parse_id(ids[-1]) >= parse_id(last_id)

    def wait_until(self, done, timeout=30):
        """Wait until ``done(self)`` is true; True if it became so."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if done(self):
                return True
            gevent.sleep(0.05)
        return False

    def stop(self):
        self._greenlet.kill()


class MultiplexReader(_Reconnecting, _RoomCounts):
    """Reads ``/api/events`` like a browser's EventSource: reconnects with Last-Event-ID, forever.

    ``received[room]`` is every message id of that room in arrival order, duplicates
    included; ``frames`` every event as parsed, for tests about ids and notices.
    """

    def __init__(self, api, query="", last_id=None, retry_secs=0.2, path="/api/events"):
        self.received = {}
        self.frames = []
        self.resets = []
        self._start(api, path + (f"?{query}" if query else ""), last_id, retry_secs)

    def _on_event(self, event):
        if "id" in event:
            self.last_id = event["id"]
        kind = event.get("event")
        if kind:
            self.frames.append(event)
        if kind == "message":
            data = json.loads(event["data"])
            self.received.setdefault(data["room"], []).append(data["id"])
        elif kind == "reset":
            self.resets.append(json.loads(event["data"]))
        elif kind == "ready":
            self.ready += 1

    def events_of(self, kind):
        return [json.loads(e["data"]) for e in self.frames if e.get("event") == kind]


class MultiplexPoller(_RoomCounts):
    """Reads ``/api/poll`` like the page's fallback: cursor in, cursor out, retry on errors."""

    def __init__(self, api, query="", cursor=None, timeout=5, retry_secs=0.3):
        self.api = api
        self.query = query
        self.cursor = cursor
        self.timeout = timeout
        self.retry_secs = retry_secs
        self.received = {}
        self.answers = 0
        self.resets = []
        self._greenlet = gevent.spawn(self._run)

    def _run(self):
        while True:
            params = [p for p in (self.query, f"timeout={self.timeout}") if p]
            if self.cursor:
                params.append(f"cursor={self.cursor}")
            try:
                response = self.api.get("/api/poll?" + "&".join(params), timeout=self.timeout + 20)
                if response.status == 200:
                    body = response.json
                    for message in body["messages"]:
                        self.received.setdefault(message["room"], []).append(message["id"])
                    self.resets += body["resets"]
                    self.cursor = body["cursor"]
                    self.answers += 1
                    continue
            except (OSError, http.client.HTTPException, ValueError):
                pass
            gevent.sleep(self.retry_secs)


class Attempt(NamedTuple):
    start: float
    end: float
    status: int | None  # None: no HTTP answer (connection refused or reset)
    code: str  # the error code of a non-201, "connection" without an answer


class Poster:
    """Posts to one room through each of ``apis`` in turn (one per attempt); each message has an
    Idempotency-Key and is retried with it, backing off up to ``max_delay``, on anything but a
    201 until it gets one. ``acked``: key (also the text) -> id, in the order they were posted."""

    def __init__(self, apis, room, name, pause=0.08, max_delay=0.4):
        self.apis, self.room, self.name, self.pause, self.max_delay = apis, room, name, pause, max_delay
        self.acked = {}  # key (also the text) -> id
        self.attempts = []
        self.running = True
        self._turn = itertools.count()
        self._greenlet = gevent.spawn(self._run)

    def _run(self):
        for n in itertools.count():
            if not self.running:
                return
            key = f"{self.name}-{n}"
            delay = 0.05
            while True:
                api = self.apis[next(self._turn) % len(self.apis)]
                start = time.monotonic()
                status, code, body = None, "connection", None
                try:
                    response = api.post(f"/api/rooms/{self.room}/messages", {"text": key},
                                        headers={"Idempotency-Key": key}, timeout=10)
                    status, code = response.status, f"{response.status}"
                    body = response.json
                    code = "" if status == 201 else f"{status} {body.get('error')}"
                except (OSError, http.client.HTTPException, ValueError):
                    pass  # no answer, or one that isn't our JSON (e.g. a 502 page): retried all the same
                self.attempts.append(Attempt(start, time.monotonic(), status, code))
                if status == 201:
                    self.acked[key] = body["id"]
                    break
                gevent.sleep(delay)
                delay = min(delay * 2, self.max_delay)
            gevent.sleep(self.pause)

    def failures(self, since=0.0, until=float("inf")):
        return [a for a in self.attempts if a.status != 201 and a.end >= since and a.start <= until]

    def succeeded_since(self, moment):
        return any(a.status == 201 and a.start >= moment for a in self.attempts)

    @property
    def done(self):
        return self._greenlet.dead

    def stop(self):
        self.running = False
        self._greenlet.join(timeout=60)
        self._greenlet.kill()
