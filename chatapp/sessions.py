"""Server-side sessions in Redis (flask-session), so any worker on any host knows you."""

import re
from datetime import timedelta

from flask import request
from flask_session.redis import RedisSessionInterface

from .errors import REDIS_ERRORS

SESSION_KEY_PREFIX = "chat:session:"
SESSION_COOKIE_NAME = "chat_session"
_SID_RE = re.compile(r"\A[A-Za-z0-9_-]{16,128}\Z")
UNAVAILABLE = "chat.session_unavailable"
_LOADED_SID = "chat.session_loaded_sid"


class RedisSessions(RedisSessionInterface):
    """flask-session's Redis interface, with three guards.

    * A cookie that can't be one of our session ids never reaches Redis as a key.
    * Redis being down yields a null session plus a marker, so the view answers
      503 (or tells a stream to retry) instead of a 500.
    * A session that existed when the request began is only ever *updated*
      (``SET XX``): a long-poll that outlives a logout or a kick must not write
      the ended session back to life when it finishes.
    """

    def open_session(self, app, req):
        sid = req.cookies.get(app.config["SESSION_COOKIE_NAME"])
        if sid and not _SID_RE.match(sid):
            return self.session_class(sid=self._generate_sid(self.sid_length), permanent=self.permanent)
        try:
            session = super().open_session(app, req)
        except REDIS_ERRORS as exc:
            req.environ[UNAVAILABLE] = exc
            return None
        if session.sid == sid:
            req.environ[_LOADED_SID] = sid
        return session

    def _upsert_session(self, session_lifetime, session, store_id):
        existing = session.sid == request.environ.get(_LOADED_SID)
        self.client.set(store_id, self.serializer.encode(session),
                        ex=int(session_lifetime.total_seconds()), xx=existing)


def _index_key(user):
    return f"chat:user-sessions:{user.lower()}"


def remember(redis, user, sid):
    """Index a session under its user: flask-session has no per-user list, and
    "log out everywhere" and kicking need one.

    The index has no expiry of its own (sessions are renewed by use, so any TTL
    set here could run out under a live session and hide it from a kick or a
    ban); sessions that expired are pruned from it here, at each login.
    """
    key = _index_key(user)
    known = [sid.decode() for sid in redis.smembers(key)]
    pipe = redis.pipeline(transaction=False)
    for other in known:
        pipe.exists(SESSION_KEY_PREFIX + other)
    alive = pipe.execute() if known else []
    pipe = redis.pipeline(transaction=False)
    gone = [other for other, exists in zip(known, alive) if not exists]
    if gone:
        pipe.srem(key, *gone)
    pipe.sadd(key, sid)
    pipe.execute()


def forget(redis, user, sid):
    redis.srem(_index_key(user), sid)


def end_all(redis, user):
    """Delete every session of ``user``; return how many were live."""
    sids = [sid.decode() for sid in redis.smembers(_index_key(user))]
    if not sids:
        return 0
    pipe = redis.pipeline(transaction=False)
    for sid in sids:
        pipe.delete(SESSION_KEY_PREFIX + sid)
    pipe.delete(_index_key(user))
    return sum(pipe.execute()[:-1])


def session_unavailable():
    """The Redis error that kept this request's session from loading, if any."""
    return request.environ.get(UNAVAILABLE)


def init_app(app):
    app.config.update(
        SESSION_COOKIE_NAME=SESSION_COOKIE_NAME,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=app.config["CHAT_HTTPS"],
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=app.config["CHAT_SESSION_LIFETIME_SECS"]),
    )
    app.session_interface = RedisSessions(
        app, client=app.extensions["chat.redis"], key_prefix=SESSION_KEY_PREFIX, permanent=True)
