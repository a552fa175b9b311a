"""The flask-sse peer: the PyPI extension in a minimal Flask app (gunicorn, gevent workers).

    REDIS_URL=redis://127.0.0.1:6379 gunicorn -k gevent -w 2 flasksse_app:app

``POST /pub/<room>`` publishes the body with ``sse.publish(..., channel=room)`` and
``GET /sub/<room>`` is the extension's own ``sse.stream`` view for that channel. The
only addition: a first comment line, so the response headers leave at once (the
extension writes nothing until the first message, and gunicorn sends the headers
with the first body bytes); the extension then subscribes to Redis on the next
iteration. It has no Last-Event-ID resume and no message ids.
"""

import itertools
import os

from flask import Flask, request
from flask_sse import sse

app = Flask(__name__)
app.config["REDIS_URL"] = os.environ["REDIS_URL"]
app.register_blueprint(sse, url_prefix="/stream")


@app.post("/pub/<room>")
def publish(room):
    sse.publish(request.get_data(as_text=True), type="message", channel=room)
    return "", 202


@app.get("/sub/<room>")
def subscribe(room):
    request.args = request.args.copy()
    request.args["channel"] = room
    response = sse.stream()
    response.response = itertools.chain([": open\n\n"], response.response)
    response.headers["Cache-Control"] = "no-cache"
    return response
