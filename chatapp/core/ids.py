"""Stream ids: ``<ms>-<seq>``, compared as integer pairs, never as strings (invariant 2)."""

import re
from typing import NamedTuple

from chatapp.ops.errors import BadRequest

_CURSOR_RE = re.compile(r"\A(\d{1,20})-(\d{1,20})\Z")
MAX_SEQ = 2**64 - 1  # the largest part of a stream id


class StreamId(NamedTuple):
    """A Redis stream id; compares as an integer pair, never as a string."""

    ms: int
    seq: int

    @classmethod
    def parse(cls, text):
        """Parse ``<ms>-<seq>`` (or ``0``, meaning before everything); raise BadRequest."""
        if text in ("0", "0-0"):
            return ZERO
        match = _CURSOR_RE.match(text or "")
        if not match:
            raise BadRequest(f"Malformed cursor {text[:40]!r}: expected <ms>-<seq>.",
                             code="bad_cursor")
        ms, seq = int(match[1]), int(match[2])
        # The largest id can't be an exclusive start for Redis ("(max" is refused), and
        # no message ever has it.
        if ms > MAX_SEQ or seq > MAX_SEQ or (ms, seq) == (MAX_SEQ, MAX_SEQ):
            raise BadRequest("Cursor out of range.", code="bad_cursor")
        return cls(ms, seq)

    @classmethod
    def from_bytes(cls, raw):
        ms, _, seq = raw.partition(b"-")
        return cls(int(ms), int(seq))

    def __str__(self):
        return f"{self.ms}-{self.seq}"


ZERO = StreamId(0, 0)


