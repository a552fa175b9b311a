"""Server-side sessions in Redis (flask-session), so any worker on any host knows you.

Three rules keep them safe:

* Only signed-in users have a session in Redis. An anonymous visitor's CSRF
  token (needed for the login form) lives in a signed cookie of its own, so
  anonymous requests leave nothing behind in Redis.
* Every session is in its user's index from the instant it exists: it is
  created and indexed in one script (``lua/start_session.lua``), and ending a
  user's sessions is one script too, so logout-everywhere, password changes,
  kicks and bans always reach every session. A login whose account changed or
  was banned after its password was checked is refused by that same script.
* A stream re-checks its session every ``CHAT_SESSION_RECHECK_SECS`` (see
  :func:`recheck`), so it ends within that even if the control message that
  should have ended it was missed.
"""

import logging
import re
import time
import warnings
from datetime import timedelta

import redis
from flask import request
from flask_session.redis import RedisSessionInterface
from itsdangerous import BadSignature, URLSafeSerializer

from chatapp.ops.errors import Forbidden, Unauthorized
from chatapp.store import keys
from chatapp.store.errors import REDIS_ERRORS, is_out_of_memory
from chatapp.store.lua import lua_script

log = logging.getLogger(__name__)

SESSION_COOKIE_NAME = "chat_session"
ANON_CSRF_COOKIE = "chat_csrf"  # an anonymous visitor's CSRF token, signed; never in Redis
CSRF_FIELD = "csrf_token"  # where flask-wtf keeps the raw token in the session
# A session id: its user's hash tag (see keys.session_id; none in earlier releases) and a token.
_SID_RE = re.compile(r"\A(\{user:[a-z0-9._-]{2,32}\})?[A-Za-z0-9_-]{16,128}\Z")
UNAVAILABLE = "chat.session_unavailable"


class RedisSessions(RedisSessionInterface):
    """flask-session's Redis interface, with these guards.

    * A cookie that can't be one of our session ids never reaches Redis as a key.
    * Redis being down yields a null session plus a marker, so the view answers
      503 (or tells a stream to retry) instead of a 500.
    * A session is only ever *updated* here (``SET XX``): the login script
      creates it, and a long-poll that outlives a logout or a kick must not write
      the ended session back to life when it finishes.
    * A session without a user is never stored (see the module docstring).
    """

    def __init__(self, app, client, max_per_user):
        with warnings.catch_warnings():  # it warns about, then swaps, anything but a redis.Redis
            warnings.simplefilter("ignore", RuntimeWarning)
            super().__init__(app, client=client, key_prefix=keys.SESSION_PREFIX, permanent=True)
        self.client = client  # a RedisCluster too: flask-session only calls get, set and delete
        self.max_per_user = max_per_user
        self._start = client.register_script(lua_script("start_session"))
        self._end = client.register_script(lua_script("end_sessions"))
        self._forget = client.register_script(lua_script("forget_session"))
        self._anon_signer = URLSafeSerializer(app.secret_key, salt="chat-anonymous-csrf")

    def open_session(self, app, req):
        sid = req.cookies.get(app.config["SESSION_COOKIE_NAME"])
        if sid and not _SID_RE.match(sid):
            session = self.session_class(sid=self._generate_sid(self.sid_length), permanent=self.permanent)
        else:
            try:
                session = super().open_session(app, req)
            except REDIS_ERRORS as exc:
                req.environ[UNAVAILABLE] = exc
                return None
        if "user" not in session and session.sid != sid:  # a new, anonymous session
            token = self._anonymous_token(req)
            if token:
                session[CSRF_FIELD] = token
                session.modified = False
        return session

    def save_session(self, app, session, response):
        if session.get("user") is None and session:  # anonymous, with a CSRF token at most
            token = session.get(CSRF_FIELD)
            if token and token != self._anonymous_token(request):
                response.set_cookie(ANON_CSRF_COOKIE, self._anon_signer.dumps(token), httponly=True,
                                    secure=self.get_cookie_secure(app), samesite=self.get_cookie_samesite(app),
                                    path=self.get_cookie_path(app), domain=self.get_cookie_domain(app))
            return
        super().save_session(app, session, response)

    def _anonymous_token(self, req):
        signed = req.cookies.get(ANON_CSRF_COOKIE)
        if not signed:
            return None
        try:
            token = self._anon_signer.loads(signed)
        except BadSignature:
            return None
        return token if isinstance(token, str) else None

    def _upsert_session(self, session_lifetime, session, store_id):
        # Only ever an update (SET XX): a session is created by begin()'s script alone,
        # which indexes it; one written here could outlive a kick unseen.
        try:
            self.client.set(store_id, self.serializer.encode(session),
                            ex=int(session_lifetime.total_seconds()), xx=True)
        except redis.ResponseError as exc:
            if not is_out_of_memory(exc):
                raise
            # A full store must not turn every signed-in request into an error: the
            # session stays as stored, only its expiry isn't pushed back this time.
            log.warning("session not refreshed: redis is out of memory")

    def begin(self, session, user, record, lifetime):
        """Sign ``user`` in on ``session`` under a new id (so an id planted before, fixation, is
        useless), stored and indexed in one step. ``record`` is the account as read when the
        password was checked. Returns the sids ended to keep the user within the cap."""
        session.clear()
        session["user"] = user
        session.permanent = True
        self.regenerate(session)
        session.sid = keys.session_id(user, session.sid)
        names = [self._get_store_id(session.sid), keys.user_sessions(user), keys.user(user), keys.banned(user)]
        try:
            result = self._start(names, [self.serializer.encode(session), int(lifetime.total_seconds()),
                                        session.sid, record, keys.SESSION_PREFIX, int(time.time() * 1000),
                                        self.max_per_user])
        except BaseException:
            session.clear()
            raise
        if result in (-1, -2):
            session.clear()  # or the response's save would store it after all, unindexed
            if result == -1:
                raise Unauthorized("Wrong username or password.", code="bad_credentials")
            raise Forbidden("This account is banned.", code="banned")
        return [sid.decode() for sid in result]

    def forget(self, user, sid):
        """End one session: deleted and out of its user's index in one step."""
        self._forget([keys.user_sessions(user), keys.session(sid)], [sid])

    def end_all(self, user):
        """Delete every session of ``user``; return how many were live."""
        return self._end([keys.user_sessions(user)], [keys.SESSION_PREFIX])


def session_unavailable():
    """The Redis error that kept this request's session from loading, if any."""
    return request.environ.get(UNAVAILABLE)


def init_app(app, client):
    app.config.update(
        SESSION_COOKIE_NAME=SESSION_COOKIE_NAME,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=app.config["CHAT_HTTPS"],
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=app.config["CHAT_SESSION_LIFETIME_SECS"]),
    )
    app.session_interface = RedisSessions(app, client, app.config["CHAT_MAX_SESSIONS_PER_USER"])
