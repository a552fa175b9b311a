"""The worker's Redis client (a bounded pool) and the Broker, Presence and Hub built on it."""

from redis.backoff import NoBackoff
from redis.retry import Retry

from chatapp.delivery.hub import HUB_READ_CONNECTIONS, Hub
from chatapp.ops.metrics import Metrics
from chatapp.store import topology
from chatapp.store.broker import Broker
from chatapp.store.memberships import Memberships
from chatapp.store.presence import Presence
from chatapp.store.stream_slots import StreamSlots


def init_app(app):
    config = app.config
    where, timeout = topology.parse(config["REDIS_URL"]), config["CHAT_REDIS_TIMEOUT_SECS"]
    # On a Cluster one immediate retry finds a slot's new node; more would only delay the
    # 503 a client needs to see. Requests' commands share round trips (chatapp.store.coalesce).
    client = topology.client(where, config["CHAT_REDIS_POOL"], timeout, cluster_retry=Retry(NoBackoff(), 1),
                             coalesce=config["CHAT_REDIS_COALESCE"])
    broker = Broker(client, config["CHAT_STREAM_MAXLEN"], config["CHAT_IDEMPOTENCY_TTL_SECS"],
                    durability=config["CHAT_DURABILITY"], replicas=config["CHAT_DURABILITY_REPLICAS"],
                    wait_ms=config["CHAT_DURABILITY_TIMEOUT_MS"])
    app.extensions["chat.redis"] = client
    app.extensions["chat.broker"] = broker
    presence = Presence(client, config)
    app.extensions["chat.presence"] = presence
    app.extensions["chat.metrics"] = metrics = Metrics()
    # The hub's own reads (tails, backfills) never queue behind requests.
    hub_broker = broker.bound_to(topology.client(where, HUB_READ_CONNECTIONS, timeout))
    slots = StreamSlots(client, config["CHAT_MAX_STREAMS_PER_USER"], config["CHAT_STREAM_LEASE_SECS"])
    memberships = Memberships(client, broker, config["CHAT_MAX_JOINED_ROOMS"])
    app.extensions["chat.memberships"] = memberships
    app.extensions["chat.topology"] = where
    app.extensions["chat.hub"] = Hub(where, broker=hub_broker, presence=presence, slots=slots,
                                     memberships=memberships, metrics=metrics,
                                     config=config)
