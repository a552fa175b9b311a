"""Live delivery: the SSE stream and the long-poll fallback, both fed by the worker hub."""

import logging
import os
import time

from flask import Blueprint, Response, current_app, request

from . import sse
from .auth import login_required
from .broker import StreamId
from .errors import REDIS_ERRORS, StoreUnavailable, error_response
from .hub import ReaderClosed
from .messages import json_response
from .params import query_cursor, query_number
from .rooms import current_rooms

log = logging.getLogger(__name__)

bp = Blueprint("streams", __name__, url_prefix="/api/rooms")


def current_hub():
    return current_app.extensions["chat.hub"]


def _retry_stream(reason, retry_ms):
    """A 200 stream that only says "retry later": any non-200 would stop EventSource for good."""
    body = sse.Event({"reason": reason}, event="retry", retry=retry_ms).encode()
    return Response(body, mimetype=sse.MIMETYPE, headers=sse.HEADERS)


def _store_unavailable(error):
    """Streams tell EventSource to come back; other routes get the JSON 503."""
    if not isinstance(error, StoreUnavailable):
        log.warning("redis unavailable in %s: %s", request.endpoint, error)
        error = StoreUnavailable()
    if request.endpoint == "streams.events":
        return _retry_stream(error.code, current_app.config["CHAT_RETRY_MS"])
    return error_response(error)


for _error in (StoreUnavailable, *REDIS_ERRORS):
    bp.register_error_handler(_error, _store_unavailable)


@bp.get("/<room>/events")
@login_required
def events(room):
    """Server-Sent Events for one room, resumable with Last-Event-ID."""
    current_rooms().require(room)
    header = request.headers.get("Last-Event-ID", "").strip()
    cursor = StreamId.parse(header) if header else query_cursor("last_event_id", "lastEventId")
    config = current_app.config
    backlog = query_number("backlog", 0, 0, config["CHAT_BACKLOG_MAX"])
    stream = _event_stream(current_hub().reader(room), cursor, backlog,
                           config["CHAT_HEARTBEAT_SECS"], config["CHAT_RETRY_MS"])
    return Response(stream, mimetype=sse.MIMETYPE, headers=sse.HEADERS)


def _event_stream(reader, cursor, backlog, heartbeat, retry_ms):
    opened = time.monotonic()
    # First bytes at once: headers get past proxies that wait for a body, and a
    # client can tell a buffering proxy from a quiet room.
    yield sse.Event(retry=retry_ms, comment="stream open").encode()
    try:
        yield from _deliver(reader, cursor, backlog, heartbeat)  # ends only by an exception
    except ReaderClosed as closed:
        reason = closed.reason
    except StoreUnavailable as exc:
        reason = exc.code
        if exc.code != "draining":
            log.warning("stream room=%s pid=%d ended: %s", reader.room, os.getpid(), exc)
    except REDIS_ERRORS as exc:
        reason = "store_unavailable"
        log.warning("stream room=%s pid=%d ended: redis unavailable (%s: %s)",
                    reader.room, os.getpid(), type(exc).__name__, exc)
    finally:
        reader.hub.detach(reader)
        log.debug("stream room=%s closed after %.1fs", reader.room, time.monotonic() - opened)
    yield sse.Event({"reason": reason}, event="retry").encode()


def _deliver(reader, cursor, backlog, heartbeat):
    position, initial = reader.open(cursor, backlog)
    if position and position.reset:
        yield _reset_event(position)
    if initial:
        yield b"".join(p.frame for p in initial)
    while True:
        batch = reader.next_batch(heartbeat)
        if batch is None:
            yield sse.PING
        elif batch:
            yield b"".join(p.frame for p in batch)


def _reset_event(position):
    oldest = str(position.oldest) if position.oldest else None
    data = {"oldest": oldest, "latest": str(position.cursor)}
    return sse.Event(data, event="reset", id=str(position.cursor)).encode()


@bp.get("/<room>/poll")
@login_required
def poll(room):
    """Long-poll: messages after ``cursor`` at once, else wait up to ``timeout`` seconds."""
    current_rooms().require(room)
    config = current_app.config
    cursor = query_cursor("cursor")
    timeout = query_number("timeout", config["CHAT_POLL_TIMEOUT_SECS"], 0,
                           config["CHAT_POLL_MAX_TIMEOUT_SECS"], kind=float)
    reader = current_hub().reader(room)
    extra = b""
    try:
        position, _ = reader.open(cursor)
        if position and position.reset:
            extra = b',"reset":true,"oldest":' + (b'"%s"' % str(position.oldest).encode()
                                                  if position.oldest else b"null")
            batch = []
        else:
            batch = _wait_for_batch(reader, timeout)
    except ReaderClosed:
        batch = []  # the worker is draining: answer now, the client polls again elsewhere
    finally:
        reader.hub.detach(reader)
    body = b'{"messages":[' + b",".join(p.json for p in batch) + b'],"cursor":"'
    return json_response(body + str(reader.last_id).encode() + b'"' + extra + b"}")


def _wait_for_batch(reader, timeout):
    deadline = time.monotonic() + timeout
    while True:
        batch = reader.next_batch(max(0.0, deadline - time.monotonic()))
        if batch is None:
            return []
        if batch or time.monotonic() >= deadline:
            return batch
