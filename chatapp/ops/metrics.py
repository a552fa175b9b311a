"""Prometheus metrics, summed over all workers of an instance.

gunicorn's master sets ``PROMETHEUS_MULTIPROC_DIR`` before forking, so each
worker writes its values to files there and ``/metrics`` (on any worker) adds
them up; the ``child_exit`` hook retires a dead worker's live gauges. Without
that variable (tests, ``flask run``) the values live in this process.
"""

import ipaddress
import os
import time

from flask import Blueprint, Response, current_app, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from chatapp.ops.errors import Forbidden

bp = Blueprint("metrics", __name__)

MULTIPROCESS = "PROMETHEUS_MULTIPROC_DIR" in os.environ
# Label values come from fixed sets, never from the request as sent: an invented
# method or path would otherwise add a series (a file per worker, a line in every
# scrape) per request.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER = "other"


def request_labels():
    """``(endpoint, method)`` of this request, each from a fixed set."""
    endpoint = request.endpoint if request.url_rule is not None else OTHER
    method = request.method if request.method in METHODS else OTHER
    return endpoint or OTHER, method


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


def allowed(remote, networks):
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return False
    return any(address in network for network in networks)


def current_metrics():
    return current_app.extensions["chat.metrics"]


def init_app(app):
    metrics = app.extensions["chat.metrics"]

    @app.after_request
    def observe(response):
        if "started" in g:
            metrics.request_seconds.labels(*request_labels()).observe(
                time.perf_counter() - g.started)
        return response


@bp.get("/metrics")
def metrics_view():
    """Prometheus text format, summed over the instance's workers; only for CHAT_METRICS_ALLOW."""
    networks = current_app.config["CHAT_METRICS_ALLOW"]
    if networks and not allowed(request.remote_addr, networks):
        raise Forbidden("Metrics are not available from your address.", code="metrics_forbidden")
    return Response(current_metrics().exposition(), mimetype=CONTENT_TYPE_LATEST)
