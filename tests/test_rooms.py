import pytest

from chatapp import create_app
from chatapp.store import keys
from chatapp.web.context import services_of
from tests.helpers import CHEAP_PASSWORD_HASH, GENEROUS_LIMITS, AuthActions


def test_general_always_exists(alice):
    assert alice.get("/api/rooms").json == {"rooms": [{"name": "general", "title": "general", "kind": "public",
                                                       "archived": False, "last_id": "0-0"}], "next": None}


def test_create_and_list_rooms_with_last_id(alice):
    assert alice.post("/api/rooms", json={"name": "dev-talk_2"}).status_code == 201
    assert alice.post("/api/rooms", json={"name": "dev-talk_2"}).status_code == 200
    sent = alice.post("/api/rooms/dev-talk_2/messages", json={"text": "hi"}).json
    rooms = {r["name"]: r["last_id"] for r in alice.get("/api/rooms").json["rooms"]}
    assert rooms == {"general": "0-0", "dev-talk_2": sent["id"]}


def test_room_names_are_validated(alice):
    for bad in ["", "Upper", "with space", "x" * 65, "{general}", "a*", "é"]:
        response = alice.post("/api/rooms", json={"name": bad})
        assert response.status_code == 400, bad
        assert response.json["error"] == "bad_room"
    assert alice.post("/api/rooms", json={"name": "x" * 64}).status_code == 201


def test_unknown_room_is_404_everywhere(alice):
    for method, url in [("post", "/api/rooms/nope/messages"), ("get", "/api/rooms/nope/messages"),
                        ("get", "/api/rooms/nope/events"), ("get", "/api/rooms/nope/poll")]:
        response = getattr(alice, method)(url, json={"text": "x"} if method == "post" else None)
        assert response.status_code == 404, url
        assert response.json["error"] == "unknown_room"


@pytest.mark.parametrize("config", [{**GENEROUS_LIMITS, "CHAT_MAX_ROOMS_PER_USER": 3, "CHAT_MAX_ROOMS": 100}])
def test_one_account_can_create_only_its_quota_of_rooms(alice, auth):
    for i in range(3):
        assert alice.post("/api/rooms", json={"name": f"mine-{i}"}).status_code == 201
    refused = alice.post("/api/rooms", json={"name": "one-too-many"})
    assert refused.status_code == 403 and refused.json["error"] == "room_quota"
    assert alice.post("/api/rooms", json={"name": "mine-0"}).status_code == 200  # opening one is free
    auth.register("bob")  # the same client, now signed in as bob: a quota of his own
    assert alice.post("/api/rooms", json={"name": "bobs"}).status_code == 201


@pytest.mark.parametrize("config", [{**GENEROUS_LIMITS, "CHAT_MAX_ROOMS": 4}])
def test_the_server_holds_at_most_its_total_of_rooms(alice, redis_client):
    # general counts: three more fit
    for i in range(3):
        assert alice.post("/api/rooms", json={"name": f"r{i}"}).status_code == 201
    refused = alice.post("/api/rooms", json={"name": "r3"})
    assert refused.status_code == 403 and refused.json["error"] == "rooms_full"
    assert redis_client.zcard(keys.ROOM_NAMES) == 4


@pytest.mark.parametrize("config", [{**GENEROUS_LIMITS, "CHAT_RATE_ROOMS": "2 per hour"}])
def test_creating_rooms_is_rate_limited_per_user(alice):
    assert alice.post("/api/rooms", json={"name": "a1"}).status_code == 201
    assert alice.post("/api/rooms", json={"name": "a2"}).status_code == 201
    refused = alice.post("/api/rooms", json={"name": "a3"})
    assert refused.status_code == 429 and refused.json["error"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) > 0
    assert alice.post("/api/rooms", json={"name": "a1"}).status_code == 200  # existing rooms still open


def test_room_list_is_paged_by_name(alice):
    names = sorted(f"p{i:02d}" for i in range(7))
    for name in names:
        alice.post("/api/rooms", json={"name": name})
    seen, after, pages = [], None, 0
    while True:
        page = alice.get("/api/rooms", query_string={"limit": 3, **({"after": after} if after else {})}).json
        pages += 1
        assert len(page["rooms"]) <= 3
        seen += [room["name"] for room in page["rooms"]]
        after = page["next"]
        if after is None:
            break
    assert seen == sorted([*names, "general"]) and pages == 3
    assert alice.get("/api/rooms?limit=501").status_code == 400
    assert alice.get("/api/rooms?after=Not*A*Room").status_code == 400


