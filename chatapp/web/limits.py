"""Rate limits as views apply them: to a user, a login name, or the client's address."""

from flask import request

from chatapp.web.context import services


def client_key(key=None):
    """The key a limit is counted under: ``key``, else the client's IP."""
    return (key or request.remote_addr or "-").lower()


def enforce(setting, key=None):
    """Apply the limit named ``setting`` to ``key`` (default: the client's IP)."""
    services().limits.hit(setting, client_key(key))


