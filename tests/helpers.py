"""What the tests share (tests/conftest.py holds the fixtures): names and accounts, waiting
(:func:`eventually`), the app in this process (:class:`AuthActions`, :class:`LocalStream`),
clients that speak real HTTP to live servers (a small JSON client, SSE and long-poll
readers, posters), the checks of exactly-once delivery, and the page in a browser.
Servers are started with ``deploy.launch`` (the same launcher the benchmarks and
``./scripts/cluster`` use)."""

import base64
import contextlib
import http.client
import inspect
import itertools
import json
import re
import socket
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

import gevent
import gevent.queue

from deploy.launch import LIFTED_LIMITS, Gunicorn

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse"
_names = itertools.count()

# Tests that are not about rate limits must not trip them; the ones that are set their own.
GENEROUS_LIMITS = LIFTED_LIMITS

# The in-process apps' password hash: a hash costs microseconds instead of scrypt's 0.1 s of CPU.
# A stored hash names its method, so checks work either way. tests/test_abuse.py (and any test
# marked ``real_password_hash``) keeps the real one; so do the real servers.
CHEAP_PASSWORD_HASH = {"CHAT_PASSWORD_HASH": "pbkdf2:sha256:1"}


def unique(prefix):
    """A name no other test uses, for state shared across tests (rooms, users)."""
    return f"{prefix}{next(_names)}-{uuid.uuid4().hex[:6]}"


def basic(user, password=PASSWORD):
    """The Authorization header of HTTP Basic (what curl -u sends)."""
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


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
    """A stream id as a comparable pair."""
    ms, seq = text.split("-")
    return int(ms), int(seq)


# -- waiting ----------------------------------------------------------------------------

def eventually(check, timeout=10, interval=0.05, *, what=None, sleep=gevent.sleep):
    """Call ``check()`` every ``interval`` seconds until it passes, and return what it returned.

    It passes when it returns something true without raising AssertionError: a predicate, or
    a function of asserts that returns True. ``timeout`` is a bound, not a measurement: past it
    this fails, naming ``what`` (by default the check's source line) and saying what the last
    check returned or which assertion it failed. ``sleep`` is gevent's (the app's greenlets run
    meanwhile); a browser test passes :func:`page_sleep`.
    """
    deadline = time.monotonic() + timeout
    while True:
        failed = None
        try:
            value = check()
        except AssertionError as exc:
            failed, outcome = exc, f"the last check failed: {exc}"
        else:
            if value:
                return value
            outcome = f"the last check returned {value!r}"
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what or _source(check)}: still not so after {timeout} s; {outcome}") from failed
        sleep(interval)


def _source(function):
    try:
        return " ".join(inspect.getsource(function).split())[:200]
    except (OSError, TypeError):
        return repr(function)


# -- the app in this process (Flask's test client) -----------------------------------------

class AuthActions:
    """Sign in like the page does: keep the CSRF token the server hands out and send it back."""

    def __init__(self, client):
        self._client = client

    def _remember_token(self, response):
        token = (response.json or {}).get("csrf_token")
        if token:
            self._client.environ_base["HTTP_X_CSRFTOKEN"] = token
        return response

    def register(self, username="alice", password=PASSWORD):
        return self._remember_token(self._client.post(
            "/api/auth/register", json={"username": username, "password": password}))

    def login(self, username="alice", password=PASSWORD):
        return self._remember_token(self._client.post(
            "/api/auth/login", json={"username": username, "password": password}))

    def logout(self):
        return self._client.post("/api/auth/logout")


def signed_in(app, name="alice"):
    """A test client of ``app``, signed in (cookie and CSRF token) as a newly registered ``name``."""
    client = app.test_client()
    response = AuthActions(client).register(name)
    assert response.status_code == 201, response.json
    return client


def send(client, text, room="general"):
    """Post a message through a test client; the message (asserts the 201)."""
    response = client.post(f"/api/rooms/{room}/messages", json={"text": text})
    assert response.status_code == 201, response.json
    return response.json


def send_with_key(client, text, key, room="general"):
    """Post a message with an Idempotency-Key through a test client; the response, whatever it is."""
    return client.post(f"/api/rooms/{room}/messages", json={"text": text}, headers={"Idempotency-Key": key})


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


