"""Who is asking: session cookies (browsers) and HTTP Basic (curl, API clients)."""

import functools

from flask import Blueprint, current_app, g, jsonify, request, session

from .errors import StoreUnavailable, Unauthorized
from .params import request_fields, string_field
from .sessions import session_unavailable
from .users import current_users

bp = Blueprint("auth", __name__, url_prefix="/api/auth")


def current_user():
    """The signed-in username for this request, or None."""
    if "user" not in g:
        if request.authorization:
            g.user = _basic_user()
        elif session_unavailable():
            raise StoreUnavailable()
        else:
            g.user = session.get("user")
    return g.user


def _basic_user():
    auth = request.authorization
    if auth.type != "basic" or not auth.username or auth.password is None:
        return None
    return current_users().authenticate_cached(auth.username, auth.password)


def login_required(view):
    """Run ``view`` only for a signed-in user (cookie or Basic); else a JSON 401."""

    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        if current_user() is None:
            raise Unauthorized()
        return view(*args, **kwargs)

    return wrapped


def _start_session(user):
    session.clear()
    session["user"] = user
    session.permanent = True
    # A new session id at login, so an id planted before it (fixation) is useless.
    current_app.session_interface.regenerate(session)


@bp.post("/register")
def register():
    """Create an account and sign it in."""
    fields = request_fields()
    user = current_users().create(string_field(fields, "username"), string_field(fields, "password"))
    _start_session(user)
    return jsonify(user=user), 201


@bp.post("/login")
def login():
    """Sign in with username and password; the same answer for unknown user and wrong password."""
    fields = request_fields()
    user = current_users().authenticate(fields.get("username"), fields.get("password"))
    if user is None:
        raise Unauthorized("Wrong username or password.", code="bad_credentials")
    _start_session(user)
    return jsonify(user=user)


@bp.post("/logout")
def logout():
    """End this session."""
    session.clear()
    return jsonify(ok=True)


@bp.get("/me")
@login_required
def me():
    """Who the request is authenticated as."""
    return jsonify(user=current_user())
