"""Long-pollers kept between their polls, for the short path their next poll takes.

A long-poll client asks again as soon as it has its answer: in a busy room that
is several requests a second per client. Through Flask, each one paid the auth
check (a Redis read), the stream-opening rate limit (a script) and a stream
lease (a script): ~0.9 ms of a worker's CPU per poll, so a thousand pollers in
one busy room took the whole server (docs/benchmarks-history.md, scenario g).

So a poll answered through Flask leaves its reader registered with the hub,
kept here under the request's exact credentials (``Authorization`` and
``Cookie``) and room. While kept it is a stream like any other: the hub queues
the room's publications for it, re-checks its session, renews its lease and
closes it on a kick, logout or ban. The client's next poll, if it carries the
same credentials and the cursor of the last answer, is answered by
:class:`chatapp.web.short_path.ShortPath` before Flask sees it: the checks that poll would make were
made by the one that opened the poller and are kept up by the hub, as for an
SSE stream. Anything else (other credentials, another cursor, a poller busy
with another request, a closed one, an error) goes through Flask as before.

Two settings bound what a poller costs:

* ``CHAT_POLL_PACE_MS``: a kept poller is answered at most once per pace; an
  answer that would come sooner waits, collecting every message of the window.
  A busy room costs each poller at most 1000/pace requests a second, and a
  client asking in a tight loop (``timeout=0``) can't make it more.
* ``CHAT_POLL_LINGER_SECS``: a poller not asked again within this is ended (its
  lease and its place in ``CHAT_MAX_STREAMS`` given back).
"""

import contextlib
import random
import time

PACE_SPREAD = 0.2
# A kept poller ends after this, in use or not, so its client's next poll goes through Flask,
# which refreshes the session (its time to live in Redis and the cookie's expiry): a client
# that only ever long-polled would otherwise be signed out after CHAT_SESSION_LIFETIME_SECS.
MAX_AGE_SECS = 600
_UNSENT = ("content-length", "set-cookie")  # per answer, and a session cookie is only set by Flask


def poller_key(environ, scope):
    """Whose poller this is: the request's exact credentials and what it reads (a room, or
    ``*`` and the multiplexed poll's ``rooms``), or None without credentials."""
    authorization, cookie = environ.get("HTTP_AUTHORIZATION"), environ.get("HTTP_COOKIE")
    if not authorization and not cookie:
        return None
    return authorization, cookie, scope


class Poller:
    """A long-poll reader kept between polls: who reads (the request's credentials), which
    room, from where (the cursor its last answer gave), and its stream lease."""

    __slots__ = ("answered_at", "cursor", "ends_at", "key", "kind", "not_before", "reader", "user")

    def __init__(self, key, reader, *, kind, user, cursor, now, pace):
        self.key = key
        self.reader = reader
        self.kind = kind  # how it is polled (chatapp.delivery.longpoll)
        self.user = user  # as signed in: the name its polls show in presence
        self.ends_at = now + MAX_AGE_SECS
        self.answered_at = now
        self.not_before = now + pace
        self.cursor = cursor  # what the next poll must carry: the cursor of the last answer


