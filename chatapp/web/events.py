"""The multiplexed stream and its long-poll: every room the user joined on one connection.

``GET /api/events`` is an SSE stream whose ids are cursors over all its rooms
(:mod:`chatapp.delivery.multiplex`); ``GET /api/poll`` answers the same cursor in JSON.
Both take ``rooms=a,b`` to follow only some of the joined rooms.
"""

import sys

from flask import Blueprint, Response, current_app, request

from chatapp.core import sse
from chatapp.core.cursor import Cursor, plan_start
from chatapp.delivery import longpoll
from chatapp.delivery.event_stream import MultiplexStream
from chatapp.delivery.longpoll import MultiplexedPoll
from chatapp.delivery.pollers import poller_key
from chatapp.ops.errors import BadRequest
from chatapp.store.rooms import validate_room_name
from chatapp.web.auth import current_credential, current_sid, current_user, login_required
from chatapp.web.context import services
from chatapp.web.messages import json_response
from chatapp.web.params import poll_timeout
from chatapp.web.streams import admit_stream, handle_stream_errors

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
    """The multiplexed cursor the client sent, or None. Checked before any work: at most
    ``CHAT_MAX_JOINED_ROOMS`` rooms, each one the user may read; a 400 ``bad_cursor`` otherwise,
    whose ``rooms`` lists those they may not read (a client that missed a ``left`` drops them
    and resumes with the rest)."""
    if not text or not text.strip():
        return None
    cursor = Cursor.parse(text.strip(), max_rooms=current_app.config["CHAT_MAX_JOINED_ROOMS"])
    readable = services().access.readable(current_user(), list(cursor.positions))
    refused = sorted(room for room in cursor.positions if room not in readable)
    if refused:
        raise BadRequest("The cursor names rooms you may not read; resume without them.", code="bad_cursor",
                         details={"rooms": refused})
    return cursor


def _open_multiplex(cursor):
    """The stream for who is asking, and where each of its rooms starts."""
    narrowed = _narrowed()
    hub, user = admit_stream()
    mux = hub.multiplex(user, current_sid(), current_credential(), narrowed)
    try:  # registered first, so no join or leave falls between this read and the stream
        joined = services().memberships.rooms(user)
        if narrowed is not None:
            joined = {room: at for room, at in joined.items() if room in narrowed}
        # A room the user's list still names but they may no longer read (a removal whose list
        # update didn't happen) is left out: access is the room's word, not the list's.
        grants = services().access.readable(user, list(joined))
        joined = {room: at for room, at in joined.items() if room in grants}
        starts = plan_start(joined, cursor, services().broker.tails)
        for room, grant in grants.items():
            if grant.restricted:
                starts[room] = grant.start(starts[room])
                mux.access_checked_at[room] = grant.checked_at
    except BaseException:
        mux.end()
        raise
    return mux, starts


@bp.get("/events")
@login_required
def events():
    """Server-Sent Events for every room you joined, resumable with Last-Event-ID.

    As for one room (:func:`chatapp.web.streams.events`), the stream opens as it is sent,
    taking the socket over under gunicorn once this view has returned."""
    if request.method == "HEAD":  # the headers a GET would have; no stream (nor a slot) is opened
        return Response(mimetype=sse.MIMETYPE, headers=sse.HEADERS)
    cursor = _cursor(request.headers.get("Last-Event-ID") or request.args.get("last_event_id")
                     or request.args.get("lastEventId"))
    mux, starts = _open_multiplex(cursor)
    stream = MultiplexStream(mux, services().presence.member(current_user()), starts, current_app.config,
                             metrics=services().metrics)
    return Response(stream, mimetype=sse.MIMETYPE, headers=sse.HEADERS, direct_passthrough=True)


@bp.get("/poll")
@login_required
def poll():
    """Long-poll for every room you joined: what follows ``cursor`` at once, else wait up to
    ``timeout`` seconds. The answer's ``cursor`` goes into the next poll; the stream is kept
    for it (chatapp.delivery.pollers), which then takes the short path."""
    cursor = _cursor(request.args.get("cursor"))
    timeout = poll_timeout(request.args.get("timeout"), current_app.config)
    mux, starts = _open_multiplex(cursor)
    key = poller_key(request.environ, "*" + request.args.get("rooms", ""))
    body = longpoll.first_poll(mux.hub, mux, MultiplexedPoll, key=key, timeout=timeout, user=current_user(),
                               open_stream=lambda: mux.open(starts))
    return json_response(body)
