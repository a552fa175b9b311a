"""Rate limits counted in Redis, so every worker and host shares one count.

Built on ``limits`` (the library under Flask-Limiter): views call
:func:`enforce` explicitly with the key they mean (a user, an IP, a login
name), and a breach is one of our JSON errors with ``Retry-After``.
"""

import collections
import logging
import math
import time

import redis
from limits import parse
from limits.storage import RedisClusterStorage, RedisStorage
from limits.strategies import SlidingWindowCounterRateLimiter

from chatapp.ops.errors import RateLimited
from chatapp.store import keys, topology
from chatapp.store.errors import is_out_of_memory, storage_full

log = logging.getLogger(__name__)

# Opening a stream writes only this counter: while Redis is full it still refuses past
# the count it had reached but stops counting, so reading what is stored goes on (the
# per-user stream cap, counted in leases, still holds). Every other limit fails closed.
COUNTED_LOOSELY_WHEN_FULL = frozenset({"CHAT_RATE_STREAMS"})

LIMITS = ("CHAT_RATE_MESSAGES", "CHAT_RATE_LOGIN_IP", "CHAT_RATE_LOGIN_USER", "CHAT_RATE_REGISTER_IP",
          "CHAT_RATE_STREAMS", "CHAT_RATE_TYPING", "CHAT_RATE_ROOMS", "CHAT_RATE_UNREAD", "CHAT_RATE_MEMBERSHIP",
          "CHAT_RATE_INVITES", "CHAT_RATE_DMS", "CHAT_RATE_ROOM_CHANGES", "CHAT_RATE_EDITS", "CHAT_RATE_READS")


class _ClientStorage(RedisStorage):
    """limits' Redis storage on the app's own client, so its calls share the requests' round
    trips (chatapp.store.coalesce) instead of going out one by one on a client of its own."""

    def __init__(self, client):
        self._client = client
        super().__init__("redis://", connection_pool=client.connection_pool, key_prefix=keys.RATE_LIMIT_PREFIX)

    def get_connection(self, readonly=False):
        return self._client


class RateLimits:
    """The configured limits and a sliding-window counter on the app's Redis pool."""

    def __init__(self, where, client, config):
        if where.kind == topology.CLUSTER:
            storage = RedisClusterStorage(where.url, key_prefix=keys.RATE_LIMIT_PREFIX)
        else:  # on the app's client, which for Sentinel follows the primary
            storage = _ClientStorage(client)
        self._limiter = SlidingWindowCounterRateLimiter(storage)
        self._limits = {name: parse(config[name]) for name in LIMITS}
        # Hits this worker knows are coming but can't count yet ((setting, key) -> n): the
        # HTTP Basic guesses still being hashed (chatapp.web.auth.GuessLimits).
        self.pending = collections.Counter()

    def hit(self, setting, key):
        """Count one hit of ``setting`` for ``key``; raise RateLimited past the limit."""
        item = self._limits[setting]
        try:
            allowed = self._limiter.hit(item, setting, key)
        except redis.ResponseError as exc:
            if not is_out_of_memory(exc):
                raise
            if setting not in COUNTED_LOOSELY_WHEN_FULL:
                # Fail closed: a limit that can't count would stop limiting (password
                # guessing would be free once someone filled the store).
                raise storage_full() from None
            log.warning("rate limit %s not counted: redis is out of memory", setting)
            allowed = self._limiter.test(item, setting, key)
        if not allowed:
            self.refuse(setting, key)

    def remaining(self, setting, key):
        """How many hits of ``setting`` ``key`` has left in the current window (a read)."""
        return self._limiter.get_window_stats(self._limits[setting], setting, key).remaining

    def count(self, setting, key):
        """Count one hit, whether or not it is over the limit (a failure already answered)."""
        try:
            self._limiter.hit(self._limits[setting], setting, key)
        except redis.ResponseError as exc:
            if not is_out_of_memory(exc):
                raise
            raise storage_full() from None  # an uncounted failure is a free guess

    def refuse(self, setting, key):
        """Raise the 429 of ``setting`` for ``key``."""
        item = self._limits[setting]
        reset_at = self._limiter.get_window_stats(item, setting, key).reset_time
        retry_after = max(1, math.ceil(reset_at - time.time()))
        raise RateLimited(f"Rate limit of {item} exceeded; retry in {retry_after}s.",
                          headers={"Retry-After": str(retry_after)})
