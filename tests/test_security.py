"""CSRF, security headers, sessions ending, input hygiene."""

from urllib.parse import quote

import pytest

from chatapp.store import keys
from chatapp.web.context import services_of
from tests.helpers import CHEAP_PASSWORD_HASH, PASSWORD, AuthActions, LocalStream, basic


def test_cookie_write_without_csrf_token_is_rejected(alice):
    del alice.environ_base["HTTP_X_CSRFTOKEN"]
    response = alice.post("/api/rooms/general/messages", json={"text": "forged"})
    assert response.status_code == 403 and response.json["error"] == "csrf_failed"
    alice.environ_base["HTTP_X_CSRFTOKEN"] = "not-the-token"
    assert alice.post("/api/rooms/general/messages", json={"text": "x"}).status_code == 403


def test_cross_site_form_post_is_rejected_and_nothing_is_written(alice, redis_client):
    del alice.environ_base["HTTP_X_CSRFTOKEN"]
    response = alice.post("/api/rooms/general/messages", data={"text": "from evil.example"},
                          headers={"Origin": "https://evil.example"})
    assert response.status_code == 403 and response.json["error"] == "csrf_failed"
    assert redis_client.xlen("chat:{general}:log") == 0


def test_cross_site_login_form_without_a_cookie_is_rejected(auth, app):
    auth.register("mallory")
    victim = app.test_client()
    response = victim.post("/api/auth/login", data={"username": "mallory", "password": PASSWORD})
    assert response.status_code == 403


def test_basic_auth_writes_need_no_csrf_token(auth, app):
    auth.register("bob")
    curl = app.test_client()
    response = curl.post("/api/rooms/general/messages", data={"text": "from curl"},
                         headers=basic("bob", PASSWORD))
    assert response.status_code == 201


def test_security_headers_on_page_and_api(client):
    for url in ["/", "/api/rooms", "/healthz"]:
        headers = client.get(url).headers
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "same-origin"


def test_secure_cookie_flag_when_configured_for_https(redis_server, redis_client):
    from chatapp import create_app

    app = create_app({"REDIS_URL": redis_server.url, "SECRET_KEY": "t", "CHAT_HTTPS": True, **CHEAP_PASSWORD_HASH})
    try:
        response = AuthActions(app.test_client()).register("alice")
        assert "Secure" in response.headers["Set-Cookie"]
    finally:
        services_of(app).hub.close("test over")


def test_logout_destroys_the_session_in_redis(auth, client, redis_client):
    auth.register("alice")
    sid = client.get_cookie("chat_session").value
    auth.logout()
    assert not redis_client.exists(f"chat:session:{sid}")
    client.set_cookie("chat_session", sid)
    assert client.get("/api/auth/me").status_code == 401


def test_logout_everywhere_ends_every_session(app, redis_client):
    phone, laptop = app.test_client(), app.test_client()
    AuthActions(phone).register("alice")
    AuthActions(laptop).login("alice")
    response = laptop.post("/api/auth/logout-everywhere")
    assert response.json["sessions_ended"] == 2
    assert phone.get("/api/auth/me").status_code == 401
    assert laptop.get("/api/auth/me").status_code == 401
    assert redis_client.keys("chat:session:*") == []


def test_change_password(app, auth, client):
    auth.register("alice")
    other = app.test_client()
    AuthActions(other).login("alice")
    wrong = client.post("/api/auth/password", json={"current_password": "nope", "new_password": "n3w password"})
    assert wrong.status_code == 403
    short = client.post("/api/auth/password", json={"current_password": PASSWORD, "new_password": "short"})
    assert short.status_code == 400
    changed = client.post("/api/auth/password",
                          json={"current_password": PASSWORD, "new_password": "n3w password"})
    assert changed.status_code == 200
    client.environ_base["HTTP_X_CSRFTOKEN"] = changed.json["csrf_token"]
    assert client.get("/api/auth/me").json["user"] == "alice"  # this browser stays signed in
    assert other.get("/api/auth/me").status_code == 401  # the other session ended
    fresh = app.test_client()
    assert fresh.get("/api/auth/me", headers=basic("alice", PASSWORD)).status_code == 401
    assert fresh.get("/api/auth/me", headers=basic("alice", "n3w password")).status_code == 200


def test_basic_auth_cache_never_outlives_a_password_change(app, auth, client):
    auth.register("alice")
    fresh = app.test_client()
    assert fresh.get("/api/auth/me", headers=basic("alice", PASSWORD)).status_code == 200  # cached now
    client.post("/api/auth/password", json={"current_password": PASSWORD, "new_password": "n3w password"})
    assert fresh.get("/api/auth/me", headers=basic("alice", PASSWORD)).status_code == 401


