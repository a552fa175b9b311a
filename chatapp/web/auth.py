"""Who is asking: session cookies (browsers) and HTTP Basic (curl, API clients)."""

import functools

from flask import Blueprint, current_app, g, jsonify, make_response, request, session
from flask_wtf.csrf import generate_csrf

from chatapp.accounts import sessions
from chatapp.accounts.devices import DEVICE_COOKIE
from chatapp.accounts.users import USERNAME_RE, credential
from chatapp.core import control
from chatapp.core.reasons import Ending
from chatapp.ops.errors import StoreUnavailable, Unauthorized
from chatapp.web.context import services
from chatapp.web.limits import client_key, enforce
from chatapp.web.params import request_fields, string_field

bp = Blueprint("auth", __name__, url_prefix="/api/auth")


def current_user():
    """The signed-in username for this request, or None."""
    if "user" not in g:
        if request.authorization:
            g.user = _basic_user()
        elif sessions.session_unavailable():
            raise StoreUnavailable()
        else:
            g.user = session.get("user")
    return g.user


def current_sid():
    """The session id the request is authenticated by; None for HTTP Basic."""
    return None if request.authorization else getattr(session, "sid", None)


def current_credential():
    """For HTTP Basic, a fingerprint of the account record the password was checked against
    (a stream re-checks it: a password change ends the stream); None for a session. Made only
    when a stream asks: other requests don't need it."""
    current_user()
    record = g.get("basic_record")
    return credential(record) if record else None


DEVICE_COOKIE_SECS = 400 * 24 * 3600  # as long as browsers keep a cookie (Chrome caps at 400 days)


def enforce_login_name(name):
    """The per-username login limit (logins, password changes, Basic attempts that need a hash)."""
    enforce("CHAT_RATE_LOGIN_USER", f"login:{name}")


class GuessLimits:
    """HTTP Basic attempts that need a password hash count against the login limits.

    * Per name, every such attempt counts, before its hash (as every login does): it is
      one Redis write ahead of the hash, so a burst at a name can't queue more hashes
      than the limit, and a store too full to count refuses the attempt (507) before a
      hash could tell a right password from a wrong one. An honest client's attempts are
      few: once verified, a credential skips all this.
    * Per client IP, only failures count, so many honest clients behind one address
      (an office, a load generator) can all sign in. A failure is only known after its
      hash, so the attempts from that address still being hashed are held, in this
      worker, against what the limit has left.
    """

    def __init__(self, name):
        self.name = name if USERNAME_RE.match(name) else None  # only valid names become keys
        self.ip = ("CHAT_RATE_LOGIN_IP", client_key())

    def begin(self):
        """Before a hash: 429 (or 507 on a full store) unless both limits have room for it."""
        limits = services().limits
        # In line before asking what is left: asked first, a burst's attempts would all
        # hear "3 left" before any of them counted.
        limits.pending[self.ip] += 1
        place = limits.pending[self.ip]
        try:
            if limits.remaining(*self.ip) < place:
                limits.refuse(*self.ip)
            if self.name:
                enforce_login_name(self.name)
        except BaseException:
            self._leave_line(limits)
            raise

    def end(self, failed):
        limits = services().limits
        try:
            if failed:  # counted before leaving the line: no instant where it is in neither
                limits.count(*self.ip)
        finally:
            self._leave_line(limits)

    def _leave_line(self, limits):
        limits.pending[self.ip] -= 1
        if not limits.pending[self.ip]:
            del limits.pending[self.ip]


def _basic_user():
    auth = request.authorization
    if auth.type != "basic" or not auth.username or auth.password is None:
        return None
    account = services().users.authenticate_basic(auth.username, auth.password, GuessLimits(auth.username))
    if account is None:
        return None
    g.basic_record = account.record
    return account.name


def login_required(view):
    """Run ``view`` only for a signed-in user (cookie or Basic); else a JSON 401."""

    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        if current_user() is None:
            raise Unauthorized()
        return view(*args, **kwargs)

    return wrapped


