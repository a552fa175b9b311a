"""The hub's housekeeping: one greenlet per worker that runs a list of tickers in turn.

Each :class:`Ticker` is one subsystem's upkeep (pings for quiet streams, kept
long-pollers, presence, session re-checks, held publications, the delivered
metric, stream leases, idle rooms), run every tick or every ``every_secs``. A
tick that meets a Redis error stops there and the next one starts over: Redis
down, or full (maxmemory), must not kill the loop or busy-loop on it.
"""

import logging
import time
from collections.abc import Callable
from typing import NamedTuple

import gevent
import redis

log = logging.getLogger(__name__)

WATCH_TICK_SECS = 0.5  # an expired session's streams must stop within 2 s


class Tick(NamedTuple):
    """What one tick sees, read once for every ticker."""

    now: float  # monotonic
    readers: list  # every room reader, those of multiplexed streams included
    streams: list  # every stream and kept long-poll: single-room readers and multiplexed streams


class Ticker(NamedTuple):
    name: str
    run: Callable[[Tick], None]
    every_secs: float = 0.0  # 0: every tick


class Housekeeper:
    """Runs ``tickers`` in order every ``WATCH_TICK_SECS`` until ``closed()``; ``snapshot(now)``
    gives each tick its :class:`Tick`."""

    def __init__(self, tickers, snapshot, closed):
        self.tickers = tickers
        self._snapshot = snapshot
        self._closed = closed
        self._next = dict.fromkeys((t.name for t in tickers), 0.0)
        self._greenlet = None

    def start(self):
        self._greenlet = gevent.spawn(self._run)

    def stop(self):
        if self._greenlet is not None:
            self._greenlet.kill(block=False)

    @property
    def dead(self):
        return self._greenlet is not None and self._greenlet.dead

    def _run(self):
        while not self._closed():
            gevent.sleep(WATCH_TICK_SECS)
            self.tick(time.monotonic())

    def tick(self, now):
        try:
            tick = self._snapshot(now)
            for ticker in self.tickers:
                if ticker.every_secs:
                    if now < self._next[ticker.name]:
                        continue
                    self._next[ticker.name] = now + ticker.every_secs  # a failed run waits its turn too
                ticker.run(tick)
        except redis.RedisError as exc:  # down, or full (maxmemory): the next tick tries again
            log.info("hub: housekeeping skipped (%s: %s)", type(exc).__name__, exc)
        except Exception:
            log.exception("hub: housekeeping failed")
