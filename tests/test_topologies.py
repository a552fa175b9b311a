"""The app on each Redis topology REDIS_URL can name: everything it keeps in Redis (accounts,
sessions, rate limits, rooms, messages, presence, idempotency, memberships, kicks) works on
Sentinel and on a Cluster, through real gunicorn workers.

The fault suites (failovers under load) are in tests/test_topology_faults.py.
"""

import json
import os
import signal

import gevent
import pytest

from chatapp.web.context import services_of
from deploy.launch import Gunicorn
from tests.helpers import (
    CHEAP_PASSWORD_HASH,
    GENEROUS_LIMITS,
    PASSWORD,
    Api,
    LocalStream,
    MultiplexReader,
    ResumingReader,
    account,
    all_ids,
    assert_exactly_once_in_order,
    eventually,
    operator_account,
    send_with_key,
    signed_in,
    unique,
)

pytestmark = pytest.mark.topology


@pytest.fixture(scope="module", params=["sentinel", "cluster"])
def topology_server(request):
    topology = request.getfixturevalue(f"{request.param}_set")
    env = {**GENEROUS_LIMITS, "CHAT_HEARTBEAT_SECS": "1", "CHAT_ADMINS": "root",
           "CHAT_RATE_TYPING": "3 per minute"}
    with Gunicorn(topology.url, workers=2, env=env) as server:
        yield server


@pytest.mark.gunicorn
def test_accounts_sessions_rooms_messages_streams_and_presence(topology_server):
    server = topology_server
    user = account(server)
    room = unique("t")
    assert user.post("/api/rooms", {"name": room}).status == 201
    assert user.post(f"/api/rooms/{room}/join").status == 200
    assert sorted(user.get("/api/me/rooms").json["rooms"]) == sorted(["general", room])
    single = ResumingReader(user, room)
    multi = MultiplexReader(user, f"rooms={room},general")
    multi.wait_until(lambda r: r.ready)
    eventually(lambda: single.ready, timeout=10)
    sent = []
    for i in range(20):
        response = user.post(f"/api/rooms/{room if i % 2 else 'general'}/messages", {"text": f"m{i}"},
                             headers={"Idempotency-Key": f"k{i}"})
        assert response.status == 201, response.body
        sent.append(response.json)
    again = user.post(f"/api/rooms/{room}/messages", {"text": "m1"}, headers={"Idempotency-Key": "k1"})
    assert again.headers.get("Idempotent-Replayed") == "true" and again.json["id"] == sent[1]["id"]
    expected = all_ids(user, room)
    assert len(expected) == 10
    single.wait_for(expected[-1])
    multi.wait_until(lambda r: r.has(room, expected[-1]))
    assert user.auth_user in user.get(f"/api/rooms/{room}/presence").json["users"]
    single.stop()
    multi.stop()
    assert_exactly_once_in_order(single.ids, expected, "per-room stream")
    assert_exactly_once_in_order(multi.received[room], expected, "multiplexed stream")
    polled = user.get(f"/api/rooms/{room}/poll?cursor={expected[0]}&timeout=0").json
    assert [m["id"] for m in polled["messages"]] == expected[1:]


@pytest.mark.gunicorn
def test_private_rooms_dms_and_removal(topology_server):
    """Every key of a private room or a DM shares the room's slot, so its scripts run on a Cluster;
    a removal ends the member's stream there too."""
    server = topology_server
    alice, bob, carol = account(server), account(server), account(server)
    room = alice.post("/api/rooms", {"title": "Plans", "private": True}).json["room"]["name"]
    assert alice.post(f"/api/rooms/{room}/members", {"user": bob.auth_user}).status == 201
    reader = MultiplexReader(bob)
    reader.wait_until(lambda r: r.ready)
    sent = alice.post(f"/api/rooms/{room}/messages", {"text": "hi bob"}).json
    reader.wait_until(lambda r: r.has(room, sent["id"]))
    assert carol.get(f"/api/rooms/{room}/messages").json["error"] == "unknown_room"
    assert alice.request("DELETE", f"/api/rooms/{room}/members/{bob.auth_user}").status == 200
    eventually(lambda: {"room": room, "reason": "removed"} in reader.events_of("left"), timeout=10)
    after = alice.post(f"/api/rooms/{room}/messages", {"text": "bob is gone"}).json
    dm = carol.post("/api/dms", {"user": bob.auth_user}).json["room"]["name"]
    said = bob.post(f"/api/rooms/{dm}/messages", {"text": "hello carol"}).json
    reader.wait_until(lambda r: r.has(dm, said["id"]))
    reader.stop()
    assert after["id"] not in reader.received.get(room, [])
    assert alice.get(f"/api/rooms/{dm}/messages").json["error"] == "unknown_room"


