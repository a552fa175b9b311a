"""Live delivery: the SSE stream and the long-poll fallback, both fed by the worker hub."""

import logging
import os
import random
import time

import redis
from flask import Blueprint, Response, current_app, request

from . import sse
from .auth import current_sid, current_user, login_required
from .broker import StreamId
from .direct import SocketSink
from .errors import (
    REDIS_ERRORS,
    Busy,
    ChatError,
    RateLimited,
    StorageFull,
    StoreUnavailable,
    TooManyStreams,
    Unauthorized,
    count_redis_error,
    error_response,
    is_out_of_memory,
    storage_full,
)
from .messages import json_response
from .params import query_cursor, query_number
from .presence import POLL_CONNECTION, current_presence
from .ratelimit import enforce
from .reader import ReaderClosed, ReaderReset
from .rooms import current_rooms

log = logging.getLogger(__name__)

bp = Blueprint("streams", __name__, url_prefix="/api/rooms")


def current_hub():
    return current_app.extensions["chat.hub"]


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
    if request.endpoint != "streams.events":
        return error_response(error)
    retry_ms = current_app.config["CHAT_RETRY_MS"]
    if error.code == "busy":  # spread the crowd a full worker turns away
        retry_ms = int(retry_ms * random.uniform(1.0, 2.0))
    if "Retry-After" in error.headers:
        retry_ms = max(retry_ms, int(error.headers["Retry-After"]) * 1000)
    return _retry_stream(error.code, retry_ms)


for _error in (StoreUnavailable, RateLimited, Busy, TooManyStreams, StorageFull, *REDIS_ERRORS):
    bp.register_error_handler(_error, _come_back_later)


@bp.errorhandler(redis.ResponseError)
def _refused_by_redis(error):
    """A full store (maxmemory) refusing a write on the way to a stream: come back later too."""
    if is_out_of_memory(error):
        log.warning("redis out of memory in %s", request.endpoint)
        return _come_back_later(storage_full())
    log.error("redis error in %s", request.endpoint, exc_info=error)
    return error_response(ChatError())


def _open_reader(room):
    """Checks shared by SSE and long-poll, then a reader bound to who is asking."""
    current_rooms().require(room)
    user = current_user()
    hub = current_hub()
    hub.check_capacity()  # before the rate limit: a client told "busy" shouldn't pay for it
    enforce("CHAT_RATE_STREAMS", user)
    return hub.reader(room, user, current_sid())


@bp.get("/<room>/events")
@login_required
def events(room):
    """Server-Sent Events for one room, resumable with Last-Event-ID."""
    header = request.headers.get("Last-Event-ID", "").strip()
    cursor = StreamId.parse(header) if header else query_cursor("last_event_id", "lastEventId")
    config = current_app.config
    backlog = query_number("backlog", 0, 0, config["CHAT_BACKLOG_MAX"])
    reader = _open_reader(room)
    stream = EventStream(reader, current_presence().member(current_user()), cursor, backlog, config)
    return Response(stream, mimetype=sse.MIMETYPE, headers=sse.HEADERS, direct_passthrough=True)