def _start_session(account):
    """Sign ``account`` in on this browser with a brand-new session id."""
    interface = current_app.session_interface
    ended = interface.begin(session, account.name, account.record, current_app.permanent_session_lifetime)
    broker = services().broker
    for sid in ended:  # past CHAT_MAX_SESSIONS_PER_USER the oldest sessions end
        broker.publish_control(control.end_streams(Ending.LOGGED_OUT, sid=sid))
    g.user = account.name
    g.pop("csrf_token", None)  # the token cached for the old session would not validate
    return jsonify(user=account.name, csrf_token=generate_csrf())


def end_user_sessions(user, reason):
    """End every session of ``user`` and close their streams on every worker and host."""
    ended = current_app.session_interface.end_all(user)
    services().broker.publish_control(control.end_streams(reason, user=user))
    return ended


@bp.post("/register")
def register():
    """Create an account and sign it in."""
    enforce("CHAT_RATE_REGISTER_IP")
    fields = request_fields()
    account = services().users.create(string_field(fields, "username"), string_field(fields, "password"))
    services().memberships.join_default(account.name)
    return _with_device(_start_session(account), account.name), 201


@bp.post("/login")
def login():
    """Sign in; an unknown user and a wrong password get the same answer, in the same time.

    A browser that signed in as this name before (its device cookie) is limited on its own, so
    strangers guessing at the name can't lock it out (chatapp.accounts.devices)."""
    enforce("CHAT_RATE_LOGIN_IP")
    fields = request_fields()
    name = fields.get("username")
    if isinstance(name, str) and USERNAME_RE.match(name):  # only valid names become keys
        device = services().devices.nonce_for(request.cookies.get(DEVICE_COOKIE), name)
        if device is not None:
            enforce("CHAT_RATE_LOGIN_DEVICE", f"device:{device}")
        else:
            enforce_login_name(name)
    account = services().users.authenticate(fields.get("username"), fields.get("password"))
    if account is None:
        raise Unauthorized("Wrong username or password.", code="bad_credentials")
    return _with_device(_start_session(account), account.name)


def _with_device(response, user):
    """``response`` with a device cookie for ``user`` unless the browser has one already."""
    response = make_response(response)
    if services().devices.nonce_for(request.cookies.get(DEVICE_COOKIE), user) is None:
        response.set_cookie(DEVICE_COOKIE, services().devices.issue(user), max_age=DEVICE_COOKIE_SECS, httponly=True,
                            samesite="Lax", secure=current_app.config["CHAT_HTTPS"], path="/api/auth")
    return response


@bp.post("/logout")
def logout():
    """End this session (and the streams it holds)."""
    user, sid = session.get("user"), current_sid()
    if user and sid:
        current_app.session_interface.forget(user, sid)
        services().broker.publish_control(control.end_streams(Ending.LOGGED_OUT, sid=sid))
    session.clear()
    return jsonify(ok=True)


@bp.post("/logout-everywhere")
@login_required
def logout_everywhere():
    """End every session of the signed-in user, on every device."""
    ended = end_user_sessions(current_user(), Ending.LOGGED_OUT)
    session.clear()
    return jsonify(ok=True, sessions_ended=ended)


@bp.post("/password")
@login_required
def change_password():
    """Change the password; every other session ends, this one gets a new id."""
    user = current_user()
    enforce_login_name(user)
    fields = request_fields()
    account = services().users.change_password(user, fields.get("current_password"),
                                              string_field(fields, "new_password"))
    end_user_sessions(user, Ending.PASSWORD_CHANGED)
    if request.authorization:
        return jsonify(user=user)
    return _start_session(account)


@bp.get("/me")
@login_required
def me():
    """Who the request is authenticated as, and whether they may administer."""
    user = current_user()
    return jsonify(user=user, admin=services().users.is_admin(user))


@bp.get("/csrf")
def csrf():
    """A CSRF token for this browser session; send it as ``X-CSRFToken`` on writes."""
    return jsonify(csrf_token=generate_csrf())
