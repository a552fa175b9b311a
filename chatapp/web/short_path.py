"""The long-poll short path: WSGI middleware that answers a kept poller's next poll before Flask
(see :mod:`chatapp.delivery.pollers`)."""

import re
from urllib.parse import unquote_plus

from chatapp.core.reasons import Ending
from chatapp.delivery.pollers import mux_answer, poll_answer, poller_key, room_answer
from chatapp.delivery.reader import ReaderClosed
from chatapp.ops.errors import ChatError
from chatapp.store.errors import REDIS_ERRORS
from chatapp.web.context import services_of
from chatapp.web.takeover import respond_whole

POLL_PATH = re.compile(r"\A/api/rooms/([^/]+)/poll\Z")
MUX_POLL_PATH = "/api/poll"  # the multiplexed stream's long-poll (chatapp.web.events)
class ShortPath:
    """WSGI middleware: answers a kept poller's next poll without Flask (see the module docstring)."""

    def __init__(self, app, wsgi_app):
        self.app = app
        self.wsgi_app = wsgi_app
        config = app.config
        self.default_timeout = config["CHAT_POLL_TIMEOUT_SECS"]
        self.max_timeout = config["CHAT_POLL_MAX_TIMEOUT_SECS"]

    def __call__(self, environ, start_response):
        scope = _scope(environ) if environ.get("REQUEST_METHOD") == "GET" else None
        if scope is None:
            return self.wsgi_app(environ, start_response)
        key = poller_key(environ, scope)
        hub = services_of(self.app).hub
        if key is not None:
            answer = self._short(hub, key, environ)
            if answer is not None:
                return respond_whole(start_response, "200 OK", *answer)

        def remember_headers(status, headers, exc_info=None):
            if key is not None and status.startswith("200"):
                hub.pollers.adopt_headers(key, headers)
            return start_response(status, headers, exc_info)
        return self.wsgi_app(environ, remember_headers)

    def _short(self, hub, key, environ):
        query = _query(environ.get("QUERY_STRING", ""), self.default_timeout, self.max_timeout)
        if query is None:
            return None
        cursor, timeout = query
        pollers = hub.pollers
        headers = pollers.headers(key)
        poller = pollers.take(key, cursor) if headers is not None else None
        if poller is None:
            return None
        stream = poller.reader
        multiplexed = key[2].startswith("*")
        pollers.waiting += 1
        try:
            services_of(self.app).presence.join_polling(stream.user, list(stream.rooms) if multiplexed
                                                              else [stream.room])
            answer = (mux_answer if multiplexed else room_answer)(stream, timeout, poller.not_before)
        except ReaderClosed as closed:
            pollers.end(poller)
            if closed.reason != Ending.DRAINING:
                return None  # Flask answers it (the session ended: a 401)
            # Answer now; the client polls again, elsewhere.
            return headers, stream.poll_answer([], [], []) if multiplexed else poll_answer(stream, [])[0]
        except (ChatError, *REDIS_ERRORS):
            pollers.end(poller)
            return None  # Flask meets the same trouble and answers it as it does
        except BaseException:
            pollers.end(poller)
            raise
        finally:
            pollers.waiting -= 1
        body, delivered = answer
        stream.count_delivered(delivered)
        pollers.short_answers += 1
        pollers.answered(poller)
        return headers, body


def _scope(environ):
    """What a GET reads if it is a long-poll: its room, or ``*`` and the ``rooms`` it names."""
    path = environ.get("PATH_INFO", "")
    if path == MUX_POLL_PATH:
        return "*" + _query_value(environ.get("QUERY_STRING", ""), "rooms")
    match = POLL_PATH.match(path)
    return match[1] if match else None


def _query_value(text, name):
    for part in text.split("&"):
        key, _, value = part.partition("=")
        if key == name:
            return unquote_plus(value)  # as Flask reads a query
    return ""


def _query(text, default_timeout, max_timeout):
    """``(cursor, timeout)`` of a poll's query string, or None unless it names a cursor and
    nothing but ``cursor``, a valid ``timeout`` and ``rooms`` (anything else is Flask's to judge)."""
    cursor = timeout = None
    for part in text.split("&"):
        name, _, value = part.partition("=")
        if name == "cursor":
            cursor = cursor if cursor is not None else unquote_plus(value)  # the first, as Flask reads it
        elif name == "timeout":
            if timeout is None:
                try:
                    timeout = float(value)
                except ValueError:
                    return None
        elif name != "rooms":
            return None
    if timeout is None:
        timeout = default_timeout
    if not cursor or not 0 <= timeout <= max_timeout:  # NaN too
        return None
    return cursor, timeout


def init_app(app):
    app.wsgi_app = ShortPath(app, app.wsgi_app)
