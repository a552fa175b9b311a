"""Whether acknowledged writes are possible now, per primary (``CHAT_DURABILITY=replicas``).

With replica acknowledgement a POST waits for ``CHAT_DURABILITY_REPLICAS`` replicas; a
primary with fewer attached (its last replica gone, or promoted by a failover that left it
none) refuses every write with a 503 ``not_replicated`` until one is back. That is the choice
the setting makes (docs/deploy.md); this makes it visible: a gauge per primary, ``/readyz``
detail, and a log line when a primary switches between accepting and refusing.
"""

import logging
import time

from chatapp.store import topology
from chatapp.store.lua import is_cluster

log = logging.getLogger(__name__)

CHECK_EVERY_SECS = 2.0  # how stale the answer may be: INFO is cheap, but not for every request


class ReplicaWatch:
    def __init__(self, redis, needed, metrics):
        self.redis = redis
        self.needed = needed  # CHAT_DURABILITY_REPLICAS
        self.metrics = metrics
        self._state = {}  # server -> replicas attached
        self._checked = 0.0

    def state(self, now=None):
        """``{server: {"replicas": n, "writes": "accepted" or "refused"}}``, at most
        ``CHECK_EVERY_SECS`` old (reads each primary's INFO replication when it is older)."""
        now = time.monotonic() if now is None else now
        if now - self._checked >= CHECK_EVERY_SECS:
            self._checked = now
            self._update(self._replicas())
        return {server: {"replicas": count, "writes": "accepted" if count >= self.needed else "refused"}
                for server, count in self._state.items()}

    def _replicas(self):
        if is_cluster(self.redis):
            found = {}
            for node in self.redis.get_primaries():
                info = self.redis.get_redis_connection(node).info("replication")
                found[f"{node.host}:{node.port}"] = int(info.get("connected_slaves", 0))
            return found
        where = topology.address(self.redis)
        server = where if isinstance(where, str) else f"{where[0]}:{where[1]}"
        return {server: int(self.redis.info("replication").get("connected_slaves", 0))}

    def _update(self, found):
        for server, count in found.items():
            before = self._state.get(server)
            accepting = count >= self.needed
            if before is None or (before >= self.needed) != accepting:
                if accepting:
                    log.info("replicas: %s has %d of %d replicas: acknowledged writes are possible", server, count,
                             self.needed)
                else:
                    log.warning("replicas: %s has %d of %d replicas: every write there is refused "
                                "(503 not_replicated) until one is back (CHAT_DURABILITY=replicas)", server, count,
                                self.needed)
            self.metrics.replicas_connected.labels(server).set(count)
            self.metrics.writes_acknowledgeable.labels(server).set(1 if accepting else 0)
        self._state = found
