"""The worker hub's invariants, against a real Redis: subscribe-then-backfill,
self-healing, bounded slow readers, encode once."""

import _socket
import json
import time

import gevent
import pytest
import redis

from chatapp.core.ids import StreamId
from chatapp.delivery.event_stream import EventStream
from chatapp.web.context import services_of
from tests.helpers import GENEROUS_LIMITS, AuthActions, LocalStream, SSEParser, eventually, kill_pubsub_repeatedly


def publish(app, text, room="general"):
    return services_of(app).broker.publish(room, "alice", text)[0]


def ids(messages):
    return [m["id"] for m in messages]


def hub_of(app):
    return services_of(app).hub


def reconnects(app):
    return services_of(app).metrics.value("chat_hub_reconnects_total")


def catchups(app, source):
    return services_of(app).metrics.value("chat_reader_catchups_total", source=source)


def test_readers_joining_during_a_burst_get_everything_after_their_cursor_once(alice, app):
    """Subscribe, then backfill: readers that connect while messages flow miss nothing."""
    broker = services_of(app).broker
    seed = publish(app, "seed")

    def post():
        sent = []
        for i in range(300):
            sent.append(publish(app, f"m{i}"))
            gevent.sleep(0.002)
        return sent

    poster = gevent.spawn(post)
    streams = []
    while not poster.dead:
        cursor = broker.tail("general")
        streams.append((cursor, LocalStream(alice, "/api/rooms/general/events",
                                            {"Last-Event-ID": str(cursor)})))
        gevent.sleep(0.01)
    everything = [seed.id] + [p.id for p in poster.get()]
    assert len(streams) > 20
    for cursor, stream in streams:
        expected = [str(i) for i in everything if i > cursor]
        assert ids(stream.messages(len(expected), timeout=10)) == expected, f"reader from {cursor}"
    gevent.sleep(0.3)
    for _, stream in streams:
        assert stream.messages(1, timeout=0.01) == []  # nothing twice
        stream.close()


def test_hub_heals_after_repeated_pubsub_kills_without_gap_or_duplicate(alice, app, redis_client):
    stream = LocalStream(alice, "/api/rooms/general/events")
    stream.next_event()
    gevent.sleep(0.2)
    killing = gevent.spawn(kill_pubsub_repeatedly, redis_client)
    sent = []
    while not killing.dead:
        sent.append(str(publish(app, f"m{len(sent)}").id))
        gevent.sleep(0.005)
    sent += [str(publish(app, "after").id)]
    got = stream.messages(len(sent), timeout=15)
    assert ids(got) == sent
    assert stream.messages(1, timeout=0.5) == []
    assert reconnects(app) >= 5
    stream.close()


def test_hub_drops_a_silent_link_and_reconnects(alice, app, redis_client):
    stream = LocalStream(alice, "/api/rooms/general/events")
    stream.next_event()
    gevent.sleep(0.2)
    before = reconnects(app)
    redis_client.execute_command("CLIENT", "PAUSE", "2500", "ALL")
    gevent.sleep(3)
    assert reconnects(app) > before  # pings unanswered for 3 pings of 0.5 s
    sent = publish(app, "after the pause")
    assert ids(stream.messages(1)) == [str(sent.id)]
    stream.close()


def paused_stream(client, url, headers=None):
    """An SSE response whose body is only read when the test asks (a reader that stalls)."""
    response = client.get(url, headers=headers or {}, buffered=False)
    return response, iter(response.response)


@pytest.mark.parametrize("config", [{**GENEROUS_LIMITS, "CHAT_READER_QUEUE": 50}])
def test_slow_reader_queue_is_bounded_and_it_catches_up_in_order(alice, app):
    response, body = paused_stream(alice, "/api/rooms/general/events")
    next(body)  # the preamble; the next step registers the reader
    assert b"event: ready" in next(body)
    registered = gevent.spawn(next, body)
    gevent.sleep(0.2)
    (reader,) = hub_of(app).readers()
    sent, longest = [], 0
    for i in range(5000):
        sent.append(str(publish(app, f"message {i}").id))
        longest = max(longest, len(reader.queued()))
    assert longest <= 50
    parser, got = SSEParser(), []
    chunks = [registered.get()]
    with gevent.Timeout(30):
        while len(got) < 5000:
            for event in parser.feed(chunks.pop() if chunks else next(body)):
                if event.get("event") == "message":
                    got.append(json.loads(event["data"])["id"])
    assert got == sent
    assert catchups(app, "stream") + catchups(app, "ring") >= 10
    response.close()


def stalled_streams(client, app, count):
    """``count`` paused streams that each wrote one message and now wait at a yield,
    as if their sockets were slow: whatever comes next queues up."""
    streams = [paused_stream(client, "/api/rooms/general/events") for _ in range(count)]
    for _, body in streams:
        next(body)  # the preamble
        next(body)  # "ready": registered and subscribed
    waiting = [gevent.spawn(next, body) for _, body in streams]
    gevent.sleep(0.3)
    first = publish(app, "first")
    assert all(g.get(timeout=5) == first.frame for g in waiting)
    return streams


