"""Log lines: one per request and per notable event, with the worker pid, never secrets.

``CHAT_LOG_FORMAT=json`` writes one JSON object per line (for log shippers).
Request lines carry method, path (no query string), status, duration and the
client address; credentials, cookies and message text are never logged. Text
lines escape control characters, so no request can forge a line.
"""

import json
import logging
import re

access = logging.getLogger("chatapp.access")

TEXT_FORMAT = "%(asctime)s %(levelname)s pid=%(process)d %(name)s: %(message)s"
# Anything that could end a line or fool a terminal: a client's "%0A" in a path
# must not start a line of its own that reads like ours.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape(text):
    """``text`` with line breaks and other control characters as visible escapes."""
    return _UNSAFE.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), text)


class TextFormatter(logging.Formatter):
    """The text format, one line per message whatever the message contains (a traceback,
    which only the server writes, still follows on its own lines)."""

    def formatMessage(self, record):
        record.message = escape(record.message)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    FIELDS = ("method", "path", "status", "ms", "client", "room", "user", "seconds", "reason")

    def format(self, record):
        line = {"ts": self.formatTime(record), "level": record.levelname, "pid": record.process,
                "logger": record.name, "message": record.getMessage()}
        line.update({k: getattr(record, k) for k in self.FIELDS if hasattr(record, k)})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure(log_format):
    """Set the root handler's format (once per process; gunicorn workers log to stderr)."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    formatter = JsonFormatter() if log_format == "json" else TextFormatter(TEXT_FORMAT)
    for handler in root.handlers:
        handler.setFormatter(formatter)
    root.setLevel(logging.INFO)


