"""A hostile client with curl: one regression test per attack that used to work
(docs/security.md lists them with the limit that stops each). Passwords are hashed the
real way here (scrypt), as an attacker would meet them."""

import logging
import os
import re

import pytest
import redis

from chatapp.ops.logs import TEXT_FORMAT, TextFormatter
from chatapp.store import keys
from chatapp.web.context import services_of
from tests.helpers import GENEROUS_LIMITS, PASSWORD, AuthActions, LocalStream, basic, eventually

pytestmark = pytest.mark.real_password_hash


def series(app):
    """Every (name, labels) of the app's metrics now."""
    text = services_of(app).metrics.exposition().decode()
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line and not line.startswith("#")}


# -- metrics -------------------------------------------------------------------

def test_invented_methods_and_paths_create_no_metric_series(app, client):
    """Regression: `QWERTYUIOP /healthz` added a series per invented method."""
    client.get("/healthz")
    client.get("/no/such/path")
    client.open("/healthz", method="PATCH")
    client.open("/healthz", method="QWERTYUIOP")
    before = series(app)
    for i in range(20):
        client.open("/healthz", method=f"QWERTY{i}")
        client.open(f"/no/such/path/{i}", method=f"X{i}")
        client.get(f"/unmatched-{i}")
    assert series(app) == before
    assert 'method="other"' in "".join(before) and 'endpoint="other"' in "".join(before)


# -- input ----------------------------------------------------------------------

@pytest.mark.parametrize("body", ["[" * 30_000 + "]" * 30_000, "{\"t\":" * 10_000 + "1" + "}" * 10_000])
def test_deeply_nested_json_is_a_400(alice, caplog, body):
    """Regression: a deeply nested body under the size cap answered 500 with a traceback."""
    response = alice.post("/api/rooms/general/messages", data=body, content_type="application/json")
    assert response.status_code == 400 and response.json["error"] == "bad_json"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_path_cannot_forge_a_log_line(app, client, caplog):
    """Regression: `%0A` in a path started a line of its own in the text log."""
    caplog.set_level(logging.INFO)
    client.get("/x%0A2026-01-01 00:00:00,000 INFO pid=1 chatapp.access: GET /admin 200%0D%E2%80%A8")
    formatter = TextFormatter(TEXT_FORMAT)
    lines = [formatter.format(r) for r in caplog.records if r.name == "chatapp.access"]
    assert len(lines) == 1
    assert "\n" not in lines[0] and "\r" not in lines[0] and "\u2028" not in lines[0]
    assert re.search(r"GET /x\\n2026-01-01 .* 404 ", lines[0])


def test_admin_names_cannot_be_registered(redis_server, redis_client):
    from chatapp import create_app

    app = create_app({"REDIS_URL": redis_server.url, "SECRET_KEY": "t", "CHAT_ADMINS": "boss"})
    response = AuthActions(app.test_client()).register("Boss")
    assert response.status_code == 409 and response.json["error"] == "username_reserved"
    assert not redis_client.exists(keys.user("boss"))
    services_of(app).hub.close()


# -- password guessing -------------------------------------------------------------

DEFAULT_LOGIN_LIMITS = {"CHAT_RATE_LOGIN_IP": "10 per minute", "CHAT_RATE_LOGIN_USER": "10 per minute"}


@pytest.fixture
def guarded(redis_server, redis_client):
    """An app with the shipped login limits (the suite's default config lifts them)."""
    from chatapp import create_app

    def make(**overrides):
        app = create_app({"REDIS_URL": redis_server.url, "SECRET_KEY": "t", **DEFAULT_LOGIN_LIMITS, **overrides})
        apps.append(app)
        return app

    apps = []
    yield make
    for app in apps:
        services_of(app).hub.close()


def guess(client, name, password, ip="203.0.113.7"):
    return client.get("/api/auth/me", headers=basic(name, password), environ_base={"REMOTE_ADDR": ip})


