"""The application factory: configuration, extensions and blueprints wired together."""

import os
import time

from flask import Flask, g
from werkzeug.middleware.proxy_fix import ProxyFix

from chatapp import services
from chatapp.accounts import sessions
from chatapp.ops.config import load_settings
from chatapp.web import (
    access_log,
    admin,
    auth,
    bodies,
    dms,
    errors,
    events,
    health,
    members,
    memberships,
    messages,
    metrics,
    openapi,
    page,
    presence,
    reads,
    rooms,
    security,
    short_path,
    streams,
    takeover,
)

# Every route of the app, one blueprint per resource (chatapp.web).
BLUEPRINTS = (auth, rooms, members, memberships, dms, messages, reads, streams, events, presence, admin, health,
              metrics, page, openapi)


def create_app(test_config=None):
    """Build the app from the environment, with ``test_config`` overriding it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    app = Flask(__name__, template_folder=os.path.join(root, "templates"),
                static_folder=os.path.join(root, "static"))
    app.config.update(load_settings(overrides=test_config))
    app.config["MAX_CONTENT_LENGTH"] = app.config["CHAT_MAX_BODY_BYTES"]
    app.json.ensure_ascii = False
    bodies.init_app(app)  # before ProxyFix wraps it: it sees the client's address
    if app.config["CHAT_TRUSTED_PROXIES"]:
        hops = app.config["CHAT_TRUSTED_PROXIES"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)

    @app.before_request
    def start_clock():
        g.started = time.perf_counter()  # read by the request log and the latency histogram

    access_log.init_app(app)
    errors.init_app(app)
    built = services.init_app(app)  # every service, in dependency order (chatapp.services)
    metrics.init_app(app)
    sessions.init_app(app, built.redis)
    security.init_app(app)
    for module in BLUEPRINTS:
        app.register_blueprint(module.bp)

    @app.after_request
    def tag_worker(response):
        response.headers["X-Worker-Pid"] = str(os.getpid())
        return response

    takeover.init_app(app)  # it sees the finished response
    short_path.init_app(app)  # outermost: a kept poller's next poll needs nothing of the rest
    return app

