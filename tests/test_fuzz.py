"""Property-based: arbitrary input at every endpoint (invented methods, odd paths and
pathological JSON included) never gives a 5xx, every error is JSON with a code, no
request adds a metric series, and nothing malformed lands in Redis."""

import json
import re
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatapp import create_app
from chatapp.web.context import services_of
from tests.helpers import CHEAP_PASSWORD_HASH, GENEROUS_LIMITS, PASSWORD, AuthActions, basic

ENDPOINTS = [
    ("POST", "/api/auth/register"), ("POST", "/api/auth/login"), ("POST", "/api/auth/logout"),
    ("POST", "/api/auth/password"), ("GET", "/api/auth/me"), ("GET", "/api/auth/csrf"),
    ("GET", "/api/rooms"), ("POST", "/api/rooms"), ("POST", "/api/rooms/unread"),
    ("POST", "/api/rooms/{room}/messages"), ("GET", "/api/rooms/{room}/messages"),
    ("GET", "/api/rooms/{room}/events"), ("GET", "/api/rooms/{room}/poll"),
    ("GET", "/api/rooms/{room}/presence"), ("POST", "/api/rooms/{room}/typing"),
    ("POST", "/api/admin/users/{room}/kick"), ("POST", "/api/admin/users/{room}/ban"),
    ("DELETE", "/api/admin/users/{room}/ban"), ("POST", "/api/auth/logout-everywhere"), ("GET", "/metrics"),
    ("GET", "/api/rooms/{room}"), ("PATCH", "/api/rooms/{room}"), ("POST", "/api/rooms/{room}/join"),
    ("POST", "/api/rooms/{room}/leave"), ("GET", "/api/me/rooms"), ("GET", "/api/events"), ("GET", "/api/poll"),
    ("GET", "/api/rooms/{room}/members"), ("POST", "/api/rooms/{room}/members"),
    ("PUT", "/api/rooms/{room}/members/{room}"), ("DELETE", "/api/rooms/{room}/members/{room}"),
    ("POST", "/api/dms"), ("GET", "/api/blocks"), ("POST", "/api/blocks"), ("DELETE", "/api/blocks/{room}"),
    ("PATCH", "/api/rooms/{room}/messages/{room}"), ("DELETE", "/api/rooms/{room}/messages/{room}"),
    ("POST", "/api/rooms/{room}/read"), ("POST", "/api/rooms/{room}/mute"), ("GET", "/api/me/unread"),
    ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/"), ("GET", "/api/openapi.json"),
    ("GET", "/api/rooms/{room}/{room}"), ("POST", "/api/{room}"), ("GET", "/{room}"),  # odd paths
]
INVENTED_METHODS = ["QWERTYUIOP", "PROPFIND", "TRACE", "M-SEARCH", "get", "POST ", "X" * 40]
FIELDS = ["text", "client_id", "name", "username", "password", "current_password", "new_password", "rooms", "title",
          "private", "archived", "user", "users", "role", "id", "muted"]
PARAMS = ["before", "after", "limit", "backlog", "cursor", "timeout", "last_event_id", "lastEventId"]

KEY_PATTERNS = [re.compile(p) for p in [
    r"chat:\{[a-z0-9_-]{1,64}\}:(log|trimmed|presence|presence-users|meta|members|blockers|edits)",
    r"chat:\{[a-z0-9_-]{1,64}\}:idem:[a-z0-9._-]{2,32}:[A-Za-z0-9._:-]{1,128}",
    r"chat:\{rooms\}:names", r"chat:\{rooms\}:(created|private):[a-z0-9._-]{2,32}", r"chat:schema",
    r"chat:\{user:[a-z0-9._-]{2,32}\}:(account|banned|sessions|streams|memberships|reads|muted|blocks)",
    r"chat:\{[a-z0-9_-]{1,64}\}:acked", r"chat:\{[a-z0-9_-]{1,64}\}:probe",
    r"chat:session:(\{user:[a-z0-9._-]{2,32}\})?[A-Za-z0-9_-]{16,128}",
    r"chat:\{user:[a-z0-9._-]{2,32}\}:verified:[0-9a-f]{64}",
    r"chat:rl:\{LIMITER/CHAT_RATE_[A-Z_]+/(\d{1,3}(\.\d{1,3}){3}|login:[A-Za-z0-9._-]{2,32}|device:[A-Za-z0-9_-]{16}|[a-z0-9._-]{2,32})/\d+/\d+/\w+\}(/-?\d+)?",
]]

