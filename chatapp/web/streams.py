"""Live delivery: the SSE stream and the long-poll fallback, both fed by the worker hub."""

import logging
import random

import redis
from flask import Blueprint, Response, current_app, request

from chatapp.core import sse
from chatapp.core.ids import ZERO, StreamId
from chatapp.delivery import longpoll
from chatapp.delivery.event_stream import EventStream
from chatapp.delivery.longpoll import RoomPoll
from chatapp.delivery.pollers import poller_key
from chatapp.ops.errors import Busy, ChatError, RateLimited, StorageFull, StoreUnavailable, TooManyStreams
from chatapp.store.errors import REDIS_ERRORS, is_out_of_memory, storage_full
from chatapp.web.auth import current_credential, current_sid, current_user, login_required
from chatapp.web.context import services
from chatapp.web.errors import count_redis_error, error_response
from chatapp.web.limits import enforce
from chatapp.web.messages import json_response
from chatapp.web.params import poll_timeout, query_cursor, query_number

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


def _open_reader(room, cursor, backlog=0):
    """A reader of ``room`` bound to who is asking, if they may read it; and where it starts
    (``cursor``, or for a private room or a DM the id their access was checked at: invariant 16)
    and the backlog it sends first."""
    grant = services().access.read(current_user(), room)
    start = grant.start(cursor)
    if cursor is None and grant.restricted and backlog:
        start, backlog = _before_backlog(room, grant.checked_at, backlog), 0
    hub, user = admit_stream()
    reader = hub.reader(room, user, current_sid(), current_credential())
    reader.access_checked_at = grant.checked_at
    return reader, start, backlog


def _before_backlog(room, checked_at, backlog):
    """The id a stream starts after to send the last ``backlog`` messages up to ``checked_at``
    first (a private room's stream starts from its check, not from "now")."""
    older = services().broker.read_before(room, checked_at, backlog)
    return older[0].id if len(older) == backlog else ZERO


@bp.get("/<room>/events")
@login_required
def events(room):
    """Server-Sent Events for one room, resumable with Last-Event-ID.

    Checks come first, so they are real 4xx; the answer is an :class:`EventStream`, which
    opens (subscribes, backfills, says ``ready``) as it is sent: under gunicorn's gevent
    worker it takes the socket over (:class:`chatapp.delivery.contracts.TakesOver`,
    :mod:`chatapp.web.takeover`) once this view has returned."""
    if request.method == "HEAD":  # the headers a GET would have; no stream (nor a slot) is opened
        services().access.read(current_user(), room)
        return Response(mimetype=sse.MIMETYPE, headers=sse.HEADERS)
    header = request.headers.get("Last-Event-ID", "").strip()
    cursor = StreamId.parse(header) if header else query_cursor("last_event_id", "lastEventId")
    config = current_app.config
    backlog = query_number("backlog", 0, 0, config["CHAT_BACKLOG_MAX"])
    reader, start, backlog = _open_reader(room, cursor, backlog)
    member = services().presence.member(current_user())
    stream = EventStream(reader, member, start, backlog, config, metrics=services().metrics)
    return Response(stream, mimetype=sse.MIMETYPE, headers=sse.HEADERS, direct_passthrough=True)


@bp.get("/<room>/poll")
@login_required
def poll(room):
    """Long-poll: messages after ``cursor`` at once, else wait up to ``timeout`` seconds.

    The reader is kept for the client's next poll (chatapp.delivery.pollers), which then takes the
    short path."""
    cursor = query_cursor("cursor")
    timeout = poll_timeout(request.args.get("timeout"), current_app.config)
    reader, start, _ = _open_reader(room, cursor)
    body = longpoll.first_poll(reader.hub, reader, RoomPoll, key=poller_key(request.environ, room), timeout=timeout,
                               user=current_user(), open_stream=lambda: reader.open(start))
    return json_response(body)
