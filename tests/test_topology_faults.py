"""The fault suites of issue 14: Redis failovers under load, through real gunicorn instances.

* Sentinel: a primary, 2 replicas and 3 sentinels; 2 instances x 2 workers with replica
  acknowledgement (a 201 means "on a replica too", invariant 11). The primary is SIGKILLed
  mid-run, later the primary it failed over to, then both come back as replicas.
* Cluster: 3 primaries + 3 replicas; rooms on every shard. One shard's primary is SIGKILLed,
  then a busy room's slot moves to another primary while it is written and read.

Readers resume by cursor like browsers (per-room SSE, long-poll, multiplexed SSE), posters
retry each message with its Idempotency-Key on anything but a 201, switching instance every
attempt. At the end: every acknowledged message is in its room's log exactly once, every
reader got the log after its start exactly once and in order (so no id the log lacks), nobody
got a reset; on the Cluster the rooms of the other shards were not interrupted at all. The
totals and each outage (from the first failed POST to the next 201) are printed (``pytest -s``).
"""

import itertools
import re
import time
from collections import Counter

import gevent
import pytest
from redis.crc import key_slot

from deploy.launch import Gunicorn
from tests.helpers import (
    GENEROUS_LIMITS,
    PASSWORD,
    Api,
    MultiplexReader,
    PollReader,
    Poster,
    ResumingReader,
    account,
    assert_exactly_once_in_order,
    eventually,
    parse_id,
    unique,
)

pytestmark = [pytest.mark.faults, pytest.mark.topology, pytest.mark.gunicorn]

ENV = {**GENEROUS_LIMITS, "CHAT_HEARTBEAT_SECS": "2", "CHAT_RETRY_MS": "300", "CHAT_ACCESS_LOG": "0"}
REPLICA_ACKS = {"CHAT_DURABILITY": "replicas", "CHAT_DURABILITY_REPLICAS": "1", "CHAT_DURABILITY_TIMEOUT_MS": "1000"}
SEEDS = 3  # messages in each room before the readers start: cursored readers start after them
STEADY_SECS = 10  # of normal traffic before, between and after the faults


def outage(posters, since, until=float("inf")):
    """How long POSTs were unavailable after ``since``: from the first POST that failed at or after it
    to the next 201 anyone got, as the posters saw it: (seconds, the failures' codes); (0.0, {}) if
    nothing failed."""
    attempts = [a for p in posters for a in p.attempts if since <= a.end <= until]
    failed = [a for a in attempts if a.status != 201]
    if not failed:
        return 0.0, Counter()
    first = min(a.end for a in failed)
    back = min((a.end for p in posters for a in p.attempts if a.status == 201 and a.end > first),
               default=float("nan"))
    return back - first, Counter(a.code for a in failed)


def room_log(api, room):
    """The room's whole log through the API, oldest first: [(id, text)]."""
    found, cursor = [], "0"
    while True:
        page = api.get(f"/api/rooms/{room}/messages?after={cursor}&limit=200").json
        found += [(m["id"], m["text"]) for m in page["messages"]]
        if not page["more"]:
            return found
        cursor = found[-1][0]


def after(ids, cursor):
    return [i for i in ids if parse_id(i) > parse_id(cursor)]


