"""Rate limits: 429 JSON with Retry-After, per user / IP / login name, configurable."""

import pytest

from tests.helpers import PASSWORD, AuthActions, basic


@pytest.fixture
def config(config):
    return {**config, "CHAT_RATE_MESSAGES": "3 per 10 seconds", "CHAT_RATE_LOGIN_IP": "4 per minute",
            "CHAT_RATE_LOGIN_USER": "2 per minute", "CHAT_RATE_REGISTER_IP": "3 per hour",
            "CHAT_RATE_STREAMS": "2 per minute"}


def assert_429(response):
    assert response.status_code == 429, response.data
    assert response.json["error"] == "rate_limited"
    assert 1 <= int(response.headers["Retry-After"]) <= 3600


def test_messages_per_user(alice, app):
    for i in range(3):
        assert alice.post("/api/rooms/general/messages", json={"text": str(i)}).status_code == 201
    assert_429(alice.post("/api/rooms/general/messages", json={"text": "one too many"}))
    AuthActions(other := app.test_client()).register("bob")
    assert other.post("/api/rooms/general/messages", json={"text": "bob is fine"}).status_code == 201


def test_logins_per_username_whoever_guesses(auth, app):
    auth.register("alice")
    for _ in range(2):
        assert app.test_client().post("/api/auth/login", json={"username": "alice",
                                                                "password": "guess123"}).status_code == 401
    assert_429(app.test_client().post("/api/auth/login", json={"username": "ALICE", "password": PASSWORD}))


def stranger(app, address):
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address  # each stranger from an address of its own
    return client


def test_regression_strangers_guessing_a_name_dont_lock_out_a_browser_that_signed_in_before(auth, app):
    """About 10 wrong guesses a minute at a username made the owner's correct login get 429. A
    browser that signed in as the name before carries a device cookie and is limited on its own;
    a browser that never did still meets the per-name limit (the attacker's budget)."""
    auth.register("alice")  # this browser now holds alice's device cookie
    assert auth.logout().status_code == 200
    for i in range(3):
        stranger(app, f"10.0.0.{i + 1}").post("/api/auth/login", json={"username": "alice", "password": "guess123"})
    assert_429(stranger(app, "10.0.1.1").post("/api/auth/login", json={"username": "alice", "password": PASSWORD}))
    response = auth.login("alice")  # the owner's browser, from its own address
    assert response.status_code == 200, response.json
    # The device is limited on its own: wrong guesses from it run out its own budget only.
    owner = stranger(app, "10.0.2.1")
    owner.set_cookie("chat_device", auth._client.get_cookie("chat_device", path="/api/auth").value, path="/api/auth")
    assert owner.post("/api/auth/login", json={"username": "alice", "password": "wrong-pass"}).status_code == 401
    # A device cookie of another name, or a forged one, is no exemption.
    forged = stranger(app, "10.0.3.1")
    forged.set_cookie("chat_device", "e30.forged", path="/api/auth")
    assert_429(forged.post("/api/auth/login", json={"username": "alice", "password": PASSWORD}))


def test_logins_per_ip(app):
    for i in range(4):
        app.test_client().post("/api/auth/login", json={"username": f"user{i}", "password": "guess123"})
    assert_429(app.test_client().post("/api/auth/login", json={"username": "other", "password": "x" * 8}))


def test_registrations_per_ip(app):
    for i in range(3):
        assert AuthActions(app.test_client()).register(f"user{i}").status_code == 201
    assert_429(AuthActions(app.test_client()).register("one-more"))


def test_new_streams_per_user_tell_eventsource_to_retry_later(auth, app):
    auth.register("alice")
    client = app.test_client()
    for _ in range(2):
        assert client.get("/api/rooms/general/poll?timeout=0", headers=basic("alice", PASSWORD)).status_code == 200
    assert_429(client.get("/api/rooms/general/poll?timeout=0", headers=basic("alice", PASSWORD)))
    stream = client.get("/api/rooms/general/events", headers=basic("alice", PASSWORD))
    assert stream.status_code == 200  # any non-200 would stop EventSource for good
    body = stream.data.decode()
    assert "event: retry" in body and "rate_limited" in body
    retry_ms = int(body.split("retry: ")[1].split("\n")[0])
    assert retry_ms >= 1000
