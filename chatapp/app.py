"""The application factory: configuration, extensions and blueprints wired together."""

import logging
import os

from flask import Flask

from . import (
    admin,
    auth,
    errors,
    health,
    messages,
    page,
    presence,
    ratelimit,
    rooms,
    security,
    sessions,
    store,
    streams,
    users,
)
from .config import load_settings


def create_app(test_config=None):
    """Build the app from the environment, with ``test_config`` overriding it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    app = Flask(__name__, template_folder=os.path.join(root, "templates"),
                static_folder=os.path.join(root, "static"))
    app.config.update(load_settings(overrides=test_config))
    app.config["MAX_CONTENT_LENGTH"] = app.config["CHAT_MAX_BODY_BYTES"]
    app.json.ensure_ascii = False
    _configure_logging()

    errors.init_app(app)
    store.init_app(app)
    sessions.init_app(app)
    security.init_app(app)
    ratelimit.init_app(app)
    users.init_app(app)
    rooms.init_app(app)
    for module in (auth, rooms, messages, streams, presence, admin, health, page):
        app.register_blueprint(module.bp)

    @app.after_request
    def tag_worker(response):
        response.headers["X-Worker-Pid"] = str(os.getpid())
        return response

    return app


def _configure_logging():
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s pid=%(process)d %(name)s: %(message)s")