def test_wrong_basic_passwords_are_limited_per_ip(guarded):
    """Regression: 40 wrong passwords over HTTP Basic were all 401, none 429."""
    app = guarded()
    client = app.test_client()
    AuthActions(client).register("alice")
    statuses = [guess(client, f"user{i}", "wrong password").status_code for i in range(12)]
    assert statuses[:10] == [401] * 10 and statuses[10:] == [429, 429]
    refused = guess(client, "alice", PASSWORD)  # even the right one, from that address, for now
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert guess(client, "alice", PASSWORD, ip="198.51.100.1").status_code == 200


def test_wrong_basic_passwords_are_limited_per_name_from_any_ip(guarded):
    app = guarded()
    client = app.test_client()
    AuthActions(client).register("alice")
    statuses = [guess(client, "alice", "wrong password", ip=f"203.0.113.{i}").status_code for i in range(12)]
    assert statuses == [401] * 10 + [429] * 2


def test_guessing_does_not_lock_out_a_client_already_signed_in(guarded):
    app = guarded()
    browser, curl, stranger = app.test_client(), app.test_client(), app.test_client()
    AuthActions(browser).register("alice")
    assert guess(curl, "alice", PASSWORD, ip="198.51.100.9").status_code == 200  # verified once
    for i in range(15):
        guess(stranger, "alice", f"guess {i}", ip=f"203.0.113.{i}")
    assert guess(stranger, "alice", "one more", ip="203.0.113.99").status_code == 429
    assert browser.get("/api/auth/me").json["user"] == "alice"  # the session cookie
    assert guess(curl, "alice", PASSWORD, ip="198.51.100.9").status_code == 200  # the verified credential


def test_basic_and_login_share_one_count(guarded):
    app = guarded(CHAT_RATE_LOGIN_IP="4 per minute")
    client = app.test_client()
    AuthActions(client).register("alice")
    for _ in range(2):
        assert guess(client, "alice", "wrong", ip="127.0.0.1").status_code == 401
    for _ in range(2):
        assert AuthActions(app.test_client()).login("alice", "wrong").status_code == 401
    assert AuthActions(app.test_client()).login("alice").status_code == 429


class BlockedHash:
    """Stands in for the hash function: holds a hashing thread until released."""

    def __init__(self, monkeypatch):
        from gevent import monkey

        import chatapp.accounts.passwords

        self.entered = monkey.get_original("threading", "Event")()
        self.release = monkey.get_original("threading", "Event")()
        self.thread_ids = []
        self.niceness = []
        original = chatapp.accounts.passwords.check_password_hash
        get_ident = monkey.get_original("_thread", "get_ident")

        def blocking(stored, password):
            self.thread_ids.append(get_ident())
            self.niceness.append(os.getpriority(os.PRIO_PROCESS, 0))  # this thread's, on Linux
            self.entered.set()
            self.release.wait(30)
            return original(stored, password)

        monkeypatch.setattr(chatapp.accounts.passwords, "check_password_hash", blocking)


def test_password_hashing_runs_off_the_event_loop(guarded, monkeypatch):
    """Regression: each guess ran scrypt on the worker's only thread, stalling its streams."""
    import gevent
    from gevent import monkey

    app = guarded()
    client = app.test_client()
    AuthActions(client).register("alice")
    blocked = BlockedHash(monkeypatch)
    guessing = gevent.spawn(guess, app.test_client(), "alice", "wrong")
    while not blocked.entered.is_set():
        gevent.sleep(0.01)
    # The hash is stuck in its thread, yet this worker goes on serving: a message is sent and read.
    sent = client.post("/api/rooms/general/messages", json={"text": "still here"})
    assert sent.status_code == 201
    assert client.get("/api/rooms/general/messages").json["messages"][-1]["text"] == "still here"
    assert not guessing.ready()
    blocked.release.set()
    assert guessing.get(timeout=10).status_code == 401
    assert blocked.thread_ids and monkey.get_original("_thread", "get_ident")() not in blocked.thread_ids
    assert blocked.niceness == [19]  # hashing only gets the CPU the event loop leaves
    assert os.getpriority(os.PRIO_PROCESS, 0) == 0  # the event loop's thread is untouched


