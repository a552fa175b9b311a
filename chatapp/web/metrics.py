"""``GET /metrics`` and the request-latency histogram (:mod:`chatapp.ops.metrics` holds the metrics)."""

import ipaddress
import logging
import time

from flask import Blueprint, Response, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST

from chatapp.ops.errors import Forbidden
from chatapp.store.errors import REDIS_ERRORS
from chatapp.web.context import services, services_of

log = logging.getLogger(__name__)

bp = Blueprint("metrics", __name__)

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


def allowed(remote, networks):
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return False
    return any(address in network for network in networks)


def init_app(app):
    metrics = services_of(app).metrics

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
    if services().replicas is not None:
        try:  # fresh for each scrape (at most CHECK_EVERY_SECS old); the rest is served regardless
            services().replicas.state()
        except REDIS_ERRORS as exc:
            log.warning("metrics: replicas not read (%s)", exc)
    return Response(services().metrics.exposition(), mimetype=CONTENT_TYPE_LATEST)
