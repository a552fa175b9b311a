"""A hostile client with curl: one regression test per attack that used to work
(docs/security.md lists them with the limit that stops each)."""

import logging
import re

import pytest

from chatapp.logs import TextFormatter, TEXT_FORMAT
from tests.conftest import PASSWORD, AuthActions
from tests.test_auth import basic


def series(app):
    """Every (name, labels) of the app's metrics now."""
    text = app.extensions["chat.metrics"].exposition().decode()
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
    assert not redis_client.exists("chat:user:boss")
    app.extensions["chat.hub"].close()


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
        app.extensions["chat.hub"].close()


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

        import chatapp.passwords

        self.entered = monkey.get_original("threading", "Event")()
        self.release = monkey.get_original("threading", "Event")()
        self.thread_ids = []
        original = chatapp.passwords.check_password_hash
        get_ident = monkey.get_original("_thread", "get_ident")

        def blocking(stored, password):
            self.thread_ids.append(get_ident())
            self.entered.set()
            self.release.wait(30)
            return original(stored, password)

        monkeypatch.setattr(chatapp.passwords, "check_password_hash", blocking)


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


def test_a_flood_of_sign_ins_past_the_hash_queue_is_told_to_retry(guarded, monkeypatch):
    import gevent

    app = guarded(CHAT_HASH_THREADS=1, CHAT_HASH_QUEUE=1, CHAT_RATE_LOGIN_IP="100 per minute",
                  CHAT_RATE_LOGIN_USER="100 per minute")
    AuthActions(app.test_client()).register("alice")
    blocked = BlockedHash(monkeypatch)
    waiting = [gevent.spawn(guess, app.test_client(), "alice", "wrong") for _ in range(2)]
    hasher = app.extensions["chat.users"].hasher
    while hasher.waiting < 2:  # one hashing, one queued behind it
        gevent.sleep(0.01)
    refused = guess(app.test_client(), "alice", "wrong")
    assert refused.status_code == 503 and refused.json["error"] == "busy"
    assert refused.headers["Retry-After"] == "1"
    blocked.release.set()
    assert [g.get(timeout=10).status_code for g in waiting] == [401, 401]
