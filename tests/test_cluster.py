"""Behaviour across real gunicorn gevent workers sharing one Redis."""

import os
import subprocess

import gevent
import psutil
import pytest
import redis

from tests.helpers import (
    GENEROUS_LIMITS,
    PASSWORD,
    Api,
    ResumingReader,
    all_ids,
    assert_exactly_once_in_order,
    eventually,
    gunicorn_with_redis,
    kill_pubsub_repeatedly,
    parse_id,
    unique,
)

pytestmark = pytest.mark.gunicorn


def post(api, room, text, **extra):
    response = api.post(f"/api/rooms/{room}/messages", {"text": text, **extra})
    assert response.status == 201, response.body
    return response


def readers_on_both_workers(user, room, server, want=2, most=40, **kw):
    """Open resuming readers until the two workers each hold at least one, and wait until
    every one is subscribed: a reader without a cursor starts at "now", which is only
    defined once its stream says "ready"."""
    readers = []
    while len(readers) < most:
        readers.append(ResumingReader(user, room, **kw))
        gevent.sleep(0.05)
        pids = set().union(*(r.pids for r in readers))
        if len(pids) >= want and len(readers) >= 4:
            eventually(lambda: all(r.ready for r in readers), timeout=10, interval=0.02, what="every stream said ready")
            return readers
    raise AssertionError(f"streams landed on {pids} only")


def posts_on_both_workers(user, room, count):
    """Post ``count`` messages, a few at a time so both workers take some; ids in stream order."""
    responses = []
    for i in range(0, count, 4):
        batch = [gevent.spawn(post, user, room, f"m{j}") for j in range(i, min(i + 4, count))]
        responses += [g.get() for g in batch]
    assert len({r.pid for r in responses}) == 2, "posts all went to one worker"
    return sorted((r.json["id"] for r in responses), key=parse_id)


def test_post_on_one_worker_reaches_readers_on_the_other(server, user, room):
    readers = readers_on_both_workers(user, room, server)
    gevent.sleep(0.3)
    sent = posts_on_both_workers(user, room, 20)
    for reader in readers:
        reader.wait_for(sent[-1], timeout=10)
        assert_exactly_once_in_order(reader.ids, sent)
        reader.stop()


def test_resume_with_last_event_id_and_poll_cursor_across_workers(server, user, room):
    sent = [post(user, room, f"m{i}").json["id"] for i in range(10)]
    pids = set()
    for _ in range(6):  # several connections: both workers must answer the same way
        stream = user.stream(f"/api/rooms/{room}/events", {"Last-Event-ID": sent[4]})
        pids.add(stream.pid)
        got = stream.messages_until(lambda m: len(m) == 5, timeout=10)
        stream.close()
        assert [m["id"] for m in got] == sent[5:]
        polled = user.get(f"/api/rooms/{room}/poll?cursor={sent[6]}&timeout=5")
        pids.add(polled.pid)
        assert [m["id"] for m in polled.json["messages"]] == sent[7:]
        assert polled.json["cursor"] == sent[-1]
    assert len(pids) == 2


def test_race_50_readers_join_with_old_cursors_during_500_concurrent_posts(server, user, room):
    seed = [post(user, room, f"seed{i}").json["id"] for i in range(20)]
    acked = []

    def poster(n):
        for i in range(n):
            acked.append(post(user, room, f"p{i}").json["id"])

    posters = [gevent.spawn(poster, 100) for _ in range(5)]
    readers = []
    for i in range(50):
        readers.append(ResumingReader(user, room, last_id=seed[i % len(seed)]))
        gevent.sleep(0.01)
    gevent.joinall(posters, raise_error=True)
    stored = all_ids(user, room)
    assert len(acked) == 500 and set(acked) <= set(stored)
    assert len({pid for r in readers for pid in r.pids}) == 2
    for i, reader in enumerate(readers):
        start = seed[i % len(seed)]
        expected = stored[stored.index(start) + 1:]
        reader.wait_for(stored[-1], timeout=20)
        assert_exactly_once_in_order(reader.ids, expected, f"reader {i}")
        reader.stop()


