"""The worker's Redis client (a bounded pool) and the Broker, Presence and Hub built on it."""

import socket

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .broker import Broker
from .hub import HUB_READ_CONNECTIONS, Hub
from .membership import Memberships
from .metrics import Metrics
from .presence import Presence
from .stream_slots import StreamSlots


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


_PEEKING = {"redis": _TCPConnection, "unix": _UnixConnection}  # not rediss: a peek would see TLS records


def connection_pool(url, max_connections, timeout):
    """A bounded pool: waiting longer for a pooled connection than for Redis itself makes no sense."""
    scheme = url.partition("://")[0]
    options = {"connection_class": _PEEKING[scheme]} if scheme in _PEEKING else {}
    return redis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=timeout, socket_timeout=timeout, socket_connect_timeout=2,
        **options)


def init_app(app):
    config = app.config
    url, timeout = config["REDIS_URL"], config["CHAT_REDIS_TIMEOUT_SECS"]
    pool = connection_pool(url, config["CHAT_REDIS_POOL"], timeout)
    # One immediate retry replaces a pooled connection that died with a Redis
    # restart; more would only delay the 503 a client needs to see.
    client = redis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 1))
    broker = Broker(client, config["CHAT_STREAM_MAXLEN"], config["CHAT_IDEMPOTENCY_TTL_SECS"])
    app.extensions["chat.redis"] = client
    app.extensions["chat.broker"] = broker
    presence = Presence(client, config)
    app.extensions["chat.presence"] = presence
    app.extensions["chat.metrics"] = metrics = Metrics()
    # The hub's own reads (tails, backfills) never queue behind requests.
    hub_broker = broker.bound_to(redis.Redis(connection_pool=connection_pool(url, HUB_READ_CONNECTIONS, timeout)))
    slots = StreamSlots(client, config["CHAT_MAX_STREAMS_PER_USER"], config["CHAT_STREAM_LEASE_SECS"])
    memberships = Memberships(client, broker, config["CHAT_MAX_JOINED_ROOMS"])
    app.extensions["chat.memberships"] = memberships
    app.extensions["chat.hub"] = Hub(url, broker=hub_broker, presence=presence, slots=slots,
                                     memberships=memberships, metrics=metrics,
                                     config=config)
