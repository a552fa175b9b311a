"""Concurrent Redis commands leave together: one write, one read, one pooled connection.

A worker serves many requests at once, and most of what each asks Redis (a rate
limit, an append, a session, a lease) is one short command. Sent one by one, each
costs its own send and receive system calls and a pool checkout, about a tenth of
a POST's CPU in profiles. Here the first command opens a batch and lets the other
greenlets that are ready to run reach their own commands (gevent's ``sleep(0)``);
they join it, and the batch leaves as one pipeline (automatic pipelining, as
ioredis does it once per event-loop tick). Batches never wait for one another:
each goes on its own pooled connection as soon as it is gathered, so a command
is never held behind another's round trip. A batch of several is sent and read
by a greenlet of its own: one caller's timeout or kill must not fail the
commands of others, which may be running in Redis already.

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

import gevent
import redis

# Commands that may wait on the server: sent on their own connection, as before.
ALONE = frozenset({"WAIT", "WAITAOF", "BLPOP", "BRPOP", "BRPOPLPUSH", "BLMOVE", "BLMPOP", "BZPOPMIN",
                   "BZPOPMAX", "BZMPOP", "XREAD", "XREADGROUP", "SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE",
                   "MONITOR", "SYNC", "PSYNC"})
# A batch's size bound: one write of a few dozen commands is already most of the gain,
# and the first reply of a batch waits for the whole write.
MAX_BATCH = 64


class _Call:
    __slots__ = ("args", "done", "error", "options", "packed", "result", "wake")

    def __init__(self, args, options):
        self.args = args
        self.options = options
        self.done = False
        self.result = None
        self.error = None
        self.packed = None
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
        if str(args[0]).upper() in ALONE:
            return super().execute_command(*args, **options)
        call = _Call(args, options)
        with self._lock:
            batch = self._gathering
            if batch is not None and len(batch) < MAX_BATCH:
                batch.append(call)
            else:
                batch = self._gathering = [call]
        if batch[0] is not call:  # joined: the batch's opener has it sent
            call.wake.wait()
            return call.outcome()
        try:
            time.sleep(0)  # the other ready greenlets reach their commands and join
        except BaseException:
            # This caller was stopped (a timeout, a kill) before anything was sent: its own
            # command is not sent, as with redis-py; the others' are, all the same.
            others = self._close(batch)[1:]
            if others:
                gevent.spawn(self._run, others)
            raise
        batch = self._close(batch)
        if len(batch) == 1:
            self._run(batch)  # alone: sent as redis-py sends it, from this greenlet
        else:
            # Sent and read by a greenlet of its own, so that this caller's timeout or kill
            # can't abandon (or fail) commands of others that are running in Redis.
            gevent.spawn(self._run, batch)
            call.wake.wait()
        return call.outcome()

    def _close(self, batch):
        """Stop ``batch`` gathering; return it as sent."""
        with self._lock:
            if self._gathering is batch:
                self._gathering = None
            return list(batch)

    def _run(self, batch):
        """Send ``batch`` and hand each reply to its caller; whatever happens, no caller is
        left waiting."""
        try:
            if len(batch) == 1:
                call = batch[0]
                try:
                    call.finish(super().execute_command(*call.args, **call.options))
                except Exception as exc:
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
        try:
            conn = pool.get_connection()
        except redis.RedisError as exc:
            for call in batch:
                call.finish(error=_copy(exc))
            return
        pending = []
        try:
            for call in batch:  # one caller's bad argument is its own error, not the batch's
                try:
                    call.packed = conn.pack_command(*call.args)
                except Exception as exc:
                    call.finish(error=exc)
                else:
                    pending.append(call)
            # The pool's retry policy, as for a single command (none here: a command that
            # may have run is never sent again; see chatapp.store.topology.client).
            conn.retry.call_with_retry(lambda: self._send_and_read(conn, pending),
                                       lambda _error: conn.disconnect())
        except redis.RedisError as exc:
            for call in pending:
                call.finish(error=_copy(exc))
        except BaseException:
            conn.disconnect()  # replies may be left unread on it
            raise
        finally:
            pool.release(conn)

    def _send_and_read(self, conn, pending):
        """Send what is still unanswered and read the replies in order, each to its caller."""
        # One write: in parts, Redis could act on (and close after) an early part before the rest arrive.
        conn.send_packed_command([b"".join(part for call in pending for part in call.packed)])
        while pending:
            call = pending[0]
            try:
                result = self.parse_response(conn, call.args[0], **call.options)
            except (redis.ConnectionError, redis.TimeoutError):
                raise  # the connection is gone: this and the rest are unanswered
            except redis.ResponseError as exc:
                result, error = None, exc  # an error reply: the connection is still in step
            except Exception as exc:
                # Not an error reply (a reply that didn't decode, a failing response callback):
                # it is this caller's; the connection may be out of step, so the rest fail.
                pending.pop(0)
                call.finish(error=exc)
                conn.disconnect()
                raise redis.ConnectionError("An earlier reply of the batch could not be read.") from exc
            else:
                error = None
            pending.pop(0)
            call.finish(result, error)


def _copy(error):
    """A fresh exception per caller (one raised in many greenlets would share its traceback)."""
    try:
        return type(error)(*error.args)
    except Exception:
        return error
