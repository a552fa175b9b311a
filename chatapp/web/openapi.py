"""``GET /api/openapi.json``: the OpenAPI 3.1 document of every route (``openapi.json`` beside this
module; ``tests/test_openapi.py`` fails when a route of the app is missing from it)."""

import hashlib
import json
from pathlib import Path

from flask import Blueprint, Response, request

bp = Blueprint("openapi", __name__, url_prefix="/api")

# Read and checked once, at import: a document that isn't JSON stops the app from starting.
_DOCUMENT = json.dumps(json.loads(Path(__file__).with_name("openapi.json").read_text(encoding="utf-8")),
                       ensure_ascii=False, separators=(",", ":")).encode()
_ETAG = hashlib.sha256(_DOCUMENT).hexdigest()[:32]


@bp.get("/openapi.json")
def spec():
    """The OpenAPI 3.1 document of this API: no sign-in needed; ``no-cache`` (revalidated by its ETag,
    so a client never keeps one from before an upgrade)."""
    response = Response(_DOCUMENT, mimetype="application/json", headers={"Cache-Control": "no-cache"})
    response.set_etag(_ETAG)
    return response.make_conditional(request)
