"""Private rooms and direct messages: access decided in one place and checked on every path
(docs/DESIGN.md, invariants 15 and 16), in-process against a real Redis.

The outsider matrix walks the app's URL map: a route added later that takes a room must be
listed here with how to name the room, and must answer an outsider exactly as it answers for a
room never created.
"""

import json

import pytest

from chatapp.core.ids import StreamId
from chatapp.store import keys
from chatapp.store.rooms import dm_name
from tests.helpers import GENEROUS_LIMITS, PASSWORD, AuthActions, LocalStream, signed_in, until

NEVER_CREATED = "p-00000000000000000000"

# Routes that take a room in their path (``<room>``) are found in the URL map; these take one
# elsewhere, and say how to name it.
ROOM_ELSEWHERE = {
    "rooms.unread": lambda room: ("POST", "/api/rooms/unread", {"rooms": {room: "0-0"}}),
    "events.events": None,  # the multiplexed stream: checked by test_the_multiplexed_stream_never_carries_it
    "events.poll": None,  # likewise
}
# Routes that take no room at all, each with why.
NO_ROOM = {
    "static": "files", "page.index": "the page", "health.healthz": "liveness", "health.readyz": "readiness",
    "metrics.metrics_view": "metrics", "auth.register": "accounts", "auth.login": "accounts",
    "auth.logout": "accounts", "auth.logout_everywhere": "accounts", "auth.change_password": "accounts",
    "auth.me": "accounts", "auth.csrf": "accounts", "admin.kick_user": "users", "admin.ban_user": "users",
    "admin.unban_user": "users", "rooms.list_rooms": "public rooms only (test_a_private_room_is_never_listed)",
    "rooms.create_room": "creates (a name of a private room can't be taken: they are p-<random>)",
    "membership.my_rooms": "your rooms only", "dms.open_dm": "by usernames (test_a_dm_is_one_conversation)",
    "dms.blocked": "users", "dms.block": "users", "dms.unblock": "users",
    "reads.unread": "your rooms only (test_unread_and_mentions_follow_the_read_position)",
    "openapi.spec": "the API's description",
}
BODIES = {"messages.send": {"text": "hello"}, "members.invite": {"user": "carol"}, "rooms.change": {"title": "x"},
          "members.set_role": {"role": "moderator"}, "messages.edit": {"text": "changed"}, "reads.read": {"id": "0-0"},
          "reads.mute": {"muted": True}}


def create_private(client, title="Launch plans"):
    response = client.post("/api/rooms", json={"title": title, "private": True})
    assert response.status_code == 201, response.json
    assert response.json["room"]["kind"] == "private" and response.json["room"]["role"] == "owner"
    return response.json["room"]["name"]


def invite(client, room, user):
    response = client.post(f"/api/rooms/{room}/members", json={"user": user})
    assert response.status_code in (200, 201), response.json
    return response


def send(client, room, text):
    response = client.post(f"/api/rooms/{room}/messages", json={"text": text})
    assert response.status_code == 201, response.json
    return response.json


@pytest.fixture
def config():
    return dict(GENEROUS_LIMITS)


@pytest.fixture
def people(app):
    """alice (owner), bob (member), carol (an outsider): signed-in test clients."""
    return {name: signed_in(app, name) for name in ("alice", "bob", "carol")}


def answer(client, method, url, body, name):
    """What a route says, with the room's name taken out of the words."""
    response = client.open(url.replace("<room>", name), method=method, json=body,
                           headers={"Accept": "application/json"})
    try:
        payload = response.get_json(silent=True)
    finally:
        response.close()
    if payload is None:
        return response.status_code, None, None
    return response.status_code, payload.get("error"), (payload.get("message") or "").replace(name, "<room>")


def routes_taking_a_room(app):
    """``(endpoint, method, url with <room>, body)`` of every route that names a room, and a
    failure for a route nobody classified."""
    found = []
    for rule in app.url_map.iter_rules():
        methods = sorted(rule.methods - {"HEAD", "OPTIONS"})
        if "room" in rule.arguments:
            url = rule.rule.replace("<user>", "bob").replace("<message>", "1-0")
            found += [(rule.endpoint, method, url, BODIES.get(rule.endpoint)) for method in methods]
        elif rule.endpoint in ROOM_ELSEWHERE:
            if ROOM_ELSEWHERE[rule.endpoint] is not None:
                found.append((rule.endpoint, *ROOM_ELSEWHERE[rule.endpoint]("<room>")))
        else:
            assert rule.endpoint in NO_ROOM, (f"{rule.endpoint} ({rule.rule}) is new: say how it takes a room "
                                              "(ROOM_ELSEWHERE) or why it takes none (NO_ROOM)")
    return found


