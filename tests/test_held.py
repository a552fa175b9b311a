"""What a hub holds with replica acknowledgement and what releases it, in which order
(chatapp/delivery/held.py; docs/DESIGN.md, invariant 11). Pure: no Redis, no hub."""

import time

import pytest

from chatapp.core.ids import StreamId
from chatapp.core.publication import Publication
from chatapp.delivery.held import Held, HeldByServer

A, B, C = b"chat:{a}:live", b"chat:{b}:live", b"chat:{c}:live"
ROOMS = {A: "a", B: "b", C: "c"}


def pub(ms, seq=0):
    return Publication(StreamId(ms, seq), b"{}")


def live(*items):
    """What a release says of publications that came live: (channel, publication, True)."""
    return [(channel, publication, True) for channel, publication in items]


def logged(channel, *publications):
    """What a release says of publications read from ``channel``'s log."""
    return [(channel, publication, False) for publication in publications]


# -- one server ----------------------------------------------------------------------------

def test_an_acknowledgement_releases_everything_held_before_it_of_any_room_in_the_servers_order():
    held = Held()
    a1, b2, a3, c4, b5 = pub(1), pub(2), pub(3), pub(4), pub(5)
    for channel, publication in ((A, a1), (B, b2), (A, a3), (C, c4), (B, b5)):
        held.hold_live(channel, publication)
    assert held.acknowledged(A, a3.id) == live((A, a1), (B, b2), (A, a3))
    assert held.acknowledged(C, c4.id) == live((C, c4))
    assert held.acknowledged(B, b5.id) == live((B, b5))
    assert not held


def test_what_was_held_after_the_acknowledged_message_stays_held():
    held = Held()
    a1, b2 = pub(1), pub(2)
    held.hold_live(A, a1)
    held.hold_live(B, b2)
    assert held.acknowledged(A, a1.id) == live((A, a1))
    assert held and held.acknowledged(A, a1.id) == []  # again: nothing more
    assert held.acknowledged(B, b2.id) == live((B, b2))


def test_an_acknowledgement_of_a_message_not_held_releases_nothing_live():
    """Only a held message's acknowledgement places it in the server's order; an id of another
    room, or one the hub never held (it came before the subscription), proves nothing here."""
    held = Held()
    a5 = pub(5)
    held.hold_live(A, a5)
    assert held.acknowledged(B, a5.id) == []  # the same id in another room
    assert held.acknowledged(A, pub(9).id) == []  # a later id of the room, not held
    assert held.acknowledged(A, a5.id) == live((A, a5))


def test_entries_read_from_a_log_wait_for_an_acknowledgement_of_their_own_room():
    """Read ahead of the link (at a subscription), they may be newer than live publications
    still on their way: a later acknowledgement of another room doesn't cover them."""
    held = Held()
    a5, a6, b7 = pub(5), pub(6), pub(7)
    held.hold_from_log(A, [a5, a6])
    held.hold_live(B, b7)
    assert held.acknowledged(B, b7.id) == live((B, b7))
    assert held.acknowledged(A, a5.id) == logged(A, a5)
    assert held.acknowledged(A, pub(8).id) == logged(A, a6)  # a later message of its room: not held, it covers
    assert not held


def test_regression_a_live_message_released_by_another_rooms_acknowledgement_takes_its_rooms_older_log_entries():
    """a1 was read from A's log at a resubscription, a2 came live after it, then B's b3 was
    acknowledged: a2 went out and a1 stayed held, so when a1 was released later the room had
    shown a2 and dropped it (a reader lost a1: the Sentinel fault suite, 1 run in 4)."""
    held = Held()
    a1, a2, b3 = pub(1), pub(2), pub(3)
    held.hold_from_log(A, [a1])
    held.hold_live(A, a2)
    held.hold_live(B, b3)
    assert held.acknowledged(B, b3.id) == [*logged(A, a1), *live((A, a2), (B, b3))]
    assert not held


def test_regression_a_probe_releasing_a_live_message_takes_its_rooms_older_log_entries():
    held = Held()
    a1, a2, a3 = pub(1), pub(2), pub(3)
    held.hold_from_log(A, [a1, a3])
    held.hold_live(A, a2)
    snapshot = (held.live[-1], {})  # a probe sent when only the live message counted
    assert held.probed(snapshot) == [*logged(A, a1), *live((A, a2))]
    assert held.acknowledged(A, a3.id) == logged(A, a3)
    assert not held


def test_a_rooms_log_entries_go_out_before_its_live_messages_each_in_order():
    held = Held()
    a1, a2, b3, a4 = pub(1), pub(2), pub(3), pub(4)
    held.hold_from_log(A, [a1])
    held.hold_from_log(A, [a2])
    held.hold_live(B, b3)
    held.hold_live(A, a4)
    assert held.acknowledged(A, a4.id) == [*logged(A, a1, a2), *live((B, b3), (A, a4))]


def test_since_is_when_the_oldest_held_was_held_and_nothing_read_holds_nothing():
    held = Held()
    held.hold_from_log(A, [])
    assert not held and held.since is None
    before = time.monotonic()
    held.hold_live(A, pub(1))
    first = held.since
    assert first is not None and before <= first <= time.monotonic()
    held.hold_live(A, pub(2))
    assert held.since == first  # the oldest's
    held.acknowledged(A, StreamId(1, 0))
    assert held.since >= first  # what is left counts from the release
    held.acknowledged(A, StreamId(2, 0))
    assert held.since is None


