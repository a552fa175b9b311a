"""The Redis pools: a connection handed out must be clean, checked without gevent's poll()."""

import select

import pytest
import redis
import redis.sentinel

from chatapp.ops.config import ConfigError
from chatapp.store import topology


def connection_pool(url, max_connections, timeout):
    return topology.client(topology.parse(url), max_connections, timeout).connection_pool


@pytest.fixture
def pool(redis_server):
    pool = connection_pool(redis_server.url, max_connections=1, timeout=2)
    yield pool
    pool.disconnect()


def test_connection_with_an_unread_reply_is_replaced_on_checkout(pool, redis_client):
    redis_client.set("k", "v")
    conn = pool.get_connection()
    conn.send_command("PING")  # its reply is never read
    # ... but it has arrived: a reply still in flight is something the checkout can't see.
    assert select.select([conn._sock], [], [], 5)[0], "no reply"
    pool.release(conn)
    assert redis.Redis(connection_pool=pool).get("k") == b"v"  # not the stray PONG


def test_connection_closed_by_the_server_is_replaced_on_checkout(pool, redis_client):
    conn = pool.get_connection()
    conn.send_command("CLIENT", "ID")
    client_id = conn.read_response()
    pool.release(conn)
    redis_client.client_kill_filter(_id=client_id)
    again = pool.get_connection()  # no retry involved: the check itself must notice
    again.send_command("PING")
    assert again.read_response() in (b"PONG", "PONG", True)
    pool.release(again)


def test_clean_connection_is_kept(pool):
    conn = pool.get_connection()
    pool.release(conn)
    assert not conn.can_read()
    assert pool.get_connection() is conn


def test_tls_urls_keep_redis_pys_ssl_connection():
    """Regression: the peeking class replaced SSLConnection, so rediss:// went out in plaintext."""
    assert connection_pool("rediss://localhost:6380/0", 1, 1).connection_class is redis.SSLConnection


def test_redis_url_selects_the_topology():
    assert topology.parse("redis://h:1/0").kind == topology.SINGLE
    assert topology.parse("unix:///tmp/r.sock").kind == topology.SINGLE
    sentinel = topology.parse("redis+sentinel://:secret@a:26379,b:26380/mymaster?db=2")
    assert (sentinel.kind, sentinel.nodes, sentinel.service) == (topology.SENTINEL, (("a", 26379), ("b", 26380)),
                                                                  "mymaster")
    assert sentinel.options == {"password": "secret", "db": 2} and "secret" not in sentinel.label
    cluster = topology.parse("redis+cluster://a:7000,b:7001")
    assert (cluster.kind, cluster.nodes) == (topology.CLUSTER, (("a", 7000), ("b", 7001)))
    for bad in ("http://x", "redis+sentinel://a:1", "redis+cluster://a", "redis+sentinel://a:x/m"):
        with pytest.raises(ConfigError):
            topology.parse(bad)


def test_a_sentinel_pool_waits_for_a_free_connection_and_peeks():
    pool = topology.client(topology.parse("redis+sentinel://127.0.0.1:1/m"), 3, 1).connection_pool
    assert isinstance(pool, redis.BlockingConnectionPool) and pool.max_connections == 3
    assert issubclass(pool.connection_class, redis.sentinel.SentinelManagedConnection)
