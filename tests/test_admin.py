"""Kick and ban, over the JSON API and the flask CLI."""

import gevent
import pytest

from tests.helpers import PASSWORD, AuthActions, LocalStream, basic


@pytest.fixture
def config(config):
    return {**config, "CHAT_ADMINS": "Root, ops"}


@pytest.fixture
def root(app):
    """An admin, created the way an operator does (admin names can't be registered)."""
    result = app.test_cli_runner().invoke(args=["users", "create", "root", "--password", PASSWORD])
    assert result.exit_code == 0 and "created root (an admin)" in result.output
    client = app.test_client()
    assert AuthActions(client).login("root").status_code == 200
    return client


@pytest.fixture
def bob(app):
    client = app.test_client()
    AuthActions(client).register("bob")
    return client


def test_admin_is_configured_by_username(root, bob):
    assert root.get("/api/auth/me").json["admin"] is True
    assert bob.get("/api/auth/me").json["admin"] is False
    response = bob.post("/api/admin/users/root/kick")
    assert response.status_code == 403 and response.json["error"] == "not_admin"


def test_kick_ends_sessions_and_open_streams_and_polls(root, bob):
    stream = LocalStream(bob, "/api/rooms/general/events")
    stream.next_event()
    gevent.sleep(0.3)  # bob's join has gone by; the poll below starts after it
    polling = gevent.spawn(bob.get, "/api/rooms/general/poll?timeout=10")
    gevent.sleep(0.3)
    assert root.post("/api/admin/users/bob/kick").json["sessions_ended"] == 1
    events = [stream.next_event(timeout=2) for _ in range(3)]
    assert any(e and e.get("event") == "retry" and "kicked" in e["data"] for e in events)
    assert polling.get(timeout=2).status_code == 401
    assert bob.get("/api/auth/me").status_code == 401
    stream.close()


def test_ban_blocks_login_and_basic_until_unbanned(root, bob, app):
    assert root.post("/api/admin/users/bob/ban").json["banned"] is True
    assert bob.get("/api/auth/me").status_code == 401  # kicked
    login = AuthActions(app.test_client()).login("bob")
    assert login.status_code == 403 and login.json["error"] == "banned"
    by_basic = app.test_client().get("/api/rooms", headers=basic("bob", PASSWORD))
    assert by_basic.status_code == 403 and by_basic.json["error"] == "banned"
    wrong_password = AuthActions(app.test_client()).login("bob", "wrong password")
    assert wrong_password.status_code == 401  # a ban is only revealed to the right password
    assert root.delete("/api/admin/users/bob/ban").json["banned"] is False
    assert AuthActions(app.test_client()).login("bob").status_code == 200


def test_unknown_user_is_404(root):
    assert root.post("/api/admin/users/nobody/kick").status_code == 404
    assert root.post("/api/admin/users/*/ban").status_code == 404


def test_cli_kick_ban_unban(app, bob):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["users", "kick", "bob"])
    assert result.exit_code == 0 and "kicked bob: 1 session(s)" in result.output
    assert bob.get("/api/auth/me").status_code == 401
    assert runner.invoke(args=["users", "ban", "bob"]).exit_code == 0
    assert AuthActions(app.test_client()).login("bob").status_code == 403
    assert runner.invoke(args=["users", "unban", "bob"]).exit_code == 0
    assert AuthActions(app.test_client()).login("bob").status_code == 200
    missing = runner.invoke(args=["users", "ban", "nobody"])
    assert missing.exit_code != 0 and "no user named" in missing.output


def test_admin_names_are_reserved_until_the_operator_creates_them(app):
    """Regression: anyone could register a name listed in CHAT_ADMINS and administer."""
    for name in ("root", "OPS", "Ops"):
        response = AuthActions(app.test_client()).register(name)
        assert response.status_code == 409 and response.json["error"] == "username_reserved", name
    runner = app.test_cli_runner()
    assert runner.invoke(args=["users", "create", "ops"], input=f"{PASSWORD}\n{PASSWORD}\n").exit_code == 0
    again = runner.invoke(args=["users", "create", "ops", "--password", PASSWORD])
    assert again.exit_code != 0 and "taken" in again.output
    ops = app.test_client()
    assert AuthActions(ops).login("ops").status_code == 200
    assert ops.get("/api/auth/me").json == {"user": "ops", "admin": True}
