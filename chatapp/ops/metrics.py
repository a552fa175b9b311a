"""Prometheus metrics, summed over all workers of an instance.

gunicorn's master sets ``PROMETHEUS_MULTIPROC_DIR`` before forking, so each
worker writes its values to files there and ``/metrics`` (on any worker) adds
them up; the ``child_exit`` hook retires a dead worker's live gauges. Without
that variable (tests, ``flask run``) the values live in this process.
"""

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROCESS = "PROMETHEUS_MULTIPROC_DIR" in os.environ
class Metrics:
    """The app's metric objects (registered in a per-app registry unless multiprocess)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        registry = None if MULTIPROCESS else self.registry
        self.streams_open = Gauge("chat_streams_open", "SSE streams open now", registry=registry,
                                  multiprocess_mode="livesum")
        self.polls_open = Gauge("chat_polls_open", "Long-polls waiting now", registry=registry,
                                multiprocess_mode="livesum")
        self.polls_short = Counter("chat_polls_short", "Long-polls answered on the short path, by a kept "
                                   "poller (chatapp.delivery.pollers)", registry=registry)
        self.accepted = Counter("chat_messages_accepted", "Messages stored and published (201)",
                                registry=registry)
        self.delivered = Counter("chat_messages_delivered", "Messages written to readers (SSE or long-poll)",
                                 registry=registry)
        self.catchups = Counter("chat_reader_catchups", "Readers that fell behind and caught up",
                                ["source"], registry=registry)
        self.hub_reconnects = Counter("chat_hub_reconnects", "Pub/Sub link reconnects", registry=registry)
        self.redis_errors = Counter("chat_redis_errors", "Redis failures seen", ["where"], registry=registry)
        # With CHAT_DURABILITY=replicas (chatapp.store.replicas): per primary, as each worker last saw it.
        self.replicas_connected = Gauge("chat_replicas_connected", "Replicas attached to each primary",
                                        ["server"], registry=registry, multiprocess_mode="livemin")
        self.writes_acknowledgeable = Gauge("chat_writes_acknowledgeable", "1 while a primary has the replicas "
                                            "CHAT_DURABILITY_REPLICAS asks for (else its writes are refused)",
                                            ["server"], registry=registry, multiprocess_mode="livemin")
        self.not_replicated = Counter("chat_messages_not_replicated", "POSTs refused with 503 not_replicated "
                                      "(stored, but not on enough replicas in time)", registry=registry)
        for source in ("ring", "stream"):  # present from the start, at 0
            self.catchups.labels(source)
        for where in ("request", "stream", "hub"):
            self.redis_errors.labels(where)
        self.request_seconds = Histogram("chat_request_seconds", "Time to the response (streams: to the headers)",
                                         ["endpoint", "method"], registry=registry)

    def value(self, name, **labels):
        """This process's value of a sample (tests; single-process mode)."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def exposition(self):
        if MULTIPROCESS:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
