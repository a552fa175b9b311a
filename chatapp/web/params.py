"""Reading request input: bodies (JSON or a form, the same fields either way) and query values."""

import math

from flask import request

from chatapp.core.ids import StreamId
from chatapp.ops.errors import BadRequest


def request_fields():
    """The request's fields as a dict of strings (or JSON values); raise BadRequest.

    Accepts ``application/json`` (an object) and form posts. Anything else with a
    body is refused rather than guessed at.
    """
    if request.is_json:
        try:
            data = request.get_json(silent=True)
        except RecursionError:  # "[[[[..." within the body cap: the parser gives up, not a 500
            raise BadRequest("The JSON body is nested too deeply.", code="bad_json") from None
        if not isinstance(data, dict):
            raise BadRequest("The body must be a JSON object.", code="bad_json")
        return data
    if request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return request.form.to_dict()
    if request.content_length or request.mimetype:
        raise BadRequest("Send JSON (application/json) or a form post.", code="bad_content_type")
    return {}


def string_field(fields, name, required=True):
    """One string field; missing (when required) or non-string values are a 400."""
    value = fields.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"Field '{name}' must be a string.", code="bad_field")
    return value


def flag(fields, name):
    """A true/false field, from JSON (a boolean) or a form ("true", "false", "1", "0"); None if absent."""
    value = fields.get(name)
    if value is None or isinstance(value, bool):
        return value
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise BadRequest(f"'{name}' must be true or false.", code="bad_field")


# What a long-poll's query may say (the views and the short path read it alike).
POLL_PARAMETERS = frozenset({"cursor", "timeout", "rooms"})


def query_number(name, default, low, high, kind=int):
    """A numeric query parameter within ``[low, high]``; anything else is a 400."""
    return number(name, request.args.get(name), default=default, low=low, high=high, kind=kind)


def poll_timeout(raw, config):
    """A long-poll's ``timeout`` (seconds; absent: ``CHAT_POLL_TIMEOUT_SECS``); a 400 past the cap."""
    return number("timeout", raw, default=config["CHAT_POLL_TIMEOUT_SECS"], low=0,
                  high=config["CHAT_POLL_MAX_TIMEOUT_SECS"], kind=float)


def number(name, raw, *, default, low, high, kind=int):
    """``raw`` (the text of parameter ``name``, or None) as a number within ``[low, high]``;
    ``default`` when absent or empty; anything else is a 400."""
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or math.isnan(value) or not low <= value <= high:
        raise BadRequest(f"Parameter '{name}' must be a number from {low} to {high}.",
                         code="bad_parameter")
    return value


def query_cursor(*names):
    """The first of ``names`` present in the query, parsed as a stream id; None if absent."""
    for name in names:
        raw = request.args.get(name)
        if raw:
            return StreamId.parse(raw)
    return None