@pytest.mark.parametrize("ending", ["logout", "logout-everywhere"])
def test_stream_of_an_ended_session_stops_within_2_seconds(alice, ending):
    stream = LocalStream(alice, "/api/rooms/general/events")
    stream.next_event()
    stream.next_event(timeout=0.3)
    alice.post(f"/api/auth/{ending}")
    events = [stream.next_event(timeout=2) for _ in range(3)]
    closing = [e for e in events if e and e.get("event") == "retry"]
    assert closing and "logged_out" in closing[0]["data"]
    stream.close()


def test_stream_of_an_expired_session_stops_within_2_seconds(alice, redis_client, app):
    stream = LocalStream(alice, "/api/rooms/general/events")
    stream.next_event()
    stream.next_event(timeout=0.3)
    (reader,) = services_of(app).hub.readers()
    reader.check_session_at(0.0)  # as if its lifetime were up; the session itself is what decides
    redis_client.delete(f"chat:session:{reader.sid}")  # Redis expired it
    events = [stream.next_event(timeout=2) for _ in range(5)]
    assert any(e and e.get("event") == "retry" and "session_expired" in e["data"] for e in events)
    stream.close()


def test_long_poll_of_an_ended_session_is_401(alice, app):
    import gevent

    waiting = gevent.spawn(alice.get, "/api/rooms/general/poll?timeout=10")
    gevent.sleep(0.3)
    alice.post("/api/auth/logout")
    response = waiting.get(timeout=3)
    assert response.status_code == 401 and response.json["error"] == "logged_out"


def test_script_tags_are_returned_escaped_as_json_text(alice):
    sent = alice.post("/api/rooms/general/messages", json={"text": "<script>alert(1)</script><img src=x>"})
    assert sent.mimetype == "application/json"
    assert sent.json["text"] == "<script>alert(1)</script><img src=x>"
    history = alice.get("/api/rooms/general/messages")
    assert history.mimetype == "application/json" and history.json["messages"][0]["text"].startswith("<script>")


def test_redis_glob_characters_in_names_never_become_patterns(alice, redis_client):
    for name in ["*", "general*", "a?b", "[a-z]"]:
        assert alice.post(f"/api/rooms/{quote(name)}/messages", json={"text": "x"}).status_code == 404
        assert alice.post("/api/rooms", json={"name": name}).status_code == 400
    assert alice.post("/api/auth/login", json={"username": "*", "password": "x" * 8}).status_code == 401
    assert not [k for k in redis_client.keys("*") if any(c in k for c in (b"*", b"?", b"["))]


def test_long_poll_finishing_after_logout_does_not_resurrect_the_session(alice, redis_client):
    """Regression: the poll's end-of-request session save wrote the ended session back."""
    import gevent

    sid = alice.get_cookie("chat_session").value
    waiting = gevent.spawn(alice.get, "/api/rooms/general/poll?timeout=1")
    gevent.sleep(0.2)
    alice.post("/api/auth/logout")
    waiting.get(timeout=3)
    assert not redis_client.exists(f"chat:session:{sid}")


def test_session_index_never_expires_under_a_live_session_and_is_pruned_at_login(auth, client, redis_client):
    """Regression: the per-user index expired after one lifetime while the session,
    renewed by use, lived on; a later ban or kick then found nothing to end."""
    auth.register("alice")
    first = client.get_cookie("chat_session").value
    assert redis_client.ttl(keys.user_sessions("alice")) == -1
    redis_client.delete(f"chat:session:{first}")  # that session expired
    client.environ_base["HTTP_X_CSRFTOKEN"] = client.get("/api/auth/csrf").json["csrf_token"]
    assert auth.login("alice").status_code == 200
    second = client.get_cookie("chat_session").value
    assert second != first
    assert redis_client.zrange(keys.user_sessions("alice"), 0, -1) == [second.encode()]


def test_stream_whose_session_ends_as_it_opens_stops_within_2_seconds(alice, redis_client):
    """Regression: a stream attaching just after its session was ended (a kick racing
    the open) missed the control message and lived for the whole session lifetime."""
    sid = alice.get_cookie("chat_session").value
    stream = LocalStream(alice, "/api/rooms/general/events")
    stream.next_event()
    redis_client.delete(f"chat:session:{sid}")  # ended with no control message reaching the hub
    events = [stream.next_event(timeout=2.5) for _ in range(4)]
    assert any(e and e.get("event") == "retry" and "session_expired" in e["data"] for e in events)
    stream.close()