class Traffic:
    """The rooms, readers and posters of one run, and the checks at its end."""

    def __init__(self, instances, user, rooms, *, sse_per_room, polls_per_room, multiplexed, posters_per_room,
                 pause):
        self.user = user
        self.rooms = rooms
        self.apis = [Api(instance.url, user.auth_user, PASSWORD) for instance in instances]
        spread = itertools.cycle(self.apis)
        owner = account(instances[0])  # creates the rooms: ``user`` only joins, reads and posts
        for room in rooms:
            assert owner.post("/api/rooms", {"name": room}).status == 201
            assert user.post(f"/api/rooms/{room}/join").status == 200
            for i in range(SEEDS):
                assert owner.post(f"/api/rooms/{room}/messages", {"text": f"seed {i}"}).status == 201
        self.start = {room: room_log(user, room)[-1][0] for room in rooms}
        # Half the per-room streams resume from the last seed, half start at "now" (no cursor):
        # all are ready before the first post, so both kinds must get everything after the seeds.
        self.sse = [ResumingReader(next(spread), room, last_id=self.start[room] if i % 2 else None, retry_secs=0.3)
                    for room in rooms for i in range(sse_per_room)]
        self.polls = [PollReader(next(spread), room, self.start[room], timeout=5)
                      for room in rooms for _ in range(polls_per_room)]
        query = "rooms=" + ",".join(rooms)
        self.muxes = [MultiplexReader(next(spread), query, retry_secs=0.3) for _ in range(multiplexed)]
        eventually(lambda: all(r.ready for r in self.sse + self.muxes), 60, what="every stream ready")
        self.posters = [Poster(self.apis[i % len(self.apis):] + self.apis[:i % len(self.apis)], room,
                               f"{room}-p{i}", pause)
                        for room in rooms for i in range(posters_per_room)]

    @property
    def reader_count(self):
        return len(self.sse) + len(self.polls) + len(self.muxes)

    def posters_of(self, rooms):
        return [p for p in self.posters if p.room in rooms]

    def wait_posts_succeed(self, rooms, since, timeout=60):
        """Until every poster of ``rooms`` got a 201 for a POST started after ``since``; the moment,
        or None if one didn't within ``timeout``."""
        posters = self.posters_of(rooms)
        deadline = time.monotonic() + timeout
        while not all(p.succeeded_since(since) for p in posters):
            if time.monotonic() > deadline:
                return None
            gevent.sleep(0.05)
        return time.monotonic()

    def check(self, timeout=60):
        """Stop posting, wait for the readers (up to ``timeout`` in all) and check everything.
        Returns (acknowledged, deliveries checked, problems): the totals print before any assertion."""
        for poster in self.posters:
            poster.stop()
        logs = {room: room_log(self.user, room) for room in self.rooms}
        acknowledged, problems = self._check_logs(logs)
        expected = {room: after([i for i, _ in logs[room]], self.start[room]) for room in self.rooms}
        received = [(f"{type(r).__name__} {n} of {r.room} on :{r.api.port} {sorted(getattr(r, 'pids', []))}, "
                     f"started {'after ' + r.first_id if r.first_id else 'without a cursor'}", r.room, r.ids,
                     lambda r=r: r.resets)
                    for n, r in enumerate(self.sse + self.polls)]
        received += [(f"MultiplexReader {n} on :{m.api.port} {sorted(m.pids)}, room {room}", room,
                      m.received.setdefault(room, []),
                      lambda m=m, room=room: sum(reset.get("room") == room for reset in m.resets))
                     for n, m in enumerate(self.muxes) for room in self.rooms]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(
                ids and parse_id(ids[-1]) >= parse_id(expected[room][-1]) for _, room, ids, _ in received):
            gevent.sleep(0.1)
        gevent.sleep(0.5)  # anything duplicated after the last id has arrived too
        for reader in self.sse + self.polls + self.muxes:
            reader.stop()
        for who, room, ids, resets in received:
            foreign = set(ids) - {i for i, _ in logs[room]}
            if foreign:
                problems.append(f"{who} received ids the final log lacks: {sorted(foreign)[:5]}")
            try:
                assert_exactly_once_in_order(ids, expected[room], who)
            except AssertionError as mismatch:
                problems.append(f"{mismatch} (last received {ids[-1] if ids else None}, "
                                f"log ends at {expected[room][-1]})")
            if resets():
                problems.append(f"{who} got {resets()} resets")
        return acknowledged, sum(len(ids) for _, _, ids, _ in received), problems

    def _check_logs(self, logs):
        """Every 201 is in its room's log exactly once, and the log holds nothing else."""
        problems = [f"poster {p.name} still had no 201 for its message after 60 s" for p in self.posters if not p.done]
        acknowledged = 0
        for room in self.rooms:
            ids = {i for i, _ in logs[room]}
            texts = Counter(text for _, text in logs[room])
            posted = {key: i for p in self.posters_of([room]) for key, i in p.acked.items()}
            acknowledged += len(posted)
            lost = [(key, i) for key, i in posted.items() if i not in ids]
            if lost:
                problems.append(f"{len(lost)} acknowledged messages of {room} are not in its log: {lost[:5]}")
            twice = [key for key in posted if texts[key] > 1]
            if twice:
                problems.append(f"messages of {room} stored {[texts[k] for k in twice[:5]]} times: {twice[:5]}")
            # A poster stops only between messages: whatever it posted got its 201.
            strays = [text for _, text in logs[room][SEEDS:] if text not in posted]
            if strays:
                problems.append(f"{room}: messages in the log no poster got a 201 for: {strays[:5]}")
        return acknowledged, problems

    def summary(self):
        reconnects = sum(r.connects - 1 for r in self.sse + self.muxes)
        retried = sum(1 for p in self.posters for a in p.attempts if a.status != 201)
        return (f"{self.reader_count} readers ({len(self.sse)} per-room SSE, {len(self.polls)} long-poll, "
                f"{len(self.muxes)} multiplexed SSE) in {len(self.rooms)} rooms, {len(self.posters)} posters; "
                f"{retried} failed POST attempts retried; {reconnects} stream reconnects")

    def stop(self):
        for poster in self.posters:
            poster.running = False
        for reader in self.sse + self.polls + self.muxes:
            reader.stop()


