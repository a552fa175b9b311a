"""Server-Sent Events framing (https://html.spec.whatwg.org/#server-sent-events)."""

import json

HEADERS = {
    "Cache-Control": "no-cache",
    # nginx would otherwise buffer the stream and hold back every event.
    "X-Accel-Buffering": "no",
}
MIMETYPE = "text/event-stream"

PING = b": ping\n\n"
LAST_CHUNK = b"0\r\n\r\n"  # ends a chunked HTTP/1.1 body


def http_chunk(data: bytes) -> bytes:
    """``data`` framed as one HTTP/1.1 chunk, for streams written to the socket directly."""
    return b"%x\r\n%b\r\n" % (len(data), data)


class Event:
    """One SSE frame; ``encode()`` gives the bytes to write."""

    __slots__ = ("comment", "data", "event", "id", "retry")

    def __init__(self, data=None, *, event=None, id=None, retry=None, comment=None):
        self.data = data
        self.event = event
        self.id = id
        self.retry = retry
        self.comment = comment

    def encode(self) -> bytes:
        lines = []
        if self.comment is not None:
            lines.extend(b": " + line for line in _lines(self.comment))
        if self.retry is not None:
            lines.append(b"retry: %d" % self.retry)
        if self.id is not None:
            lines.append(b"id: " + _single_line(self.id))
        if self.event is not None:
            lines.append(b"event: " + _single_line(self.event))
        if self.data is not None:
            data = self.data
            if not isinstance(data, (str, bytes)):
                data = json.dumps(data, separators=(",", ":"))
            lines.extend(b"data: " + line for line in _lines(data))
        return b"\n".join(lines) + b"\n\n"


def _lines(text):
    raw = text.encode() if isinstance(text, str) else text
    return raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")


def _single_line(text):
    raw = text.encode() if isinstance(text, str) else text
    if b"\n" in raw or b"\r" in raw:
        raise ValueError("SSE id and event names must be one line")
    return raw
