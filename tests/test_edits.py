"""Edits, deletions, read positions, mentions and mutes (issue 23), in-process against a real
Redis: each change is an entry of the room's log, and a deleted message's text leaves Redis."""

import json

import pytest

from chatapp.core.ids import StreamId
from tests.helpers import GENEROUS_LIMITS, AuthActions, LocalStream, signed_in, until


@pytest.fixture
def people(app):
    """alice, bob and carol: signed-in test clients."""
    return {name: signed_in(app, name) for name in ("alice", "bob", "carol")}


def send(client, text, room="general", **fields):
    response = client.post(f"/api/rooms/{room}/messages", json={"text": text, **fields})
    assert response.status_code == 201, response.json
    return response.json


def history(client, room="general", **query):
    params = "&".join(f"{k}={v}" for k, v in query.items())
    return client.get(f"/api/rooms/{room}/messages?{params}").json["messages"]


def everything_in_redis(redis_client):
    """Every byte Redis holds for the app's keys, as one blob to search."""
    blob = []
    for key in redis_client.scan_iter("*"):
        kind = redis_client.type(key)
        if kind == b"string":
            blob.append(redis_client.get(key) or b"")
        elif kind == b"hash":
            blob += [b"%s=%s" % pair for pair in redis_client.hgetall(key).items()]
        elif kind == b"stream":
            blob += [json.dumps({k.decode(): v.decode() for k, v in fields.items()}).encode()
                     for _, fields in redis_client.xrange(key)]
        elif kind == b"set":
            blob += list(redis_client.smembers(key))
        elif kind == b"zset":
            blob += list(redis_client.zrange(key, 0, -1))
        elif kind == b"list":
            blob += list(redis_client.lrange(key, 0, -1))
    return b"\n".join(blob)


def test_an_edit_is_an_entry_and_history_shows_the_latest_state(people):
    alice = people["alice"]
    original = send(alice, "helo world")
    stream = LocalStream(alice, f"/api/rooms/general/events?last_event_id={original['id']}")
    try:
        until(stream, "ready")
        response = alice.patch(f"/api/rooms/general/messages/{original['id']}", json={"text": "hello world"})
        assert response.status_code == 200
        entry = response.json
        assert entry["kind"] == "edit" and entry["target"] == original["id"] and entry["text"] == "hello world"
        assert StreamId.parse(entry["id"]) > StreamId.parse(original["id"])
        live = json.loads(until(stream, "message")["data"])
        assert live == entry
    finally:
        stream.close()
    page = history(alice)
    message = next(m for m in page if m["id"] == original["id"])
    assert message["text"] == "hello world" and message["edited"] == int(entry["id"].split("-")[0])
    assert [m.get("kind") for m in page] == [None, "edit"]
    # Editing again keeps one latest state.
    alice.patch(f"/api/rooms/general/messages/{original['id']}", json={"text": "hello, world"})
    assert next(m for m in history(alice) if m["id"] == original["id"])["text"] == "hello, world"


def test_invalid_edits_get_a_clear_4xx(people, app):
    alice, bob = people["alice"], people["bob"]
    mine = send(alice, "mine")
    cases = [
        (bob, mine["id"], {"text": "hijacked"}, 403, "not_author"),
        (alice, "1-0", {"text": "x"}, 404, "unknown_message"),  # a well-formed id that isn't there
        (alice, "not-an-id", {"text": "x"}, 400, "bad_cursor"),
        (alice, mine["id"], {"text": "   "}, 400, "empty_text"),
        (alice, mine["id"], {"text": "x" * 5000}, 413, "text_too_long"),
    ]
    for client, target, body, status, code in cases:
        response = client.patch(f"/api/rooms/general/messages/{target}", json=body)
        assert (response.status_code, response.json["error"]) == (status, code), (target, body)
    edit = alice.patch(f"/api/rooms/general/messages/{mine['id']}", json={"text": "mine!"}).json
    response = alice.patch(f"/api/rooms/general/messages/{edit['id']}", json={"text": "an edit of an edit"})
    assert (response.status_code, response.json["error"]) == (404, "unknown_message")
    app.config["CHAT_EDIT_WINDOW_SECS"] = -1  # every message is past the window now
    response = alice.patch(f"/api/rooms/general/messages/{mine['id']}", json={"text": "too late"})
    assert (response.status_code, response.json["error"]) == (403, "edit_window_passed")
    assert alice.delete(f"/api/rooms/general/messages/{mine['id']}").status_code == 200  # deleting has no window
    response = alice.patch(f"/api/rooms/general/messages/{mine['id']}", json={"text": "after deletion"})
    assert (response.status_code, response.json["error"]) == (404, "unknown_message")


