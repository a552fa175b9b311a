"""Long-poll written once: the room poll and the multiplexed poll, through Flask or on the
short path (:mod:`chatapp.web.short_path`).

A poll is one wait on an open stream (a room's :class:`Reader` or a
:class:`Multiplex`), paced (``CHAT_POLL_PACE_MS``), and one JSON answer whose
``cursor`` the client sends back. What differs between the two kinds is only how
a ready batch is taken and encoded (:class:`RoomPoll`, :class:`MultiplexedPoll`);
the wait, the pace, presence, the count of polls waiting, the mapping of a
closed stream to an answer and whether the stream is kept for the next poll
(:class:`chatapp.delivery.pollers.Pollers`) are here, once.
"""

import time
from typing import NamedTuple

import gevent

from chatapp.core.reasons import SESSION_ENDED, Ending
from chatapp.delivery.reader import ReaderClosed, ReaderReset
from chatapp.ops.errors import StoreUnavailable, Unauthorized, unknown_room


class Answer(NamedTuple):
    body: bytes  # the JSON answer
    cursor: str  # written in the body: what the client's next poll carries
    delivered: int  # messages in it, for the delivered metric


class RoomPoll:
    """One room: ``{"messages", "cursor"[, "reset", "oldest"][, "events"]}``."""

    @staticmethod
    def rooms(reader):
        return [reader.room]

    @staticmethod
    def behind(reader):
        """The free pollers this poll leaves behind: those at an older position than its start."""
        start = reader.last_id
        return lambda poller: poller.reader.last_id < start

    @staticmethod
    def take(reader):
        """The batch ready now (or the reader's reset), None if nothing came of it after all."""
        try:
            batch = reader.take_ready()
        except ReaderReset as stale:
            return [], stale.reset
        return (batch, None) if batch else None

    @staticmethod
    def encode(reader, found):
        """The answer to ``found`` (None: nothing), its messages already JSON and shared with
        every reader, joined in; live-only events under ``events``."""
        batch, reset = found or ((), None)
        extra = b""
        if reset is not None:
            oldest = reset.oldest
            extra = b',"reset":true,"oldest":' + (b'"%s"' % str(oldest).encode() if oldest else b"null")
        messages = [p.json for p in batch if p.id is not None]
        signals = [p.json for p in batch if p.id is None]
        if signals:  # live-only presence and typing events
            extra += b',"events":[' + b",".join(signals) + b"]"
        cursor = str(reader.last_id)
        body = b'{"messages":[' + b",".join(messages) + b'],"cursor":"' + cursor.encode() + b'"' + extra + b"}"
        return Answer(body, cursor, len(messages))


class MultiplexedPoll:
    """Every joined room: ``{"messages", "events", "resets", "rooms", "cursor"}``."""

    @staticmethod
    def rooms(mux):
        return list(mux.rooms)

    @staticmethod
    def behind(mux):
        """All the free pollers of its credentials (its cursor names many rooms; the client moved on)."""
        return None

    @staticmethod
    def take(mux):
        answer = mux.take_answer()
        return answer if any(answer) else None

    @staticmethod
    def encode(mux, found):
        body, cursor = mux.poll_answer(*(found or ([], [], [])))
        return Answer(body, cursor, 0)  # the stream counts what it delivers itself


def wait_paced(stream, timeout, not_before, take):
    """``take()`` once the stream has something (None: nothing after all), not before
    ``not_before`` (monotonic), so the answer carries the whole window, and waiting up to
    ``timeout`` for it; None if the timeout passed first."""
    deadline = time.monotonic() + timeout
    # The pace first: a poller waiting on its wake-up meanwhile would be woken by every message
    # of a busy room only to wait again (twice the answers' greenlet switches, in a profile).
    pause = not_before - time.monotonic()
    if pause > 0:
        gevent.sleep(pause)
    while True:
        if not stream.wait(max(0.0, deadline - time.monotonic())):
            return None
        answer = take()
        if answer or time.monotonic() >= deadline:
            return answer


def answer_closed(stream, kind, closed):
    """What a poll whose stream was closed gets: an answer at once when the worker drains (the
    client polls again, elsewhere), a 401 when its session ended, else a 503."""
    if closed.reason == Ending.DRAINING:
        return kind.encode(stream, None)
    if closed.reason in SESSION_ENDED:
        raise Unauthorized("Your session ended.", code=closed.reason) from None
    if closed.reason == Ending.REMOVED:  # for this user the room no longer exists (invariant 15)
        raise unknown_room(stream.room) from None
    raise StoreUnavailable(code=closed.reason) from None


def poll(hub, stream, kind, *, timeout, user, not_before=0.0):
    """One poll of an open stream: counted as waiting, ``user`` (as signed in) shown present in
    its rooms, answered when something is ready (or at the timeout). Raises what the wait
    raises (:class:`ReaderClosed` among them)."""
    with hub.pollers.waiting_poll():
        hub.presence.join_polling(user, kind.rooms(stream))
        answer = kind.encode(stream, wait_paced(stream, timeout, not_before, lambda: kind.take(stream)))
    stream.count_delivered(answer.delivered)
    return answer


def first_poll(hub, stream, kind, *, key, timeout, user, open_stream):
    """A poll through Flask: open the stream (``open_stream()``), poll it, and keep it for the
    client's next poll under ``key`` (its credentials and scope), ending the free pollers of
    ``key`` it finds behind it. Returns the answer's body."""
    kept = False
    try:
        open_stream()
        behind = kind.behind(stream)
        answer = poll(hub, stream, kind, timeout=timeout, user=user)
        kept = hub.pollers.keep(key, stream, kind=kind, user=user, cursor=answer.cursor, behind=behind)
    except ReaderClosed as closed:
        answer = answer_closed(stream, kind, closed)
    finally:
        if not kept:
            stream.end()
    return answer.body