def test_a_probe_releases_what_was_held_when_it_was_sent_not_what_came_since():
    held = Held()
    a1, a2, b3, a4, b5, a6 = pub(1), pub(2), pub(3), pub(4), pub(5), pub(6)
    held.hold_from_log(A, [a1, a2])
    held.hold_live(B, b3)
    held.hold_live(A, a4)
    snapshot = held.snapshot()
    held.hold_live(B, b5)  # while the probe's WAIT is out
    held.hold_from_log(A, [a6])
    assert held.probed(snapshot) == [*logged(A, a1, a2), *live((B, b3), (A, a4))]
    assert held.acknowledged(A, a6.id) == logged(A, a6)
    assert held.acknowledged(B, b5.id) == live((B, b5))


def test_a_probe_sent_with_only_log_entries_held_releases_no_live_message():
    held = Held()
    a1, b2 = pub(1), pub(2)
    held.hold_from_log(A, [a1])
    snapshot = held.snapshot()
    held.hold_live(B, b2)
    assert held.probed(snapshot) == logged(A, a1)
    assert held and held.acknowledged(B, b2.id) == live((B, b2))


# -- per server ---------------------------------------------------------------------------

class Probe:
    """The hub's probe (a write and WAIT in a room's slot): records the rooms asked."""

    def __init__(self, answer=True, meanwhile=None):
        self.answer = answer
        self.asked = []
        self.meanwhile = meanwhile

    def __call__(self, room):
        self.asked.append(room)
        if self.meanwhile:
            self.meanwhile()
        return self.answer


def by_server(probe=None, node_of=None, serves=lambda node, room: True, after=60):
    return HeldByServer(node_of or (lambda channel: None), probe or Probe(), serves, after)


def stale():
    """A moment past any probe_after_secs used here."""
    return time.monotonic() + 3600


def test_on_a_cluster_each_shard_is_released_by_its_own_acknowledgements():
    shards = {A: "n1", B: "n2", C: "n1"}
    held = by_server(node_of=shards.get)
    a1, b2, c3 = pub(1), pub(2), pub(3)
    held.hold_live(A, a1)
    held.hold_live(B, b2)
    held.hold_live(C, c3)
    assert held.acknowledged(C, c3.id) == live((A, a1), (C, c3))  # n1's order; n2's b2 isn't covered
    assert held.acknowledged(B, b2.id) == live((B, b2))


def test_drop_forgets_one_shard_and_clear_every_one():
    shards = {A: "n1", B: "n2", C: "n3"}
    held = by_server(node_of=shards.get)
    a1, b2, c3 = pub(1), pub(2), pub(3)
    held.hold_live(A, a1)
    held.hold_live(B, b2)
    held.hold_from_log(C, [c3])
    held.drop("n1")
    assert held.acknowledged(A, a1.id) == []
    assert held.acknowledged(B, b2.id) == live((B, b2))
    held.clear()
    assert held.acknowledged(C, c3.id) == []


def test_no_probe_before_probe_after_secs():
    probe = Probe()
    held = by_server(probe, after=60)
    held.hold_live(A, pub(1))
    assert held.probe_stale(time.monotonic(), ROOMS.get) == []
    assert probe.asked == []


def test_a_stale_hold_is_probed_in_the_room_of_the_last_live_message_and_released():
    probe = Probe()
    held = by_server(probe)
    a1, b2 = pub(1), pub(2)
    held.hold_from_log(C, [pub(0)])
    held.hold_live(A, a1)
    held.hold_live(B, b2)
    released = held.probe_stale(stale(), ROOMS.get)
    assert probe.asked == ["b"]
    assert [(channel, str(p.id), came_live) for channel, p, came_live in released] == [
        (C, "0-0", False), (A, "1-0", True), (B, "2-0", True)]
    assert held.probe_stale(stale(), ROOMS.get) == [] and probe.asked == ["b"]  # nothing left to probe


def test_with_only_log_entries_held_the_probe_goes_to_their_room():
    probe = Probe()
    held = by_server(probe)
    a1 = pub(1)
    held.hold_from_log(A, [a1])
    assert held.probe_stale(stale(), ROOMS.get) == logged(A, a1)
    assert probe.asked == ["a"]


def test_a_probe_that_fails_releases_nothing():
    held = by_server(Probe(answer=False))
    a1 = pub(1)
    held.hold_live(A, a1)
    assert held.probe_stale(stale(), ROOMS.get) == []
    assert held.acknowledged(A, a1.id) == live((A, a1))


@pytest.mark.parametrize("why", ["the room is gone", "another server serves it now"])
def test_no_probe_where_it_would_prove_nothing(why):
    probe = Probe()
    if why == "the room is gone":
        held = by_server(probe)
        room_of = {}.get
    else:  # mid-failover: what is held came from a server the hub no longer listens to
        held = by_server(probe, serves=lambda node, room: False)
        room_of = ROOMS.get
    held.hold_live(A, pub(1))
    assert held.probe_stale(stale(), room_of) == []
    assert probe.asked == []


def test_what_arrives_while_the_probe_waits_stays_held():
    b2 = pub(2)
    probe = Probe(meanwhile=lambda: held.hold_live(B, b2))
    held = by_server(probe)
    a1 = pub(1)
    held.hold_live(A, a1)
    assert held.probe_stale(stale(), ROOMS.get) == live((A, a1))
    assert held.acknowledged(B, b2.id) == live((B, b2))


def test_each_shard_is_probed_in_a_room_of_its_own():
    shards = {A: "n1", B: "n2"}
    probe = Probe()
    seen = []
    held = by_server(probe, node_of=shards.get, serves=lambda node, room: seen.append((node, room)) or True)
    a1, b2 = pub(1), pub(2)
    held.hold_live(A, a1)
    held.hold_live(B, b2)
    assert sorted(held.probe_stale(stale(), ROOMS.get), key=lambda item: item[1].id) == live((A, a1), (B, b2))
    assert sorted(seen) == [("n1", "a"), ("n2", "b")] and sorted(probe.asked) == ["a", "b"]