def log_noise(instances):
    """What the instances logged as errors, counted by kind (evidence when a check fails)."""
    kinds = Counter()
    for instance in instances:
        for line in instance.log:
            if " ERROR " in line or " CRITICAL " in line:
                kinds[re.sub(r"pid=\d+", "pid=N", re.sub(r"^.* (ERROR|CRITICAL) pid=\d+ ", "", line.strip()))] += 1
            elif re.match(r"^[\w.]+(Error|Exception): ", line):
                kinds["  raised " + line.strip()[:160]] += 1
    if not kinds:
        return "no errors in the gunicorn logs"
    return "errors in the gunicorn logs:\n" + "\n".join(f"    {n:5d} x {kind}" for kind, n in kinds.most_common(8))


def seconds(value):
    return f"{value:.1f} s" if value is not None else "never (60 s)"


# -- Sentinel ------------------------------------------------------------------------

def sentinel_healthy(sentinel_set):
    """Every data node and sentinel running, the sentinels agreeing, the replicas caught up."""
    for node in sentinel_set.sentinels:
        if not node.alive:
            sentinel_set.restart(node)
    for node in sentinel_set.nodes:
        if not node.alive:
            sentinel_set.restart(node)
    sentinel_set.wait_sentinels_agree()
    sentinel_set.wait_replicated()


def replica_ack_instances(redis_url, tmp_path):
    """Two gunicorn instances of 2 workers whose 201 means "on a replica too" (not started yet)."""
    return [Gunicorn(redis_url, workers=2, env={**ENV, **REPLICA_ACKS}, log_path=tmp_path / f"gunicorn-{i}.log")
            for i in range(2)]


def test_sentinel_failovers_lose_nothing_acknowledged_and_readers_never_see_a_message_taken_back(
        sentinel_set, tmp_path):
    sentinel_healthy(sentinel_set)
    instances = replica_ack_instances(sentinel_set.url, tmp_path)
    traffic = None
    try:
        for instance in instances:
            instance.start()
        user = account(instances[0])
        rooms = [unique("sf") for _ in range(3)]
        traffic = Traffic(instances, user, rooms, sse_per_room=30, polls_per_room=5, multiplexed=2,
                          posters_per_room=2, pause=0.1)
        started = time.monotonic()
        gevent.sleep(STEADY_SECS)

        # 1. SIGKILL the primary: the sentinels promote a replica (the other follows it).
        first_kill = time.monotonic()
        first = sentinel_set.kill_primary()
        promoted = sentinel_set.wait_failover(first)
        first_promoted = time.monotonic() - first_kill
        first_back = traffic.wait_posts_succeed(rooms, first_kill)
        gevent.sleep(STEADY_SECS)

        # 2. SIGKILL the new primary: the last replica is promoted, alone (no replica can
        #    acknowledge: POSTs are 503 not_replicated) until the old primaries come back as replicas.
        second_kill = time.monotonic()
        second = sentinel_set.kill_primary()
        assert second is promoted
        last = sentinel_set.wait_failover(second)
        second_promoted = time.monotonic() - second_kill
        sentinel_set.restart(first)
        replica_back = time.monotonic() - second_kill
        sentinel_set.restart(second)
        sentinel_set.wait_replicated()
        second_back = traffic.wait_posts_succeed(rooms, second_kill)
        gevent.sleep(STEADY_SECS)

        acknowledged, deliveries, problems = traffic.check()
        ran = time.monotonic() - started
        down = [outage(traffic.posters, first_kill, second_kill), outage(traffic.posters, second_kill)]
        print(f"\nsentinel fault suite ({ran:.0f} s of traffic; primary {first.name} -> {promoted.name} -> "
              f"{last.name}; 201 = on 1 of 2 replicas): {traffic.summary()}\n"
              f"  {acknowledged} messages acknowledged; {deliveries} deliveries checked; "
              f"{len(problems)} problems (loss, duplicate, order, foreign id, reset, stall)\n"
              f"  failover 1: promoted {first_promoted:.1f} s after the SIGKILL; POSTs unavailable "
              f"{down[0][0]:.1f} s (first failure to next 201); a 201 in every room "
              f"{seconds(first_back and first_back - first_kill)} after the kill; failures {dict(down[0][1])}\n"
              f"  failover 2: promoted {second_promoted:.1f} s after the SIGKILL, a replica following it "
              f"{replica_back:.1f} s after; POSTs unavailable {down[1][0]:.1f} s; a 201 in every room "
              f"{seconds(second_back and second_back - second_kill)} after the kill; failures {dict(down[1][1])}\n"
              f"  {log_noise(instances)}")
        assert not problems, "\n".join(problems[:15])
        assert first_back and second_back
        assert traffic.reader_count >= 100
    finally:
        if traffic is not None:
            traffic.stop()
        for instance in instances:
            instance.stop()
        sentinel_healthy(sentinel_set)