def test_pubsub_cut_during_a_burst_loses_and_repeats_nothing(server, cluster_redis, user, room):
    readers = readers_on_both_workers(user, room, server)
    gevent.sleep(0.3)
    killing = gevent.spawn(kill_pubsub_repeatedly, redis.Redis.from_url(cluster_redis.url))
    sent = []
    while not killing.dead or len(sent) < 100:
        sent.append(post(user, room, f"m{len(sent)}").json["id"])
    for reader in readers:
        reader.wait_for(sent[-1], timeout=15)
        assert_exactly_once_in_order(reader.ids, sent)
        reader.stop()


def test_curl_streams_and_posts(server, user, room):
    auth = f"{user.auth_user}:{PASSWORD}"
    stream = subprocess.Popen(["curl", "-sN", "-u", auth, f"{server.url}/api/rooms/{room}/events"],
                              stdout=subprocess.PIPE, text=True)
    gevent.sleep(0.5)
    sent = subprocess.run(["curl", "-sf", "-u", auth, "-d", "text=hello from curl",
                           f"{server.url}/api/rooms/{room}/messages"],
                          capture_output=True, text=True, check=True)
    assert '"text":"hello from curl"' in sent.stdout
    lines = []
    with gevent.Timeout(10):
        while not any("hello from curl" in line for line in lines):
            lines.append(stream.stdout.readline())
    stream.terminate()
    assert lines[0].startswith(": stream open")
    assert any(line.startswith("event: message") for line in lines)


@pytest.fixture
def own_server(tmp_path):
    """A gunicorn and Redis of this test's own, for tests that restart Redis."""
    with gunicorn_with_redis(tmp_path, env={"CHAT_HEARTBEAT_SECS": "1", **GENEROUS_LIMITS}) as pair:
        yield pair


def test_redis_restart_loses_no_acknowledged_message_and_readers_resume(own_server):
    server, store = own_server
    name = unique("u")
    Api(server.url).post("/api/auth/register", {"username": name, "password": PASSWORD})
    user = Api(server.url, name, PASSWORD)
    readers = readers_on_both_workers(user, "general", server)
    gevent.sleep(0.3)
    acked, refused = [], 0

    def poster():
        nonlocal refused
        for i in range(300):
            response = user.post("/api/rooms/general/messages", {"text": f"m{i}"})
            if response.status == 201:
                acked.append(response.json["id"])
            else:
                assert response.status == 503 and response.json["error"] == "store_unavailable"
                refused += 1
            gevent.sleep(0.01)

    posting = gevent.spawn(poster)
    gevent.sleep(0.5)
    store.stop()  # SIGTERM: Redis fsyncs its AOF and exits
    gevent.sleep(1)
    store.start()
    posting.get()
    assert refused > 0, "the restart happened outside the posting window"
    stored = all_ids(user, "general")
    assert stored == acked  # every 201 survived the restart, nothing else was written
    for reader in readers:
        reader.wait_for(acked[-1], timeout=20)
        assert_exactly_once_in_order(reader.ids, acked)
        reader.stop()


def test_slow_reader_costs_bounded_memory_and_gets_everything(server, user, room):
    """A reader that stops reading while 5,000 messages pass; the worker's RSS is measured."""
    stream = user.stream(f"/api/rooms/{room}/events")
    stream.response.read1(100)  # the preamble; from here on this reader reads nothing
    worker = psutil.Process(stream.pid)
    gevent.sleep(0.3)
    rss_before = worker.memory_info().rss
    text = "x" * 2000
    sent = []
    for i in range(5000):
        sent.append(post(user, room, f"{i} {text}").json["id"])
    rss_after = worker.memory_info().rss
    growth_mib = (rss_after - rss_before) / 2**20
    print(f"\nslow reader: worker RSS {rss_before / 2**20:.1f} -> {rss_after / 2**20:.1f} MiB "
          f"(+{growth_mib:.1f} MiB) while 5000 messages of 2 KB ({5000 * 2 / 1024:.1f} MiB) went by")
    assert growth_mib < 8, f"worker grew {growth_mib:.1f} MiB for a reader that reads nothing"
    got = stream.messages_until(lambda m: len(m) == len(sent), timeout=60)
    stream.close()
    assert_exactly_once_in_order([m["id"] for m in got], sent)


def test_both_workers_answer_healthz_with_their_pid(server):
    api = Api(server.url)
    pids = {api.get("/healthz").json["pid"] for _ in range(30)}
    assert pids <= set(server.worker_pids()) and os.getpid() not in pids