def test_a_flood_of_sign_ins_past_the_hash_queue_is_told_to_retry(guarded, monkeypatch):
    import gevent

    app = guarded(CHAT_HASH_THREADS=1, CHAT_HASH_QUEUE=1, CHAT_RATE_LOGIN_IP="100 per minute",
                  CHAT_RATE_LOGIN_USER="100 per minute")
    AuthActions(app.test_client()).register("alice")
    blocked = BlockedHash(monkeypatch)
    waiting = [gevent.spawn(guess, app.test_client(), "alice", "wrong") for _ in range(2)]
    hasher = services_of(app).users.hasher
    while hasher.waiting < 2:  # one hashing, one queued behind it
        gevent.sleep(0.01)
    refused = guess(app.test_client(), "alice", "wrong")
    assert refused.status_code == 503 and refused.json["error"] == "busy"
    assert refused.headers["Retry-After"] == "1"
    blocked.release.set()
    assert [g.get(timeout=10).status_code for g in waiting] == [401, 401]


# -- anonymous requests ---------------------------------------------------------------

def test_anonymous_requests_leave_no_keys_in_redis(app, redis_client):
    """Regression: each cookie-less GET /api/auth/csrf stored a session for 14 days."""
    before = redis_client.dbsize()
    for _ in range(1000):
        client = app.test_client()  # a new visitor each time: no cookie
        assert client.get("/api/auth/csrf").status_code == 200
        client.get("/api/rooms")
        client.get("/")
    assert redis_client.dbsize() == before


def test_the_anonymous_csrf_token_works_for_a_login_form(auth, app, redis_client):
    auth.register("alice")
    visitor = app.test_client()
    token = visitor.get("/api/auth/csrf").json["csrf_token"]
    assert visitor.get_cookie("chat_csrf") is not None and visitor.get_cookie("chat_session") is None
    form = {"username": "alice", "password": PASSWORD}
    assert visitor.post("/api/auth/login", data=form).status_code == 403  # no token: login CSRF
    response = visitor.post("/api/auth/login", data=form, headers={"X-CSRFToken": token})
    assert response.status_code == 200 and visitor.get("/api/auth/me").json["user"] == "alice"


def test_a_forged_anonymous_csrf_cookie_is_refused(auth, app):
    auth.register("alice")
    visitor, other = app.test_client(), app.test_client()
    token = other.get("/api/auth/csrf").json["csrf_token"]
    visitor.set_cookie("chat_csrf", "forged.value")
    response = visitor.post("/api/auth/login", data={"username": "alice", "password": PASSWORD},
                            headers={"X-CSRFToken": token})
    assert response.status_code == 403 and response.json["error"] == "csrf_failed"


# -- sessions can't escape ---------------------------------------------------------------

def indexed(redis_client, user):
    return {sid.decode() for sid in redis_client.zrange(keys.user_sessions(user), 0, -1)}


def stored_sessions_of(redis_client, app, user):
    found = set()
    for key in redis_client.scan_iter("chat:session:*"):
        data = app.session_interface.serializer.decode(redis_client.get(key))
        if data.get("user") == user:
            found.add(key.decode().removeprefix("chat:session:"))
    return found


@pytest.mark.parametrize("config", [{**GENEROUS_LIMITS, "CHAT_HASH_QUEUE": 32}])
def test_concurrent_logins_all_land_in_the_index(auth, app, redis_client):
    """Regression: a login pruned another login's session from the index before it was stored."""
    import gevent

    auth.register("alice")
    clients = [app.test_client() for _ in range(20)]
    logins = [gevent.spawn(AuthActions(c).login, "alice") for c in clients]
    assert [g.get(timeout=30).status_code for g in logins] == [200] * 20
    sids = {c.get_cookie("chat_session").value for c in clients}
    assert stored_sessions_of(redis_client, app, "alice") <= indexed(redis_client, "alice")
    assert sids <= indexed(redis_client, "alice")
    app.test_cli_runner().invoke(args=["users", "kick", "alice"])
    assert stored_sessions_of(redis_client, app, "alice") == set()
    assert all(c.get("/api/auth/me").status_code == 401 for c in clients)