def test_an_outsider_gets_what_a_room_never_created_gets_on_every_route(app, people):
    """Invariant 14: the outsider matrix, for a private room and for a DM."""
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    private = create_private(alice)
    invite(alice, private, "bob")
    send(alice, private, "secret plans")
    dm = alice.post("/api/dms", json={"user": "bob"}).json["room"]["name"]
    send(bob, dm, "just between us")
    # The short path warmed up: carol has a kept poller (of a room she may read) on this worker.
    assert carol.get("/api/rooms/general/poll?timeout=0").status_code == 200
    checked = []
    for endpoint, method, url, body in routes_taking_a_room(app):
        for hidden in (private, dm):
            body_hidden = json.loads(json.dumps(body).replace("<room>", hidden)) if body else body
            body_never = json.loads(json.dumps(body).replace("<room>", NEVER_CREATED)) if body else body
            outsider = answer(carol, method, url, body_hidden, hidden)
            never = answer(carol, method, url, body_never, NEVER_CREATED)
            assert outsider == never, (endpoint, method, url)
            assert outsider[0] == 404 and outsider[1] == "unknown_room", (endpoint, method, outsider)
            checked.append(endpoint)
    # Every kind of path a message can leave by is among them.
    for endpoint in ("streams.events", "streams.poll", "messages.history", "messages.send", "presence.online",
                     "presence.typing", "rooms.unread", "membership.join", "members.invite", "members.remove",
                     "rooms.change", "rooms.show", "members.members", "messages.edit", "messages.delete",
                     "reads.read", "reads.mute"):
        assert endpoint in checked
    # With a cursor too: a Last-Event-ID changes nothing.
    for hidden in (private, dm):
        response = carol.get(f"/api/rooms/{hidden}/events", headers={"Last-Event-ID": "0-0"})
        assert response.status_code == 404 and response.json["error"] == "unknown_room"
        response = carol.get(f"/api/rooms/{hidden}/poll?cursor=0-0&timeout=0")
        assert response.status_code == 404 and response.json["error"] == "unknown_room"
    # And nothing the outsider did reached the room.
    history = alice.get(f"/api/rooms/{private}/messages").json["messages"]
    assert [m.get("text") for m in history if "kind" not in m] == ["secret plans"]


def test_the_multiplexed_stream_never_carries_it(app, people):
    """Narrowed to a private room, an outsider's multiplexed stream and poll are what they are for
    a name never created: the room isn't in them. A cursor naming it is refused before any work,
    as one naming a room never created is."""
    alice, carol = people["alice"], people["carol"]
    private = create_private(alice)
    sent = send(alice, private, "not for carol")
    for name in (private, NEVER_CREATED):
        for url in (f"/api/events?last_event_id={name}:0-0,general:0-0", f"/api/poll?cursor={name}:0-0&timeout=0"):
            response = carol.get(url)
            assert response.status_code == 400, url
            assert response.json == {"error": "bad_cursor", "rooms": [name],
                                     "message": "The cursor names rooms you may not read; resume without them."}
    for query in (f"?rooms={private}", f"?rooms={private},general"):
        for name in (private, NEVER_CREATED):
            stream = LocalStream(carol, "/api/events" + query.replace(private, name))
            try:
                assert stream.status == 200
                assert name not in json.loads(until(stream, "ready")["data"])["rooms"]
            finally:
                stream.close()
        poll = carol.get(f"/api/poll{query.replace('last_event_id', 'cursor')}&timeout=0")
        assert poll.status_code == 200 and private not in poll.json["rooms"]
        assert sent["id"] not in json.dumps(poll.json)


def test_a_private_room_is_never_listed_and_its_name_is_not_guessable(people):
    alice, carol = people["alice"], people["carol"]
    private = create_private(alice)
    assert private.startswith("p-") and len(private) == 22
    for client, expected in ((carol, False), (alice, False)):
        listed = [room["name"] for room in client.get("/api/rooms").json["rooms"]]
        assert (private in listed) == expected
    assert private in alice.get("/api/me/rooms").json["rooms"]
    assert private not in carol.get("/api/me/rooms").json["rooms"]
    # Public names can't take the generated prefixes, so creating one never collides with (or
    # reveals) a private room.
    response = carol.post("/api/rooms", json={"name": private})
    assert response.status_code == 400 and response.json["error"] == "bad_room"


