"""Browser-facing protections: CSRF for cookie-authenticated writes, and security headers."""

from flask import request
from flask_wtf.csrf import CSRFError, CSRFProtect

from chatapp.accounts.sessions import SESSION_COOKIE_NAME, session_unavailable
from chatapp.ops.errors import Forbidden, StoreUnavailable
from chatapp.web.errors import error_response

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# What a cross-site <form> can send without a CORS preflight.
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"})

SECURITY_HEADERS = {
    # Only our own scripts and styles: no inline script, so injected markup can't run.
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; object-src 'none'; "
                               "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


def needs_csrf_token():
    """Writes that a browser could be tricked into sending need the token.

    That is every unsafe request carrying our session cookie, and every form
    post (even without a cookie: login CSRF). HTTP Basic requests carry no
    ambient credentials, so curl and API clients don't need one.
    """
    if request.method not in UNSAFE_METHODS or request.authorization:
        return False
    return SESSION_COOKIE_NAME in request.cookies or request.mimetype in FORM_TYPES


def init_app(app):
    app.config.update(WTF_CSRF_CHECK_DEFAULT=False, WTF_CSRF_TIME_LIMIT=None)
    csrf = CSRFProtect(app)

    @app.before_request
    def check_csrf():
        if needs_csrf_token():
            if session_unavailable():
                raise StoreUnavailable()  # the token lives in the session
            csrf.protect()

    @app.errorhandler(CSRFError)
    def csrf_failed(error):
        return error_response(Forbidden(f"CSRF check failed: {error.description} Send the token "
                                        "from GET /api/auth/csrf as the X-CSRFToken header.",
                                        code="csrf_failed"))

    @app.after_request
    def security_headers(response):
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response
