"""One log line per request (``CHAT_ACCESS_LOG``)."""

import time

from flask import g, request

from chatapp.ops.logs import access, configure


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
