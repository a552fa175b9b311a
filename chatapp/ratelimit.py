"""Rate limits counted in Redis, so every worker and host shares one count.

Built on ``limits`` (the library under Flask-Limiter): views call
:func:`enforce` explicitly with the key they mean (a user, an IP, a login
name), and a breach is one of our JSON errors with ``Retry-After``.
"""

import math
import time

from flask import current_app, request
from limits import parse
from limits.storage import RedisStorage
from limits.strategies import SlidingWindowCounterRateLimiter

from .errors import RateLimited

LIMITS = ("CHAT_RATE_MESSAGES", "CHAT_RATE_LOGIN_IP", "CHAT_RATE_LOGIN_USER", "CHAT_RATE_REGISTER_IP",
          "CHAT_RATE_STREAMS", "CHAT_RATE_TYPING")


class RateLimits:
    """The configured limits and a sliding-window counter on the app's Redis pool."""

    def __init__(self, redis_url, connection_pool, config):
        uri = "redis+unix://" + redis_url[len("unix://"):] if redis_url.startswith("unix://") else redis_url
        storage = RedisStorage(uri, connection_pool=connection_pool, key_prefix="chat:rl")
        self._limiter = SlidingWindowCounterRateLimiter(storage)
        self._limits = {name: parse(config[name]) for name in LIMITS}

    def hit(self, setting, key):
        """Count one hit of ``setting`` for ``key``; raise RateLimited past the limit."""
        item = self._limits[setting]
        if self._limiter.hit(item, setting, key):
            return
        reset_at = self._limiter.get_window_stats(item, setting, key).reset_time
        retry_after = max(1, math.ceil(reset_at - time.time()))
        raise RateLimited(f"Rate limit of {item} exceeded; retry in {retry_after}s.",
                          headers={"Retry-After": str(retry_after)})


def enforce(setting, key=None):
    """Apply the limit named ``setting`` to ``key`` (default: the client's IP)."""
    current_app.extensions["chat.ratelimits"].hit(setting, (key or request.remote_addr or "-").lower())


def init_app(app):
    app.extensions["chat.ratelimits"] = RateLimits(
        app.config["REDIS_URL"], app.extensions["chat.redis"].connection_pool, app.config)