def verify_then(monkeypatch, app, action):
    """Run ``action`` in the instant after a login's password check, before its session exists."""
    users = services_of(app).users
    original = users.authenticate

    def racing(name, password):
        account = original(name, password)
        with app.app_context():
            action()
        return account

    monkeypatch.setattr(users, "authenticate", racing)


def test_a_login_racing_a_ban_gets_no_session(auth, app, redis_client, monkeypatch):
    auth.register("alice")
    auth.logout()
    from chatapp.web.admin import set_banned

    verify_then(monkeypatch, app, lambda: set_banned("alice", True))
    late = app.test_client()
    response = AuthActions(late).login("alice")
    assert response.status_code == 403 and response.json["error"] == "banned"
    assert stored_sessions_of(redis_client, app, "alice") == set()


def test_a_login_racing_a_kick_stays_reachable(auth, app, redis_client, monkeypatch):
    auth.register("alice")
    from chatapp.web.admin import kick

    verify_then(monkeypatch, app, lambda: kick("alice"))
    late = app.test_client()
    assert AuthActions(late).login("alice").status_code == 200  # logged in after the kick: fine
    assert stored_sessions_of(redis_client, app, "alice") == indexed(redis_client, "alice") != set()
    monkeypatch.undo()
    app.test_cli_runner().invoke(args=["users", "kick", "alice"])
    assert late.get("/api/auth/me").status_code == 401


def test_a_login_racing_a_password_change_is_refused(auth, app, redis_client, monkeypatch):
    auth.register("alice")
    users = services_of(app).users
    verify_then(monkeypatch, app, lambda: users.change_password("alice", PASSWORD, "a new password"))
    response = AuthActions(app.test_client()).login("alice")  # checked against the old password
    assert response.status_code == 401
    assert stored_sessions_of(redis_client, app, "alice") <= indexed(redis_client, "alice")


def test_a_banned_users_cookie_is_refused_on_its_next_request(auth, client, app):
    auth.register("alice")
    assert client.get("/api/auth/me").status_code == 200
    app.test_cli_runner().invoke(args=["users", "ban", "alice"])
    assert client.get("/api/auth/me").status_code == 401


@pytest.mark.parametrize("config", [{**GENEROUS_LIMITS, "CHAT_MAX_SESSIONS_PER_USER": 3}])
def test_a_user_keeps_at_most_the_configured_sessions(auth, app, redis_client):
    auth.register("alice")
    clients = [app.test_client() for _ in range(4)]
    for c in clients:
        assert AuthActions(c).login("alice").status_code == 200
    assert len(indexed(redis_client, "alice")) == 3
    assert clients[0].get("/api/auth/me").status_code == 401  # the oldest ended
    assert all(c.get("/api/auth/me").status_code == 200 for c in clients[1:])
    assert auth._client.get("/api/auth/me").status_code == 401  # the registration's session too


@pytest.mark.parametrize("config", [{**GENEROUS_LIMITS, "CHAT_SESSION_RECHECK_SECS": 1, "CHAT_HEARTBEAT_SECS": 0.5}])
def test_a_stream_whose_session_ended_silently_closes_within_the_recheck(alice, redis_client):
    """Regression: once past its first check, a stream whose control message was missed
    lived on for the session's whole lifetime (14 days)."""
    import gevent

    sid = alice.get_cookie("chat_session").value
    stream = LocalStream(alice, "/api/rooms/general/events")
    stream.next_event()
    gevent.sleep(1.5)  # past the first check
    redis_client.delete(f"chat:session:{sid}")  # ended, no control message
    assert ended_with(stream, "session_expired")


@pytest.mark.parametrize("config", [{**GENEROUS_LIMITS, "CHAT_SESSION_RECHECK_SECS": 1, "CHAT_HEARTBEAT_SECS": 0.5}])
def test_a_basic_auth_stream_of_a_user_banned_silently_closes(auth, app, redis_client):
    import gevent

    auth.register("bob")
    curl = app.test_client()
    stream = LocalStream(curl, "/api/rooms/general/events", headers=basic("bob", PASSWORD))
    stream.next_event()
    gevent.sleep(1.5)
    redis_client.set(keys.banned("bob"), "1")  # as a ban whose control message was missed
    assert ended_with(stream, "banned")


