import json
import subprocess
import sys
import time

import gevent
import pytest

from chatapp.store import keys
from chatapp.web.context import services_of
from deploy.launch import ROOT
from tests.helpers import GENEROUS_LIMITS, PASSWORD, AuthActions, account, basic, eventually


def test_register_signs_in_and_me_says_who(auth, client):
    assert auth.register("alice").status_code == 201
    response = client.get("/api/auth/me")
    assert response.status_code == 200 and response.json["user"] == "alice"


def test_register_accepts_a_form_post_with_the_csrf_token(client):
    token = client.get("/api/auth/csrf").json["csrf_token"]
    response = client.post("/api/auth/register", data={"username": "bob", "password": PASSWORD},
                           headers={"X-CSRFToken": token})
    assert response.status_code == 201


@pytest.mark.real_password_hash
def test_password_is_hashed_at_rest(auth, redis_client):
    auth.register("alice")
    stored = redis_client.get(keys.user("alice"))
    assert PASSWORD.encode() not in stored and b"scrypt:" in stored


def test_new_hashes_follow_the_setting_and_a_stored_hash_keeps_its_own(auth, app, redis_server, redis_client):
    """CHAT_PASSWORD_HASH says how new hashes are made (this suite's in-process apps make cheap
    ones); a stored hash names its method, so an account made under another setting signs in."""
    from chatapp import create_app

    method = app.config["CHAT_PASSWORD_HASH"]
    assert not method.startswith("scrypt")
    auth.register("alice")
    assert json.loads(redis_client.get(keys.user("alice")))["password"].startswith(method + "$")
    real = create_app({"REDIS_URL": redis_server.url, "SECRET_KEY": "test", "TESTING": True, **GENEROUS_LIMITS})
    try:
        assert real.config["CHAT_PASSWORD_HASH"] == "scrypt:32768:8:1"
        assert AuthActions(real.test_client()).login("alice").status_code == 200
        assert AuthActions(real.test_client()).register("bob").status_code == 201
        assert json.loads(redis_client.get(keys.user("bob")))["password"].startswith("scrypt:32768:8:1$")
        assert AuthActions(app.test_client()).login("bob").status_code == 200
        assert AuthActions(app.test_client()).login("bob", "wrong password").status_code == 401
    finally:
        services_of(real).hub.close("test over")


@pytest.mark.parametrize("method", ["scrypt", "scrypt:16384:8:1", "pbkdf2:sha256:1", "pbkdf2:sha512:1000"])
def test_every_password_hash_method_the_setting_takes_works(method):
    from werkzeug.security import check_password_hash, generate_password_hash

    from chatapp.ops.config import load_settings

    taken = load_settings({"REDIS_URL": "redis://x", "CHAT_PASSWORD_HASH": method})["CHAT_PASSWORD_HASH"]
    assert check_password_hash(generate_password_hash(PASSWORD, taken), PASSWORD)


@pytest.mark.parametrize("method", ["", "bcrypt", "scrypt:1000:8:1", "scrypt:16384:8", "pbkdf2:sha256:0",
                                    "pbkdf2:no-such-hash:1", "pbkdf2:sha256:many"])
def test_a_password_hash_method_werkzeug_cannot_make_is_a_config_error(method):
    from chatapp.ops.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="CHAT_PASSWORD_HASH"):
        load_settings({"REDIS_URL": "redis://x", "CHAT_PASSWORD_HASH": method})


def test_usernames_are_unique_case_insensitively(auth):
    auth.register("alice")
    response = auth.register("ALICE")
    assert response.status_code == 409 and response.json["error"] == "username_taken"


def test_bad_username_and_short_password_are_400(auth):
    assert auth.register("a").json["error"] == "bad_username"
    assert auth.register("no spaces").status_code == 400
    assert auth.register("bob", "short").json["error"] == "bad_password"


def test_login_logout_cycle(auth, client):
    auth.register("alice")
    auth.logout()
    assert client.get("/api/auth/me").status_code == 401
    assert auth.login("alice").status_code == 200
    assert client.get("/api/auth/me").json["user"] == "alice"


