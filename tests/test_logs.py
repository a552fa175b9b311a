"""Log lines: one per request and per stream, with the pid, as text or JSON, without secrets."""

import json
import logging

import gevent
import pytest

from chatapp.ops.logs import JsonFormatter
from tests.helpers import PASSWORD, AuthActions, LocalStream, basic


@pytest.fixture
def config(config):
    return {**config, "CHAT_LOG_FORMAT": "json"}


def test_request_and_stream_lines_as_json_without_secrets(app, caplog):
    caplog.set_level(logging.DEBUG)  # "stream opened" is DEBUG; "stream closed" INFO
    client = app.test_client()
    AuthActions(client).register("alice")
    client.get("/api/rooms?secret=1", headers=basic("alice", PASSWORD))
    stream = LocalStream(client, "/api/rooms/general/events")
    stream.next_event()
    stream.close()
    gevent.sleep(0.1)
    formatter = JsonFormatter()
    lines = [json.loads(formatter.format(record)) for record in caplog.records]
    request = next(line for line in lines if line.get("path") == "/api/rooms")
    assert request["method"] == "GET" and request["status"] == 200 and request["pid"] > 0
    assert "ms" in request and request["client"]
    opened = [line for line in lines if line["message"].startswith("stream opened")]
    closed = [line for line in lines if line["message"].startswith("stream closed")]
    assert opened and closed and closed[0]["seconds"] >= 0 and closed[0]["reason"]
    everything = "\n".join(json.dumps(line) for line in lines)
    for secret in (PASSWORD, "Basic ", "chat_session=", "secret=1"):
        assert secret not in everything