@pytest.mark.gunicorn
def test_edits_deletions_and_read_positions(topology_server):
    """The edit and deletion scripts touch only the room's slot (a deletion forgets the message's
    idempotency record by the room's prefix), read positions the user's."""
    server = topology_server
    alice, bob = account(server), account(server)
    reader = MultiplexReader(bob, "rooms=general")
    reader.wait_until(lambda r: r.ready)
    sent = alice.post("/api/rooms/general/messages", {"text": "secret-value-123"},
                      headers={"Idempotency-Key": unique("k")}).json
    edit = alice.request("PATCH", f"/api/rooms/general/messages/{sent['id']}", {"text": "secret-value-456"})
    assert edit.status == 200, edit.body
    gone = alice.request("DELETE", f"/api/rooms/general/messages/{sent['id']}")
    assert gone.status == 200, gone.body
    reader.wait_until(lambda r: r.has("general", gone.json["id"]))
    assert reader.received["general"] == [sent["id"], edit.json["id"], gone.json["id"]]
    history = alice.get("/api/rooms/general/messages?limit=200").json["messages"]
    assert sent["id"] not in [m["id"] for m in history] and "secret-value" not in json.dumps(history)
    assert bob.post("/api/rooms/general/read", {"id": gone.json["id"]}).json["read"] == gone.json["id"]
    reader.wait_until(lambda r: {"room": "general", "id": gone.json["id"]} in r.events_of("read"))
    reader.stop()
    assert bob.get("/api/me/unread").json["rooms"]["general"]["unread"] == 0


@pytest.mark.gunicorn
def test_cookie_sessions_csrf_logout_kick_and_rate_limits(topology_server):
    server = topology_server
    name = unique("c")
    browser = Api(server.url)
    response = browser.post("/api/auth/register", {"username": name, "password": PASSWORD})
    assert response.status == 201
    cookie = response.headers["Set-Cookie"].split(";")[0]
    token = response.json["csrf_token"]
    assert "{user:" in cookie, "a session id carries its user's hash tag"
    me = browser.get("/api/auth/me", headers={"Cookie": cookie})
    assert me.status == 200 and me.json["user"] == name
    refused = browser.post("/api/rooms/general/messages", {"text": "no token"}, headers={"Cookie": cookie})
    assert refused.status == 403
    ok = browser.post("/api/rooms/general/messages", {"text": "with token"},
                      headers={"Cookie": cookie, "X-CSRFToken": token})
    assert ok.status == 201
    codes = [browser.post("/api/rooms/general/typing", headers={"Cookie": cookie, "X-CSRFToken": token}).status
             for _ in range(4)]
    assert codes == [202, 202, 202, 429], "the typing limit counts in Redis"
    stream = browser.stream("/api/events", headers={"Cookie": cookie})
    root = operator_account(server, "root")
    gevent.sleep(0.5)
    assert root.post(f"/api/admin/users/{name}/kick").status == 200
    ended = []
    with gevent.Timeout(10, False):
        for event in stream.events():
            if event.get("event") == "retry":
                ended.append(json.loads(event["data"])["reason"])
                break
    stream.close()
    assert ended == ["kicked"]
    assert browser.get("/api/auth/me", headers={"Cookie": cookie}).status == 401


def test_a_catch_up_reads_the_rooms_log_on_a_cluster(cluster_set):
    """Found by the fault suite: redis-py's cluster transactions left XRANGE replies unparsed,
    so every catch-up from the log failed on a Cluster (the hub's backfills, stale cursors)."""
    from chatapp import create_app
    from chatapp.core.ids import ZERO

    app = create_app({"REDIS_URL": cluster_set.url, "SECRET_KEY": "test", "TESTING": True, **GENEROUS_LIMITS,
                      **CHEAP_PASSWORD_HASH})
    try:
        broker = services_of(app).broker
        room = unique("cu")
        sent = [broker.publish(room, "alice", f"m{i}")[0].id for i in range(5)]
        page, reset = broker.catch_up(room, ZERO, 10)
        assert reset is None and [p.id for p in page] == sent
        page, reset = broker.catch_up(room, sent[1], 2)
        assert [p.id for p in page] == sent[2:4]
    finally:
        services_of(app).hub.close("test over")


def test_on_a_cluster_the_probe_releases_a_message_whose_wait_timed_out(cluster_set):
    """Found in review: a shard had no probe, so a message whose WAIT timed out stayed held
    (unseen) until some later message of that shard was acknowledged. (On a single server the
    hub's probe releases it within a tick or two.)"""
    from chatapp import create_app

    app = create_app({"REDIS_URL": cluster_set.url, "SECRET_KEY": "test", "TESTING": True,
                      "CHAT_HEARTBEAT_SECS": 0.5, "CHAT_DURABILITY": "replicas",
                      "CHAT_DURABILITY_TIMEOUT_MS": 100, **GENEROUS_LIMITS, **CHEAP_PASSWORD_HASH})
    alice = signed_in(app, "bob" + os.urandom(3).hex())
    stream = LocalStream(alice, "/api/rooms/general/events")
    while (e := stream.next_event()) and e.get("event") != "ready":
        pass
    primary = cluster_set.node_for_key("chat:{general}:log")
    replica = cluster_set.replicas_of(primary)[0]
    os.kill(replica.pid, signal.SIGSTOP)
    try:
        refused = send_with_key(alice, "lagged", "k-lag")
        assert refused.status_code == 503, refused.json
    finally:
        os.kill(replica.pid, signal.SIGCONT)
    try:
        got = stream.messages(1, timeout=6)
        assert [m["text"] for m in got] == ["lagged"], "held forever: nothing on the shard releases it"
    finally:
        stream.close()
        services_of(app).hub.close("test over")
