"""The seeds' deployment under real faults: nginx in front of 2 instances x 2 gevent
workers sharing one Redis (AOF). Readers resume by cursor like browsers; posters
retry with idempotency keys. Nothing acknowledged may be lost, nothing delivered
twice or out of order."""

import os
import re

import gevent
import pytest
import redis

from deploy.cluster import Cluster
from deploy.launch import free_port
from tests.helpers import (
    GENEROUS_LIMITS,
    PASSWORD,
    Api,
    PollReader,
    Poster,
    ResumingReader,
    all_ids,
    assert_exactly_once_in_order,
    parse_id,
    unique,
)

pytestmark = [pytest.mark.faults, pytest.mark.nginx, pytest.mark.gunicorn]

ROOMS = 3
SSE_READERS_PER_ROOM = 47
POLL_READERS_PER_ROOM = 20  # 3 x (47 + 20) = 201 readers
POSTERS_PER_ROOM = 2


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    env = {**GENEROUS_LIMITS, "CHAT_HEARTBEAT_SECS": "2", "CHAT_RETRY_MS": "300", "CHAT_ACCESS_LOG": "0"}
    cluster = Cluster(tmp_path_factory.mktemp("cluster"), port=free_port(),
                      instance_ports=(free_port(), free_port()), workers=2, env=env)
    cluster.start()
    yield cluster
    cluster.stop()


def test_nothing_is_lost_duplicated_or_reordered_under_faults(cluster):
    name = unique("f")
    Api(cluster.url).post("/api/auth/register", {"username": name, "password": PASSWORD})
    api = Api(cluster.url, name, PASSWORD)
    rooms = [unique("room") for _ in range(ROOMS)]
    for room in rooms:
        api.post("/api/rooms", {"name": room})
        for i in range(5):
            api.post(f"/api/rooms/{room}/messages", {"text": f"seed {i}"})
    start = {room: all_ids(api, room)[-1] for room in rooms}
    sse = [ResumingReader(api, room, last_id=start[room], retry_secs=0.3)
           for room in rooms for _ in range(SSE_READERS_PER_ROOM)]
    polls = [PollReader(api, room, start[room]) for room in rooms for _ in range(POLL_READERS_PER_ROOM)]
    readers = sse + polls
    gevent.sleep(2)
    posters = [Poster([api], room, f"{room}-p{i}", max_delay=1.0)
               for room in rooms for i in range(POSTERS_PER_ROOM)]
    control = redis.Redis.from_url(cluster.redis.url)
    first, second = cluster.instances
    faults = []

    def fault(label, action, settle=3):
        action()
        faults.append(label)
        gevent.sleep(settle)

    gevent.sleep(2)
    fault("SIGKILL one worker", lambda: os.kill(first.worker_pids()[0], 9))
    fault("SIGTERM instance 2 and start it again", lambda: (second.stop(), second.start()))
    fault("SIGKILL instance 1 (master and workers) and start it again", lambda: (first.kill(), first.start()))
    fault("CLIENT KILL TYPE pubsub", lambda: control.client_kill_filter(_type="pubsub"))
    fault("restart Redis (AOF)", lambda: (cluster.redis.stop(), cluster.redis.start()))
    fault("freeze one reader for 30 s", lambda: sse[0].freeze(30), settle=31)
    fault("drop 100 readers at once (reconnect storm)", lambda: [r.drop() for r in sse[:100]], settle=4)

    for poster in posters:
        poster.stop()
    acked = {room: [i for p in posters if p.room == room for i in p.acked.values()] for room in rooms}
    stored = {room: all_ids(api, room) for room in rooms}
    for room in rooms:
        missing = set(acked[room]) - set(stored[room])
        assert not missing, f"{len(missing)} acknowledged messages are not in {room}: {sorted(missing)[:5]}"
    deliveries = 0
    for i, reader in enumerate(readers):
        expected = [x for x in stored[reader.room] if parse_id(x) > parse_id(reader.first_id)]
        reader.wait_for(expected[-1], timeout=60)
        gevent.sleep(0)
        assert_exactly_once_in_order(reader.ids, expected, f"reader {i} ({type(reader).__name__})")
        deliveries += len(reader.ids)
    for reader in readers:
        reader.stop()
    total_acked = sum(len(a) for a in acked.values())
    print(f"\nfault suite: {len(readers)} readers ({len(sse)} SSE, {len(polls)} long-poll) in {ROOMS} rooms; "
          f"{total_acked} messages acknowledged ({sum(len(p.failures()) for p in posters)} retried posts); "
          f"{deliveries} deliveries checked; {len(faults)} faults injected:\n  - " + "\n  - ".join(faults))
    assert len(readers) >= 200 and len(faults) == 7