# -- Cluster -------------------------------------------------------------------------

def rooms_per_shard(cluster_set, count):
    """{primary: [room, ...]}: ``count`` new room names whose keys (one {room} hash tag) each shard serves."""
    owners = {}
    for primary in cluster_set.primaries():
        for start, end in cluster_set.slots_of(primary):
            owners[(start, end)] = primary
    found = {primary: [] for primary in owners.values()}
    while any(len(rooms) < count for rooms in found.values()):
        room = unique("cf")
        slot = key_slot(f"chat:{{{room}}}:log".encode())
        primary = next(p for (start, end), p in owners.items() if start <= slot <= end)
        if len(found[primary]) < count:
            found[primary].append(room)
    return found


def user_keys_avoid(cluster_set, server, avoid, messages_window_on=None):
    """An account whose own keys ({user:<name>}, its rate-limit windows) no slot of ``avoid`` holds:
    it must not lose its sign-in when that shard fails. With ``messages_window_on``, its message
    rate-limit window is on that shard instead (the window is per-user state, not identity: its
    shard's loss must not refuse the user's POSTs to other shards' rooms)."""
    slots = {slot for start, end in cluster_set.slots_of(avoid) for slot in range(start, end + 1)}
    window_slots = slots if messages_window_on is avoid else None
    limits = [f"LIMITER/{setting}/{key}/{GENEROUS_LIMITS[setting].split()[0]}/1/minute"
              for setting, key in (("CHAT_RATE_MESSAGES", "{}"), ("CHAT_RATE_STREAMS", "{}"),
                                   ("CHAT_RATE_MEMBERSHIP", "{}"), ("CHAT_RATE_LOGIN_USER", "login:{}"))]
    while True:
        name = unique("cu")
        tags = [f"user:{name}", *(limit.format(name) for limit in limits)]
        sign_in = {key_slot(tags[0].encode()), key_slot(tags[4].encode())}
        if window_slots is None:
            if not {key_slot(tag.encode()) for tag in tags} & slots:
                return account(server, name)
        elif key_slot(tags[1].encode()) in window_slots and not sign_in & slots:
            return account(server, name)  # sign-in keys elsewhere, the message window on the shard


def keys_on(node, pattern):
    """Keys matching ``pattern`` that ``node`` holds."""
    return list(node.client().scan_iter(match=pattern, count=1000))


def warm_rooms(instances, user, rooms):
    """Every worker of every instance has looked each room up once (the room index is cached
    per worker: afterwards nothing of a room's traffic needs the shard holding the index)."""
    for instance in instances:
        api = Api(instance.url, user.auth_user, PASSWORD)
        for room in rooms:
            pids = set()
            for _ in range(200):
                pids.add(api.get(f"/api/rooms/{room}/messages?limit=1").pid)
                if len(pids) == instance.workers:
                    break
            assert len(pids) == instance.workers, f"{room} reached only workers {pids} of {instance.url}"