def until(stream, kind, limit=20):
    """The next event of ``kind`` on a :class:`LocalStream` (skipping the opening comment, pings
    and other events)."""
    for _ in range(limit):
        event = stream.next_event()
        assert event is not None, f"no {kind} event came"
        if event.get("event") == kind:
            return event
    raise AssertionError(f"no {kind} event within {limit} events")


# -- live servers, over real HTTP ----------------------------------------------------------

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

    def __init__(self, base_url, user=None, password=None, source=None):
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname, parts.port
        self.source = (source, 0) if source else None  # another loopback address: another client
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
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout, source_address=self.source)
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


def on_another_worker(make, avoid, attempts=30):
    """A reader made by ``make()`` whose connection landed on a worker other than ``avoid``."""
    for _ in range(attempts):
        reader = make()
        eventually(lambda r=reader: r.ready, 10, what="the stream to be ready")
        if reader.pids - {avoid}:
            return reader
        reader.stop()
    raise AssertionError("every connection landed on one worker")


def metric(server, name, labels=""):
    """A metric's value on a live server's /metrics (0 if it isn't there)."""
    text = Api(server.url).get("/metrics").body.decode()
    match = re.search(rf"^{name}{re.escape(labels)} (\S+)$", text, re.M)
    return float(match[1]) if match else 0.0


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


def kill_pubsub_repeatedly(client, times=20, every=0.05):
    """CLIENT KILL TYPE pubsub again and again while messages flow: one kill often
    passes even a hub that doesn't backfill (it resubscribes before the next message)."""
    for _ in range(times):
        client.client_kill_filter(_type="pubsub")
        gevent.sleep(every)


# -- readers and posters, like browsers and curl -------------------------------------------

def _wait_for_id(reader, last_id, timeout):
    """Until ``reader.ids`` reaches ``last_id`` (a reader of one room, in arrival order)."""
    def check():
        assert reader.ids and parse_id(reader.ids[-1]) >= parse_id(last_id), (
            f"{len(reader.ids)} ids received, the last {reader.ids[-1] if reader.ids else None}")
        return True
    return eventually(check, timeout, what=f"{type(reader).__name__} of {reader.room} (from {reader.first_id}) "
                                           f"to receive {last_id}")


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
        """Until ``last_id`` (or a later id) arrived; fails if it didn't within ``timeout``."""
        return _wait_for_id(self, last_id, timeout)

    def stop(self):
        self._greenlet.kill()


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
        """Until ``last_id`` (or a later id) arrived; fails if it didn't within ``timeout``."""
        return _wait_for_id(self, last_id, timeout)


class _RoomCounts:
    """What a reader of many rooms received: ``received[room]``, every message id of that room
    in arrival order, duplicates included."""

    def has(self, room, last_id):
        ids = self.received.get(room)
        return bool(ids) and parse_id(ids[-1]) >= parse_id(last_id)

    def wait_until(self, done, timeout=30):
        """Until ``done(self)`` is true; fails (with what each room received) if it isn't within ``timeout``."""
        def check():
            assert done(self), f"received {({room: len(ids) for room, ids in self.received.items()})} ids by room"
            return True
        return eventually(check, timeout, what=f"{type(self).__name__}: {_source(done)}")

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


# -- nothing lost, nothing twice, nothing out of order -------------------------------------

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


# -- the page, in a browser ----------------------------------------------------------------

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def say(page, text):
    page.fill("#text", text)
    page.press("#text", "Enter")


def texts(page):
    return page.locator("#messages .msg .text").all_inner_texts()


def wait_for_texts(page, wanted, timeout=15000):
    """Wait until every text in ``wanted`` is shown (confirmed, not pending); ``timeout`` in ms.

    Polled from here: the page's CSP (rightly) forbids the eval that
    Playwright's in-page wait_for_function polling would need.
    """
    def all_shown():
        shown = set(texts(page))
        missing = [w for w in wanted if w not in shown]
        assert not missing, f"not shown: {missing[:3]}"
        return True
    eventually(all_shown, timeout / 1000, 0.1, what=f"{len(wanted)} texts shown", sleep=page_sleep(page))


def page_sleep(page):
    """A ``sleep`` for :func:`eventually` that lets Playwright handle the page's events meanwhile."""
    return lambda seconds: page.wait_for_timeout(seconds * 1000)


def assert_once_in_order(page, wanted):
    shown = texts(page)
    counts = Counter(shown)
    assert all(counts[w] == 1 for w in wanted), {w: counts[w] for w in wanted if counts[w] != 1}
    assert [t for t in shown if t in set(wanted)] == wanted
