"""Live delivery: the SSE stream and the long-poll fallback, both fed by the worker hub."""

import logging
import random

import redis
from flask import Blueprint, Response, current_app, request

from chatapp.core import sse
from chatapp.core.ids import StreamId
from chatapp.core.reasons import Ending
from chatapp.delivery.event_stream import EventStream
from chatapp.delivery.pollers import poll_answer, poller_key, room_answer
from chatapp.delivery.reader import ReaderClosed
from chatapp.ops.errors import Busy, ChatError, RateLimited, StorageFull, StoreUnavailable, TooManyStreams, Unauthorized
from chatapp.store.errors import REDIS_ERRORS, is_out_of_memory, storage_full
from chatapp.web.auth import current_credential, current_sid, current_user, login_required
from chatapp.web.context import services
from chatapp.web.errors import count_redis_error, error_response
from chatapp.web.limits import enforce
from chatapp.web.messages import json_response
from chatapp.web.params import query_cursor, query_number

log = logging.getLogger(__name__)

bp = Blueprint("streams", __name__, url_prefix="/api/rooms")

SSE_ENDPOINTS = {"streams.events", "events.events"}  # told to come back later in SSE, not in JSON




def _retry_stream(reason, retry_ms):
    """A 200 stream that only says "retry later": any non-200 would stop EventSource for good."""
    body = sse.Event({"reason": reason}, event="retry", retry=retry_ms).encode()
    return Response(body, mimetype=sse.MIMETYPE, headers=sse.HEADERS)


def _come_back_later(error):
    """Streams tell EventSource to come back later; long-poll gets the JSON 429/503."""
    if isinstance(error, REDIS_ERRORS):
        log.warning("redis unavailable in %s: %s", request.endpoint, error)
        count_redis_error()
        error = StoreUnavailable()
    if request.endpoint not in SSE_ENDPOINTS:
        return error_response(error)
    retry_ms = current_app.config["CHAT_RETRY_MS"]
    if error.code == "busy":  # spread the crowd a full worker turns away
        retry_ms = int(retry_ms * random.uniform(1.0, 2.0))
    if "Retry-After" in error.headers:
        retry_ms = max(retry_ms, int(error.headers["Retry-After"]) * 1000)
    return _retry_stream(error.code, retry_ms)


def _refused_by_redis(error):
    """A full store (maxmemory) refusing a write on the way to a stream: come back later too."""
    if is_out_of_memory(error):
        log.warning("redis out of memory in %s", request.endpoint)
        return _come_back_later(storage_full())
    log.error("redis error in %s", request.endpoint, exc_info=error)
    return error_response(ChatError())


def handle_stream_errors(blueprint):
    """Streams and long-polls answer an overloaded or unreachable store with "come back later"."""
    for error in (StoreUnavailable, RateLimited, Busy, TooManyStreams, StorageFull, *REDIS_ERRORS):
        blueprint.register_error_handler(error, _come_back_later)
    blueprint.register_error_handler(redis.ResponseError, _refused_by_redis)


handle_stream_errors(bp)


def admit_stream():
    """Checks shared by every stream and long-poll; return the hub and who is asking."""
    user = current_user()
    hub = services().hub
    hub.check_capacity()  # before the rate limit: a client told "busy" shouldn't pay for it
    enforce("CHAT_RATE_STREAMS", user)
    return hub, user


def _open_reader(room):
    """A reader of ``room`` bound to who is asking."""
    services().rooms.require(room)
    hub, user = admit_stream()
    return hub.reader(room, user, current_sid(), current_credential())


@bp.get("/<room>/events")
@login_required
def events(room):
    """Server-Sent Events for one room, resumable with Last-Event-ID."""
    if request.method == "HEAD":  # the headers a GET would have; no stream (nor a slot) is opened
        services().rooms.require(room)
        return Response(mimetype=sse.MIMETYPE, headers=sse.HEADERS)
    header = request.headers.get("Last-Event-ID", "").strip()
    cursor = StreamId.parse(header) if header else query_cursor("last_event_id", "lastEventId")
    config = current_app.config
    backlog = query_number("backlog", 0, 0, config["CHAT_BACKLOG_MAX"])
    reader = _open_reader(room)
    stream = EventStream(reader, services().presence.member(current_user()), cursor, backlog, config)
    return Response(stream, mimetype=sse.MIMETYPE, headers=sse.HEADERS, direct_passthrough=True)


@bp.get("/<room>/poll")
@login_required
def poll(room):
    """Long-poll: messages after ``cursor`` at once, else wait up to ``timeout`` seconds.

    The reader is kept for the client's next poll (chatapp.delivery.pollers), which then takes the
    short path."""
    config = current_app.config
    cursor = query_cursor("cursor")
    timeout = query_number("timeout", config["CHAT_POLL_TIMEOUT_SECS"], 0,
                           config["CHAT_POLL_MAX_TIMEOUT_SECS"], kind=float)
    reader = _open_reader(room)
    hub = reader.hub
    hub.pollers.waiting += 1
    kept = False
    try:
        reader.open(cursor)
        start = reader.last_id  # where the client is: its free pollers here behind it end
        join_as_poller([room])
        body, delivered = room_answer(reader, timeout)
        kept = hub.pollers.keep(poller_key(request.environ, room), reader, lambda p: p.reader.last_id < start)
    except ReaderClosed as closed:
        if closed.reason != Ending.DRAINING:
            raise Unauthorized("Your session ended.", code=closed.reason) from None
        body, delivered = poll_answer(reader, [])  # answer now; the client polls again, on another worker
    finally:
        if not kept:
            hub.detach(reader)
        hub.pollers.waiting -= 1
    hub.metrics.delivered.inc(delivered)
    return json_response(body)


def join_as_poller(rooms):
    try:
        services().presence.join_polling(current_user(), rooms)
    except redis.ResponseError as exc:
        if not is_out_of_memory(exc):
            raise
        log.warning("poll in %s not counted in presence: redis is out of memory", ",".join(rooms)[:200])

