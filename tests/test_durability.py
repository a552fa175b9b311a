"""What a 201 means (CHAT_DURABILITY), and invariant 11: with replica acknowledgement a
reader never sees a message that isn't on enough replicas.

A primary and a replica of our own (embedded redis-server processes on TCP ports),
so a test can leave the primary without its replica, then attach one.
"""

import json

import pytest
import redis

from chatapp import create_app
from chatapp.ops.errors import NotReplicated
from chatapp.store.embedded_redis import EmbeddedRedis
from chatapp.web.context import services_of
from deploy.launch import free_port
from tests.helpers import CHEAP_PASSWORD_HASH, GENEROUS_LIMITS, LocalStream, eventually, send_with_key, signed_in


@pytest.fixture
def primary(tmp_path):
    server = EmbeddedRedis(tmp_path / "primary", port=free_port())
    server.start()
    yield server
    server.stop()


def attach_replica(tmp_path, primary):
    replica = EmbeddedRedis(tmp_path / "replica", port=free_port())
    replica.start()
    client = redis.Redis.from_url(replica.url)
    client.replicaof("127.0.0.1", primary.port)
    eventually(lambda: client.info("replication").get("master_link_status") == "up", timeout=20)
    # Redis 6.2 won't exit on SIGTERM while it writes its first AOF after the sync ("Writing
    # initial AOF, can't exit"): a test that stops the replica at once waited 15 s for SIGKILL.
    eventually(lambda: not any(client.info("persistence")[name] for name in
                               ("aof_rewrite_in_progress", "aof_rewrite_scheduled")), timeout=20)
    return replica


def replicas_app(primary, **extra):
    return create_app({"REDIS_URL": primary.url, "SECRET_KEY": "test", "TESTING": True, "CHAT_HEARTBEAT_SECS": 0.5,
                       "CHAT_DURABILITY": "replicas", "CHAT_DURABILITY_TIMEOUT_MS": 100, **GENEROUS_LIMITS,
                       **CHEAP_PASSWORD_HASH, **extra})


def test_a_message_no_replica_confirms_is_a_503_readers_never_see_it_and_its_retry_makes_one(tmp_path, primary):
    app = replicas_app(primary)
    alice = signed_in(app)
    stream = LocalStream(alice, "/api/rooms/general/events")
    stream.next_event()
    assert stream.next_event()["event"] == "ready"
    refused = send_with_key(alice, "not yet safe", "k1")
    assert refused.status_code == 503 and refused.json["error"] == "not_replicated"
    assert refused.headers["Retry-After"] == "1"
    assert stream.messages(1, timeout=1) == [], "a reader saw a message no replica has"
    assert alice.get("/api/rooms/general/messages").json["messages"] == []
    assert alice.get("/api/rooms/general/poll?cursor=0&timeout=0").json["messages"] == []
    replica = attach_replica(tmp_path, primary)
    try:
        # The hub's probe (a write and WAIT of its own) releases what it held; the client's
        # retry with the same key then gets the same message, stored once.
        assert [m["text"] for m in stream.messages(1, timeout=10)] == ["not yet safe"]
        retried = send_with_key(alice, "not yet safe", "k1")
        assert retried.status_code in (200, 201) and retried.json["text"] == "not yet safe"
        assert [m["id"] for m in alice.get("/api/rooms/general/messages").json["messages"]] == [retried.json["id"]]
        after = send_with_key(alice, "safe", "k2")
        assert after.status_code == 201
        assert stream.messages(1) == [after.json]
        assert stream.messages(1, timeout=0.5) == [], "something came twice"
    finally:
        stream.close()
        services_of(app).hub.close("test over")
        replica.stop()


def test_no_replica_left_is_visible_in_readyz_and_metrics_and_flips_back(tmp_path, primary):
    """A primary without the replicas CHAT_DURABILITY_REPLICAS asks for refuses every write: that
    shows in /readyz (still 200: reads and streams go on), in chat_writes_acknowledgeable and in
    the count of refused POSTs; an attached replica flips them back, and the retried POST (same
    key) makes its message once."""
    app = replicas_app(primary)
    alice = signed_in(app)
    metrics = services_of(app).metrics
    ready = alice.get("/readyz")
    (server,) = ready.json["writes"]  # the primary's address (here its Unix socket)
    assert ready.status_code == 200 and ready.json["writes"][server] == {"replicas": 0, "writes": "refused"}
    assert metrics.value("chat_writes_acknowledgeable", server=server) == 0
    refused = send_with_key(alice, "wait for a replica", "k1")
    assert refused.status_code == 503 and metrics.value("chat_messages_not_replicated_total") == 1
    replica = attach_replica(tmp_path, primary)
    try:
        eventually(lambda: alice.get("/readyz").json["writes"][server] == {"replicas": 1, "writes": "accepted"},
                   timeout=10)
        assert metrics.value("chat_writes_acknowledgeable", server=server) == 1
        assert metrics.value("chat_replicas_connected", server=server) == 1
        retried = send_with_key(alice, "wait for a replica", "k1")
        assert retried.status_code in (200, 201)
        assert [m["id"] for m in alice.get("/api/rooms/general/messages").json["messages"]] == [retried.json["id"]]
    finally:
        services_of(app).hub.close("test over")
        replica.stop()