def ended_with(stream, reason, within=10):
    for _ in range(int(within / 0.5) + 2):
        event = stream.next_event(timeout=0.5)
        if event and event.get("event") == "retry" and reason in event.get("data", ""):
            stream.close()
            return True
    stream.close()
    return False


# -- storage ------------------------------------------------------------------------

def test_an_idempotency_record_keeps_the_id_not_a_copy(alice, redis_client):
    """Regression: each record held a full copy of its message for a day."""
    first = alice.post("/api/rooms/general/messages", json={"text": "x" * 3000, "client_id": "k-1"})
    key = "chat:{general}:idem:alice:k-1"
    assert redis_client.get(key) == first.json["id"].encode()
    replay = alice.post("/api/rooms/general/messages", json={"text": "x" * 3000, "client_id": "k-1"})
    assert replay.status_code == 201 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json == first.json
    assert redis_client.xlen("chat:{general}:log") == 1


def test_a_replay_of_a_message_trimmed_since_keeps_its_id(alice, redis_client):
    first = alice.post("/api/rooms/general/messages", json={"text": "gone soon", "client_id": "k-2"}).json
    redis_client.xtrim("chat:{general}:log", maxlen=0)
    replay = alice.post("/api/rooms/general/messages", json={"text": "gone soon", "client_id": "k-2"})
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json == first and redis_client.xlen("chat:{general}:log") == 0


def test_a_record_written_by_an_earlier_release_still_replays(alice, redis_client):
    old = '{"id":"1-0","ts":1,"room":"general","user":"alice","text":"old","client_id":"k-3"}'
    redis_client.set("chat:{general}:idem:alice:k-3", old)
    replay = alice.post("/api/rooms/general/messages", json={"text": "old", "client_id": "k-3"})
    assert replay.headers["Idempotent-Replayed"] == "true" and replay.json["id"] == "1-0"


@pytest.fixture
def full_store(tmp_path):
    """An app on a Redis of its own with a small maxmemory, and a way to fill and empty it."""
    from chatapp import create_app
    from chatapp.store.embedded_redis import EmbeddedRedis

    server = EmbeddedRedis(tmp_path / "redis", maxmemory="20mb")
    server.start()
    client = redis.Redis.from_url(server.url)
    app = create_app({"REDIS_URL": server.url, "SECRET_KEY": "t", **GENEROUS_LIMITS})

    def fill():
        for i in range(1000):
            try:
                client.set(f"ballast:{i}", b"x" * 100_000)
            except redis.OutOfMemoryError:
                # Firmly full: filled this way it is a few KB under its cap, room for small writes.
                client.config_set("maxmemory", "10mb")
                return
        raise AssertionError("the store never filled up")

    def empty():
        client.delete(*client.keys("ballast:*"))

    yield app, client, fill, empty
    services_of(app).hub.close()
    client.close()
    server.stop()


