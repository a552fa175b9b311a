"""Work gathered over a short window and done in one go: one Redis call per key, not per item.

10,000 streams opening at once (a reconnect storm) would otherwise cost 10,000
presence calls; batched, they cost about a hundred. Batches also keep Redis
calls out of the hub's listener loop, which must never wait.
"""

import gevent

BATCH_SECS = 0.05


class Batch:
    """Items added within ``BATCH_SECS`` of the first are handed to ``flush_one(key, items)``
    together, in a greenlet of their own."""

    def __init__(self, flush_one):
        self._flush_one = flush_one
        self._pending = {}

    def add(self, key, item):
        if not self._pending:
            gevent.spawn_later(BATCH_SECS, self.flush)
        self._pending.setdefault(key, []).append(item)

    def flush(self):
        """Now: also at shutdown, when the worker may exit before the timer fires."""
        pending, self._pending = self._pending, {}
        for key, items in pending.items():
            self._flush_one(key, items)
