"""The worker's Redis client (a bounded pool) and the Broker, Presence and Hub built on it."""

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .broker import Broker
from .hub import Hub
from .metrics import Metrics
from .presence import Presence


def init_app(app):
    config = app.config
    pool = redis.BlockingConnectionPool.from_url(
        config["REDIS_URL"],
        max_connections=config["CHAT_REDIS_POOL"],
        # Waiting longer for a pooled connection than for Redis itself makes no sense.
        timeout=config["CHAT_REDIS_TIMEOUT_SECS"],
        socket_timeout=config["CHAT_REDIS_TIMEOUT_SECS"],
        socket_connect_timeout=2,
    )
    # One immediate retry replaces a pooled connection that died with a Redis
    # restart; more would only delay the 503 a client needs to see.
    client = redis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 1))
    broker = Broker(client, config["CHAT_STREAM_MAXLEN"], config["CHAT_IDEMPOTENCY_TTL_SECS"])
    app.extensions["chat.redis"] = client
    app.extensions["chat.broker"] = broker
    presence = Presence(client, config)
    app.extensions["chat.presence"] = presence
    app.extensions["chat.metrics"] = metrics = Metrics()
    app.extensions["chat.hub"] = Hub(config["REDIS_URL"], broker, presence, metrics, config)
