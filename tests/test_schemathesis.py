"""The API against its OpenAPI document (chatapp/web/openapi.json), with schemathesis: generated
input, hostile included, at every operation of a live gunicorn, signed in with HTTP Basic and
the rate limits lifted. No answer may be a 5xx, and every answer must match the document
(status, content type, body schema).

The two SSE routes are left out (a generated request would hold a stream open); their framing
has its own tests (tests/test_sse.py, tests/test_multiplex.py)."""

import base64
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.helpers import GENEROUS_LIMITS, PASSWORD, Api, gunicorn_with_redis

pytestmark = pytest.mark.gunicorn

DOCUMENT = Path(__file__).resolve().parent.parent / "chatapp" / "web" / "openapi.json"
schema = schemathesis.openapi.from_path(str(DOCUMENT)).exclude(path_regex=r"/events$")
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_schema_conformance")


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A gunicorn of its own, with limits lifted and long-polls short; an account signed in."""
    env = {**GENEROUS_LIMITS, "CHAT_POLL_MAX_TIMEOUT_SECS": "0.2", "CHAT_POLL_TIMEOUT_SECS": "0.1",
           "CHAT_ACCESS_LOG": "0"}
    with gunicorn_with_redis(tmp_path_factory.mktemp("schemathesis"), workers=2, env=env) as (server, _):
        Api(server.url).post("/api/auth/register", {"username": "tester", "password": PASSWORD})
        yield server


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_documented(case, live):
    token = base64.b64encode(f"tester:{PASSWORD}".encode()).decode()
    case.call_and_validate(base_url=live.url, headers={"Authorization": f"Basic {token}"}, timeout=30,
                           checks=[getattr(schemathesis.checks, name) for name in CHECKS])