def test_an_acknowledgement_releases_every_room_in_publish_order(tmp_path, primary):
    """Held messages go out in the order the server published them, whichever is
    acknowledged first, so a multiplexed stream's compact ids stay exact (invariant 12)."""
    replica = attach_replica(tmp_path, primary)
    app = replicas_app(primary, CHAT_DURABILITY_TIMEOUT_MS=2000)
    try:
        alice = signed_in(app)
        for room in ("dev", "ops"):
            assert alice.post("/api/rooms", json={"name": room}).status_code == 201
            assert alice.post(f"/api/rooms/{room}/join").status_code == 200
        stream = LocalStream(alice, "/api/events")
        while (event := stream.next_event()) and event.get("event") != "ready":
            pass
        sent = [send_with_key(alice, f"m{i}", f"k{i}", room=("dev", "ops", "general")[i % 3]).json for i in range(30)]
        got = stream.messages(30)
        assert [m["id"] for m in got] == [m["id"] for m in sent]
        stream.close()
    finally:
        services_of(app).hub.close("test over")
        replica.stop()


def test_fsync_durability_runs_the_embedded_redis_with_appendfsync_always(tmp_path):
    server = EmbeddedRedis(tmp_path / "r", durability="fsync")
    server.start()
    try:
        assert redis.Redis.from_url(server.url).config_get("appendfsync") == {"appendfsync": "always"}
    finally:
        server.stop()
    assert EmbeddedRedis(tmp_path / "s").appendfsync == "everysec"


def test_an_unknown_durability_is_a_config_error():
    from chatapp.ops.config import ConfigError, load_settings

    with pytest.raises(ConfigError):
        load_settings({"REDIS_URL": "redis://x", "CHAT_DURABILITY": "maybe"})
    assert json.dumps(load_settings({"REDIS_URL": "redis://x"})["CHAT_DURABILITY"]) == '"primary"'


def test_a_read_ahead_of_a_subscription_waits_for_an_acknowledgement_of_its_own_room(tmp_path, primary):
    """dev's confirmation is handled; meanwhile A (general) is appended and acknowledged, then
    the replica is gone and C (dev) is appended unacknowledged. The read-ahead holds C before A;
    A's acknowledgement releases C although no replica has C."""
    replica = attach_replica(tmp_path, primary)
    app = replicas_app(primary)
    hub = services_of(app).hub
    broker = services_of(app).broker
    hub.feed.held.probe_after_secs = float("inf")  # the hub's probe never runs: only acknowledgements release
    alice = signed_in(app)
    assert alice.post("/api/rooms", json={"name": "dev"}).status_code == 201
    general = LocalStream(alice, "/api/rooms/general/events")
    while (e := general.next_event()) and e.get("event") != "ready":
        pass
    original = hub.feed._on_subscribed
    state = {}

    def on_subscribed(channel):
        if channel == b"chat:{dev}:live" and not state:
            state["a"] = broker.publish("general", "alice", "A", "ka")[0]  # replicated, acked
            replica.stop()
            with pytest.raises(NotReplicated):
                broker.publish("dev", "alice", "C", "kc")  # no replica has it
            state["c"] = True
        return original(channel)

    hub.feed.link._on_subscribed = on_subscribed  # what the link calls (it took the hub's method when it was made)
    dev = LocalStream(alice, "/api/rooms/dev/events")
    try:
        assert [m["text"] for m in general.messages(1, timeout=3)] == ["A"]
        seen = dev.messages(1, timeout=2)
        assert seen == [], f"a reader saw {seen}: no replica has it"
    finally:
        dev.close()
        general.close()
        hub.close("test over")
        replica.stop()  # if the test failed before it did (a leftover redis-server otherwise)
