"""Concurrent Redis commands leave together: one write, one read, one pooled connection.

A worker serves many requests at once, and most of what each asks Redis (a rate
limit, an append, a session, a lease) is one short command. Sent one by one, each
costs its own send and receive system calls and a pool checkout, which profiles
put at about a tenth of a POST's CPU. Here a command that arrives while another
batch is on the wire waits for it, then leaves with every command queued behind
it in one pipeline (automatic pipelining, as StackExchange.Redis and ioredis do
it). Alone, a command goes at once, exactly as redis-py sends it.

Nothing about what a command means changes: each is its own command (a script is
still atomic), replies go back to their own callers, an error reply reaches only
the command that caused it, and commands of one caller keep their order (a caller
waits for each reply). Commands that block on the server (WAIT, blocking pops,
XREAD BLOCK) never join a batch: they would hold up every other command behind
them.
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
        self._queue = []
        self._leading = False  # a caller is sending a batch and reading its replies
        self.batches = 0  # round trips made for more than one command (for tests and metrics)

    def execute_command(self, *args, **options):
        if args[0] in ALONE:
            return super().execute_command(*args, **options)
        call = _Call(args, options)
        with self._lock:
            self._queue.append(call)
            leading = self._take_lead()
        if not leading:
            leading = self._wait(call)
            if not leading:
                return call.outcome()
        self._lead(call)
        return call.outcome()

    def _take_lead(self):
        if self._leading:
            return False
        self._leading = True
        return True

    def _wait(self, call):
        """Wait until ``call`` is answered (False) or this caller is to send the next batch (True)."""
        try:
            while True:
                call.wake.wait()
                if call.done:
                    return False
                with self._lock:
                    if self._take_lead():
                        return True
                    call.wake.clear()
                if call.done:  # answered between the check and the clear
                    return False
        except BaseException:
            # Killed while waiting: don't leave the queue without a leader.
            with self._lock:
                if call in self._queue:
                    self._queue.remove(call)
                self._hand_over()
            raise

    def _lead(self, call):
        try:
            # Let the other greenlets that are ready to run get to their own commands first
            # (gevent's sleep(0) in a patched worker): they join this batch.
            time.sleep(0)
            while not call.done:
                with self._lock:
                    batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                self._run(batch)
        finally:
            with self._lock:
                self._leading = False
                self._hand_over()

    def _hand_over(self):
        """Wake the first queued caller to send the next batch (the lock is held)."""
        if self._queue and not self._leading:
            self._queue[0].wake.set()

    def _run(self, batch):
        if len(batch) == 1:
            call = batch[0]
            try:
                call.finish(super().execute_command(*call.args, **call.options))
            except redis.RedisError as exc:
                call.finish(error=exc)
            finally:
                if not call.done:  # killed mid-call: the caller is gone with it
                    call.finish(error=redis.ConnectionError("abandoned"))
            return
        self.batches += 1
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
            for call in pending:  # killed mid-batch: the others must not wait for ever
                if not call.done:
                    call.finish(error=redis.ConnectionError("Redis batch abandoned"))
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