def test_a_full_store_refuses_posts_with_507_and_loses_nothing(full_store):
    app, store, fill, empty = full_store
    assert store.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    browser, curl = app.test_client(), app.test_client()
    AuthActions(browser).register("alice")
    AuthActions(curl).register("bob")
    AuthActions(app.test_client()).register("carol")
    assert curl.get("/api/auth/me", headers=basic("bob", PASSWORD)).status_code == 200  # bob's curl is signed in
    acked = [browser.post("/api/rooms/general/messages", json={"text": f"m{i}"}).json["id"] for i in range(5)]
    fill()
    # A credential not verified before can't be checked now (its attempt can't be counted):
    # refused before any hash, right or wrong, so a full store is no guessing oracle.
    for password in (PASSWORD, "wrong password"):
        unverified = app.test_client().get("/api/auth/me", headers=basic("carol", password))
        assert unverified.status_code == 507 and unverified.json["error"] == "storage_full"
    refused = browser.post("/api/rooms/general/messages", json={"text": "later", "client_id": "retry-1"})
    assert refused.status_code == 507 and refused.json["error"] == "storage_full"
    assert int(refused.headers["Retry-After"]) > 0
    # Reading goes on: history, the signed-in session, and streams (told "ready", not "retry").
    history = browser.get("/api/rooms/general/messages").json["messages"]
    assert [m["id"] for m in history] == acked
    assert browser.get("/api/auth/me").status_code == 200
    stream = LocalStream(curl, "/api/rooms/general/events", headers=basic("bob", PASSWORD))
    assert [stream.next_event().get("event") for _ in range(2)] == [None, "ready"]
    stream.close()
    poll = curl.get("/api/rooms/general/poll?timeout=0", headers=basic("bob", PASSWORD))
    assert poll.status_code == 200
    empty()
    retried = browser.post("/api/rooms/general/messages", json={"text": "later", "client_id": "retry-1"})
    assert retried.status_code == 201 and "Idempotent-Replayed" not in retried.headers
    again = browser.post("/api/rooms/general/messages", json={"text": "later", "client_id": "retry-1"})
    assert again.headers["Idempotent-Replayed"] == "true"
    ids = [m["id"] for m in browser.get("/api/rooms/general/messages").json["messages"]]
    assert ids == [*acked, retried.json["id"]]


# -- streams per user --------------------------------------------------------------------

@pytest.fixture
def capped(redis_server, redis_client):
    from chatapp import create_app

    apps = [create_app({"REDIS_URL": redis_server.url, "SECRET_KEY": "t", **GENEROUS_LIMITS,
                        "CHAT_MAX_STREAMS_PER_USER": 3}) for _ in range(2)]  # two workers, one count
    yield apps
    for app in apps:
        services_of(app).hub.close()


def test_streams_per_user_are_capped_across_workers(capped, redis_client):
    """Regression: one account could hold as many streams as the workers' total capacity."""
    first, second = capped
    AuthActions(first.test_client()).register("alice")
    open_streams = []
    for app in (first, second, first):
        stream = LocalStream(app.test_client(), "/api/rooms/general/events", headers=basic("alice", PASSWORD))
        assert [stream.next_event().get("event") for _ in range(2)] == [None, "ready"]
        open_streams.append(stream)
    refused = LocalStream(second.test_client(), "/api/rooms/general/events", headers=basic("alice", PASSWORD))
    event = refused.next_event()
    assert refused.status == 200 and event["event"] == "retry" and "too_many_streams" in event["data"]
    assert int(event["retry"]) >= 10_000
    poll = second.test_client().get("/api/rooms/general/poll?timeout=0", headers=basic("alice", PASSWORD))
    assert poll.status_code == 429 and poll.json["error"] == "too_many_streams"
    AuthActions(second.test_client()).register("bob")  # others are not affected
    other = LocalStream(second.test_client(), "/api/rooms/general/events", headers=basic("bob", PASSWORD))
    assert [other.next_event().get("event") for _ in range(2)] == [None, "ready"]
    other.close()
    open_streams.pop().close()  # closing one frees its slot
    eventually(lambda: redis_client.zcard(keys.user_streams("alice")) == 2, timeout=2.5)
    again = LocalStream(second.test_client(), "/api/rooms/general/events", headers=basic("alice", PASSWORD))
    assert [again.next_event().get("event") for _ in range(2)] == [None, "ready"]
    for stream in [*open_streams, again]:
        stream.close()


@pytest.mark.parametrize("config", [{**GENEROUS_LIMITS, "CHAT_MAX_STREAMS_PER_USER": 2,
                                     "CHAT_STREAM_LEASE_SECS": 0.6}])
