"""The application factory: configuration, extensions and blueprints wired together."""

import os
import time

from flask import Flask, g
from werkzeug.middleware.proxy_fix import ProxyFix

from chatapp import services
from chatapp.accounts import sessions, users
from chatapp.delivery import pollers
from chatapp.ops import errors, logs, metrics
from chatapp.ops.config import load_settings
from chatapp.store import memberships as membership
from chatapp.store import migrations, presence, ratelimit, rooms
from chatapp.web import admin, auth, events, health, messages, page, security, streams
from chatapp.web import takeover as direct


def create_app(test_config=None):
    """Build the app from the environment, with ``test_config`` overriding it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    app = Flask(__name__, template_folder=os.path.join(root, "templates"),
                static_folder=os.path.join(root, "static"))
    app.config.update(load_settings(overrides=test_config))
    app.config["MAX_CONTENT_LENGTH"] = app.config["CHAT_MAX_BODY_BYTES"]
    app.json.ensure_ascii = False
    if app.config["CHAT_TRUSTED_PROXIES"]:
        hops = app.config["CHAT_TRUSTED_PROXIES"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)

    @app.before_request
    def start_clock():
        g.started = time.perf_counter()  # read by the request log and the latency histogram

    logs.init_app(app)
    errors.init_app(app)
    services.init_app(app)
    migrations.init_app(app)
    metrics.init_app(app)
    sessions.init_app(app)
    security.init_app(app)
    ratelimit.init_app(app)
    users.init_app(app)
    rooms.init_app(app)
    for module in (auth, rooms, membership, messages, streams, events, presence, admin, health, metrics, page):
        app.register_blueprint(module.bp)

    @app.after_request
    def tag_worker(response):
        response.headers["X-Worker-Pid"] = str(os.getpid())
        return response

    direct.init_app(app)  # it sees the finished response
    pollers.init_app(app)  # outermost: a kept poller's next poll needs nothing of the rest
    return app

