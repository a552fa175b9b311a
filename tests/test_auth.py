import base64

from chatapp import keys
from tests.conftest import PASSWORD


def basic(user, password):
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_register_signs_in_and_me_says_who(auth, client):
    assert auth.register("alice").status_code == 201
    response = client.get("/api/auth/me")
    assert response.status_code == 200 and response.json["user"] == "alice"


def test_register_accepts_a_form_post_with_the_csrf_token(client):
    token = client.get("/api/auth/csrf").json["csrf_token"]
    response = client.post("/api/auth/register", data={"username": "bob", "password": PASSWORD},
                           headers={"X-CSRFToken": token})
    assert response.status_code == 201


def test_password_is_hashed_at_rest(auth, redis_client):
    auth.register("alice")
    stored = redis_client.get(keys.user("alice"))
    assert PASSWORD.encode() not in stored and b"scrypt:" in stored


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
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    sid = cookie.split(";")[0].split("=", 1)[1]
    assert redis_client.exists(f"chat:session:{sid}")


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
