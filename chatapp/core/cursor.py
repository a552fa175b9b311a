"""The multiplexed stream's cursor (docs/DESIGN.md, invariant 12): ``room:id`` pairs and a
watermark, parsed from a client and planned into each room's start."""

import re

from chatapp.core.ids import MAX_SEQ, ZERO, StreamId
from chatapp.ops.errors import BadRequest

# 100 joined rooms at ~45 bytes a pair, with room to spare; gunicorn refuses a header line past 8 KiB anyway.
MAX_CURSOR_CHARS = 16_384
_PAIR_RE = re.compile(r"\A([a-z0-9_-]{1,64}):(\d{1,20}-\d{1,20})\Z")
_WATERMARK_RE = re.compile(r"\A@(\d{1,20})\Z")


class Cursor:
    """A multiplexed cursor as read back from a client: the rooms it lists and its watermark.

    ``room:id[,room:id...]``: the first pair's millisecond is the watermark. Or
    ``@<ms>[,room:id...]``: the watermark given alone (a cursor of the whole stream, as
    ``ready`` and long-poll answers carry), then the rooms that must be listed.
    """

    __slots__ = ("positions", "watermark")

    def __init__(self, positions, watermark):
        self.positions = positions  # {room: id}
        self.watermark = watermark

    @classmethod
    def parse(cls, text, max_rooms=None):
        """Parse a cursor listing at most ``max_rooms`` rooms; raise BadRequest."""
        if not text or len(text) > MAX_CURSOR_CHARS:
            raise BadRequest("Malformed cursor: expected room:<ms>-<seq>[,room:<ms>-<seq>...].", code="bad_cursor")
        items = text.split(",")
        watermark = None
        if match := _WATERMARK_RE.match(items[0]):
            watermark = int(match[1])
            items = items[1:]
        if max_rooms is not None and len(items) > max_rooms:
            raise BadRequest(f"The cursor lists more than the {max_rooms} rooms an account may join.",
                             code="bad_cursor")
        positions = {}
        for pair in items:
            match = _PAIR_RE.match(pair)
            if not match or match[1] in positions:
                raise BadRequest(f"Malformed cursor pair {pair[:80]!r}: expected room:<ms>-<seq>, each room once.",
                                 code="bad_cursor")
            positions[match[1]] = StreamId.parse(match[2])
        if watermark is None:
            if not positions:
                raise BadRequest("Malformed cursor: no room in it.", code="bad_cursor")
            watermark = next(iter(positions.values())).ms
        return cls(positions, watermark)

    def start(self, room, tail, joined_at):
        """Where ``room`` resumes (exclusive): its listed position; else the watermark's
        millisecond, but never past the room's newest message (a quiet room isn't a wiped
        one); either way never before the user (last) joined it."""
        if room in self.positions:
            return max(self.positions[room], joined_at)
        before = StreamId(self.watermark - 1, MAX_SEQ) if self.watermark else ZERO
        return max(min(before, tail), joined_at)


def format_cursor(pairs):
    """``room:id,...``; a pair ``("@", ms)`` gives the watermark alone (first)."""
    return ",".join(f"@{position}" if room == "@" else f"{room}:{position}" for room, position in pairs)


def plan_start(joined, cursor, tails):
    """``{room: start}`` for a stream over ``joined`` (``{room: join point}``): from ``cursor``,
    or ``None`` (now) for every room without one. ``tails(rooms)`` reads rooms' newest ids."""
    if cursor is None:
        return dict.fromkeys(joined)
    omitted = [room for room in joined if room not in cursor.positions]
    newest = dict(zip(omitted, tails(omitted))) if omitted else {}
    return {room: cursor.start(room, newest.get(room, ZERO), at) for room, at in joined.items()}


