#!/usr/bin/env python3
"""The slow-body attack of issue 24, measured: many connections from one address each send a
POST's head announcing 60 KB and then nothing, while one honest client keeps posting.

    .venv/bin/python bench/slow_bodies.py                    # 15,000 connections, default settings
    .venv/bin/python bench/slow_bodies.py --connections 5000

Starts the chat with its default settings (deploy/launch.py's gunicorn, 2 gevent workers,
an embedded Redis of its own; only the access log off), opens the connections as fast as it
can, and reports: how long until the server has answered and closed every one of them (the
time to shed), and the honest client's slowest POST meanwhile. The connections need file
descriptors on both sides: this machine's hard limit is 20,000 per process, so the default is
15,000, not the 25,000 of the issue.
"""

import argparse
import json
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

from gevent import monkey

monkey.patch_all()

import gevent  # noqa: E402
from gevent.pool import Pool  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from chatapp.store.embedded_redis import EmbeddedRedis  # noqa: E402
from deploy.launch import Gunicorn  # noqa: E402
from tests.helpers import PASSWORD, Api  # noqa: E402

HEAD = (b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: 60000\r\n\r\nusername=a")


def attack(host, port, count):
    """Open ``count`` slow connections; return when the server has closed them all, and the
    answers they got."""
    answers = {}

    def one(_):
        try:
            sock = socket.create_connection((host, port), timeout=120)
            sock.sendall(HEAD)
            received = b""
            while chunk := sock.recv(4096):
                received += chunk
            sock.close()
            status = received.split(b" ", 2)[1].decode() if received else "closed"
        except OSError as exc:
            status = type(exc).__name__
        answers[status] = answers.get(status, 0) + 1

    Pool(count).map(one, range(count))
    return answers


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=15_000)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory() as folder:
        store = EmbeddedRedis(Path(folder) / "redis")
        store.start()
        try:
            with Gunicorn(store.url, workers=2, env={"CHAT_ACCESS_LOG": "0"}) as server:
                Api(server.url).post("/api/auth/register", {"username": "honest", "password": PASSWORD})
                honest = Api(server.url, "honest", PASSWORD, source="127.0.0.2")  # another address
                latencies = []
                running = [True]

                def probe():
                    while running[0]:
                        start = time.monotonic()
                        response = honest.post("/api/rooms/general/messages", {"text": "hi"}, timeout=60)
                        latencies.append((time.monotonic() - start, response.status))
                        gevent.sleep(0.6)  # under the default CHAT_RATE_MESSAGES (20 per 10 s)

                prober = gevent.spawn(probe)
                gevent.sleep(1)
                started = time.monotonic()
                answers = attack(Api(server.url).host, Api(server.url).port, args.connections)
                shed = time.monotonic() - started
                gevent.sleep(1)
                running[0] = False
                prober.join()
        finally:
            store.stop()
    worst = max(latencies)
    result = {"connections": args.connections, "shed_secs": round(shed, 2), "answers": answers,
              "honest_posts": len(latencies), "honest_worst_ms": round(worst[0] * 1000, 1),
              "honest_statuses": sorted({status for _, status in latencies})}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