def test_members_read_and_write_and_see_the_changes_as_entries(people):
    alice, bob = people["alice"], people["bob"]
    private = create_private(alice)
    assert alice.post(f"/api/rooms/{private}/members", json={"user": "bob"}).status_code == 201
    assert alice.post(f"/api/rooms/{private}/members", json={"user": "bob"}).status_code == 200  # once
    send(bob, private, "thanks for the invite")
    members = alice.get(f"/api/rooms/{private}/members").json["members"]
    assert members == [{"user": "alice", "role": "owner"}, {"user": "bob", "role": "member"}]
    info = bob.get(f"/api/rooms/{private}").json["room"]
    assert info["kind"] == "private" and info["title"] == "Launch plans" and info["role"] == "member"
    entries = alice.get(f"/api/rooms/{private}/messages").json["messages"]
    assert [(e.get("kind"), e.get("change"), e.get("member"), e.get("text")) for e in entries] == [
        ("member", "added", "bob", None), (None, None, None, "thanks for the invite")]


def test_roles_decide_who_manages(people, app):
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    dave = signed_in(app, "dave")
    private = create_private(alice)
    invite(alice, private, "bob")
    invite(alice, private, "carol")
    # A plain member can't invite, remove, rename or make moderators.
    for method, url, body in (("POST", f"/api/rooms/{private}/members", {"user": "dave"}),
                              ("DELETE", f"/api/rooms/{private}/members/carol", None),
                              ("PATCH", f"/api/rooms/{private}", {"title": "mine now"}),
                              ("PUT", f"/api/rooms/{private}/members/carol", {"role": "moderator"})):
        response = bob.open(url, method=method, json=body)
        assert response.status_code == 403 and response.json["error"] == "not_allowed", (method, url)
    # The owner makes bob a moderator; he invites and removes members, not the owner.
    assert alice.put(f"/api/rooms/{private}/members/bob", json={"role": "moderator"}).status_code == 200
    assert bob.post(f"/api/rooms/{private}/members", json={"user": "dave"}).status_code == 201
    assert dave.get(f"/api/rooms/{private}/messages").status_code == 200
    assert bob.delete(f"/api/rooms/{private}/members/dave").status_code == 200
    assert dave.get(f"/api/rooms/{private}/messages").json["error"] == "unknown_room"
    response = bob.delete(f"/api/rooms/{private}/members/alice")
    assert response.status_code == 403 and response.json["error"] == "not_allowed"
    # Only the owner sets roles; a moderator can't remove a moderator.
    response = bob.put(f"/api/rooms/{private}/members/carol", json={"role": "moderator"})
    assert response.status_code == 403
    response = alice.put(f"/api/rooms/{private}/members/carol", json={"role": "admin"})
    assert response.status_code == 400 and response.json["error"] == "bad_role"
    # The owner can't leave (archive instead); a member can, and then it's gone for them.
    response = alice.post(f"/api/rooms/{private}/leave")
    assert response.status_code == 409 and response.json["error"] == "owner_must_stay"
    stream = LocalStream(carol, "/api/events")
    try:
        until(stream, "ready")
        assert carol.post(f"/api/rooms/{private}/leave").status_code == 200
        assert json.loads(until(stream, "left")["data"]) == {"room": private}  # not "removed": she left
    finally:
        stream.close()
    assert carol.get(f"/api/rooms/{private}/messages").json["error"] == "unknown_room"
    assert private not in carol.get("/api/me/rooms").json["rooms"]


