"""Ends a worker's streams whose session ended, whatever the control channel did or didn't say
(docs/DESIGN.md, invariant 13)."""

import random

from chatapp.accounts.users import credential
from chatapp.core.reasons import Ending
from chatapp.store import keys


def recheck(redis, readers):
    """For each ``(user, sid, credential)`` of a live stream (``sid`` None for HTTP Basic, which
    has the account record's ``credential`` instead), whether it may go on: ``(None, seconds its
    session has left)``, or ``(reason, None)`` to end it. One pipeline."""
    pipe = redis.pipeline(transaction=False)
    for user, sid, _ in readers:
        if sid:
            pipe.pttl(keys.session(sid))
        else:
            pipe.get(keys.user(user))
            pipe.exists(keys.banned(user))
    replies = iter(pipe.execute())
    outcomes = []
    for _, sid, checked in readers:
        if sid:
            ttl_ms = next(replies)
            outcomes.append((Ending.SESSION_EXPIRED, None) if ttl_ms < 0 else (None, ttl_ms / 1000))
            continue
        record, banned = next(replies), next(replies)
        if banned:
            outcomes.append((Ending.BANNED, None))
        elif record is None:
            outcomes.append((Ending.ACCOUNT_GONE, None))
        elif checked and credential(record) != checked:
            outcomes.append((Ending.PASSWORD_CHANGED, None))
        else:
            outcomes.append((None, None))
    return outcomes


class SessionWatch:
    """Ends the streams whose session ended, whatever the control channel did or didn't say:
    the hub's housekeeping calls :meth:`check` every tick; each reader is checked soon after
    it opens, then within ``recheck_secs`` (sooner if its session expires sooner)."""

    def __init__(self, redis, recheck_secs):
        self.redis = redis
        self.recheck_secs = recheck_secs

    def check(self, readers, now):
        """Ask Redis about the readers due (one pipeline, one question per session or Basic
        user however many streams share it); close those whose session ended."""
        due = {}
        for reader in readers:
            if reader.session_due(now):
                due.setdefault((reader.user, reader.sid, reader.credential), []).append(reader)
        if not due:
            return
        for group, (reason, seconds_left) in zip(due.values(), recheck(self.redis, list(due))):
            for reader in group:
                if reason:
                    reader.close(reason)
                else:
                    # Spread over the next period: streams opened in one burst would
                    # otherwise all come due in the same tick, every time.
                    period = min(seconds_left or self.recheck_secs, self.recheck_secs)
                    reader.check_session_at(now + period * random.uniform(0.5, 1.0))

    @staticmethod
    def check_all_soon(readers):
        """After the Pub/Sub link was down: a kick or logout may have been published meanwhile."""
        for reader in readers:
            reader.check_session_at(0.0)