class Pollers:
    """This worker's kept pollers (the hub owns them and prunes them).

    Pollers with the same credentials, room and cursor are interchangeable: clients that
    share an account (or one client's several connections) take whichever is free, so a
    poll finds one unless another poll of the same account, room and position is being
    answered with each. How many exist is how many such polls ran at once (each holds a
    stream slot of the account), plus those a client left behind: behind a load balancer
    a client's polls go to any worker, so a poll that reaches this worker through Flask
    ends the free pollers of its credentials and scope that are behind it here (the client
    moved on elsewhere), and the rest run out after ``linger_secs``."""

    def __init__(self, pace_secs, linger_secs):
        self.pace_secs = pace_secs
        self.linger_secs = linger_secs
        self._idle = {}  # key -> {cursor -> [Poller], the most recently answered last}
        self._count = 0
        # Counted here and added to the metrics by the hub's housekeeping: a multiprocess
        # metric write per poll was a twentieth of a short-path poll's CPU.
        self._waiting = 0  # polls waiting now, through Flask or not (the chat_polls_open gauge)
        self._short_answers = 0  # answered on the short path since the last flush
        self._headers = {}  # with HTTP Basic or not -> the headers of a Flask answer, reused

    def __len__(self):
        return self._count

    @property
    def waiting(self):
        """Polls waiting now."""
        return self._waiting

    @property
    def short_answers(self):
        """Polls answered on the short path since the metrics were last flushed."""
        return self._short_answers

    @contextlib.contextmanager
    def waiting_poll(self):
        """Count a poll as waiting while it waits."""
        self._waiting += 1
        try:
            yield
        finally:
            self._waiting -= 1

    def keep(self, key, reader, *, kind, user, cursor, behind=None):
        """After a poll answered through Flask (at ``cursor``): keep ``reader`` for a next poll, and end the
        free pollers of ``key`` for which ``behind(poller)`` says they are behind this poll
        (None: all of them). False (the caller ends the reader) for a request without
        credentials."""
        if key is None:
            return False
        for free in list(self._idle.get(key, {}).values()):
            for poller in [p for p in free if behind is None or behind(p)]:
                self._unpark(poller)
                self._end(poller)
        self._count += 1
        self._park(Poller(key, reader, kind=kind, user=user, cursor=cursor, now=time.monotonic(), pace=self._pace()))
        return True

    def adopt_headers(self, key, headers):
        basic = bool(key[0])
        if basic not in self._headers:
            self._headers[basic] = [(name, value) for name, value in headers if name.lower() not in _UNSENT]

    def headers(self, key):
        return self._headers.get(bool(key[0]))

    def take(self, key, cursor):
        """A free poller of ``key`` at ``cursor``, now busy; None if there is none."""
        free = self._idle.get(key, {}).get(cursor)
        while free:
            poller = free[-1]
            self._unpark(poller)
            if not poller.reader.closed_reason:
                return poller
            self._end(poller)
            free = self._idle.get(key, {}).get(cursor)
        return None

    def _pace(self):
        # Less than the pace by up to a fifth, at random: pollers woken by one message would
        # otherwise stay in step, every answer and every next poll of a room in one burst.
        return self.pace_secs * random.uniform(1 - PACE_SPREAD, 1.0)

    def answered(self, poller, cursor):
        """The poll was answered on the short path at ``cursor``: the poller is free again there."""
        self._short_answers += 1
        poller.answered_at = time.monotonic()
        poller.not_before = poller.answered_at + self._pace()
        poller.cursor = cursor
        self._park(poller)

    def end(self, poller):
        """End a busy poller (its poll went wrong)."""
        self._end(poller)

    def _park(self, poller):
        self._idle.setdefault(poller.key, {}).setdefault(poller.cursor, []).append(poller)

    def _unpark(self, poller):
        by_cursor = self._idle[poller.key]
        free = by_cursor[poller.cursor]
        free.remove(poller)
        if not free:
            del by_cursor[poller.cursor]
            if not by_cursor:
                del self._idle[poller.key]

    def _end(self, poller):
        self._count -= 1
        poller.reader.end()

    def _free(self):
        return [poller for by_cursor in self._idle.values() for free in by_cursor.values() for poller in free]

    def flush_metrics(self, metrics):
        metrics.polls_open.set(self._waiting)
        answers, self._short_answers = self._short_answers, 0
        if answers:
            metrics.polls_short.inc(answers)

    def prune(self, now):
        """End the free pollers not asked again within the linger time, the closed ones and
        the old ones (``MAX_AGE_SECS``)."""
        for poller in self._free():
            if poller.reader.closed_reason or now - poller.answered_at >= self.linger_secs \
                    or now >= poller.ends_at:
                self._unpark(poller)
                self._end(poller)

    def end_all(self):
        """End every free poller (busy ones end with their polls: their readers are closed)."""
        free, self._idle = self._free(), {}
        for poller in free:
            self._end(poller)