def test_sigterm_ends_streams_promptly_and_a_rolling_restart_loses_nothing(cluster):
    name = unique("r")
    Api(cluster.url).post("/api/auth/register", {"username": name, "password": PASSWORD})
    api = Api(cluster.url, name, PASSWORD)
    room = unique("roll")
    api.post("/api/rooms", {"name": room})
    first_id = api.post(f"/api/rooms/{room}/messages", {"text": "start"}).json["id"]
    logs = [cluster.data_dir / f"gunicorn-{instance.port}.log" for instance in cluster.instances]
    log_sizes = [log.stat().st_size for log in logs]  # judge only what this test makes them write
    readers = [ResumingReader(api, room, last_id=first_id, retry_secs=0.3) for _ in range(20)]
    gevent.sleep(1)
    poster = Poster([api], room, f"{room}-p", max_delay=1.0)
    stop_times = []
    for instance in cluster.instances:
        gevent.sleep(1.5)
        stop_times.append(instance.stop())  # SIGTERM: streams end, clients resume on the other instance
        instance.start()
    gevent.sleep(1.5)
    poster.stop()
    stored = all_ids(api, room)
    assert set(poster.acked.values()) <= set(stored)
    for reader in readers:
        reader.wait_for(stored[-1], timeout=30)
        assert_exactly_once_in_order(reader.ids, stored[1:])
        reader.stop()
    print(f"\nrolling restart: SIGTERM stop took {', '.join(f'{t:.1f}s' for t in stop_times)}; "
          f"{len(poster.acked)} messages, {len(readers)} readers, nothing lost")
    assert max(stop_times) < 8, "an instance with open streams hung on SIGTERM"
    for log, size in zip(logs, log_sizes):
        with log.open() as lines:
            lines.seek(size)
            noise = [line for line in lines if re.search(r"Traceback|ERROR|CRITICAL|WARNING|timeout", line)]
        assert not noise, noise[:5]


def test_client_address_comes_from_nginx_and_metrics_stay_private(cluster):
    response = Api(cluster.url).get("/metrics")
    assert response.status == 404  # nginx doesn't expose it
    instance = Api(f"http://127.0.0.1:{cluster.instances[0].port}")
    for _ in range(4):  # both workers answer something
        instance.get("/healthz")
    metrics = instance.get("/metrics")
    assert metrics.status == 200
    text = metrics.body.decode()
    for name in ["chat_streams_open", "chat_polls_open", "chat_messages_accepted_total",
                 "chat_messages_delivered_total", "chat_reader_catchups_total", "chat_hub_reconnects_total",
                 "chat_redis_errors_total", "chat_request_seconds_bucket"]:
        assert name in text, name
    spoofed = Api(f"http://127.0.0.1:{cluster.instances[0].port}").get(
        "/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
    assert spoofed.status == 403  # one trusted hop: the forged address is the client's, and refused


def test_metrics_sum_the_workers_of_an_instance(cluster):
    name = unique("m")
    Api(cluster.url).post("/api/auth/register", {"username": name, "password": PASSWORD})
    port = cluster.instances[1].port
    user = Api(f"http://127.0.0.1:{port}", name, PASSWORD)
    streams = []
    while len({s.pid for s in streams}) < 2 and len(streams) < 30:
        streams.append(user.stream("/api/rooms/general/events"))
    gevent.sleep(0.5)
    text = Api(f"http://127.0.0.1:{port}").get("/metrics").body.decode()
    open_now = float(re.search(r"^chat_streams_open (\S+)$", text, re.M)[1])
    assert open_now == len(streams), "one worker's /metrics must count the other worker's streams too"
    for stream in streams:
        stream.close()
