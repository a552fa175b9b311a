"""Edits, deletions and read positions across real gunicorn workers (issue 23): each reaches a
live per-room stream, a multiplexed stream and a long-poller on either worker, and a reader that
was away gets them after the originals, exactly (compared by id with the room's history)."""

import pytest

from tests.helpers import (
    GENEROUS_LIMITS,
    MultiplexReader,
    PollReader,
    ResumingReader,
    account,
    all_ids,
    assert_exactly_once_in_order,
    eventually,
    gunicorn_with_redis,
    on_another_worker,
    parse_id,
    unique,
)

pytestmark = pytest.mark.gunicorn


def test_edits_and_deletions_reach_every_reader_and_a_resume_is_exact(tmp_path):
    env = {**GENEROUS_LIMITS, "CHAT_HEARTBEAT_SECS": "1"}
    with gunicorn_with_redis(tmp_path, workers=2, env=env) as (server, _):
        alice, bob = account(server, unique("alice")), account(server, unique("bob"))
        room = unique("r")
        assert alice.post("/api/rooms", {"name": room}).status == 201
        assert bob.post(f"/api/rooms/{room}/join").status == 200
        before = alice.post(f"/api/rooms/{room}/messages", {"text": "before"}).json["id"]
        per_room = ResumingReader(bob, room, last_id=before)
        eventually(lambda: per_room.ready, 10, what="the per-room stream to be ready")
        mux = on_another_worker(lambda: MultiplexReader(bob, f"rooms={room}"), next(iter(per_room.pids)))
        poller = PollReader(bob, room, before, timeout=2)
        sent = [alice.post(f"/api/rooms/{room}/messages", {"text": f"m{i}"}).json["id"] for i in range(6)]
        edits = []
        for target in sent[:3]:
            response = alice.request("PATCH", f"/api/rooms/{room}/messages/{target}", {"text": "fixed"})
            assert response.status == 200, response.body
            edits.append(response.json["id"])
        deletion = alice.request("DELETE", f"/api/rooms/{room}/messages/{sent[4]}")
        assert deletion.status == 200, deletion.body
        expected = [i for i in all_ids(alice, room) if parse_id(i) > parse_id(before)]
        assert sent[4] not in expected and deletion.json["id"] in expected and set(edits) <= set(expected)
        last = expected[-1]
        away = ResumingReader(bob, room, last_id=before)  # was away: resumes now, after it all
        for reader in (per_room, poller, away):
            reader.wait_for(last)
        mux.wait_until(lambda r: r.has(room, last))
        for reader in (per_room, mux, poller, away):
            reader.stop()
        # A live reader got the deleted message before its deletion (or, had it caught up from the
        # log after the deletion, not at all: its text is gone); every other id once, in order.
        for who, ids in (("per-room stream", per_room.ids), ("multiplexed stream", mux.received[room]),
                         ("long-poller", poller.ids)):
            gone = deletion.json["id"]
            assert ids.count(sent[4]) <= 1 and (sent[4] not in ids or ids.index(sent[4]) < ids.index(gone)), who
            assert_exactly_once_in_order([i for i in ids if i != sent[4]], expected, who)
        assert_exactly_once_in_order(away.ids, expected, "reader that was away")


def test_a_read_on_one_device_clears_it_on_the_others_on_any_worker(tmp_path):
    with gunicorn_with_redis(tmp_path, workers=2, env=dict(GENEROUS_LIMITS)) as (server, _):
        alice, bob = account(server, unique("alice")), account(server, unique("bob"))
        first = MultiplexReader(bob)
        eventually(lambda: first.ready, 10, what="the stream to be ready")
        readers = [first, on_another_worker(lambda: MultiplexReader(bob), next(iter(first.pids)))]
        sent = alice.post("/api/rooms/general/messages", {"text": "hi"}).json["id"]
        assert bob.post("/api/rooms/general/read", {"id": sent}).json["read"] == sent
        for reader in readers:
            reader.wait_until(lambda r: {"room": "general", "id": sent} in r.events_of("read"), 10)
            reader.stop()