def test_a_deleted_messages_text_is_nowhere_in_redis(people, redis_client):
    alice = people["alice"]
    secret = "hunter2-correct-horse-battery-staple"
    leaked = send(alice, f"my password is {secret}", client_id="leak-1")
    alice.patch(f"/api/rooms/general/messages/{leaked['id']}", json={"text": f"oops {secret} again"})
    after = send(alice, "never mind")
    assert secret.encode() in everything_in_redis(redis_client)
    response = alice.delete(f"/api/rooms/general/messages/{leaked['id']}")
    assert response.status_code == 200
    tombstone = response.json
    assert tombstone["kind"] == "delete" and tombstone["target"] == leaked["id"] and "text" not in tombstone
    assert secret.encode() not in everything_in_redis(redis_client)
    page = history(alice)
    assert [m["id"] for m in page] == [after["id"], tombstone["id"]]
    # The idempotency record forgot it: the same key now makes a new message.
    again = send(alice, "retry of the first", client_id="leak-1")
    assert again["id"] != leaked["id"]


def test_a_resume_across_a_deleted_entry_is_exact(people):
    alice = people["alice"]
    first = send(alice, "first")
    sent = [send(alice, f"m{i}") for i in range(5)]
    alice.delete(f"/api/rooms/general/messages/{sent[2]['id']}")
    expected = [m["id"] for m in history(alice, after=first["id"], limit=50)]
    assert sent[2]["id"] not in expected and len(expected) == 5  # four messages and the deletion
    for cursor in (first["id"], sent[1]["id"], sent[2]["id"]):
        stream = LocalStream(alice, f"/api/rooms/general/events?last_event_id={cursor}")
        try:
            want = [i for i in expected if StreamId.parse(i) > StreamId.parse(cursor)]
            got = [m["id"] for m in stream.messages(len(want))]
            assert got == want, cursor
        finally:
            stream.close()
        polled = alice.get(f"/api/rooms/general/poll?cursor={cursor}&timeout=0").json
        assert [m["id"] for m in polled["messages"]] == want


def test_moderators_delete_anyones_message_others_only_their_own(people):
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    assert alice.post("/api/rooms", json={"name": "team"}).status_code == 201  # alice owns it
    alices_room_message = send(bob, "bob writes", room="team")
    response = carol.delete(f"/api/rooms/team/messages/{alices_room_message['id']}")
    assert (response.status_code, response.json["error"]) == (403, "not_allowed")
    assert alice.delete(f"/api/rooms/team/messages/{alices_room_message['id']}").json["user"] == "alice"
    # In a DM nobody moderates: only your own.
    dm = alice.post("/api/dms", json={"user": "bob"}).json["room"]["name"]
    bobs = send(bob, "dm from bob", room=dm)
    response = alice.delete(f"/api/rooms/{dm}/messages/{bobs['id']}")
    assert (response.status_code, response.json["error"]) == (403, "not_allowed")
    assert bob.delete(f"/api/rooms/{dm}/messages/{bobs['id']}").status_code == 200


