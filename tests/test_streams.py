"""SSE and long-poll through the app in this process (the hub runs in this process's greenlets)."""

import json
import time

import gevent
import pytest

from chatapp.web.context import services_of
from tests.helpers import GENEROUS_LIMITS, AuthActions, LocalStream, parse_id, send


def test_stream_headers_and_first_bytes(alice):
    stream = LocalStream(alice, "/api/rooms/general/events")
    assert stream.status == 200
    assert stream.response.mimetype == "text/event-stream"
    assert stream.response.headers["Cache-Control"] == "no-cache"
    assert stream.response.headers["X-Accel-Buffering"] == "no"
    assert "Content-Encoding" not in stream.response.headers
    first = stream.next_event(timeout=1)
    assert first["retry"] == "2000" and first["comments"] == ["stream open"]
    ready = stream.next_event(timeout=1)  # lets a client tell a buffering proxy from a quiet room
    assert ready["event"] == "ready" and "worker" in ready["data"]
    stream.close()


def test_stream_without_cursor_starts_now(alice):
    send(alice, "old")
    stream = LocalStream(alice, "/api/rooms/general/events")
    stream.next_event()
    gevent.sleep(0.1)
    sent = send(alice, "new")
    assert stream.messages(1) == [sent]
    stream.close()


def test_backlog_sends_the_last_n_first(alice):
    sent = [send(alice, str(i)) for i in range(5)]
    stream = LocalStream(alice, "/api/rooms/general/events?backlog=3")
    assert stream.messages(3) == sent[2:]
    later = send(alice, "later")
    assert stream.messages(1) == [later]
    stream.close()


def test_heartbeat_ping_when_idle(alice):
    stream = LocalStream(alice, "/api/rooms/general/events")
    stream.next_event()
    stream.next_event()
    ping = stream.next_event(timeout=2)  # the test config pings every 0.5 s
    assert ping == {"comments": ["ping"]}
    stream.close()


def test_resume_with_last_event_id_gets_exactly_the_missed_messages(alice):
    sent = [send(alice, str(i)) for i in range(10)]
    stream = LocalStream(alice, "/api/rooms/general/events", {"Last-Event-ID": sent[3]["id"]})
    assert stream.messages(6) == sent[4:]
    more = [send(alice, f"live {i}") for i in range(3)]
    assert stream.messages(3) == more
    assert stream.messages(1, timeout=0.7) == []  # nothing repeated
    stream.close()


def test_resume_cursor_by_query_and_header_wins(alice):
    sent = [send(alice, str(i)) for i in range(4)]
    by_query = LocalStream(alice, f"/api/rooms/general/events?last_event_id={sent[1]['id']}")
    assert by_query.messages(2) == sent[2:]
    camel = LocalStream(alice, f"/api/rooms/general/events?lastEventId={sent[2]['id']}")
    assert camel.messages(1) == sent[3:]
    both = LocalStream(alice, f"/api/rooms/general/events?last_event_id={sent[0]['id']}",
                       {"Last-Event-ID": sent[2]["id"]})
    assert both.messages(1) == sent[3:]
    for stream in (by_query, camel, both):
        stream.close()


def test_malformed_cursor_is_400_json(alice):
    response = alice.get("/api/rooms/general/events", headers={"Last-Event-ID": "abc"})
    assert response.status_code == 400 and response.json["error"] == "bad_cursor"
    assert alice.get("/api/rooms/general/poll?cursor=1-x").json["error"] == "bad_cursor"
    assert alice.get("/api/rooms/general/events?backlog=-1").status_code == 400


def test_cursor_older_than_retention_gets_reset(alice, app):
    services_of(app).broker.maxlen = 10
    first = send(alice, "first")
    for i in range(300):
        send(alice, str(i))
    stream = LocalStream(alice, "/api/rooms/general/events", {"Last-Event-ID": first["id"]})
    stream.next_event()
    assert stream.next_event()["event"] == "ready"
    reset = stream.next_event()
    assert reset["event"] == "reset"
    data = json.loads(reset["data"])
    assert parse_id(data["oldest"]) > parse_id(first["id"]) and reset["id"] == data["latest"]
    after = send(alice, "after reset")
    assert stream.messages(1) == [after]
    stream.close()
    polled = alice.get(f"/api/rooms/general/poll?cursor={first['id']}&timeout=0").json
    assert polled["reset"] is True and polled["messages"] == []


