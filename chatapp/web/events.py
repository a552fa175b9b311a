"""The multiplexed stream and its long-poll: every room the user joined on one connection.

``GET /api/events`` is an SSE stream whose ids are cursors over all its rooms
(:mod:`chatapp.delivery.multiplex`); ``GET /api/poll`` answers the same cursor in JSON.
Both take ``rooms=a,b`` to follow only some of the joined rooms.
"""

import sys

from flask import Blueprint, Response, current_app, request

from chatapp.core import sse
from chatapp.core.cursor import Cursor, plan_start
from chatapp.core.reasons import SESSION_ENDED, Ending
from chatapp.delivery.event_stream import MultiplexStream
from chatapp.delivery.pollers import mux_answer, poller_key
from chatapp.delivery.reader import ReaderClosed
from chatapp.ops.errors import BadRequest, StoreUnavailable, Unauthorized
from chatapp.store.rooms import validate_room_name
from chatapp.web.auth import current_credential, current_sid, current_user, login_required
from chatapp.web.context import services
from chatapp.web.messages import json_response
from chatapp.web.params import query_number
from chatapp.web.streams import admit_stream, handle_stream_errors, join_as_poller

bp = Blueprint("events", __name__, url_prefix="/api")
handle_stream_errors(bp)


def _narrowed():
    """The rooms of ``rooms=a,b``, or None (every joined room)."""
    raw = request.args.get("rooms")
    if raw is None:
        return None
    names = [name for name in raw.split(",") if name]
    if len(names) > current_app.config["CHAT_MAX_JOINED_ROOMS"]:
        raise BadRequest("'rooms' names more rooms than an account may join.", code="bad_field")
    return {sys.intern(validate_room_name(name)) for name in names}


def _cursor(text):
    return Cursor.parse(text.strip()) if text and text.strip() else None


def _open_multiplex(cursor):
    """The stream for who is asking, and where each of its rooms starts."""
    narrowed = _narrowed()
    hub, user = admit_stream()
    mux = hub.multiplex(user, current_sid(), current_credential(), narrowed)
    try:  # registered first, so no join or leave falls between this read and the stream
        joined = services().memberships.rooms(user)
        if narrowed is not None:
            joined = {room: at for room, at in joined.items() if room in narrowed}
        starts = plan_start(joined, cursor, services().broker.tails)
    except BaseException:
        mux.end()
        raise
    return mux, starts


@bp.get("/events")
@login_required
def events():
    """Server-Sent Events for every room you joined, resumable with Last-Event-ID."""
    if request.method == "HEAD":  # the headers a GET would have; no stream (nor a slot) is opened
        return Response(mimetype=sse.MIMETYPE, headers=sse.HEADERS)
    cursor = _cursor(request.headers.get("Last-Event-ID") or request.args.get("last_event_id")
                     or request.args.get("lastEventId"))
    mux, starts = _open_multiplex(cursor)
    stream = MultiplexStream(mux, services().presence.member(current_user()), starts, current_app.config)
    return Response(stream, mimetype=sse.MIMETYPE, headers=sse.HEADERS, direct_passthrough=True)


@bp.get("/poll")
@login_required
def poll():
    """Long-poll for every room you joined: what follows ``cursor`` at once, else wait up to
    ``timeout`` seconds. The answer's ``cursor`` goes into the next poll; the stream is kept
    for it (chatapp.delivery.pollers), which then takes the short path."""
    config = current_app.config
    cursor = _cursor(request.args.get("cursor"))
    timeout = query_number("timeout", config["CHAT_POLL_TIMEOUT_SECS"], 0,
                           config["CHAT_POLL_MAX_TIMEOUT_SECS"], kind=float)
    mux, starts = _open_multiplex(cursor)
    hub = mux.hub
    hub.pollers.waiting += 1
    kept = False
    try:
        mux.open(starts)
        join_as_poller(list(mux.rooms))
        body, _ = mux_answer(mux, timeout)
        kept = hub.pollers.keep(poller_key(request.environ, "*" + request.args.get("rooms", "")), mux)
    except ReaderClosed as closed:
        if closed.reason in SESSION_ENDED:
            raise Unauthorized("Your session ended.", code=closed.reason) from None
        if closed.reason != Ending.DRAINING:
            raise StoreUnavailable(code=closed.reason) from None
        body = mux.poll_answer([], [], [])  # answer now; the client polls again, on another worker
    finally:
        if not kept:
            mux.end()
        hub.pollers.waiting -= 1
    return json_response(body)

