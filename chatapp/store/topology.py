"""Which Redis the app talks to, from ``REDIS_URL``: one server, Sentinel, or a Cluster.

* ``redis://host:port/db``, ``rediss://...``, ``unix:///path.sock``: one server.
* ``redis+sentinel://host:26379,host:26380/mymaster``: the primary Sentinel names for
  ``mymaster``, found again after every failover (redis-py's Sentinel client); an
  optional ``?db=N`` and ``password`` in the user-info part apply to the data nodes.
* ``redis+cluster://host:7000,host:7001``: a Redis Cluster (redis-py's RedisCluster).

Everything that opens a connection to Redis gets it from here: the request pool,
the hub's pool for its own reads, and the bare connections of Pub/Sub links.
"""

import functools
import random
import socket
from typing import NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

import redis
import redis.cluster
import redis.sentinel

from chatapp.ops.config import ConfigError
from chatapp.store.coalesce import CoalescingRedis

SINGLE, SENTINEL, CLUSTER = "single", "sentinel", "cluster"
SENTINEL_SOCKET_TIMEOUT_SECS = 0.5  # asking a Sentinel is one round trip on a LAN


class _PeekOnCheckout:
    """redis-py asks every pooled connection "any stray data?" on each checkout
    with ``select.poll()``, which under gevent's monkey-patching builds watchers
    and switches greenlets: 10% of a POST's CPU in a profile. A non-blocking
    ``MSG_PEEK`` on the OS socket answers the same question with one syscall."""

    def can_read(self, timeout=0):
        raw = getattr(self._sock, "_sock", None)  # gevent's socket wraps the OS socket
        if timeout or raw is None:
            return super().can_read(timeout)
        try:
            raw.recv(1, socket.MSG_PEEK)
            return True  # data, or b"" for a connection the server closed: either way not clean
        except BlockingIOError:
            reader = getattr(self._parser, "_reader", None)  # hiredis may hold bytes already read
            if reader is None:
                return super().can_read(timeout)  # another parser: let it look at its own buffer
            return reader.has_data()
        except OSError:
            return True


class _TCPConnection(_PeekOnCheckout, redis.Connection):
    pass


class _UnixConnection(_PeekOnCheckout, redis.UnixDomainSocketConnection):
    pass


class _SentinelConnection(_PeekOnCheckout, redis.sentinel.SentinelManagedConnection):
    pass


class _BlockingSentinelPool(redis.sentinel.SentinelConnectionPool, redis.BlockingConnectionPool):
    """Sentinel's pool (connections go to the current primary) that waits for a free
    connection instead of failing at ``max_connections``, like the single server's."""


_PEEKING = {"redis": _TCPConnection, "unix": _UnixConnection}  # not rediss: a peek would see TLS records


class Topology(NamedTuple):
    kind: str
    url: str
    nodes: tuple  # (host, port) of the sentinels or the cluster's seed nodes; () for one server
    service: str | None  # Sentinel's name for the primary
    options: dict  # db, username, password for the data nodes

    @property
    def label(self):
        """For logs: the URL without its password."""
        return f"{self.kind} " + ",".join(f"{h}:{p}" for h, p in self.nodes) if self.nodes else self.kind


def parse(url):
    """``REDIS_URL`` as a :class:`Topology`; ConfigError if it is none of the three forms."""
    scheme = url.partition("://")[0]
    if scheme in ("redis", "rediss", "unix"):
        return Topology(SINGLE, url, (), None, {})
    if scheme not in ("redis+sentinel", "redis+cluster"):
        raise ConfigError(f"REDIS_URL must start with redis://, rediss://, unix://, redis+sentinel:// or "
                          f"redis+cluster://, not {scheme}://")
    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2]
    nodes = []
    for item in hosts.split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"REDIS_URL: expected host:port, not {item!r}")
        nodes.append((host.strip("[]"), int(port)))
    options = {}
    if parts.username:
        options["username"] = unquote(parts.username)
    if parts.password:
        options["password"] = unquote(parts.password)
    query = parse_qs(parts.query)
    if scheme == "redis+cluster":
        return Topology(CLUSTER, url, tuple(nodes), None, options)
    service = parts.path.strip("/")
    if not service:
        raise ConfigError("REDIS_URL: a Sentinel URL ends with the primary's name, e.g. /mymaster")
    if "db" in query:
        options["db"] = int(query["db"][0])
    return Topology(SENTINEL, url, tuple(nodes), service, options)