def test_unknown_user_and_wrong_password_get_the_same_answer(auth):
    auth.register("alice")
    auth.logout()
    wrong = auth.login("alice", "wrong password")
    unknown = auth.login("nobody", "wrong password")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json == unknown.json


def test_session_lives_in_redis_with_safe_cookie_flags(auth, redis_client):
    response = auth.register("alice")
    cookies = {c.split("=", 1)[0]: c for c in response.headers.getlist("Set-Cookie")}
    for cookie in cookies.values():
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    sid = cookies["chat_session"].split(";")[0].split("=", 1)[1]
    assert redis_client.exists(f"chat:session:{sid}")
    assert "Path=/api/auth" in cookies["chat_device"]  # sent only where it is read


def test_session_id_rotates_at_login(auth, client, redis_client):
    auth.register("bob")
    auth.register("alice")
    before = client.get_cookie("chat_session").value
    auth.login("bob")
    after = client.get_cookie("chat_session").value
    assert after != before
    assert not redis_client.exists(f"chat:session:{before}")
    assert client.get("/api/auth/me").json["user"] == "bob"


def test_http_basic_works_on_api_routes(auth, app):
    auth.register("alice")
    fresh = app.test_client()
    assert fresh.get("/api/auth/me", headers=basic("alice", PASSWORD)).json["user"] == "alice"
    assert fresh.get("/api/rooms", headers=basic("alice", "nope")).status_code == 401


def test_anonymous_reads_and_writes_are_401_json(client):
    for method, url in [("get", "/api/rooms"), ("post", "/api/rooms/general/messages"),
                        ("get", "/api/rooms/general/messages"), ("get", "/api/rooms/general/events"),
                        ("get", "/api/rooms/general/poll"), ("get", "/api/auth/me")]:
        response = getattr(client, method)(url)
        assert response.status_code == 401, url
        assert response.json["error"] == "unauthorized"


def test_forged_session_cookie_never_reaches_redis_as_a_key(client, redis_client):
    client.set_cookie("chat_session", "*")
    assert client.get("/api/auth/me").status_code == 401
    assert redis_client.keys("chat:session:*") == []


# -- HTTP Basic accepted without Redis while the control channel vouches (users.trust_while) --

def _calls(redis_client, command):
    return redis_client.info("commandstats").get(f"cmdstat_{command}", {"calls": 0})["calls"]


def _signed_in_by_basic(auth, app, name):
    """A new client of account ``name`` over HTTP Basic, checked once by this worker with its
    control channel subscribed: its next request is trusted."""
    auth.register(name)
    fresh = app.test_client()
    headers = basic(name, PASSWORD)
    assert fresh.get("/api/auth/me", headers=headers).status_code == 200
    hub = services_of(app).hub
    eventually(lambda: hub.control_epoch() is not None, timeout=5, interval=0.02)  # the control channel subscribed
    assert fresh.get("/api/auth/me", headers=headers).status_code == 200  # checked, now trusted
    return fresh, headers


def test_a_basic_client_in_steady_use_costs_no_redis_read(auth, app, redis_client):
    fresh, headers = _signed_in_by_basic(auth, app, "alice")
    before = _calls(redis_client, "mget")
    assert all(fresh.get("/api/auth/me", headers=headers).status_code == 200 for _ in range(10))
    assert _calls(redis_client, "mget") == before
    assert fresh.get("/api/auth/me", headers=basic("alice", "wrong password")).status_code == 401


def test_a_break_in_the_control_channel_ends_the_trust(auth, app, redis_client):
    fresh, headers = _signed_in_by_basic(auth, app, "alice")
    hub = services_of(app).hub
    epoch = hub.control_epoch()
    redis_client.client_kill_filter(_type="pubsub")  # a message published now would be missed
    eventually(lambda: hub.control_epoch() not in (None, epoch), timeout=10, interval=0.02)
    before = _calls(redis_client, "mget")
    assert fresh.get("/api/auth/me", headers=headers).status_code == 200
    assert _calls(redis_client, "mget") == before + 1  # read again, not taken on the old word