def fail_a_shard(cluster_set, traffic, doomed_rooms, other_rooms):
    """SIGKILL the primary serving ``doomed_rooms``, wait for its replica to take over, restart it (it
    rejoins as a replica: until then nothing there can be acknowledged) and wait for a 201 in each of
    those rooms. Measures what the rooms of the other shards saw meanwhile."""
    connects = {id(r): r.connects for r in traffic.sse}
    slot = key_slot(f"chat:{{{doomed_rooms[0]}}}:log".encode())
    kill, at_ms = time.monotonic(), int(time.time() * 1000)
    old = cluster_set.kill_primary_of(slot)
    new = cluster_set.wait_failover(slot, old)
    promoted = time.monotonic() - kill
    cluster_set.restart(old)
    rejoined = time.monotonic() - kill
    back = traffic.wait_posts_succeed(doomed_rooms, kill)
    end = time.monotonic()
    down, failures = outage(traffic.posters_of(doomed_rooms), kill)
    bystanders = [r for r in traffic.sse if r.room in other_rooms]
    return {"old": old, "new": new, "promoted": promoted, "rejoined": rejoined, "at_ms": at_ms,
            "back": back and back - kill, "down": down, "failures": dict(failures),
            "other_failures": dict(Counter(a.code for p in traffic.posters_of(other_rooms)
                                           for a in p.failures(kill, end))),
            "reconnected": sorted({r.room for r in bystanders if r.connects != connects[id(r)]}),
            "reconnects": sum(r.connects - connects[id(r)] for r in bystanders)}


def move_a_room(cluster_set, traffic, room, target):
    """Move ``room``'s slot to the primary ``target`` while it is written and read (MIGRATE, then
    SETSLOT NODE everywhere), and wait for its next 201."""
    connects = {id(r): r.connects for r in traffic.sse if r.room == room}
    slot = key_slot(f"chat:{{{room}}}:log".encode())
    start, at_ms = time.monotonic(), int(time.time() * 1000)
    keys = cluster_set.migrate_slot(slot, target)
    moved = time.monotonic()
    assert cluster_set.node_for_key(f"chat:{{{room}}}:log") is target
    back = traffic.wait_posts_succeed([room], moved)
    down, failures = outage(traffic.posters_of([room]), start)
    return {"keys": keys, "took": moved - start, "at_ms": at_ms, "back": back and back - moved, "down": down,
            "failures": dict(failures),
            "reconnects": sum(r.connects - connects[id(r)] for r in traffic.sse if r.room == room)}


def test_cluster_shard_failover_and_a_live_slot_move_lose_nothing_and_other_shards_never_stop(
        cluster_set, tmp_path):
    for node in cluster_set.nodes:
        if not node.alive:
            cluster_set.restart(node)
    cluster_set.wait_healthy()
    primaries = cluster_set.primaries()
    # The shard to fail holds the room index ({rooms}, slot 4321), which in a fresh 3-shard cluster
    # also serves slot 0: redis-py's default node, where each hub's control link listens. The worst
    # one to lose: the rooms of the other shards must go on all the same.
    doomed = cluster_set.node_for_key("chat:{rooms}:names")
    others = [p for p in primaries if p is not doomed]
    shards = rooms_per_shard(cluster_set, 2)
    doomed_rooms, other_rooms = shards[doomed], [room for p in others for room in shards[p]]
    moving = shards[others[0]][0]  # a busy room of a shard that didn't fail, to the third primary
    instances = replica_ack_instances(cluster_set.url, tmp_path)
    traffic = None
    try:
        for instance in instances:
            instance.start()
        # Its message rate-limit window is on the shard that fails (issue 24): counted per worker
        # meanwhile, it must not refuse a POST to the other shards' rooms.
        user = user_keys_avoid(cluster_set, instances[0], doomed, messages_window_on=doomed)
        traffic = Traffic(instances, user, doomed_rooms + other_rooms, sse_per_room=14, polls_per_room=3,
                          multiplexed=2, posters_per_room=1, pause=0.1)
        warm_rooms(instances, user, traffic.rooms)
        started = time.monotonic()
        gevent.sleep(STEADY_SECS)
        name = user.auth_user.lower()
        strays = [k for k in keys_on(doomed, f"*{name}*") if f"{{user:{name}}}" in k]
        assert not strays, f"the user's own keys are on the shard that will fail: {strays}"
        assert [k for k in keys_on(doomed, f"*{name}*") if "CHAT_RATE_MESSAGES" in k], "no window on the shard"

        failover = fail_a_shard(cluster_set, traffic, doomed_rooms, other_rooms)
        gevent.sleep(STEADY_SECS)
        move = move_a_room(cluster_set, traffic, moving, others[1])
        gevent.sleep(STEADY_SECS)

        acknowledged, deliveries, problems = traffic.check()
        f, m = failover, move
        print(f"\ncluster fault suite ({time.monotonic() - started:.0f} s of traffic; 3 shards; 201 = on the "
              f"shard's replica): {traffic.summary()}\n"
              f"  {acknowledged} messages acknowledged; {deliveries} deliveries checked; "
              f"{len(problems)} problems (loss, duplicate, order, foreign id, reset, stall)\n"
              f"  shard failover at {f['at_ms']} ({f['old'].name} -> {f['new'].name}, serving {doomed_rooms} and "
              f"the room index): promoted {f['promoted']:.1f} s after the SIGKILL, the old primary following it "
              f"{f['rejoined']:.1f} s after; POSTs to its rooms unavailable {f['down']:.1f} s (first failure to "
              f"next 201), a 201 in each {seconds(f['back'])} after the kill; failures {f['failures']}\n"
              f"  meanwhile the {len(other_rooms)} rooms of the other shards: failed POSTs {f['other_failures']}, "
              f"{f['reconnects']} reconnects of their {sum(r.room in other_rooms for r in traffic.sse)} per-room "
              f"streams\n"
              f"  slot move at {m['at_ms']} ({moving}, {m['keys']} keys, to {others[1].name} in {m['took']:.1f} s): "
              f"POSTs unavailable {m['down']:.1f} s, failures {m['failures']}; a 201 {seconds(m['back'])} after "
              f"it; {m['reconnects']} reconnects of its streams\n"
              f"  {log_noise(instances)}")
        assert not problems, "\n".join(problems[:15])
        assert not f["other_failures"], f"POSTs to rooms of the other shards failed during the failover: {f}"
        assert not f["reconnected"], f"streams of rooms on the other shards reconnected during the failover: {f}"
        assert f["back"] is not None and m["back"] is not None, "POSTs didn't come back after a fault"
        assert f["old"] is doomed and traffic.reader_count >= 100
    finally:
        if traffic is not None:
            traffic.stop()
        for instance in instances:
            instance.stop()
        for node in cluster_set.nodes:
            if not node.alive:
                cluster_set.restart(node)
        cluster_set.wait_healthy()