def test_one_encoding_shared_by_all_readers_and_queued_frames_written_in_one_chunk(alice, app):
    streams = stalled_streams(alice, app, 3)
    readers = hub_of(app).readers()
    for i in range(10):
        publish(app, f"m{i}")
    gevent.sleep(0.2)
    queued = [reader.queued() for reader in readers]
    assert len(readers) == 3 and all(len(q) == 10 for q in queued)
    assert all(a is b is c for a, b, c in zip(*queued))  # one Publication for all readers
    frames = [p.frame for p in queued[0]]
    assert all(p.frame is f for p, f in zip(queued[2], frames))  # one encoding
    assert next(streams[0][1]) == b"".join(frames)  # ten frames, one write
    for response, _ in streams:
        response.close()


def test_closed_stream_unregisters_its_reader_at_once(alice, app):
    stream = LocalStream(alice, "/api/rooms/general/events")
    stream.next_event()
    gevent.sleep(0.1)
    assert hub_of(app).reader_count() == 1
    stream.close()
    gevent.sleep(0.05)
    assert hub_of(app).reader_count() == 0


def test_idle_room_is_unsubscribed_after_linger(alice, app, redis_client):
    stream = LocalStream(alice, "/api/rooms/general/events")
    stream.next_event()
    gevent.sleep(0.2)
    assert redis_client.pubsub_numsub("chat:{general}:live")[0][1] == 1
    stream.close()
    eventually(lambda: redis_client.pubsub_numsub("chat:{general}:live")[0][1] == 0, timeout=5, interval=0.1)


def test_hub_reconnects_when_redis_comes_back(alice, app, redis_server):
    stream = LocalStream(alice, "/api/rooms/general/events")
    stream.next_event()
    gevent.sleep(0.2)
    redis_server.stop()
    gevent.sleep(0.5)
    redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    deadline = time.monotonic() + 10
    while client.pubsub_numsub("chat:{general}:live")[0][1] == 0 and time.monotonic() < deadline:
        gevent.sleep(0.1)
    sent = publish(app, "after restart")
    assert ids(stream.messages(1)) == [str(sent.id)]
    stream.close()


def test_first_reader_of_a_fresh_hub_misses_nothing_while_the_hub_connects(alice, app):
    """The reader must wait for the subscription: before it, live messages go nowhere."""
    assert hub_of(app)._pid is None  # nothing has started the hub yet
    seed = publish(app, "seed")
    running = [True]

    def post():
        sent = []
        while running[0]:
            sent.append(publish(app, f"m{len(sent)}"))
        return sent

    poster = gevent.spawn(post)
    gevent.sleep(0.05)
    stream = LocalStream(alice, "/api/rooms/general/events", {"Last-Event-ID": str(seed.id)})
    gevent.sleep(0.3)
    running[0] = False
    expected = [str(p.id) for p in poster.get()]
    assert ids(stream.messages(len(expected), timeout=10)) == expected
    stream.close()


def test_hub_still_reconnects_after_more_kills_than_the_pool_limit(alice, app, redis_client):
    """Regression: each reconnect took a pool slot and never gave it back (limit 100)."""
    stream = LocalStream(alice, "/api/rooms/general/events")
    stream.next_event()
    for _ in range(105):
        while redis_client.pubsub_numsub("chat:{general}:live")[0][1] == 0:
            gevent.sleep(0.01)
        redis_client.client_kill_filter(_type="pubsub")
    sent = publish(app, "after 105 kills")
    assert ids(stream.messages(1, timeout=10)) == [str(sent.id)]
    stream.close()


def test_malformed_publish_on_a_room_channel_does_not_kill_the_listener(alice, app, redis_client):
    """Regression: one bad payload (an operator's test PUBLISH) ended the listener for good."""
    stream = LocalStream(alice, "/api/rooms/general/events")
    stream.next_event()
    gevent.sleep(0.2)
    redis_client.publish("chat:{general}:live", "hello")
    redis_client.publish("chat:control", "not json")
    sent = publish(app, "still delivered")
    assert ids(stream.messages(1)) == [str(sent.id)]
    assert hub_of(app).listening
    stream.close()


def test_link_dropped_by_the_watchdog_is_not_revived_without_subscriptions(alice, app, redis_client):
    """Regression: the watchdog closed the socket but kept the connection, and the next
    SUBSCRIBE write silently reopened it, subscribed to nothing else."""
    stream = LocalStream(alice, "/api/rooms/general/events")
    stream.next_event()
    gevent.sleep(0.2)
    link = hub_of(app).feed.link
    link.drop()
    gevent.sleep(link.ping_secs * 1.5)  # the link watcher notices the "silence"
    AuthActions(other := app.test_client()).register("bob")
    other.post("/api/rooms", json={"name": "other"})
    second = LocalStream(other, "/api/rooms/other/events")
    second.next_event()
    gevent.sleep(0.5)
    a, b = publish(app, "to general"), publish(app, "to other", room="other")
    assert ids(stream.messages(1)) == [str(a.id)]
    assert ids(second.messages(1)) == [str(b.id)]
    stream.close()
    second.close()