@pytest.mark.parametrize("config", [{**GENEROUS_LIMITS, "CHAT_ADMINS": "root"}])
def test_the_operator_manages_every_room(app, people):
    alice, carol = people["alice"], people["carol"]
    assert app.test_cli_runner().invoke(args=["users", "create", "root", "--password", PASSWORD]).exit_code == 0
    root = app.test_client()
    assert AuthActions(root).login("root").status_code == 200
    private = create_private(alice)
    assert root.post(f"/api/rooms/{private}/members", json={"user": "carol"}).status_code == 201
    assert carol.get(f"/api/rooms/{private}/messages").status_code == 200
    assert root.patch(f"/api/rooms/{private}", json={"title": "Renamed by ops"}).status_code == 200
    assert root.delete(f"/api/rooms/{private}/members/carol").status_code == 200
    assert alice.get(f"/api/rooms/{private}").json["room"]["title"] == "Renamed by ops"
    # Managing is not reading: the operator isn't a member.
    assert root.get(f"/api/rooms/{private}/messages").json["error"] == "unknown_room"


def test_an_archived_room_is_read_only_and_unlisted(people):
    alice, bob = people["alice"], people["bob"]
    assert alice.post("/api/rooms", json={"name": "old-project"}).status_code == 201
    send(alice, "old-project", "last words")
    assert bob.patch("/api/rooms/old-project", json={"archived": True}).json["error"] == "not_allowed"
    assert alice.patch("/api/rooms/old-project", json={"archived": True}).json["room"]["archived"] is True
    response = bob.post("/api/rooms/old-project/messages", json={"text": "hello?"})
    assert response.status_code == 403 and response.json["error"] == "room_archived"
    assert "old-project" not in [r["name"] for r in bob.get("/api/rooms").json["rooms"]]
    assert "old-project" in [r["name"] for r in bob.get("/api/rooms?archived=1").json["rooms"]]
    history = bob.get("/api/rooms/old-project/messages").json["messages"]
    assert [m.get("text") or m["change"] for m in history] == ["last words", "archived"]
    assert alice.patch("/api/rooms/old-project", json={"archived": False}).status_code == 200
    send(bob, "old-project", "back again")


@pytest.mark.parametrize("config", [{**GENEROUS_LIMITS, "CHAT_MAX_ROOM_MEMBERS": 2,
                                     "CHAT_MAX_PRIVATE_ROOMS_PER_USER": 1, "CHAT_RATE_INVITES": "2 per hour"}])
def test_the_limits_answer_with_a_code(app, people):
    alice = people["alice"]
    private = create_private(alice)
    refused = alice.post("/api/rooms", json={"title": "second", "private": True})
    assert refused.status_code == 403 and refused.json["error"] == "private_room_quota"
    invite(alice, private, "bob")
    refused = alice.post(f"/api/rooms/{private}/members", json={"user": "carol"})
    assert refused.status_code == 403 and refused.json["error"] == "room_members_full"
    refused = alice.post(f"/api/rooms/{private}/members", json={"user": "carol"})
    assert refused.status_code == 429 and refused.json["error"] == "rate_limited"
    refused = people["bob"].post("/api/rooms", json={"title": "", "private": True})
    assert refused.status_code == 400 and refused.json["error"] == "bad_title"
    refused = alice.post(f"/api/rooms/{private}/members", json={"user": "nobody-here"})
    assert refused.status_code in (404, 429)


def removal_id(client, room, member):
    entries = client.get(f"/api/rooms/{room}/messages").json["messages"]
    return max(StreamId.parse(e["id"]) for e in entries if e.get("revokes") == member)


def test_removal_ends_the_members_streams_at_the_removal(people):
    """Invariant 15 on one worker: bob's per-room stream, his multiplexed stream and his kept
    long-poll get nothing of the room after the entry that removes him; his other rooms go on."""
    alice, bob = people["alice"], people["bob"]
    private = create_private(alice)
    invite(alice, private, "bob")
    before = send(alice, private, "before")
    per_room = LocalStream(bob, f"/api/rooms/{private}/events", headers={"Last-Event-ID": before["id"]})
    mux = LocalStream(bob, "/api/events")
    poll = bob.get(f"/api/rooms/{private}/poll?cursor={before['id']}&timeout=0")  # keeps a poller for the next
    try:
        assert poll.status_code == 200
        until(per_room, "ready")
        until(mux, "ready")
        assert alice.delete(f"/api/rooms/{private}/members/bob").status_code == 200
        after = [send(alice, private, f"after {i}")["id"] for i in range(3)]
        elsewhere = send(alice, "general", "general goes on")
        cut = removal_id(alice, private, "bob")
        assert all(StreamId.parse(i) > cut for i in after)
        # The per-room stream ends, told why, with nothing after the cut.
        seen, ending = [], None
        while ending is None:
            event = per_room.next_event()
            assert event is not None, "the per-room stream didn't end"
            if event.get("event") == "message":
                seen.append(json.loads(event["data"])["id"])
            elif event.get("event") == "retry" and "data" in event:
                ending = json.loads(event["data"])["reason"]
        assert ending == "removed" and not [i for i in seen if StreamId.parse(i) >= cut]
        # The multiplexed stream drops the room (told why) and keeps general.
        ids, left = [], None
        while elsewhere["id"] not in ids:
            event = mux.next_event()
            assert event is not None, f"general's message didn't come: {ids} {left}"
            data = json.loads(event["data"]) if "data" in event else {}
            if event.get("event") == "message":
                ids.append(data["id"])
                assert data["room"] != private or StreamId.parse(data["id"]) < cut
            elif event.get("event") == "left":
                left = data
        assert left == {"room": private, "reason": "removed"}
        # The poller, and a new poll: the room doesn't exist for bob any more.
        again = bob.get(f"/api/rooms/{private}/poll?cursor={before['id']}&timeout=1")
        assert again.status_code == 404 and again.json["error"] == "unknown_room"
        assert bob.get(f"/api/rooms/{private}/presence").json["error"] == "unknown_room"
    finally:
        per_room.close()
        mux.close()


