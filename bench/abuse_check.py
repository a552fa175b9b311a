#!/usr/bin/env python3
"""Try the cheap attacks of docs/security.md against a server with the shipped settings
and print what happened (the figures quoted in issue notes)::

    .venv/bin/python bench/abuse_check.py

Starts its own embedded Redis (maxmemory as `./scripts/serve` sets it) and
gunicorn with 2 workers and no setting changed, on a free port, and stops both.
"""

import base64
import collections
import http.client
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from chatapp.ops.config import setting  # noqa: E402
from chatapp.store.embedded_redis import EmbeddedRedis  # noqa: E402
from deploy.launch import Gunicorn  # noqa: E402

PASSWORD = "correct horse"


class Client:
    def __init__(self, port):
        self.port = port

    def __call__(self, method, path, body=None, auth=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {}
        if auth:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        if body is not None:
            headers["Content-Type"] = "application/json"
            body = json.dumps(body)
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        conn.close()
        return response.status, data


def main():
    folder = Path(tempfile.mkdtemp(prefix="abuse-check-"))
    store = EmbeddedRedis(folder / "redis", maxmemory=setting("CHAT_REDIS_MAXMEMORY", {}))
    store.start()
    server = Gunicorn(store.url, workers=2, env={"CHAT_DATA_DIR": str(folder)})
    try:
        server.start()
        request = Client(server.port)
        keys = redis.Redis.from_url(store.url)
        request("POST", "/api/auth/register", {"username": "alice", "password": PASSWORD})
        rooms = [request("POST", "/api/rooms", {"name": f"r{i}"}, ("alice", PASSWORD))[0] for i in range(30)]
        print(f"30 rooms created in a row by one account: {dict(collections.Counter(rooms))}")
        guesses = [request("GET", "/api/auth/me", auth=("alice", f"guess {i}"))[0] for i in range(40)]
        first = guesses.index(429) + 1 if 429 in guesses else None
        print(f"40 wrong HTTP Basic passwords in a row: {dict(collections.Counter(guesses))}; "
              f"the first 429 is guess {first}")
        before = keys.dbsize()
        for _ in range(1000):
            request("GET", "/api/auth/csrf")
        print(f"Redis keys before and after 1,000 cookie-less GET /api/auth/csrf: {before} -> {keys.dbsize()}")
        before = keys.dbsize()
        for i in range(300):
            request("GET", "/")
            request("GET", "/api/rooms")
            request(f"QWERTY{i}", "/healthz")
        print(f"... and after 900 more anonymous requests (the page, a 401, invented methods): "
              f"{before} -> {keys.dbsize()}")
        metrics = request("GET", "/metrics")[1].decode()
        series = [line for line in metrics.splitlines() if line.startswith("chat_request_seconds_count")]
        print(f"request-latency series after all that: {len(series)} "
              f"({sorted({line.split('method=')[1].split('}')[0] for line in series})})")
        body = "[" * 30_000 + "]" * 30_000
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request("POST", "/api/auth/login", body=body, headers={"Content-Type": "application/json"})
        deep = conn.getresponse()
        print(f"a JSON body nested 30,000 deep: {deep.status} {json.loads(deep.read())['error']}")
    finally:
        server.stop()
        store.stop()


if __name__ == "__main__":
    main()
