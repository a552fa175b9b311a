"""The error hierarchy and its single mapping to JSON responses.

Views raise a :class:`ChatError` subclass; nothing else builds an error body.
Every error a client sees is ``{"error": <code>, "message": <human text>}``.
"""

import logging

log = logging.getLogger(__name__)


class ChatError(Exception):
    status = 500
    code = "internal"
    message = "Internal server error."

    def __init__(self, message=None, *, code=None, headers=None, details=None):
        super().__init__(message or self.message)
        self.message = message or self.message
        self.code = code or self.code
        self.headers = headers or {}
        self.details = details or {}  # more fields of the JSON body, for a client to act on


class BadRequest(ChatError):
    status, code, message = 400, "bad_request", "The request is malformed."


class Unauthorized(ChatError):
    status, code, message = 401, "unauthorized", "Sign in first (session cookie or HTTP Basic)."


class Forbidden(ChatError):
    status, code, message = 403, "forbidden", "You may not do that."


class NotFound(ChatError):
    status, code, message = 404, "not_found", "No such resource."


class Conflict(ChatError):
    status, code, message = 409, "conflict", "That already exists."


class PayloadTooLarge(ChatError):
    status, code, message = 413, "too_large", "The request is too large."


class RateLimited(ChatError):
    status, code, message = 429, "rate_limited", "Too many requests; slow down."


class TooManyStreams(ChatError):
    status, code, message = 429, "too_many_streams", "You have as many streams open as you may."


class StoreUnavailable(ChatError):
    status, code, message = 503, "store_unavailable", "The message store is unavailable; retry shortly."


class NotReplicated(StoreUnavailable):
    code, message = "not_replicated", "The message is not yet on enough replicas; retry with the same key."


class Busy(ChatError):
    status, code, message = 503, "busy", "The server is busy; retry shortly."


class StorageFull(ChatError):
    status, code, message = 507, "storage_full", ("The message store is full; nothing was written. "
                                                  "Retry later (the same Idempotency-Key is safe).")




def unknown_room(name):
    """The one answer for a room that doesn't exist, and for a private room or a DM to anyone
    who isn't in it (docs/DESIGN.md, invariant 15): the same status, code and words."""
    return NotFound(f"No room named {name[:64]!r}.", code="unknown_room")