@pytest.mark.parametrize("config", [{**GENEROUS_LIMITS, "CHAT_READER_QUEUE": 5}])
def test_readers_that_fall_behind_catch_up_from_the_ring_sharing_objects(alice, app):
    """Readers whose queues overflow catch up from the hub's ring: no XRANGE each (a
    thundering herd at 10k streams), and the catch-up shares one encoding."""
    before = catchups(app, "stream")
    streams = stalled_streams(alice, app, 20)
    sent = [publish(app, f"m{i}") for i in range(100)]  # every queue overflows
    gevent.sleep(0.2)  # the hub has dispatched all of them
    chunks = [next(body) for _, body in streams]
    expected = b"".join(p.frame for p in sent)
    assert all(chunk == expected for chunk in chunks)
    assert catchups(app, "stream") == before
    assert catchups(app, "ring") >= 20
    for response, _ in streams:
        response.close()


def test_a_reconnect_storm_on_a_fresh_hub_catches_up_from_the_ring(alice, app):
    """After a restart every client resumes from a recent cursor in rooms this worker doesn't
    follow yet: the room's first subscription reads its latest messages into the ring, so
    the resumed readers need no XRANGE each, and each gets exactly what followed its cursor."""
    sent = [publish(app, f"m{i}") for i in range(30)]  # nobody reads the room on this worker yet
    stream_before, ring_before = catchups(app, "stream"), catchups(app, "ring")
    streams = [LocalStream(alice, "/api/rooms/general/events", headers={"Last-Event-ID": str(sent[i].id)})
               for i in range(0, 30, 3)]
    for stream, i in zip(streams, range(0, 30, 3)):
        assert [m["id"] for m in stream.messages(29 - i)] == [str(p.id) for p in sent[i + 1:]]
        stream.close()
    assert catchups(app, "stream") == stream_before
    assert catchups(app, "ring") - ring_before == len(streams)


def test_reset_with_a_live_signal_queued_does_not_crash_the_reader(alice, app):
    """Regression: a typing/presence signal (no id) in the queue made the reset path
    compare None with a stream id (TypeError: the stream died, a long-poll got a 500)."""
    from chatapp.core.publication import Signal
    from chatapp.delivery.reader import ReaderReset

    broker = services_of(app).broker
    broker.maxlen = 10
    first = publish(app, "first")
    for i in range(300):
        publish(app, str(i))
    reader = hub_of(app).reader("general", "alice")
    reader.open(cursor=first.id)
    typing = Signal(b'{"type":"typing","room":"general","user":"bob"}')
    reader.offer(typing)
    try:
        reader.next_batch(0)
        raise AssertionError("expected a reset")
    except ReaderReset:
        pass
    assert reader.next_batch(0) == [typing]
    hub_of(app).detach(reader)


@pytest.mark.parametrize("config", [{**GENEROUS_LIMITS, "CHAT_HUB_RING": 0}])
def test_a_hub_without_a_ring_still_subscribes_rooms(alice, app):
    """Regression (review): the ring's prefill asked Redis for 0 entries, which redis-py
    refuses: every first subscription failed, the link reconnected in a loop."""
    sent = publish(app, "before")
    stream = LocalStream(alice, "/api/rooms/general/events", headers={"Last-Event-ID": "0"})
    assert [m["id"] for m in stream.messages(1)] == [str(sent.id)]
    later = publish(app, "after")
    assert [m["id"] for m in stream.messages(1)] == [str(later.id)]
    stream.close()


def test_a_start_that_fails_while_its_head_waits_still_sends_the_head_first(alice, app, monkeypatch):
    """Regression (review): a stream opening in a followed room keeps its head to send it with
    the rest of its start; when the first catch-up failed (Redis down), the farewell went out
    alone, a chunk with no status line (nginx: 502, and EventSource gives up for good)."""
    follower = LocalStream(alice, "/api/rooms/general/events")
    follower.next_event()
    follower.next_event()  # "ready": the worker follows the room
    hub = hub_of(app)

    def down(*args, **kwargs):
        raise redis.ConnectionError("Redis went away")
    monkeypatch.setattr(hub.feed.broker, "catch_up", down)  # the new stream's first catch-up reads Redis
    ours, theirs = _socket.socketpair()
    ours.setblocking(False)
    with app.test_request_context():
        reader = hub.reader("general", "alice")
        member = services_of(app).presence.member("alice")
        stream = EventStream(reader, member, StreamId(1, 0), 0, app.config, metrics=services_of(app).metrics)
        stream.take_over(ours, b"HTTP/1.1 200 OK\r\n\r\n")
    theirs.settimeout(5)
    received = theirs.recv(65536)
    assert received.startswith(b"HTTP/1.1 200 OK\r\n\r\n")
    assert b"event: retry" in received  # then the farewell, in its chunk
    theirs.close()
    follower.close()