def test_resume_after_removal_gets_nothing_newer(people):
    alice, bob = people["alice"], people["bob"]
    private = create_private(alice)
    invite(alice, private, "bob")
    before = send(alice, private, "before")
    assert alice.delete(f"/api/rooms/{private}/members/bob").status_code == 200
    send(alice, private, "after")
    response = bob.get(f"/api/rooms/{private}/events", headers={"Last-Event-ID": before["id"]})
    assert response.status_code == 404 and response.json["error"] == "unknown_room"
    for url in (f"/api/events?last_event_id={private}:{before['id']}", f"/api/poll?cursor={private}:{before['id']}"):
        response = bob.get(url)
        assert response.status_code == 400 and response.json["rooms"] == [private], url


def test_a_member_let_back_in_resumes_without_being_cut_again(people):
    """Regression guard: an old removal entry must not end the stream of someone invited back."""
    alice, bob = people["alice"], people["bob"]
    private = create_private(alice)
    invite(alice, private, "bob")
    first = send(alice, private, "first")
    assert alice.delete(f"/api/rooms/{private}/members/bob").status_code == 200
    invite(alice, private, "bob")
    back = send(alice, private, "welcome back")
    stream = LocalStream(bob, f"/api/rooms/{private}/events", headers={"Last-Event-ID": first["id"]})
    try:
        ids = [m["id"] for m in stream.messages(4)]
        assert back["id"] in ids
    finally:
        stream.close()


def test_message_text_cannot_forge_a_removal(people):
    alice, bob = people["alice"], people["bob"]
    private = create_private(alice)
    invite(alice, private, "bob")
    stream = LocalStream(bob, f"/api/rooms/{private}/events")
    try:
        until(stream, "ready")
        forged = send(alice, private, 'x","revokes":"bob","y":"')
        after = send(alice, private, "still here")
        ids = [m["id"] for m in stream.messages(2)]
        assert ids == [forged["id"], after["id"]]
    finally:
        stream.close()


def test_a_dm_is_one_conversation_whoever_starts_it(people):
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    started = alice.post("/api/dms", json={"user": "bob"})
    assert started.status_code == 201
    room = started.json["room"]["name"]
    assert room == dm_name({"alice", "bob"}) and started.json["room"]["members"] == ["alice", "bob"]
    again = bob.post("/api/dms", json={"users": ["ALICE"]})
    assert again.status_code == 200 and again.json["room"]["name"] == room
    send(alice, room, "hi bob")
    send(bob, room, "hi alice")
    assert room in bob.get("/api/me/rooms").json["rooms"]
    joined = {r["name"]: r for r in bob.get("/api/me/rooms").json["joined"]}
    assert joined[room]["kind"] == "dm" and joined[room]["members"] == ["alice", "bob"]
    assert carol.get(f"/api/rooms/{room}/messages").json["error"] == "unknown_room"
    assert carol.post(f"/api/rooms/{room}/messages", json={"text": "me too"}).json["error"] == "unknown_room"
    # DMs have fixed members: no invites, no leaving.
    assert alice.post(f"/api/rooms/{room}/members", json={"user": "carol"}).json["error"] == "not_private"
    assert alice.post(f"/api/rooms/{room}/leave").json["error"] == "cannot_leave_dm"
    for bad in ({"users": []}, {"users": ["alice"]}, {"users": "bob"}, {"users": ["x" * 40]},
                {"users": ["b1", "b2", "b3", "b4", "b5", "b6", "b7", "b8"]}):
        response = alice.post("/api/dms", json=bad)
        assert response.status_code in (400, 404), bad
    assert alice.post("/api/dms", json={"user": "nobody"}).json["error"] == "unknown_user"