weird_text = st.one_of(
    st.text(max_size=50), st.text(alphabet=st.characters(codec="utf-8"), max_size=20),
    st.sampled_from(["", " ", "*", "general", "0", "0-0", "1-1", "-1", "99999999999999999999999-0", "nan",
                     "inf", "1e9", "{general}", "../etc", "a" * 5000, "\x00", "\ud800", "%00", "general*"]),
)
json_value = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | weird_text,
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(weird_text, inner, max_size=3),
                          max_leaves=8)
body = st.one_of(
    st.none(),
    st.tuples(st.just("json"), st.dictionaries(st.sampled_from(FIELDS), json_value, max_size=4)),
    st.tuples(st.just("json"), json_value),
    st.tuples(st.just("form"), st.dictionaries(st.sampled_from(FIELDS), st.text(max_size=30), max_size=4)),
    st.tuples(st.just("raw"), st.binary(max_size=300)),
    st.tuples(st.just("huge"), st.integers(min_value=65 * 1024, max_value=200 * 1024)),
    st.tuples(st.just("deep"), st.tuples(st.sampled_from(["[", '{"a":', '{"text":[']),
                                         st.integers(min_value=500, max_value=6000))),
    st.tuples(st.just("raw-json"), st.sampled_from([b"1e999999", b"-" + b"9" * 5000, b'"\\ud800"', b"[1,",
                                                    b"\xff\xfe", b'{"text": NaN}', b"{}" * 1000])),
)
headers = st.dictionaries(
    st.sampled_from(["Last-Event-ID", "Idempotency-Key", "Content-Type", "Authorization", "X-CSRFToken",
                     "Origin"]),
    st.one_of(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60),
              st.sampled_from(["Basic !!!", "Basic " + "a" * 100, "Bearer x", "application/json",
                               "text/plain", "multipart/form-data"])),
    max_size=3)


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory):
    from chatapp.store.embedded_redis import EmbeddedRedis

    store = EmbeddedRedis(tmp_path_factory.mktemp("fuzz-redis"))
    store.start()
    app = create_app({"REDIS_URL": store.url, "SECRET_KEY": "t", "CHAT_POLL_TIMEOUT_SECS": 0.05,
                      "CHAT_POLL_MAX_TIMEOUT_SECS": 0.1, "CHAT_HEARTBEAT_SECS": 0.1, **GENEROUS_LIMITS,
                      **CHEAP_PASSWORD_HASH})
    AuthActions(app.test_client()).register("fuzzer")
    yield app
    services_of(app).hub.close()
    store.stop()


def send(client, method, path, *, chosen_body, chosen_headers, query):
    # Encoded by hand: lone surrogates go out as the invalid UTF-8 a hostile client would send.
    raw_query = "&".join(f"{k}={quote(v.encode('utf-8', 'surrogatepass'), safe='')}" for k, v in query.items())
    kwargs = {"headers": chosen_headers, "query_string": raw_query}
    if chosen_body:
        kind, value = chosen_body
        if kind == "json":
            kwargs["data"], kwargs["content_type"] = json.dumps(value, allow_nan=True), "application/json"
        elif kind == "form":
            kwargs["data"] = {k: v.encode("utf-8", "surrogatepass") for k, v in value.items()}
        elif kind == "raw":
            kwargs["data"] = value
        elif kind == "deep":  # nesting the JSON parser can't follow, well under the body cap
            opener, depth = value
            closer = {"[": "]", '{"a":': "}", '{"text":[': "]}"}[opener]
            kwargs["data"], kwargs["content_type"] = opener * depth + "0" + closer * depth, "application/json"
        elif kind == "raw-json":
            kwargs["data"], kwargs["content_type"] = value, "application/json"
        else:
            kwargs["data"], kwargs["content_type"] = b"x" * value, "application/json"
    response = client.open(path, method=method, buffered=False, **kwargs)
    if response.mimetype == "text/event-stream":
        first = next(iter(response.response))
        response.close()
        return response, first
    return response, response.get_data()


