"""The composition root: every long-lived object of the app, built once in dependency order.

Nothing else builds a service or looks one up by name: views reach them through
:func:`chatapp.web.context.services`, and the hub gets what it needs passed in.
"""

import logging

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from chatapp.accounts.access import Access
from chatapp.accounts.conversations import Conversations
from chatapp.accounts.passwords import Hasher
from chatapp.accounts.users import UserStore
from chatapp.delivery.hub import HUB_READ_CONNECTIONS, Hub
from chatapp.ops.metrics import Metrics
from chatapp.store import topology
from chatapp.store.broker import Broker
from chatapp.store.memberships import Memberships
from chatapp.store.migrations import Migration
from chatapp.store.presence import Presence
from chatapp.store.ratelimit import RateLimits
from chatapp.store.reads import ReadPositions
from chatapp.store.rooms import RoomRegistry
from chatapp.store.stream_slots import StreamSlots
from chatapp.web.context import EXTENSION, Services

log = logging.getLogger(__name__)


def build(config):
    """Every service, from the app's settings (nothing is connected yet: Redis is reached on
    first use, the hub after the fork)."""
    where, timeout = topology.parse(config["REDIS_URL"]), config["CHAT_REDIS_TIMEOUT_SECS"]
    # On a Cluster one immediate retry finds a slot's new node; more would only delay the
    # 503 a client needs to see. Requests' commands share round trips (chatapp.store.coalesce).
    client = topology.client(where, config["CHAT_REDIS_POOL"], timeout, cluster_retry=Retry(NoBackoff(), 1),
                             coalesce=config["CHAT_REDIS_COALESCE"])
    broker = Broker(client, config["CHAT_STREAM_MAXLEN"], config["CHAT_IDEMPOTENCY_TTL_SECS"],
                    durability=config["CHAT_DURABILITY"], replicas=config["CHAT_DURABILITY_REPLICAS"],
                    wait_ms=config["CHAT_DURABILITY_TIMEOUT_MS"])
    metrics = Metrics()
    limits = RateLimits(where, client, config)
    presence = Presence(client, config)
    memberships = Memberships(client, broker, config["CHAT_MAX_JOINED_ROOMS"])
    slots = StreamSlots(client, config["CHAT_MAX_STREAMS_PER_USER"], config["CHAT_STREAM_LEASE_SECS"])
    # The hub's own reads (tails, backfills) never queue behind requests.
    hub_broker = broker.bound_to(topology.client(where, HUB_READ_CONNECTIONS, timeout))
    hub = Hub(where, broker=hub_broker, presence=presence, slots=slots, memberships=memberships, metrics=metrics,
              config=config)
    hasher = Hasher(config["CHAT_HASH_THREADS"], config["CHAT_HASH_QUEUE"], config["CHAT_PASSWORD_HASH"])
    users = UserStore(client, hasher,
                      config["CHAT_AUTH_CACHE_SECS"], config["SECRET_KEY"], admins=config["CHAT_ADMINS"])
    # A verified credential is trusted while the control channel can tell of a change to it.
    users.trust_while(hub.control_epoch)
    hub.watch_users(users.forget)
    rooms = RoomRegistry(client, config["CHAT_MAX_ROOMS"], config["CHAT_MAX_ROOMS_PER_USER"], limits,
                         max_private_per_user=config["CHAT_MAX_PRIVATE_ROOMS_PER_USER"],
                         waits_for_replicas=broker.waits_for_replicas)
    access = Access(rooms, config["CHAT_ADMINS"])
    conversations = Conversations(client, rooms=rooms, access=access, broker=broker, memberships=memberships,
                                  users=users, limits=limits, max_members=config["CHAT_MAX_ROOM_MEMBERS"])
    return Services(
        topology=where, redis=client, broker=broker, metrics=metrics, presence=presence, memberships=memberships,
        rooms=rooms, access=access, conversations=conversations, reads=ReadPositions(client, broker),
        limits=limits, migration=Migration(client, where.kind), hub=hub, users=users)


def init_app(app):
    """Build the services into ``app`` and bring the stored keys up to date (or, with Redis down
    at start, make every request try first)."""
    services = app.extensions[EXTENSION] = build(app.config)
    try:
        services.migration.ensure()
    except redis.RedisError as exc:  # Redis down at start: the first request that needs it says so
        log.warning("keys not migrated at start (%s); each request tries again until it is done", exc)
    app.before_request(services.migration.ensure)
    try:
        services.rooms.migrate()
    except Exception as exc:  # Redis down at start: the first request that needs it says so
        log.warning("rooms: index not migrated at start (%s); will retry at the next start", exc)
    return services
