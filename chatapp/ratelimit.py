"""Rate limits counted in Redis, so every worker and host shares one count.

Built on ``limits`` (the library under Flask-Limiter): views call
:func:`enforce` explicitly with the key they mean (a user, an IP, a login
name), and a breach is one of our JSON errors with ``Retry-After``.
"""

import logging
import math
import time

import redis
from flask import current_app, request
from limits import parse
from limits.storage import RedisStorage
from limits.strategies import SlidingWindowCounterRateLimiter

from . import keys
from .errors import RateLimited, is_out_of_memory

log = logging.getLogger(__name__)

LIMITS = ("CHAT_RATE_MESSAGES", "CHAT_RATE_LOGIN_IP", "CHAT_RATE_LOGIN_USER", "CHAT_RATE_REGISTER_IP",
          "CHAT_RATE_STREAMS", "CHAT_RATE_TYPING", "CHAT_RATE_ROOMS", "CHAT_RATE_UNREAD")


# Reading what is already stored must go on when Redis is full: opening a stream
# writes only this counter, so a full store doesn't shut every reader out.
FAIL_OPEN_WHEN_FULL = frozenset({"CHAT_RATE_STREAMS"})


class RateLimits:
    """The configured limits and a sliding-window counter on the app's Redis pool."""

    def __init__(self, redis_url, connection_pool, config):
        uri = "redis+unix://" + redis_url[len("unix://"):] if redis_url.startswith("unix://") else redis_url
        storage = RedisStorage(uri, connection_pool=connection_pool, key_prefix=keys.RATE_LIMIT_PREFIX)
        self._limiter = SlidingWindowCounterRateLimiter(storage)
        self._limits = {name: parse(config[name]) for name in LIMITS}

    def hit(self, setting, key):
        """Count one hit of ``setting`` for ``key``; raise RateLimited past the limit."""
        try:
            allowed = self._limiter.hit(self._limits[setting], setting, key)
        except redis.ResponseError as exc:
            if not (setting in FAIL_OPEN_WHEN_FULL and is_out_of_memory(exc)):
                raise
            log.warning("rate limit %s not counted: redis is out of memory", setting)
            return
        if not allowed:
            self._refuse(setting, key)

    def check(self, setting, key):
        """Raise RateLimited if ``key`` has no hit of ``setting`` left, without counting one."""
        if not self._limiter.test(self._limits[setting], setting, key):
            self._refuse(setting, key)

    def count(self, setting, key):
        """Count one hit, whether or not it is over the limit (a failure already answered)."""
        self._limiter.hit(self._limits[setting], setting, key)

    def _refuse(self, setting, key):
        item = self._limits[setting]
        reset_at = self._limiter.get_window_stats(item, setting, key).reset_time
        retry_after = max(1, math.ceil(reset_at - time.time()))
        raise RateLimited(f"Rate limit of {item} exceeded; retry in {retry_after}s.",
                          headers={"Retry-After": str(retry_after)})


def _key(key):
    return (key or request.remote_addr or "-").lower()


def enforce(setting, key=None):
    """Apply the limit named ``setting`` to ``key`` (default: the client's IP)."""
    current_app.extensions["chat.ratelimits"].hit(setting, _key(key))


def check(setting, key=None):
    """:func:`enforce` without counting: a 429 if nothing is left."""
    current_app.extensions["chat.ratelimits"].check(setting, _key(key))


def count(setting, key=None):
    """Count one against ``setting`` without refusing anything (a failure already answered)."""
    current_app.extensions["chat.ratelimits"].count(setting, _key(key))


def init_app(app):
    app.extensions["chat.ratelimits"] = RateLimits(
        app.config["REDIS_URL"], app.extensions["chat.redis"].connection_pool, app.config)
