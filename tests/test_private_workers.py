"""Removal from a private room across real gunicorn workers (docs/DESIGN.md, invariant 16):
a member's per-room stream on one worker, multiplexed stream on the other and long-poller
stop at the entry that removes them, checked by message ids while a poster keeps posting."""

import gevent
import pytest

from tests.helpers import (
    GENEROUS_LIMITS,
    MultiplexReader,
    PollReader,
    Poster,
    ResumingReader,
    account,
    eventually,
    gunicorn_with_redis,
    on_another_worker,
    parse_id,
    unique,
)

pytestmark = pytest.mark.gunicorn


def removal_id(api, room, member):
    entries = api.get(f"/api/rooms/{room}/messages?limit=100").json["messages"]
    return max(parse_id(e["id"]) for e in entries if e.get("revokes") == member)


def test_removal_stops_every_connection_of_the_member_on_every_worker(tmp_path):
    env = {**GENEROUS_LIMITS, "CHAT_HEARTBEAT_SECS": "1"}
    with gunicorn_with_redis(tmp_path, workers=2, env=env) as (server, _):
        alice, bob = account(server, unique("alice")), account(server, unique("bob"))
        room = alice.post("/api/rooms", {"title": "Plans", "private": True}).json["room"]["name"]
        assert alice.post(f"/api/rooms/{room}/members", {"user": bob.auth_user}).status == 201
        assert alice.post("/api/rooms", {"name": "open"}).status in (200, 201)
        assert bob.post("/api/rooms/open/join").status == 200
        first = alice.post(f"/api/rooms/{room}/messages", {"text": "first"}).json["id"]
        per_room = ResumingReader(bob, room, last_id=first)
        eventually(lambda: per_room.ready, 10, what="the per-room stream to be ready")
        worker_a = next(iter(per_room.pids))
        mux = on_another_worker(lambda: MultiplexReader(bob), worker_a)
        poller = PollReader(bob, room, first, timeout=2)
        in_room, elsewhere = Poster([alice], room, "in"), Poster([alice], "open", "else")
        try:
            eventually(lambda: len(in_room.acked) >= 20 and len(per_room.ids) >= 10, 30,
                       what="messages flowing to bob")
            assert alice.request("DELETE", f"/api/rooms/{room}/members/{bob.auth_user}").status == 200
            cut = removal_id(alice, room, bob.auth_user.lower())
            # Keep posting until plenty lands after the cut in both rooms, and bob's other room
            # has reached his multiplexed stream from after the cut: it still flows.
            eventually(lambda: sum(parse_id(i) > cut for i in in_room.acked.values()) >= 30
                       and sum(parse_id(i) > cut for i in elsewhere.acked.values()) >= 30, 60,
                       what="posts after the removal")
            later = max(elsewhere.acked.values(), key=parse_id)
            mux.wait_until(lambda r: r.has("open", later), 30)
            gevent.sleep(1)  # let anything in flight arrive: it is counted below, never waited out
        finally:
            in_room.running = elsewhere.running = False
            for reader in (per_room, mux, poller):
                reader.stop()
        for who, ids in (("per-room stream", per_room.ids), ("multiplexed stream", mux.received.get(room, [])),
                         ("long-poller", poller.ids)):
            assert ids, f"bob's {who} got nothing before the removal"
            after = [i for i in ids if parse_id(i) >= cut]
            assert not after, f"bob's {who} got {len(after)} messages at or after the removal {cut}"
        assert {"room": room, "reason": "removed"} in mux.events_of("left")
        assert mux.pids - {worker_a} and worker_a in per_room.pids
        # Resuming from before the removal, on either worker, gets nothing newer.
        for _ in range(6):
            stream = bob.stream(f"/api/rooms/{room}/events", {"Last-Event-ID": first})
            stream.close()
            assert stream.status == 404
            assert bob.get(f"/api/rooms/{room}/poll?cursor={first}&timeout=0").status == 404
