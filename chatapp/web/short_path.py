"""The long-poll short path: WSGI middleware that answers a kept poller's next poll before Flask
(see :mod:`chatapp.delivery.pollers`)."""

import re
from urllib.parse import unquote_plus

from chatapp.delivery import longpoll
from chatapp.delivery.pollers import poller_key
from chatapp.delivery.reader import ReaderClosed
from chatapp.ops.errors import BadRequest, ChatError
from chatapp.store.errors import REDIS_ERRORS
from chatapp.web.context import services_of
from chatapp.web.params import POLL_PARAMETERS, poll_timeout
from chatapp.web.takeover import respond_whole

ROOM_POLL_ENDPOINT = "streams.poll"  # a room's long-poll (chatapp.web.streams)
MUX_POLL_ENDPOINT = "events.poll"  # the multiplexed stream's long-poll (chatapp.web.events)


class ShortPath:
    """WSGI middleware: answers a kept poller's next poll without Flask (see
    :mod:`chatapp.delivery.pollers`). Which paths are polls it reads off the app's own
    routes (the endpoints ``streams.poll`` and ``events.poll``), and their query the way the
    views do (:mod:`chatapp.web.params`)."""

    def __init__(self, app, wsgi_app):
        self.app = app
        self.wsgi_app = wsgi_app
        self.config = app.config
        rules = {rule.endpoint: rule.rule for rule in app.url_map.iter_rules()}
        before, _, after = rules[ROOM_POLL_ENDPOINT].partition("<room>")
        self._room_poll = re.compile(r"\A" + re.escape(before) + r"([^/]+)" + re.escape(after) + r"\Z")
        self._mux_poll = rules[MUX_POLL_ENDPOINT]

    def __call__(self, environ, start_response):
        scope = self._scope(environ) if environ.get("REQUEST_METHOD") == "GET" else None
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

    def _scope(self, environ):
        """What a GET reads if it is a long-poll: its room, or ``*`` and the ``rooms`` it names."""
        path = environ.get("PATH_INFO", "")
        if path == self._mux_poll:
            return "*" + _query_value(environ.get("QUERY_STRING", ""), "rooms")
        match = self._room_poll.match(path)
        return match[1] if match else None

    def _short(self, hub, key, environ):
        query = self._query(environ.get("QUERY_STRING", ""))
        if query is None:
            return None
        cursor, timeout = query
        pollers = hub.pollers
        headers = pollers.headers(key)
        poller = pollers.take(key, cursor) if headers is not None else None
        if poller is None:
            return None
        stream, kind = poller.reader, poller.kind
        try:
            answer = longpoll.poll(hub, stream, kind, timeout=timeout, user=poller.user, not_before=poller.not_before)
        except ReaderClosed as closed:
            pollers.end(poller)
            try:
                return headers, longpoll.answer_closed(stream, kind, closed).body  # draining: answer now
            except ChatError:
                return None  # Flask answers it, as it does (the session ended: a 401)
        except (ChatError, *REDIS_ERRORS):
            pollers.end(poller)
            return None  # Flask meets the same trouble and answers it as it does
        except BaseException:
            pollers.end(poller)
            raise
        pollers.answered(poller, answer.cursor)
        return headers, answer.body

    def _query(self, text):
        """``(cursor, timeout)`` of a poll's query string, or None unless it names a cursor and
        nothing but the parameters a poll takes, each valid (anything else is Flask's to judge)."""
        cursor = timeout = None
        for part in text.split("&"):
            name, _, value = part.partition("=")
            if name not in POLL_PARAMETERS:
                return None
            if name == "cursor" and cursor is None:
                cursor = unquote_plus(value)  # the first, as Flask reads it
            elif name == "timeout" and timeout is None:
                timeout = unquote_plus(value)
        try:
            timeout = poll_timeout(timeout, self.config)
        except BadRequest:
            return None
        return (cursor, timeout) if cursor else None


def _query_value(text, name):
    for part in text.split("&"):
        key, _, value = part.partition("=")
        if key == name:
            return unquote_plus(value)  # as Flask reads a query
    return ""


def init_app(app):
    """Outermost: a kept poller's next poll needs nothing of the rest (call after the blueprints)."""
    app.wsgi_app = ShortPath(app, app.wsgi_app)
