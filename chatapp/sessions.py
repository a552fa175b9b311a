"""Server-side sessions in Redis (flask-session), so any worker on any host knows you."""

import re
from datetime import timedelta

from flask import request
from flask_session.redis import RedisSessionInterface

from .errors import REDIS_ERRORS

SESSION_KEY_PREFIX = "chat:session:"
_SID_RE = re.compile(r"\A[A-Za-z0-9_-]{16,128}\Z")
UNAVAILABLE = "chat.session_unavailable"


class RedisSessions(RedisSessionInterface):
    """flask-session's Redis interface, with two guards.

    A cookie that can't be one of our session ids never reaches Redis as a key,
    and Redis being down yields a null session plus a marker, so the view
    answers 503 (or tells a stream to retry) instead of a 500.
    """

    def open_session(self, app, req):
        sid = req.cookies.get(app.config["SESSION_COOKIE_NAME"])
        if sid and not _SID_RE.match(sid):
            return self.session_class(sid=self._generate_sid(self.sid_length), permanent=self.permanent)
        try:
            return super().open_session(app, req)
        except REDIS_ERRORS as exc:
            req.environ[UNAVAILABLE] = exc
            return None


def session_unavailable():
    """The Redis error that kept this request's session from loading, if any."""
    return request.environ.get(UNAVAILABLE)


def init_app(app):
    app.config.update(
        SESSION_COOKIE_NAME="chat_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=app.config["CHAT_SESSION_LIFETIME_SECS"]),
    )
    app.session_interface = RedisSessions(
        app, client=app.extensions["chat.redis"], key_prefix=SESSION_KEY_PREFIX, permanent=True)
