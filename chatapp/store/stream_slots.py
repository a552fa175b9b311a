"""How many streams each user holds, counted in Redis across every worker and host.

``CHAT_MAX_STREAMS_PER_USER`` bounds what one account can hold open (SSE streams
and waiting long-polls), apart from ``CHAT_RATE_STREAMS``, which bounds how fast
it may open them. Each stream holds a lease of ``CHAT_STREAM_LEASE_SECS`` that
its worker's hub renews every third of that; the leases of a worker that dies
run out by themselves.
"""

import logging
import uuid

import redis

from chatapp.core.batch import Batch
from chatapp.ops.errors import TooManyStreams
from chatapp.store import keys
from chatapp.store.errors import SHARD_UNREACHABLE, is_out_of_memory
from chatapp.store.lua import is_cluster, lua_script, run_many

log = logging.getLogger(__name__)

TOO_MANY_RETRY_SECS = 10  # a client at its cap retries this much later


class StreamSlots:
    def __init__(self, client, per_user, lease_secs):
        self.on_cluster = is_cluster(client)
        self.per_user = per_user
        self.renew_secs = lease_secs / 3  # two renewals may fail before a lease runs out
        self._lease_ms = int(lease_secs * 1000)
        self._redis = client
        self._acquire = client.register_script(lua_script("acquire_stream"))
        self._renew = client.register_script(lua_script("renew_streams"))
        # Batched: a stream may end inside the hub's listener loop, which must not wait on Redis.
        self._releases = Batch(self._release_now)

    def acquire(self, user):
        """A lease id for one more stream of ``user``; raise TooManyStreams at the cap."""
        lease = uuid.uuid4().hex
        try:
            taken = self._acquire([keys.user_streams(user)], [lease, self._lease_ms, self.per_user])
        except redis.ResponseError as exc:
            if not is_out_of_memory(exc):
                raise
            log.warning("stream of %s not counted: redis is out of memory", user)
            return None  # reading what is stored goes on while the store is full
        except SHARD_UNREACHABLE as exc:
            if not self.on_cluster:
                raise
            # The user's lease index is on a shard that is down: the stream opens uncounted
            # (the worker's CHAT_MAX_STREAMS and the per-user stream rate still bound it) rather
            # than refusing the rooms of healthy shards until the promotion.
            log.warning("stream of %s not counted: its shard is unreachable (%s)", user, type(exc).__name__)
            return None
        if not taken:
            raise TooManyStreams(f"You have {self.per_user} streams open, as many as an account may; "
                                 "close one (or share one stream between tabs).",
                                 headers={"Retry-After": str(TOO_MANY_RETRY_SECS)})
        return lease

    def release(self, reader):
        """Give back the reader's lease (within a batch window)."""
        lease = reader.take_lease()
        if lease is not None:
            self._releases.add(reader.user, lease)

    def flush(self):
        """Give back the pending leases now (the worker is stopping)."""
        self._releases.flush()

    def _release_now(self, user, leases):
        try:
            self._redis.zrem(keys.user_streams(user), *leases)
        except redis.RedisError as exc:
            log.info("%d stream leases of %s not released (%s); they will run out", len(leases), user, exc)

    def renew(self, readers):
        """Renew the leases of ``readers`` (one pipeline; on a Cluster one call per user)."""
        held = {}
        for reader in readers:
            if reader.lease is not None:
                held.setdefault(reader.user, []).append(reader.lease)
        run_many(self._renew, [([keys.user_streams(user)], [self._lease_ms, *leases]) for user, leases in held.items()])
