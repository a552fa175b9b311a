"""The multiplexed stream's cursor (docs/DESIGN.md, invariant 12): ``room:id[,room:id...]`` or
``@W[,room:id...]``, read back from clients (Cursor.parse), written (format_cursor), and where
each joined room resumes from it (Cursor.start, plan_start). Pure: no Redis."""

import pytest

from chatapp.core.cursor import MAX_CURSOR_CHARS, Cursor, format_cursor, plan_start
from chatapp.core.ids import MAX_SEQ, ZERO, StreamId
from chatapp.ops.errors import BadRequest


def sid(ms, seq=0):
    return StreamId(ms, seq)


# -- reading and writing ---------------------------------------------------------------

def test_a_list_of_pairs_has_the_first_pairs_millisecond_as_its_watermark():
    cursor = Cursor.parse("dev:5000-0,ops:4999-3,general:0-0")
    assert list(cursor.positions.items()) == [("dev", sid(5000)), ("ops", sid(4999, 3)), ("general", ZERO)]
    assert cursor.watermark == 5000


def test_a_watermark_alone_or_before_the_rooms_that_must_be_listed():
    alone = Cursor.parse("@7000")
    assert alone.positions == {} and alone.watermark == 7000
    listed = Cursor.parse("@7000,dev:7000-2,ops:6000-0")
    assert listed.watermark == 7000 and listed.positions == {"dev": sid(7000, 2), "ops": sid(6000)}


@pytest.mark.parametrize("pairs", [
    [("dev", sid(5000))],
    [("dev", sid(5000, 1)), ("ops", sid(4000)), ("a_b-c", sid(1, MAX_SEQ))],
    [("@", 5000)],
    [("@", 5000), ("dev", sid(5000, 2)), ("ops", sid(9000))],
])
def test_what_is_written_reads_back_the_same(pairs):
    text = format_cursor(pairs)
    cursor = Cursor.parse(text)
    rooms = [(room, position) for room, position in pairs if room != "@"]
    assert list(cursor.positions.items()) == rooms
    assert cursor.watermark == (pairs[0][1] if pairs[0][0] == "@" else pairs[0][1].ms)
    assert format_cursor(([("@", cursor.watermark)] if pairs[0][0] == "@" else []) + rooms) == text


def test_the_written_form():
    assert format_cursor([("@", 12), ("dev", sid(11, 3)), ("ops", sid(12))]) == "@12,dev:11-3,ops:12-0"
    assert format_cursor([("dev", sid(11, 3))]) == "dev:11-3"


@pytest.mark.parametrize("text", [
    "", ",", "dev", "dev:", "dev:5", "dev:5-", "dev:-5", "dev:5-x", "dev:5.0-0", "Dev:5-0", "d v:5-0", "dév:5-0",
    "dev:5-0,", ",dev:5-0", "dev:5-0,,ops:1-0", "dev:5-0 ", " dev:5-0", "dev:5-0,dev:6-0", "a" * 65 + ":1-0",
    "dev:1-123456789012345678901", f"dev:{MAX_SEQ + 1}-0", f"dev:{MAX_SEQ}-{MAX_SEQ}",
    "@", "@x", "@-1", "@5,@6", "@5,", "dev:5-0,@6", "@" + "1" * 21,
])
def test_a_malformed_cursor_is_a_400_bad_cursor(text):
    with pytest.raises(BadRequest) as refused:
        Cursor.parse(text)
    assert refused.value.code == "bad_cursor"


def test_a_cursor_longer_than_the_limit_is_refused_even_if_well_formed():
    pairs = [(f"room-{i:05}", sid(1_700_000_000_000 + i, i)) for i in range(600)]
    text = format_cursor(pairs)
    assert len(text) > MAX_CURSOR_CHARS
    with pytest.raises(BadRequest):
        Cursor.parse(text)
    fits = format_cursor(pairs[:300])
    assert len(fits) <= MAX_CURSOR_CHARS and len(Cursor.parse(fits).positions) == 300


# -- where each room resumes -----------------------------------------------------------

def test_a_listed_room_resumes_after_its_position_but_not_before_its_join_point():
    cursor = Cursor.parse("dev:5000-3,ops:4000-0")
    assert cursor.start("dev", tail=sid(9000), joined_at=ZERO) == sid(5000, 3)
    assert cursor.start("ops", tail=sid(9000), joined_at=sid(4500)) == sid(4500)  # left and joined again since


def test_a_room_left_out_resumes_after_every_message_of_a_millisecond_before_the_watermark():
    cursor = Cursor.parse("dev:5000-3")
    assert cursor.start("ops", tail=sid(9000), joined_at=ZERO) == sid(4999, MAX_SEQ)
    assert cursor.start("ops", tail=sid(3000, 2), joined_at=ZERO) == sid(3000, 2)  # a quiet room, not a wiped one
    assert cursor.start("ops", tail=sid(9000), joined_at=sid(4000)) == sid(4999, MAX_SEQ)  # joined before it
    assert cursor.start("ops", tail=sid(9000), joined_at=sid(6000)) == sid(6000)  # joined after the watermark


def test_a_watermark_of_zero_resumes_left_out_rooms_from_the_start():
    cursor = Cursor.parse("@0")
    assert cursor.start("ops", tail=sid(9000), joined_at=ZERO) == ZERO
    assert cursor.start("ops", tail=sid(9000), joined_at=sid(10)) == sid(10)


class Tails:
    """The rooms' newest ids, as ``broker.tails`` reads them; records what it was asked."""

    def __init__(self, newest):
        self.newest = newest
        self.asked = []

    def __call__(self, rooms):
        self.asked.append(list(rooms))
        return [self.newest[room] for room in rooms]


def test_without_a_cursor_every_room_starts_now_and_nothing_is_read():
    tails = Tails({})
    assert plan_start({"dev": ZERO, "ops": sid(5)}, None, tails) == {"dev": None, "ops": None}
    assert tails.asked == []


def test_a_cursor_listing_every_room_reads_no_tail():
    tails = Tails({})
    joined = {"dev": ZERO, "ops": sid(4500)}
    starts = plan_start(joined, Cursor.parse("dev:5000-3,ops:4000-0"), tails)
    assert starts == {"dev": sid(5000, 3), "ops": sid(4500)} and tails.asked == []


def test_the_tails_of_the_rooms_left_out_are_read_in_one_call():
    tails = Tails({"ops": sid(3000, 2), "random": sid(9000), "general": sid(1)})
    joined = {"dev": ZERO, "ops": ZERO, "random": sid(6000), "general": ZERO}
    starts = plan_start(joined, Cursor.parse("dev:5000-3,gone:7000-0"), tails)
    assert tails.asked == [["ops", "random", "general"]]
    assert starts == {"dev": sid(5000, 3), "ops": sid(3000, 2), "random": sid(6000), "general": sid(1)}