def test_with_two_replicas_a_shard_keeps_taking_acknowledged_writes_after_a_failover(tmp_path):
    """docs/deploy.md: with CHAT_DURABILITY=replicas a primary needs two replicas to keep taking
    writes through a failover (the promoted replica still has one). A Cluster of 3 shards with two
    replicas each: the primary of a room's shard is killed; once a replica is promoted, POSTs to
    the room are acknowledged again (201, each message once) and /readyz says its writes are
    accepted."""
    from chatapp import create_app
    from deploy.redis_topology import ClusterSet
    from tests.helpers import CHEAP_PASSWORD_HASH, send_with_key, signed_in

    with ClusterSet(tmp_path / "cluster", replicas_per_primary=2) as cluster:
        cluster.wait_healthy()
        app = create_app({"REDIS_URL": cluster.url, "SECRET_KEY": "t", "CHAT_DURABILITY": "replicas",
                          "CHAT_DURABILITY_TIMEOUT_MS": 1000, **GENEROUS_LIMITS, **CHEAP_PASSWORD_HASH})
        name = unique("w")
        alice = signed_in(app, name)
        kept = {key_slot(f"user:{name}".encode()), key_slot(b"rooms")}  # her sign-in, the room index
        room = next(r for r in (unique("t2") for _ in itertools.count())
                    if cluster.node_for_key(f"chat:{{{r}}}:log") not in {cluster.node_for_slot(s) for s in kept})
        assert alice.post("/api/rooms", json={"name": room}).status_code == 201
        before = send_with_key(alice, "before", "k0", room=room)
        assert before.status_code == 201
        slot = key_slot(room.encode())
        old = cluster.kill_primary_of(slot)
        new = cluster.wait_failover(slot, old)

        def acknowledged():
            response = send_with_key(alice, "after", "k1", room=room)  # the same key each try: one message
            assert response.status_code in (200, 201), response.json
            return response
        after = eventually(acknowledged, timeout=30, what="a POST acknowledged by the promoted primary's replica")
        ready = alice.get("/readyz").json["writes"]
        (state,) = [state for server, state in ready.items() if server.endswith(f":{new.port}")]
        assert state == {"replicas": 1, "writes": "accepted"}
        texts = [m["text"] for m in alice.get(f"/api/rooms/{room}/messages").json["messages"]]
        assert texts == ["before", "after"] and after.json["text"] == "after"
