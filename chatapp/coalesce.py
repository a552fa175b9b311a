"""Concurrent Redis commands leave together: one write, one read, one pooled connection.

A worker serves many requests at once, and most of what each asks Redis (a rate
limit, an append, a session, a lease) is one short command. Sent one by one, each
costs its own send and receive system calls and a pool checkout, about a tenth of
a POST's CPU in profiles. Here the first command opens a batch and lets the other
greenlets that are ready to run reach their own commands (gevent's ``sleep(0)``);
they join it, and the batch leaves as one pipeline (automatic pipelining, as
ioredis does it once per event-loop tick). Batches never wait for one another:
each goes on its own pooled connection as soon as it is gathered, so a command
is never held behind another's round trip.

Nothing about what a command means changes: each is its own command (a script is
still atomic), replies go back to their own callers, an error reply reaches only
the command that caused it, and commands of one caller keep their order (a caller
waits for each reply). Commands that block on the server (WAIT, blocking pops,
XREAD BLOCK) never join a batch: they would hold up every other command behind
them.

The price is latency when the worker is saturated: the sleep(0) puts a command
behind everything else ready to run (docs/benchmarks.md measures both sides).
"""

import threading
import time

import redis

# Commands that may wait on the server: sent on their own connection, as before.
ALONE = frozenset({"WAIT", "WAITAOF", "BLPOP", "BRPOP", "BRPOPLPUSH", "BLMOVE", "BLMPOP", "BZPOPMIN",
                   "BZPOPMAX", "BZMPOP", "XREAD", "XREADGROUP", "SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE",
                   "MONITOR", "SYNC", "PSYNC"})
# A batch's size bound: one write of a few dozen commands is already most of the gain,
# and the first reply of a batch waits for the whole write.
MAX_BATCH = 64


class _Call:
    __slots__ = ("args", "done", "error", "options", "result", "wake")

    def __init__(self, args, options):
        self.args = args
        self.options = options
        self.done = False
        self.result = None
        self.error = None
        self.wake = threading.Event()  # gevent's Event in a monkey-patched worker

    def finish(self, result=None, error=None):
        self.result, self.error, self.done = result, error, True
        self.wake.set()

    def outcome(self):
        if self.error is not None:
            raise self.error
        return self.result


class CoalescingRedis(redis.Redis):
    """A :class:`redis.Redis` whose concurrent commands share round trips (see the module)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        self._gathering = None  # the batch being gathered, if one is
        self.batches = 0  # round trips made for more than one command (for tests)

    def execute_command(self, *args, **options):
        if args[0] in ALONE:
            return super().execute_command(*args, **options)
        call = _Call(args, options)
        with self._lock:
            batch = self._gathering
            if batch is not None and len(batch) < MAX_BATCH:
                batch.append(call)
            else:
                batch = self._gathering = [call]
        if batch[0] is not call:  # joined: the caller that opened the batch sends it
            call.wake.wait()
            return call.outcome()
        try:
            time.sleep(0)  # the other ready greenlets reach their commands and join
        finally:
            with self._lock:
                if self._gathering is batch:
                    self._gathering = None
        self._run(batch)
        return call.outcome()

    def _run(self, batch):
        """Send ``batch`` and hand each reply to its caller. Whatever happens (a dropped
        connection, this caller killed), no caller is left waiting."""
        try:
            if len(batch) == 1:
                call = batch[0]
                try:
                    call.finish(super().execute_command(*call.args, **call.options))
                except redis.RedisError as exc:
                    call.finish(error=exc)
                return
            self.batches += 1
            self._run_many(batch)
        finally:
            for call in batch:
                if not call.done:
                    call.finish(error=redis.ConnectionError("Redis batch abandoned: its sender was stopped"))

    def _run_many(self, batch):
        pool = self.connection_pool
        conn = pool.get_connection()
        pending = list(batch)
        try:
            conn.retry.call_with_retry(lambda: self._send_and_read(conn, pending),
                                       lambda _error: conn.disconnect())
        except redis.RedisError as exc:
            for call in pending:
                call.finish(error=exc)
        except BaseException:
            conn.disconnect()  # replies may be left unread on it
            raise
        finally:
            pool.release(conn)

    def _send_and_read(self, conn, pending):
        """Send what is still unanswered (a retry after a dropped connection sends only that)
        and read the replies in order, each to its caller."""
        conn.send_packed_command(conn.pack_commands([call.args for call in pending]))
        while pending:
            call = pending[0]
            try:
                result = self.parse_response(conn, call.args[0], **call.options)
            except redis.ResponseError as exc:
                result, error = None, exc
            else:
                error = None
            pending.pop(0)
            call.finish(result, error)