def client(topology, max_connections, timeout, cluster_retry=None, *, coalesce=False, **connection_options):
    """A client on a bounded pool (waiting longer for a pooled connection than for Redis
    itself makes no sense). ``connection_options`` go to each connection (e.g. ``protocol``).
    ``coalesce``: concurrent commands share round trips (:mod:`chatapp.store.coalesce`; not on a
    Cluster, whose commands go to the node of their keys). ``cluster_retry``: how a Cluster
    client retries a command whose node failed (it finds the slot's new node). On one server
    or Sentinel a command is never sent twice (it may have run): a pooled connection that died
    is replaced when it is checked out (:class:`_PeekOnCheckout`), and a drop mid-command is
    the caller's error."""
    common = {"socket_timeout": timeout, "socket_connect_timeout": 2, **connection_options}
    client_class = CoalescingRedis if coalesce else redis.Redis
    if topology.kind == SINGLE:
        scheme = topology.url.partition("://")[0]
        options = {"connection_class": _PEEKING[scheme]} if scheme in _PEEKING else {}
        pool = redis.BlockingConnectionPool.from_url(topology.url, max_connections=max_connections, timeout=timeout,
                                                     **common, **options)
        return client_class(connection_pool=pool)
    if topology.kind == SENTINEL:
        sentinel = redis.sentinel.Sentinel(topology.nodes, sentinel_kwargs={
            "socket_timeout": SENTINEL_SOCKET_TIMEOUT_SECS, "socket_connect_timeout": SENTINEL_SOCKET_TIMEOUT_SECS,
            **{k: v for k, v in topology.options.items() if k in ("username", "password")}})
        pool = _BlockingSentinelPool(topology.service, sentinel, max_connections=max_connections, timeout=timeout,
                                     connection_class=_SentinelConnection, **common, **topology.options)
        return client_class(connection_pool=pool)
    # Each node's pool blocks (up to the command timeout) when all its connections are busy, as the
    # other topologies' pools do: redis-py's default refuses at once ("Too many connections"),
    # which ended streams in a burst and sent their readers back without a cursor.
    return redis.cluster.RedisCluster(startup_nodes=[redis.cluster.ClusterNode(h, p) for h, p in topology.nodes],
                                      max_connections=max_connections, **common, **topology.options,
                                      connection_pool_class=functools.partial(redis.BlockingConnectionPool,
                                                                              timeout=timeout),
                                      **({"retry": cluster_retry} if cluster_retry is not None else {}))


def node_client(topology, node, **connection_options):
    """A one-connection client for one Cluster node ``(host, port)`` (a sharded Pub/Sub link)."""
    return redis.Redis(host=node[0], port=node[1], socket_timeout=None, socket_connect_timeout=2,
                       **{k: v for k, v in topology.options.items() if k in ("username", "password")},
                       **connection_options)


def any_primary(cluster):
    """``(host, port)`` of a primary of a Cluster, picked at random (for the control channel: a
    classic PUBLISH reaches the subscribers of every node, and a link whose node died picks
    another when it reconnects)."""
    node = random.choice(cluster.get_primaries())
    return node.host, node.port


def bare_connection(redis_client):
    """A new connection outside the client's pool, to the primary the pool would use (for a
    Pub/Sub link: the pool counts what it makes and would refuse after max_connections
    reconnects). Not for a Cluster, whose links are per node."""
    pool = redis_client.connection_pool
    return pool.connection_class(**pool.connection_kwargs)


def address(connection_or_client):
    """Where a connection is connected, or where a client's pool connects now (Sentinel:
    asks for the current primary): a Unix socket path or ``(host, port)``."""
    pool = getattr(connection_or_client, "connection_pool", None)
    if isinstance(pool, redis.sentinel.SentinelConnectionPool):
        return tuple(pool.get_master_address())
    if pool is not None and not isinstance(connection_or_client, redis.sentinel.SentinelManagedConnection):
        kwargs = pool.connection_kwargs
        return kwargs.get("path") or (kwargs.get("host"), kwargs.get("port"))
    conn = connection_or_client
    return getattr(conn, "path", None) or (conn.host, conn.port)