def test_keys_of_earlier_releases_are_migrated_at_start(redis_server, redis_client, config):
    """Rooms in the plain set of early releases and in the untagged index of the last, accounts,
    bans, session indexes and creation counters under their untagged names: all renamed once,
    and a session of the earlier release still signs its user in."""
    first = create_app({"REDIS_URL": redis_server.url, "SECRET_KEY": "test", "TESTING": True, **CHEAP_PASSWORD_HASH,
                       **config})
    client = first.test_client()
    assert AuthActions(client).register("carol").status_code == 201
    services_of(first).hub.close("test over")
    record = redis_client.get(keys.user("carol"))
    sid = redis_client.zrange(keys.user_sessions("carol"), 0, -1)[0].decode()
    old_sid = sid.split("}")[-1]
    redis_client.rename(keys.session(sid), keys.session(old_sid))  # as the earlier release named them
    for old, new in [("chat:user:carol", keys.user("carol")), ("chat:user-sessions:carol", keys.user_sessions("carol")),
                     ("chat:user-rooms:carol", keys.user_rooms("carol")), ("chat:room-names", keys.ROOM_NAMES)]:
        if redis_client.exists(new):
            redis_client.rename(new, old)
    redis_client.delete("chat:room-names")
    redis_client.zadd("chat:room-names", {"old-three": 0, "general": 0})
    redis_client.sadd("chat:rooms", "old-one", "old-two")
    redis_client.zadd("chat:user-sessions:carol", {old_sid: 1})
    redis_client.set("chat:banned:dave", "1")
    redis_client.delete(keys.SCHEMA)
    app = create_app({"REDIS_URL": redis_server.url, "SECRET_KEY": "test", "TESTING": True, **CHEAP_PASSWORD_HASH,
                       **config})
    try:
        assert redis_client.exists("chat:rooms", "chat:room-names", "chat:user:carol", "chat:banned:dave") == 0
        names = [n.decode() for n in redis_client.zrange(keys.ROOM_NAMES, 0, -1)]
        assert names == ["general", "old-one", "old-three", "old-two"]
        assert redis_client.get(keys.user("carol")) == record and redis_client.exists(keys.banned("dave"))
        old_session = app.test_client()
        old_session.set_cookie("chat_session", old_sid)
        assert old_session.get("/api/auth/me").json["user"] == "carol"
    finally:
        services_of(app).hub.close("test over")


def test_unread_counts_for_many_rooms_in_one_request(alice):
    alice.post("/api/rooms", json={"name": "busy"})
    first = alice.post("/api/rooms/busy/messages", json={"text": "m0"}).json["id"]
    for i in range(4):
        alice.post("/api/rooms/busy/messages", json={"text": f"m{i + 1}"})
    response = alice.post("/api/rooms/unread", json={"rooms": {"busy": first, "general": "0-0"}})
    assert response.status_code == 200
    assert response.json == {"unread": {"busy": 4, "general": 0}, "cap": 100}


def test_unread_counts_stop_at_the_cap(alice):
    for i in range(101):
        alice.post("/api/rooms/general/messages", json={"text": f"m{i}"})
    assert alice.post("/api/rooms/unread", json={"rooms": {"general": "0"}}).json["unread"]["general"] == 100


def test_unread_refuses_bad_input(alice):
    for body, status, code in [({"rooms": {"nope": "0-0"}}, 404, "unknown_room"),
                               ({"rooms": {"general": "x"}}, 400, "bad_cursor"),
                               ({"rooms": {"general": 5}}, 400, "bad_cursor"),
                               ({"rooms": ["general"]}, 400, "bad_field"),
                               ({"rooms": {f"r{i}": "0" for i in range(501)}}, 400, "bad_field"),
                               ({"rooms": {"Bad Name": "0"}}, 400, "bad_room")]:
        response = alice.post("/api/rooms/unread", json=body)
        assert (response.status_code, response.json["error"]) == (status, code), body


@pytest.mark.parametrize("config", [{**GENEROUS_LIMITS, "CHAT_RATE_UNREAD": "2 per minute"}])
def test_unread_counts_are_rate_limited_per_user(alice):
    for _ in range(2):
        assert alice.post("/api/rooms/unread", json={"rooms": {"general": "0"}}).status_code == 200
    refused = alice.post("/api/rooms/unread", json={"rooms": {"general": "0"}})
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0


def test_a_worker_never_serves_with_half_its_keys_migrated(app, redis_client, redis_server, config):
    import redis as redis_lib

    from chatapp.store import migrations

    assert AuthActions(app.test_client()).register("eve").status_code == 201
    # The earlier release's layout: eve's account and her ban under the old names.
    redis_client.rename("chat:{user:eve}:account", "chat:user:eve")
    redis_client.delete("chat:{user:eve}:sessions")
    redis_client.set("chat:banned:eve", "1")
    redis_client.delete("chat:schema")
    real = migrations._rename

    def flaky(client, old, new):
        if old.startswith("chat:banned:"):
            raise redis_lib.ConnectionError("blip")  # Redis restarts mid-migration
        return real(client, old, new)

    migrations._rename = flaky
    try:
        app2 = create_app({"REDIS_URL": redis_server.url, "SECRET_KEY": "test", "TESTING": True,
                           **CHEAP_PASSWORD_HASH, **config})
    finally:
        migrations._rename = real
    try:
        login = AuthActions(app2.test_client()).login("eve")
        assert login.status_code == 403, f"banned eve signed in: {login.status_code}"
    finally:
        services_of(app2).hub.close("test over")
