"""Liveness and readiness probes for load balancers and orchestrators."""

import os

from flask import Blueprint, jsonify

from chatapp.ops.errors import StoreUnavailable
from chatapp.store.errors import REDIS_ERRORS
from chatapp.web.context import services

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """The process is alive; says which worker answered."""
    return jsonify(status="ok", pid=os.getpid())


@bp.get("/readyz")
def readyz():
    """Redis answers; 503 otherwise, so a balancer stops sending traffic here."""
    try:
        services().redis.ping()
        # With replica acknowledgement: which primaries can acknowledge a write now. Reads and
        # streams go on without replicas, so this is detail, not a 503 (docs/deploy.md).
        writes = services().replicas.state() if services().replicas is not None else None
    except REDIS_ERRORS as exc:
        raise StoreUnavailable(f"Redis is not reachable: {type(exc).__name__}.") from None
    if writes is None:
        return jsonify(status="ready", pid=os.getpid())
    return jsonify(status="ready", pid=os.getpid(), writes=writes)