def test_poll_answers_at_once_when_behind(alice):
    sent = [send(alice, str(i)) for i in range(3)]
    started = time.monotonic()
    body = alice.get(f"/api/rooms/general/poll?cursor={sent[0]['id']}&timeout=10").json
    assert time.monotonic() - started < 5
    assert body == {"messages": sent[1:], "cursor": sent[2]["id"]}


def test_poll_waits_and_answers_when_a_message_arrives(alice, app):
    cursor = send(alice, "before")["id"]
    poster = app.test_client()
    AuthActions(poster).login("alice")
    later = gevent.spawn_later(0.3, send, poster, "arrives")
    body = alice.get(f"/api/rooms/general/poll?cursor={cursor}&timeout=10").json
    assert body["messages"] == [later.get()]
    assert body["cursor"] == later.get()["id"]


def test_poll_times_out_with_an_empty_list(alice):
    cursor = send(alice, "x")["id"]
    body = alice.get(f"/api/rooms/general/poll?cursor={cursor}&timeout=0.3").json
    assert body == {"messages": [], "cursor": cursor}


def test_poll_timeout_is_validated_and_capped(alice):
    assert alice.get("/api/rooms/general/poll?timeout=61").status_code == 400
    assert alice.get("/api/rooms/general/poll?timeout=nan").status_code == 400
    assert alice.get("/api/rooms/general/poll?timeout=-1").status_code == 400


def test_poll_without_cursor_starts_now(alice):
    send(alice, "old")
    body = alice.get("/api/rooms/general/poll?timeout=0").json
    assert body["messages"] == [] and body["cursor"] != "0-0"


def test_long_poll_uses_the_hub_not_a_connection_per_request(alice, app, redis_client):
    cursor = send(alice, "x")["id"]
    waiting = [gevent.spawn(alice.get, f"/api/rooms/general/poll?cursor={cursor}&timeout=2")
               for _ in range(30)]
    gevent.sleep(0.5)
    assert services_of(app).hub.reader_count() == 30
    clients = redis_client.client_list()
    assert sum(int(c["sub"]) > 0 for c in clients) == 1  # the hub's one Pub/Sub link
    assert not [c for c in clients if "b" in c["flags"]]  # nobody blocks in XREAD
    later = send(alice, "wakes them all")
    assert all(g.get().json["messages"] == [later] for g in waiting)


@pytest.mark.parametrize("config", [{**GENEROUS_LIMITS, "CHAT_MAX_STREAMS": 2}])
def test_worker_at_its_stream_cap_tells_streams_to_retry_and_polls_to_come_back(alice, app):
    held = [LocalStream(alice, "/api/rooms/general/events") for _ in range(2)]
    for stream in held:
        stream.next_event()
        stream.next_event()  # "ready": registered with the hub
    refused = LocalStream(alice, "/api/rooms/general/events")
    assert refused.status == 200  # EventSource would give up for good on anything else
    event = refused.next_event()
    assert event["event"] == "retry" and json.loads(event["data"])["reason"] == "busy"
    poll = alice.get("/api/rooms/general/poll?timeout=0")
    assert poll.status_code == 503 and poll.json["error"] == "busy"
    held[0].close()
    gevent.sleep(0.1)
    assert LocalStream(alice, "/api/rooms/general/events").next_event(timeout=1)["comments"] == ["stream open"]


@pytest.mark.parametrize("config", [{**GENEROUS_LIMITS, "CHAT_MAX_STREAMS": 2}])
def test_a_burst_of_opens_cannot_overshoot_the_stream_cap(alice, app):
    """Regression: the cap was checked before the request yielded (session save, head
    write) and counted only at attach, so 8 concurrent opens passed a cap of 2."""
    hub = services_of(app).hub
    streams = [gevent.spawn(LocalStream, alice, "/api/rooms/general/events") for _ in range(8)]
    answers = []
    for stream in (g.get(timeout=5) for g in streams):
        event = stream.next_event()  # the preamble, unless turned away before it
        while "event" not in event:
            event = stream.next_event()
        answers.append(event)  # "ready", or the retry of a stream turned away
    assert hub.reader_count() == 2
    assert sorted(a["event"] for a in answers) == ["ready"] * 2 + ["retry"] * 6
    assert all(json.loads(a["data"])["reason"] == "busy" for a in answers if a["event"] == "retry")
