"""What Redis's failures mean to a client: unavailable (retry: a 503) or full (a 507)."""

import redis

from chatapp.ops.errors import StorageFull

STORAGE_FULL_RETRY_SECS = 30


def is_out_of_memory(error):
    """Redis at ``maxmemory`` refused a write (noeviction). From inside a script Redis 6.2
    reports it as a script error quoting the OOM reply, not as an OOM reply of its own."""
    return isinstance(error, redis.OutOfMemoryError) or (
        isinstance(error, redis.ResponseError) and "OOM command not allowed" in str(error))


def storage_full():
    """The error a client gets when Redis refused a write for memory."""
    return StorageFull(headers={"Retry-After": str(STORAGE_FULL_RETRY_SECS)})


# Errors that mean "Redis can't serve us right now" (down, restarting, loading its AOF,
# a read-only replica after failover): the client should retry, so they are 503s.
REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError)


# On a Cluster: the shard serving a key is unreachable (down, or its slots not covered until a
# replica is promoted). Per-user counters that aren't the user's identity degrade to this
# worker's own count meanwhile, so they never stop the rooms of healthy shards.
SHARD_UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterDownError,
                     redis.exceptions.SlotNotCoveredError)
