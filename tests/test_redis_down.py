"""With Redis stopped, every endpoint answers a JSON 503 (streams: a 200 that says retry)."""

import pytest

from chatapp import create_app
from chatapp.store.embedded_redis import EmbeddedRedis
from chatapp.web.context import services_of
from tests.helpers import CHEAP_PASSWORD_HASH, PASSWORD, SSEParser, basic, signed_in


@pytest.fixture
def down(tmp_path):
    """An app whose Redis is running at first, then stopped; yields (app, store)."""
    store = EmbeddedRedis(tmp_path / "redis")
    store.start()
    app = create_app({"REDIS_URL": store.url, "SECRET_KEY": "t", "CHAT_REDIS_TIMEOUT_SECS": 1,
                      "CHAT_SUBSCRIBE_TIMEOUT_SECS": 0.5, **CHEAP_PASSWORD_HASH})
    yield app, store
    services_of(app).hub.close()
    store.stop()


ENDPOINTS = [("get", "/api/rooms"), ("post", "/api/rooms"), ("get", "/api/rooms/general/messages"),
             ("post", "/api/rooms/general/messages"), ("get", "/api/rooms/general/poll?timeout=0"),
             ("get", "/api/auth/me"), ("post", "/api/auth/login"), ("post", "/api/auth/register"),
             ("get", "/readyz")]


def test_every_endpoint_is_a_json_503_while_redis_is_down(down):
    app, store = down
    client = signed_in(app)
    basic_client = app.test_client()
    store.stop()
    for who, headers in [(client, {}), (basic_client, basic("bob", PASSWORD))]:
        for method, url in ENDPOINTS:
            body = {"text": "x", "name": "x", "username": "alice", "password": PASSWORD}
            response = getattr(who, method)(url, json=body if method == "post" else None, headers=headers)
            assert response.status_code == 503, (method, url, response.status_code, response.data)
            assert response.json["error"] == "store_unavailable"
    assert client.get("/healthz").status_code == 200


def test_stream_tells_the_client_to_retry_while_redis_is_down(down):
    app, store = down
    client = signed_in(app)
    store.stop()
    for url in ["/api/rooms/general/events", "/api/rooms/other/events"]:
        response = client.get(url)
        assert response.status_code == 200 and response.mimetype == "text/event-stream"
        events = SSEParser().feed(response.data)
        assert "retry" in events[0]  # how long EventSource waits before it reconnects
        assert events[-1]["event"] == "retry"


def test_service_returns_by_itself_when_redis_does(down):
    app, store = down
    client = signed_in(app)
    store.stop()
    response = client.get("/api/rooms/general/events", headers=basic("alice", PASSWORD))
    assert response.status_code == 200
    store.start()
    assert client.get("/readyz").status_code == 200
    assert client.post("/api/rooms/general/messages", json={"text": "back"}).status_code == 201
