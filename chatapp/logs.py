"""Log lines: one per request and per notable event, with the worker pid, never secrets.

``CHAT_LOG_FORMAT=json`` writes one JSON object per line (for log shippers).
Request lines carry method, path (no query string), status, duration and the
client address; credentials, cookies and message text are never logged.
"""

import json
import logging
import time

from flask import g, request

access = logging.getLogger("chatapp.access")

TEXT_FORMAT = "%(asctime)s %(levelname)s pid=%(process)d %(name)s: %(message)s"


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
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    for handler in root.handlers:
        handler.setFormatter(formatter)
    root.setLevel(logging.INFO)


def init_app(app):
    configure(app.config["CHAT_LOG_FORMAT"])
    if not app.config["CHAT_ACCESS_LOG"]:
        return

    @app.after_request
    def log_request(response):
        ms = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
        access.info("%s %s %d %.1fms client=%s", request.method, request.path, response.status_code, ms,
                    request.remote_addr, extra={"method": request.method, "path": request.path,
                                                "status": response.status_code, "ms": round(ms, 1),
                                                "client": request.remote_addr})
        return response
