"""Every exception a view can raise, answered as JSON: ``{"error": code, "message": ...}``."""

import logging

from flask import jsonify, request
from werkzeug.exceptions import HTTPException

from chatapp.ops.errors import ChatError, StoreUnavailable
from chatapp.store.errors import REDIS_ERRORS, is_out_of_memory, storage_full
from chatapp.web.context import services

log = logging.getLogger(__name__)

_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 413: "too_large", 415: "unsupported_media_type",
               429: "rate_limited"}


def count_redis_error():
    """Count a Redis failure met while answering a request."""
    metrics = services().metrics
    if metrics is not None:
        metrics.redis_errors.labels("request").inc()


def error_response(error):
    response = jsonify(**error.details, error=error.code, message=error.message)
    response.status_code = error.status
    response.headers.update(error.headers)
    return response


def init_app(app):
    """Map every exception a view can raise to a JSON error response."""

    @app.errorhandler(ChatError)
    def handle_chat_error(error):
        return error_response(error)

    @app.errorhandler(HTTPException)
    def handle_http_error(error):
        original = getattr(error, "original_exception", None)
        if error.code == 500 and original is not None:
            return handle_unexpected(original)  # raised outside a view, e.g. saving the session
        generic = ChatError(error.description, code=_HTTP_CODES.get(error.code, "http_error"))
        generic.status = error.code
        response = error_response(generic)
        if error.code == 405 and error.valid_methods:
            response.headers["Allow"] = ", ".join(error.valid_methods)
        return response

    @app.errorhandler(Exception)
    def handle_unexpected(error):
        if is_out_of_memory(error):
            log.error("redis refused a write in %s: out of memory (maxmemory); see docs/deploy.md "
                      "on sizing", request.endpoint)
            count_redis_error()
            return error_response(storage_full())
        if isinstance(error, REDIS_ERRORS):
            log.warning("redis unavailable in %s: %s: %s",
                        request.endpoint, type(error).__name__, error)
            count_redis_error()
            return error_response(StoreUnavailable())
        log.exception("unhandled error in %s", request.endpoint)
        return error_response(ChatError())