def test_a_group_dm_is_the_same_machinery(people):
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    room = alice.post("/api/dms", json={"users": ["bob", "carol"]}).json["room"]["name"]
    assert carol.post("/api/dms", json={"users": ["alice", "bob"]}).json["room"]["name"] == room
    send(carol, room, "three of us")
    assert [m["text"] for m in bob.get(f"/api/rooms/{room}/messages").json["messages"]] == ["three of us"]
    assert room != alice.post("/api/dms", json={"user": "bob"}).json["room"]["name"]


def test_blocking_stops_new_messages_and_new_dms(people, app):
    alice, bob = people["alice"], people["bob"]
    dave = signed_in(app, "dave")
    room = alice.post("/api/dms", json={"user": "bob"}).json["room"]["name"]
    send(bob, room, "buy my stuff")
    assert alice.post("/api/blocks", json={"user": "bob"}).status_code == 200
    assert alice.get("/api/blocks").json == {"blocked": ["bob"]}
    for client in (bob, alice):
        response = client.post(f"/api/rooms/{room}/messages", json={"text": "more"})
        assert response.status_code == 403 and response.json["error"] == "blocked"
    # The history stays readable by the blocker.
    assert [m["text"] for m in alice.get(f"/api/rooms/{room}/messages").json["messages"]] == ["buy my stuff"]
    # A new DM from the blocked user, alone or in a group, is refused.
    assert dave.post("/api/blocks", json={"user": "bob"}).status_code == 200
    refused = bob.post("/api/dms", json={"users": ["dave"]})
    assert refused.status_code == 403 and refused.json["error"] == "blocked"
    refused = bob.post("/api/dms", json={"users": ["dave", "alice"]})
    assert refused.status_code == 403 and refused.json["error"] == "blocked"
    assert alice.delete("/api/blocks/bob").status_code == 200
    send(bob, room, "sorry")


def test_presence_in_a_private_room_lists_members_only(people, redis_client):
    alice, bob = people["alice"], people["bob"]
    private = create_private(alice)
    invite(alice, private, "bob")
    stream = LocalStream(bob, f"/api/rooms/{private}/events")
    try:
        until(stream, "ready")
        assert alice.delete(f"/api/rooms/{private}/members/bob").status_code == 200
        users = alice.get(f"/api/rooms/{private}/presence").json["users"]
        assert "bob" not in [u.lower() for u in users]
    finally:
        stream.close()
    assert redis_client.exists(keys.room_members(private))


def test_regression_a_cursor_listing_more_rooms_than_an_account_may_join_is_a_400(people):
    """Cursors of 101, 1,000 and 1,700 rooms the user never joined opened a 200 stream; the only
    bound was 16 KiB of characters."""
    carol = people["carol"]
    for count in (101, 1000, 1700):
        cursor = ",".join(f"r{i}:1-0" for i in range(count))
        for url in (f"/api/events?last_event_id={cursor}", f"/api/poll?cursor={cursor}&timeout=0"):
            response = carol.get(url)
            assert response.status_code == 400 and response.json["error"] == "bad_cursor", (count, url[:20])


def test_a_left_notice_moves_the_cursor_past_the_room(people):
    """After a removal the stream's Last-Event-ID no longer names the room, so a reconnect is
    never refused for naming a room the user may not read."""
    alice, bob = people["alice"], people["bob"]
    private = create_private(alice)
    invite(alice, private, "bob")
    stream = LocalStream(bob, "/api/events")
    try:
        until(stream, "ready")
        assert alice.delete(f"/api/rooms/{private}/members/bob").status_code == 200
        left = until(stream, "left")
        assert private not in left["id"]
        again = LocalStream(bob, f"/api/events?last_event_id={left['id']}")
        again.close()
        assert again.status == 200
    finally:
        stream.close()