def _refused_from_now_on(api, status, run=20, deadline_secs=10):
    """Once the control message has reached the workers (a moment: no fixed wait, the machine
    may be loaded), every request is refused: ``run`` in a row with ``status``, on both workers."""
    deadline, seen, pids = time.monotonic() + deadline_secs, 0, set()
    while seen < run:
        assert time.monotonic() < deadline, f"still accepted {deadline_secs}s after the change"
        response = api.get("/api/auth/me")
        if response.status == status:
            seen += 1
            pids.add(response.headers.get("X-Worker-Pid"))
        else:
            assert response.status == 200, response.body
            seen, pids = 0, set()
    assert len(pids) == 2 or run < 20


def _on_both_workers(api, path="/api/auth/me"):
    pids = set()
    for _ in range(60):
        response = api.get(path)
        assert response.status == 200
        pids.add(response.headers["X-Worker-Pid"])
        if len(pids) == 2:
            return
    raise AssertionError("one worker answered every request")


def test_a_password_change_reaches_every_worker_that_trusted_the_old_one(server):
    alice = account(server)
    _on_both_workers(alice)
    _on_both_workers(alice)  # trusted on both now
    assert alice.post("/api/auth/password", {"current_password": PASSWORD,
                                             "new_password": "a new password"}).status == 200
    _refused_from_now_on(alice, 401)


def test_a_ban_reaches_every_worker_that_trusted_the_account(server):
    bob = account(server)
    _on_both_workers(bob)
    _on_both_workers(bob)
    subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi:app", "users", "ban", bob.auth_user],
                   cwd=ROOT, env=server.env(), check=True, capture_output=True)
    _refused_from_now_on(bob, 403)


def _wait_for_forget(users, since):
    eventually(lambda: users._forgotten != since, timeout=5, interval=0.01)


def test_a_check_between_the_kick_and_the_ban_write_does_not_keep_a_banned_account_trusted(auth, app,
                                                                                            monkeypatch):
    """Regression (review): a ban kicks first (control message: every worker forgets the user)
    and writes the ban after; a Basic request in between was trusted again, without a second
    message, so the banned account was served for CHAT_AUTH_CACHE_SECS."""
    from chatapp.web.admin import set_banned
    fresh, _ = _signed_in_by_basic(auth, app, "bob")
    users = services_of(app).users
    write_ban = users.set_banned

    def a_request_first(name, banned):
        _wait_for_forget(users, forgotten)  # the kick reached this worker
        assert fresh.get("/api/auth/me", headers=basic("bob", PASSWORD)).status_code == 200  # trusted again
        write_ban(name, banned)
    monkeypatch.setattr(users, "set_banned", a_request_first)
    forgotten = users._forgotten
    with app.test_request_context():
        set_banned("bob", True)
    _wait_for_forget(users, forgotten + 1)  # the message published after the write
    assert fresh.get("/api/auth/me", headers=basic("bob", PASSWORD)).status_code == 403


@pytest.mark.parametrize("config", [{**GENEROUS_LIMITS, "CHAT_AUTH_CACHE_SECS": 1.0}])
def test_a_trusted_client_in_steady_use_is_never_hashed_again(auth, app, monkeypatch):
    """Regression (review): a trusted request didn't renew this worker's cache nor the shared
    marker, so every CHAT_AUTH_CACHE_SECS a client in steady use paid a hash again, and met
    the login limits a stranger may have used up."""
    fresh, _ = _signed_in_by_basic(auth, app, "carol")
    users = services_of(app).users
    hashes = []
    check = users.hasher.check
    monkeypatch.setattr(users.hasher, "check", lambda *a: hashes.append(1) or check(*a))
    for _ in range(30):  # 3 s of steady use: three cache periods
        assert fresh.get("/api/auth/me", headers=basic("carol", PASSWORD)).status_code == 200
        gevent.sleep(0.1)
    assert hashes == []
