"""One room as a worker follows it: delivery to its readers in stream order, once, and the ring
of recent publications that readers catch up from without Redis (chatapp/delivery/room_feed.py;
docs/DESIGN.md, invariants 5 to 7). Pure: no Redis, no hub."""

import pytest

from chatapp.core.ids import StreamId
from chatapp.core.publication import Publication, Signal
from chatapp.delivery.room_feed import RoomFeed


class Reader:
    """What a feed needs of a reader: its user, and ``offer``."""

    def __init__(self, user="alice", feed=None):
        self.user = user
        self.offered = []
        self.feed = feed

    def offer(self, publication):
        self.offered.append(publication)


class Leaving(Reader):
    """A reader whose direct write fails: offering detaches it from the feed."""

    def offer(self, publication):
        super().offer(publication)
        self.feed.readers.discard(self)


def pub(ms, seq=0):
    return Publication(StreamId(ms, seq), b"{}")


def feed_at(tail, ring_size=512):
    feed = RoomFeed("general", b"chat:{general}:live", ring_size)
    feed.restart_at(tail)
    return feed


def test_every_reader_is_offered_each_new_publication_once_in_order():
    feed = feed_at(StreamId(10, 0))
    alice, bob = Reader("alice"), Reader("bob")
    feed.readers.update((alice, bob))
    p11, p12, p13 = pub(11), pub(12), pub(12, 1)
    for publication in (pub(9), pub(10), p11, p12, p12, pub(11, 5), p13):  # a backfill repeats what the link sent
        feed.deliver(publication)
    assert alice.offered == bob.offered == [p11, p12, p13]
    assert feed.last_id == p13.id


def test_a_reader_detached_by_its_own_offer_doesnt_stop_the_others():
    feed = feed_at(StreamId(0, 0))
    leaving = Leaving(feed=feed)
    staying = Reader("bob")
    feed.readers.update((leaving, staying))
    p1, p2 = pub(1), pub(2)
    feed.deliver(p1)
    feed.deliver(p2)
    assert leaving.offered == [p1] and staying.offered == [p1, p2]


def test_a_signal_reaches_every_reader_but_the_user_it_is_about():
    feed = feed_at(StreamId(0, 0))
    alice, bob, bobs_other_tab = Reader("alice"), Reader("bob"), Reader("bob")
    feed.readers.update((alice, bob, bobs_other_tab))
    typing = Signal(b'{"type":"typing","room":"general","user":"Bob"}')
    feed.signal(typing)
    assert alice.offered == [typing] and bob.offered == bobs_other_tab.offered == []


@pytest.mark.parametrize("ring_size", [0, 1, 3, 50])
def test_the_ring_covers_every_cursor_from_its_floor_to_the_last_id_and_no_other(ring_size):
    tail = StreamId(100, 0)
    feed = feed_at(tail, ring_size)
    delivered = [pub(101 + i // 2, i % 2) for i in range(20)]  # two ids per millisecond
    for publication in delivered:
        feed.deliver(publication)
    kept = delivered[len(delivered) - ring_size:] if ring_size else []
    floor = delivered[-ring_size - 1].id if ring_size < len(delivered) else tail
    assert feed.ring_floor == floor and list(feed.ring) == kept
    cursors = [StreamId(0, 0), StreamId(99, 7), tail, *(p.id for p in delivered), StreamId(105, 5), StreamId(111, 0)]
    for cursor in cursors:
        newer = feed.recent_after(cursor)
        if floor <= cursor <= feed.last_id:
            assert newer == [p for p in delivered if p.id > cursor], cursor
            assert all(any(p is q for q in delivered) for p in newer)  # the publications themselves
        else:
            assert newer is None, cursor


def test_start_at_keeps_the_rooms_latest_publications_in_the_ring():
    recent = [pub(ms) for ms in range(1, 6)]
    feed = RoomFeed("general", b"chat:{general}:live", 3)
    feed.start_at(recent, recent[-1].id)
    assert list(feed.ring) == recent[2:] and feed.last_id == recent[-1].id
    assert feed.recent_after(recent[2].id) == recent[3:]  # the ring holds everything after its first
    assert feed.recent_after(recent[4].id) == []
    assert feed.recent_after(recent[1].id) is None  # what came between it and the ring isn't known
    later = pub(6)
    feed.deliver(later)
    assert feed.recent_after(recent[3].id) == [recent[4], later]


def test_start_at_an_empty_room():
    tail = StreamId(0, 0)
    feed = RoomFeed("general", b"chat:{general}:live", 3)
    feed.start_at([], tail)
    assert feed.recent_after(tail) == []
    first = pub(1)
    feed.deliver(first)
    assert feed.recent_after(tail) == [first]


def test_restart_at_forgets_the_ring_and_what_came_before():
    feed = feed_at(StreamId(0, 0))
    old = [pub(ms) for ms in range(1, 4)]
    for publication in old:
        feed.deliver(publication)
    tail = StreamId(500, 0)  # the room was trimmed past our position while the link was down
    feed.restart_at(tail)
    assert feed.last_id == tail and list(feed.ring) == []
    assert feed.recent_after(old[0].id) is None and feed.recent_after(tail) == []
    reader = Reader()
    feed.readers.add(reader)
    feed.deliver(pub(400))  # older than where it follows from now
    assert reader.offered == []


def test_nothing_is_covered_before_the_first_subscription():
    feed = RoomFeed("general", b"chat:{general}:live", 3)
    assert feed.last_id is None and feed.recent_after(StreamId(0, 0)) is None
