"""Keys renamed since earlier releases, moved at start (docs/DESIGN.md, "Redis keys").

Per-user keys and the room index got hash tags so that a Redis Cluster keeps what
one script touches in one slot. A server of an earlier release has them under
their old names: every worker runs this at start; it walks the old names once
(SCAN), renames each (RENAMENX: a worker racing another renames each key once),
and records the layout's version, after which it costs one GET. A Cluster is
always new: it starts with the new names.
"""

import logging

import gevent.lock
import redis

from chatapp.store import keys, topology

log = logging.getLogger(__name__)

SCHEMA_VERSION = b"2"
OLD_STREAM_LEASES = f"{keys.PREFIX}:user-streams:"  # leases run out by themselves: dropped, not moved


def migrate(client, kind):
    """Rename what earlier releases named otherwise; return how many keys moved."""
    if kind == topology.CLUSTER or client.get(keys.SCHEMA) == SCHEMA_VERSION:
        return 0
    moved = 0
    for old, new in keys.RENAMED_KEYS.items():
        moved += _rename(client, old, new)
    _merge_legacy_rooms(client)
    for prefix, build in keys.RENAMED.items():
        for raw in client.scan_iter(match=prefix + "*", count=1000):
            moved += _rename(client, raw.decode(), build(raw.decode()[len(prefix):]))
    for raw in client.scan_iter(match=OLD_STREAM_LEASES + "*", count=1000):
        client.delete(raw)
    client.set(keys.SCHEMA, SCHEMA_VERSION)
    if moved:
        log.warning("migrated %d keys to this release's names", moved)
    return moved


def _merge_legacy_rooms(client):
    """The plain set of room names the releases before kept, into the index."""
    if client.type(keys.LEGACY_ROOMS) == b"set":
        names = client.smembers(keys.LEGACY_ROOMS)
        if names:
            client.zadd(keys.ROOM_NAMES, dict.fromkeys(names, 0), nx=True)
        client.delete(keys.LEGACY_ROOMS)


def _rename(client, old, new):
    try:
        moved = int(client.renamenx(old, new))
    except redis.ResponseError:  # gone already: another worker moved it
        return 0
    if not moved:  # both exist: an old worker wrote the old name after a new one took the new
        log.error("migration: %s not renamed, %s exists already; merge them by hand", old, new)
    return moved


class Migration:
    """Runs :func:`migrate` until it has completed once in this process: a worker never
    serves with half the keys renamed (an account moved and its ban not yet would let a
    banned user in). Redis down at start: each request tries again and answers 503 meanwhile."""

    def __init__(self, client, kind):
        self.client = client
        self.kind = kind
        self.done = False
        self._lock = gevent.lock.Semaphore()

    def ensure(self):
        if self.done:
            return
        with self._lock:
            if not self.done:
                migrate(self.client, self.kind)
                self.done = True