def test_live_streams_keep_their_leases_and_a_dead_workers_run_out(app, redis_client):
    """A live stream's lease is renewed past its length; a worker killed with its streams
    open stops renewing, and its user's count heals by itself."""
    import gevent

    from chatapp.ops.errors import TooManyStreams
    from chatapp.store.keys import user_streams
    from chatapp.store.stream_slots import StreamSlots

    AuthActions(app.test_client()).register("carol")
    stream = LocalStream(app.test_client(), "/api/rooms/general/events", headers=basic("carol", PASSWORD))
    assert [stream.next_event().get("event") for _ in range(2)] == [None, "ready"]
    dead_worker = StreamSlots(redis_client, 2, lease_secs=0.6)  # takes a slot, then never renews
    dead_worker.acquire("carol")
    with pytest.raises(TooManyStreams):
        dead_worker.acquire("carol")
    gevent.sleep(1.5)  # 2.5 leases: the live stream's was renewed, the dead worker's ran out
    seconds, micros = redis_client.time()
    assert redis_client.zcount(user_streams("carol"), seconds * 1000 + micros // 1000, "+inf") == 1
    assert dead_worker.acquire("carol")
    with pytest.raises(TooManyStreams):
        dead_worker.acquire("carol")
    stream.close()



def test_a_burst_of_guesses_cannot_queue_more_hashes_than_the_limit(guarded, monkeypatch):
    """Regression: failures were counted only after their hash, so every guess of a burst
    passed the check while the first were still hashing (43 hashed against a limit of 10)."""
    import gevent

    app = guarded(CHAT_RATE_LOGIN_IP="3 per minute", CHAT_HASH_QUEUE=50)
    AuthActions(app.test_client()).register("alice")
    blocked = BlockedHash(monkeypatch)
    burst = [gevent.spawn(guess, app.test_client(), f"name{i}", "wrong") for i in range(10)]
    gevent.joinall(burst, timeout=3)  # those refused answer at once; the others wait on the hash
    refused = [g.value.status_code for g in burst if g.ready()]
    assert refused == [429] * 7 and services_of(app).users.hasher.waiting == 3
    blocked.release.set()
    assert sorted(g.get(timeout=10).status_code for g in burst) == [401] * 3 + [429] * 7


# -- found in review ------------------------------------------------------------------------

def test_a_login_whose_script_fails_leaves_no_session(app, redis_client, monkeypatch):
    """Regression: the script raised, and the response's save stored the session unindexed."""
    AuthActions(app.test_client()).register("gina")

    def blip(*args, **kwargs):  # the script never reached Redis (a reset connection, a failover)
        raise redis.ConnectionError("connection reset")

    monkeypatch.setattr(app.session_interface, "_start", blip)
    browser = app.test_client()
    assert AuthActions(browser).login("gina").status_code == 503
    monkeypatch.undo()
    assert browser.get("/api/auth/me").status_code == 401
    assert stored_sessions_of(redis_client, app, "gina") <= indexed(redis_client, "gina")


def test_a_logout_that_fails_midway_still_ends_the_session(app, redis_client, monkeypatch):
    """Regression: the index entry went first; a failure after it left the session alive, unindexed."""
    browser = app.test_client()
    AuthActions(browser).register("hank")

    def blip(*args, **kwargs):
        raise redis.ConnectionError("connection reset")

    monkeypatch.setattr(services_of(app).broker, "publish_control", blip)
    assert browser.post("/api/auth/logout").status_code == 503
    monkeypatch.undo()
    assert browser.get("/api/auth/me").status_code == 401
    assert stored_sessions_of(redis_client, app, "hank") == set()


@pytest.mark.parametrize("config", [{**GENEROUS_LIMITS, "CHAT_SESSION_RECHECK_SECS": 0.5}])
def test_a_basic_stream_ends_on_a_password_change_whose_message_was_lost(app):
    AuthActions(app.test_client()).register("dave")
    stream = LocalStream(app.test_client(), "/api/rooms/general/events", headers=basic("dave", PASSWORD))
    assert [stream.next_event().get("event") for _ in range(2)] == [None, "ready"]
    with app.app_context():  # as /api/auth/password does, minus the control message
        services_of(app).users.change_password("dave", PASSWORD, "a brand new password")
    assert ended_with(stream, "password_changed")


def test_head_on_events_opens_no_stream_and_holds_no_slot(app, redis_client):
    AuthActions(app.test_client()).register("frank")
    for _ in range(3):
        response = app.test_client().head("/api/rooms/general/events", headers=basic("frank", PASSWORD))
        assert response.status_code == 200 and response.mimetype == "text/event-stream"
    assert redis_client.zcard(keys.user_streams("frank")) == 0
    assert app.test_client().head("/api/rooms/nope/events", headers=basic("frank", PASSWORD)).status_code == 404


def test_the_largest_cursor_is_a_400_not_a_500(alice):
    top = "18446744073709551615-18446744073709551615"
    for response in (alice.post("/api/rooms/unread", json={"rooms": {"general": top}}),
                     alice.get(f"/api/rooms/general/messages?after={top}"),
                     alice.get(f"/api/rooms/general/poll?cursor={top}&timeout=0")):
        assert response.status_code == 400 and response.json["error"] == "bad_cursor"


def test_on_a_full_store_guessing_stays_limited_bans_work_and_leases_renew(full_store):
    """Regression: a full Redis stopped counting failed guesses (free guessing), made a ban
    fail before it kicked, and refused every lease renewal (so the stream cap ran out)."""
    app, _, fill, _ = full_store
    AuthActions(app.test_client()).register("alice")
    mallory = app.test_client()
    AuthActions(mallory).register("mallory")
    slots = services_of(app).hub.slots
    stream = LocalStream(app.test_client(), "/api/rooms/general/events", headers=basic("alice", PASSWORD))
    assert [stream.next_event().get("event") for _ in range(2)] == [None, "ready"]
    fill()
    guesses = {app.test_client().get("/api/auth/me", headers=basic("alice", f"guess {i}")).status_code
               for i in range(15)}
    assert guesses == {507}  # never a 401: no hash answers while attempts can't be counted
    slots.renew(services_of(app).hub.readers())  # would raise OOM
    with app.app_context():
        from chatapp.web.admin import set_banned

        with pytest.raises(redis.OutOfMemoryError):
            set_banned("mallory", True)
    assert mallory.get("/api/auth/me").status_code == 401  # kicked all the same
    stream.close()


def test_a_credential_verified_on_one_worker_is_not_locked_out_on_another(redis_server, redis_client):
    """Regression: the 'already verified' cache was per worker, so after a stranger's guesses
    at a name its owner's client was refused by every worker it hadn't met yet."""
    from chatapp import create_app
    from chatapp.core.reasons import Ending
    from chatapp.web.auth import end_user_sessions

    config = {"REDIS_URL": redis_server.url, "SECRET_KEY": "t", **DEFAULT_LOGIN_LIMITS}
    first, second = create_app(config), create_app(config)
    try:
        AuthActions(first.test_client()).register("alice")
        assert guess(first.test_client(), "alice", PASSWORD, ip="198.51.100.9").status_code == 200
        for i in range(12):  # a stranger, from rotating addresses, uses up the name's limit
            guess(first.test_client(), "alice", f"guess {i}", ip=f"203.0.113.{i}")
        assert guess(second.test_client(), "alice", "one more", ip="203.0.113.99").status_code == 429
        assert guess(second.test_client(), "alice", PASSWORD, ip="198.51.100.9").status_code == 200
        # As the view does (its own per-name limit is used up by the stranger): the control
        # message end_user_sessions publishes is what makes the other worker drop the
        # credential it trusts (chatapp.accounts.users.UserStore.trust_while).
        with first.app_context():
            services_of(first).users.change_password("alice", PASSWORD, "a new password here")
            end_user_sessions("alice", Ending.PASSWORD_CHANGED)
        eventually(lambda: guess(second.test_client(), "alice", PASSWORD, ip="198.51.100.10").status_code != 200,
                   timeout=10, interval=0.02)
        assert guess(second.test_client(), "alice", PASSWORD, ip="198.51.100.10").status_code in (401, 429)
    finally:
        services_of(first).hub.close()
        services_of(second).hub.close()