@pytest.mark.parametrize("config", [{**GENEROUS_LIMITS, "CHAT_MAX_EDITS": 3, "CHAT_RATE_EDITS": "5 per minute"}])
def test_an_edit_bomb_is_bounded(people):
    alice = people["alice"]
    target = send(alice, "v0")["id"]
    codes = [alice.patch(f"/api/rooms/general/messages/{target}", json={"text": f"v{i}"}).status_code
             for i in range(1, 8)]
    assert codes[:3] == [200, 200, 200]
    assert codes[3:5] == [403, 403]  # edit_limit: each edit is an entry
    assert codes[5:] == [429, 429]  # then the rate limit
    assert len([m for m in history(alice, limit=50) if m.get("kind") == "edit"]) == 3


def test_mentions_name_existing_accounts_and_a_bomb_is_bounded(people, app):
    alice = people["alice"]
    for i in range(25):
        signed_in(app, f"fan{i}")
    message = send(alice, "@bob and @Carol, not @nobody-here nor me@example.com")
    assert message["mentions"] == ["bob", "carol"]
    assert "mentions" not in send(alice, "no one at all")
    bomb = send(alice, " ".join(f"@user{i}" for i in range(400)))  # ~3,500 characters of names
    assert "mentions" not in bomb  # none exist; at most 20 were even looked up
    many = send(alice, " ".join(["@bob", "@carol"] * 50))
    assert many["mentions"] == ["bob", "carol"]
    crowd = send(alice, " ".join(f"@fan{i}" for i in range(25)))
    assert crowd["mentions"] == [f"fan{i}" for i in range(20)]  # the first 20, no more


def test_unread_and_mentions_follow_the_read_position(people):
    alice, bob = people["alice"], people["bob"]
    sent = [send(alice, f"hello {i}") for i in range(3)]
    send(alice, "@bob look")
    alice.patch(f"/api/rooms/general/messages/{sent[0]['id']}", json={"text": "edited"})  # not unread
    unread = bob.get("/api/me/unread").json
    assert unread["rooms"]["general"]["unread"] >= 4 and unread["rooms"]["general"]["mentions"] == 1
    response = bob.post("/api/rooms/general/read", json={"id": sent[2]["id"]})
    assert response.json == {"room": "general", "read": sent[2]["id"]}
    state = bob.get("/api/me/unread").json["rooms"]["general"]
    assert (state["read"], state["unread"], state["mentions"]) == (sent[2]["id"], 1, 1)
    # Never backwards, never past the newest message.
    assert bob.post("/api/rooms/general/read", json={"id": sent[0]["id"]}).json["read"] == sent[2]["id"]
    newest = history(bob)[-1]["id"]
    assert bob.post("/api/rooms/general/read", json={"id": "99999999999999-0"}).json["read"] == newest
    state = bob.get("/api/me/unread").json["rooms"]["general"]
    assert (state["unread"], state["mentions"]) == (0, 0)
    # A DM message from the other side is a mention.
    dm = alice.post("/api/dms", json={"user": "bob"}).json["room"]["name"]
    send(alice, "psst", room=dm)
    send(bob, "my own", room=dm)
    state = bob.get("/api/me/unread").json["rooms"][dm]
    assert (state["unread"], state["mentions"]) == (2, 1)
    # Muting keeps the counts, says so.
    assert bob.post(f"/api/rooms/{dm}/mute", json={"muted": True}).json == {"room": dm, "muted": True}
    assert bob.get("/api/me/unread").json["rooms"][dm]["muted"] is True


def test_a_read_on_one_device_reaches_the_users_other_streams_live(people, app):
    bob = people["bob"]
    phone = app.test_client()  # a second session of bob's: another device
    assert AuthActions(phone).login("bob").status_code == 200
    sent = send(people["alice"], "for bob")
    laptop = LocalStream(bob, "/api/events")
    carols = LocalStream(people["carol"], "/api/events")
    try:
        until(laptop, "ready")
        until(carols, "ready")
        assert phone.post("/api/rooms/general/read", json={"id": sent["id"]}).status_code == 200
        assert json.loads(until(laptop, "read")["data"]) == {"room": "general", "id": sent["id"]}
        assert all(event.get("event") != "read" for event in iter(lambda: carols.next_event(0.3), None))
    finally:
        laptop.close()
        carols.close()
