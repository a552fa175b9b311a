"""Why a stream ended: the ``reason`` of its last event (``event: retry``), one name each.

A client reconnects after any of them (EventSource does so by itself); those
that mean its session is gone are followed by a 401 on the reconnect. The
error codes of :mod:`chatapp.ops.errors` that end a stream before it starts
(``busy``, ``rate_limited``, ...) are reported under their own code.
"""

from enum import StrEnum


class Ending(StrEnum):
    DRAINING = "draining"  # the worker is stopping; resume on another
    STORE_UNAVAILABLE = "store_unavailable"  # Redis failed under the stream
    SERVER_ERROR = "server_error"  # a bug; logged with its traceback
    CLIENT_GONE = "client_gone"  # the client hung up or stopped reading (logged, never sent)
    LOGGED_OUT = "logged_out"  # this session, or every session of the user, logged out
    PASSWORD_CHANGED = "password_changed"
    KICKED = "kicked"
    BANNED = "banned"
    SESSION_EXPIRED = "session_expired"
    ACCOUNT_GONE = "account_gone"
    REMOVED = "removed"  # the user may no longer read this room (removed, left, invariant 16)


# The endings that mean the client's session (or account) is gone: a long-poll answers them 401.
SESSION_ENDED = frozenset({Ending.LOGGED_OUT, Ending.PASSWORD_CHANGED, Ending.KICKED, Ending.BANNED,
                           Ending.SESSION_EXPIRED, Ending.ACCOUNT_GONE})