class EventStream:
    """An SSE response body. A WSGI server iterates it (a greenlet waits for each
    batch); under gunicorn's gevent worker :mod:`chatapp.direct` calls
    :meth:`take_over` with the socket instead, and the hub writes to it."""

    def __init__(self, reader, member, cursor, backlog, config):
        self.reader = reader
        self.member = member
        self.cursor = cursor
        self.backlog = backlog
        self.heartbeat = config["CHAT_HEARTBEAT_SECS"]
        self.retry_ms = config["CHAT_RETRY_MS"]
        self.opened = None

    def __iter__(self):
        reason = "client_gone"  # unless something below says otherwise
        try:
            yield from self._start()
            while True:  # ends only by an exception
                yield self._next_frame()
        except (ReaderClosed, StoreUnavailable, *REDIS_ERRORS) as exc:
            reason = self.ending_reason(exc)
        finally:
            farewell = self.closed(reason)
        yield farewell

    def take_over(self, sock, head):
        """Write the head and the start on ``sock`` (this greenlet), then hand it to the hub."""
        sink = SocketSink(sock, self.reader, self)
        frames = self._start()
        try:
            sink.write_blocking(head + sse.http_chunk(next(frames)))  # before waiting for anything
            for frame in frames:
                sink.write_blocking(sse.http_chunk(frame))
        except Exception as exc:  # the socket is ours now: nobody else would close it
            sink.finish(self.ending_reason(exc))
        except BaseException:  # a worker stopping (GreenletExit): still close what we own
            sink.finish("draining")
            raise
        else:
            self.reader.go_direct(sink)

    def _start(self):
        """The frames before live delivery: preamble, ``ready`` once subscribed, the backlog."""
        reader = self.reader
        self.opened = time.monotonic()
        reader.hub.metrics.streams_open.inc()
        log.info("stream opened room=%s user=%s", reader.room, reader.user,
                 extra={"room": reader.room, "user": reader.user})
        # First bytes at once: headers get past proxies that wait for a body.
        yield sse.Event(retry=self.retry_ms, comment="stream open").encode()
        initial = reader.open(self.cursor, self.backlog)
        # Subscribed now, so "now" is defined: "ready" tells the client the stream is
        # live (and lets it tell a buffering proxy from a quiet room).
        yield sse.Event({"worker": os.getpid()}, event="ready").encode()
        reader.hub.join_presence(reader, self.member)
        if initial:
            yield reader.encode(initial)

    def _next_frame(self):
        reader = self.reader
        while True:
            try:
                batch = reader.next_batch(self.heartbeat)
            except ReaderReset as stale:
                return self.reset_frame(stale.reset)
            if batch is None:
                return sse.PING
            if batch:
                return reader.encode(batch)

    def ending_reason(self, exc):
        """Why an exception ended the stream, as told to the client (logged if unexpected)."""
        if isinstance(exc, ReaderClosed):
            return exc.reason
        if isinstance(exc, StoreUnavailable):
            return exc.code
        if isinstance(exc, REDIS_ERRORS):
            self.reader.hub.metrics.redis_errors.labels("stream").inc()
            log.warning("stream room=%s: redis unavailable (%s: %s)", self.reader.room, type(exc).__name__, exc)
            return "store_unavailable"
        if isinstance(exc, OSError):  # the client's socket, including a write stall
            return "client_gone"
        log.error("stream room=%s failed", self.reader.room, exc_info=exc)
        return "server_error"

    @staticmethod
    def reset_frame(reset):
        data = {"oldest": str(reset.oldest) if reset.oldest else None, "latest": str(reset.latest)}
        return sse.Event(data, event="reset", id=str(reset.latest)).encode()

    def closed(self, reason):
        """Settle the stream's books (hub, presence, metrics, log); return the last frame to send."""
        reader = self.reader
        reader.hub.detach(reader)
        reader.hub.leave_presence(reader)
        if self.opened is not None:
            reader.hub.metrics.streams_open.dec()
            seconds = time.monotonic() - self.opened
            log.info("stream closed room=%s user=%s after %.1fs reason=%s", reader.room, reader.user, seconds,
                     reason, extra={"room": reader.room, "user": reader.user, "seconds": round(seconds, 1),
                                    "reason": reason})
        return sse.Event({"reason": reason}, event="retry").encode()


@bp.get("/<room>/poll")
@login_required
def poll(room):
    """Long-poll: messages after ``cursor`` at once, else wait up to ``timeout`` seconds."""
    config = current_app.config
    cursor = query_cursor("cursor")
    timeout = query_number("timeout", config["CHAT_POLL_TIMEOUT_SECS"], 0,
                           config["CHAT_POLL_MAX_TIMEOUT_SECS"], kind=float)
    reader = _open_reader(room)
    metrics = reader.hub.metrics
    metrics.polls_open.inc()
    extra = b""
    try:
        reader.open(cursor)
        _join_as_poller(room)
        batch = _wait_for_batch(reader, timeout)
    except ReaderReset as stale:
        oldest = stale.reset.oldest
        extra = b',"reset":true,"oldest":' + (b'"%s"' % str(oldest).encode() if oldest else b"null")
        batch = []
    except ReaderClosed as closed:
        if closed.reason != "draining":
            raise Unauthorized("Your session ended.", code=closed.reason) from None
        batch = []  # answer now; the client polls again, on another worker
    finally:
        reader.hub.detach(reader)
        metrics.polls_open.dec()
    messages = [p.json for p in batch if p.id is not None]
    metrics.delivered.inc(len(messages))
    signals = [p.json for p in batch if p.id is None]
    if signals:  # live-only presence and typing events
        extra += b',"events":[' + b",".join(signals) + b"]"
    body = b'{"messages":[' + b",".join(messages) + b'],"cursor":"' + str(reader.last_id).encode() + b'"'
    return json_response(body + extra + b"}")


def _join_as_poller(room):
    presence = current_presence()
    try:
        presence.join(room, presence.member(current_user(), POLL_CONNECTION))
    except redis.ResponseError as exc:
        if not is_out_of_memory(exc):
            raise
        log.warning("poll in %s not counted in presence: redis is out of memory", room)


def _wait_for_batch(reader, timeout):
    deadline = time.monotonic() + timeout
    while True:
        batch = reader.next_batch(max(0.0, deadline - time.monotonic()))
        if batch is None:
            return []
        if batch or time.monotonic() >= deadline:
            return batch