def check_metrics(app):
    """Every label value of the request histogram is from a fixed set: no request made a series."""
    from chatapp.web.metrics import METHODS, OTHER

    endpoints = {rule.endpoint for rule in app.url_map.iter_rules()} | {OTHER}
    text = services_of(app).metrics.exposition().decode()
    for endpoint, method in re.findall(r'^chat_request_seconds_count\{endpoint="([^"]*)",method="([^"]*)"\}',
                                       text, re.M):
        assert endpoint in endpoints and method in METHODS | {OTHER}, (endpoint, method)


def check_redis(redis_client):
    for raw_key in redis_client.scan_iter(count=1000):
        key = raw_key.decode()
        assert any(p.fullmatch(key) for p in KEY_PATTERNS), f"unexpected key {key!r}"
        if key.endswith(":log"):
            room = key[6:key.index("}")]
            for _, fields in redis_client.xrange(key):
                entry = json.loads(fields[b"body"])
                assert entry["room"] == room
                if entry.get("kind") in (None, "edit"):  # the entries that carry text
                    assert entry["text"].strip() and not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f]", entry["text"])


examples = {"count": 0}


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(endpoint=st.sampled_from(ENDPOINTS), room=weird_text, chosen_body=body, chosen_headers=headers,
       query=st.dictionaries(st.sampled_from(PARAMS), weird_text, max_size=3),
       who=st.sampled_from(["anonymous", "session", "basic"]),
       invented=st.one_of(st.none(), st.none(), st.none(), st.sampled_from(INVENTED_METHODS)))
def test_no_input_gives_a_5xx_or_a_non_json_error(fuzz_app, endpoint, room, chosen_body, chosen_headers,  # noqa: PLR0917
                                                   query, who, invented):
    examples["count"] += 1
    method, template = endpoint
    method = invented or method
    client = fuzz_app.test_client()
    redis_client = services_of(fuzz_app).redis
    if who == "session":
        AuthActions(client).login("fuzzer")
    elif who == "basic":
        chosen_headers = {**basic("fuzzer", PASSWORD), **chosen_headers}
    path = template.format(room=quote(room.encode("utf-8", "surrogatepass"), safe=""))
    response, data = send(client, method, path, chosen_body=chosen_body, chosen_headers=chosen_headers,
                          query=query)
    assert response.status_code < 500, (response.status_code, data[:300])
    if response.status_code >= 400:
        error = json.loads(data)
        assert isinstance(error["error"], str) and error["error"] and isinstance(error["message"], str)
    check_metrics(fuzz_app)
    check_redis(redis_client)


def test_report_how_many_examples_ran():
    print(f"\nfuzz: {examples['count']} examples ran against {len(ENDPOINTS)} endpoints")
    assert examples["count"] >= 600


def test_every_route_is_fuzzed(fuzz_app):
    """A route added later is fuzzed too, or this fails: every rule of the URL map, with each of
    its methods, is one of ENDPOINTS (its variables written ``{room}``)."""
    fuzzed = set(ENDPOINTS)
    for rule in fuzz_app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<[^>]+>", "{room}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert (method, path) in fuzzed, f"{method} {rule.rule} ({rule.endpoint}) is not in ENDPOINTS"
