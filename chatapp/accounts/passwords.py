"""Password hashing off the event loop.

A scrypt hash costs about 100 ms of CPU. Run on a gevent worker's only thread,
every hash would stall every stream that worker holds; run in threads, the hash
(hashlib releases the GIL) overlaps with the event loop. The threads are few
and the queue in front of them is bounded: past it a request is refused with a
503 ``busy`` at once, so a flood of guesses never piles up waiting greenlets.

The threads also run at the lowest CPU priority (nice 19): a thread at the
same priority as the event loop would take half a core from it for as long as
a flood keeps its queue full, and every stream's delivery would wait behind
hash time slices (docs/benchmarks-history.md, "Password guessing during a fan-out").
At nice 19 hashing uses what the event loops leave, and still always progresses.
"""

import logging
import os

from gevent.threadpool import ThreadPool
from werkzeug.security import check_password_hash, generate_password_hash

from chatapp.ops.errors import Busy

log = logging.getLogger(__name__)

BUSY_RETRY_SECS = 1
HASH_NICENESS = 19  # the lowest priority: hashing only gets what the event loop leaves


def _at_low_priority(function, *args):
    """Run in a hashing thread. On Linux, setpriority on "process" 0 changes only the
    calling thread; a syscall per hash is nothing beside the hash."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, HASH_NICENESS)
    except OSError as exc:  # not permitted here: hashing still works, at normal priority
        log.warning("password hashing runs at normal priority: %s", exc)
    return function(*args)


class Hasher:
    """Hash and check passwords on ``threads`` OS threads, with at most ``queue`` waiting."""

    def __init__(self, threads, queue, method):
        self.method = method  # CHAT_PASSWORD_HASH: how new hashes are made
        self.threads = threads
        self.capacity = threads + queue
        self._waiting = 0
        self._pool = None
        self._pid = None

    @property
    def waiting(self):
        """Hashes running or queued in this process now."""
        return self._waiting

    def _run(self, function, *args):
        if self._waiting >= self.capacity:
            raise Busy("Too many sign-ins are being checked right now; retry shortly.",
                       headers={"Retry-After": str(BUSY_RETRY_SECS)})
        if self._pid != os.getpid():  # threads don't survive a fork: one pool per worker
            self._pool, self._pid = ThreadPool(self.threads), os.getpid()
        self._waiting += 1
        try:
            return self._pool.apply(_at_low_priority, (function, *args))
        finally:
            self._waiting -= 1

    def hash(self, password):
        """A new hash, made the way ``CHAT_PASSWORD_HASH`` says (a stored hash names its method:
        :meth:`check` takes any)."""
        return self._run(generate_password_hash, password, self.method)

    def check(self, stored_hash, password):
        return self._run(check_password_hash, stored_hash, password)
