#!/usr/bin/env python3
"""What one request of each kind costs the chat's workers: server CPU per request, closed loop.

    .venv/bin/python bench/request_cost.py                   # poll, post, open, floor
    .venv/bin/python bench/request_cost.py --kinds poll,post --seconds 5 --profile /tmp/prof

Starts the chat as bench/run.py does (bench/systems.py: its own Redis, 2 gevent
workers, the bench's lifted limits), signs one account in on every worker, then
drives one kind of request at a time from ``--connections`` keep-alive
connections (asyncio, uvloop if installed), as fast as the server answers:

* ``poll``: ``GET /api/rooms/<r>/poll?timeout=0&cursor=<latest>``, a caught-up
  long-poller asking again (the answer is empty: this is the request path alone);
* ``post``: ``POST /api/rooms/<r>/messages`` into a room with ``--readers`` SSE
  readers (scenario (e)'s 10), so a post's cost includes its deliveries;
* ``open``: ``GET /api/rooms/<r>/events`` with a ``Last-Event-ID`` a few messages
  back, read until caught up, then closed (one stream open of a reconnect storm);
* ``floor``: bench/flask_floor.py's empty Flask POST under the same gunicorn.

and prints requests/s, the workers' and Redis's CPU per request. ``--profile DIR``
also records each worker with py-spy (raw format) while a kind runs. Numbers from
a machine doing other work mean little: it prints the load average with each.
"""

import argparse
import asyncio
import base64
import json
import os
import selectors
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

from systems import PASSWORD, Chat, http_request  # noqa: E402

try:
    import uvloop
except ImportError:  # pragma: no cover - optional
    uvloop = None

ROOM = "cost0"
USER = "bu0"


def cpu_seconds(procs):
    total = 0.0
    for proc in procs:
        try:
            total += sum(proc.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return total


async def _read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lower = head.lower()
    if b"content-length:" in lower:
        length = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
        body = await reader.readexactly(length)
    else:  # chunked
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if not size:
                break
            body += chunk[:-2]
    return head, body


async def closed_loop(port, make_request, deadline, counts):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while time.monotonic() < deadline:
        writer.write(make_request())
        head, _ = await _read_response(reader)
        if not head.startswith(b"HTTP/1.1 2"):
            raise RuntimeError(head.decode(errors="replace"))
        counts[0] += 1
    writer.close()


async def stream_opens(port, auth, cursor, deadline, counts):
    """Open a stream from ``cursor``, read until a message frame arrived, close, repeat."""
    request = (b"GET /api/rooms/" + ROOM.encode() + b"/events HTTP/1.1\r\nHost: bench\r\n" + auth
               + b"Last-Event-ID: " + cursor + b"\r\n\r\n")
    while time.monotonic() < deadline:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        seen = b""
        while b"event: message" not in seen:
            data = await reader.read(65536)
            if not data:
                raise RuntimeError("stream closed early")
            seen += data
        writer.close()
        counts[0] += 1


def drive(factory, seconds, connections):
    counts = [0]

    async def run():
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(factory(deadline, counts) for _ in range(connections)))
    (uvloop.run if uvloop else asyncio.run)(run())
    return counts[0]


def measure(kind, system, args, auth, procs):
    workers, redis_procs = procs
    port = system.port
    if kind == "poll":
        _, body = http_request(port, "GET", f"/api/rooms/{ROOM}/poll?timeout=0", auth=(USER, PASSWORD))
        cursor = json.loads(body)["cursor"].encode()
        request = (b"GET /api/rooms/" + ROOM.encode() + b"/poll?timeout=0&cursor=" + cursor
                   + b" HTTP/1.1\r\nHost: bench\r\n" + auth + b"\r\n")
        factory = lambda deadline, counts: closed_loop(port, lambda: request, deadline, counts)  # noqa: E731
    elif kind == "post":
        seq = iter(range(10 ** 9))

        def post():
            body = json.dumps({"text": "cost", "client_id": f"c{os.getpid()}.{next(seq)}"}).encode()
            return (b"POST /api/rooms/" + ROOM.encode() + b"/messages HTTP/1.1\r\nHost: bench\r\n" + auth
                    + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        factory = lambda deadline, counts: closed_loop(port, post, deadline, counts)  # noqa: E731
    elif kind == "open":
        _, body = http_request(port, "GET", f"/api/rooms/{ROOM}/poll?timeout=0", auth=(USER, PASSWORD))
        _, history = http_request(port, "GET", f"/api/rooms/{ROOM}/messages?limit=5", auth=(USER, PASSWORD))
        cursor = json.loads(history)["messages"][0]["id"].encode()
        factory = lambda deadline, counts: stream_opens(port, auth, cursor, deadline, counts)  # noqa: E731
    else:
        raise ValueError(kind)
    drive(factory, 1.0, args.connections)  # warm up
    spies = []
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
        spies = [subprocess.Popen([str(BENCH.parent / ".venv/bin/py-spy"), "record", "--pid", str(w.pid),
                                   "--duration", str(int(args.seconds)), "--rate", "200", "--format", "raw",
                                   "--nonblocking", "-o", f"{args.profile}/{kind}.{w.pid}.raw"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for w in workers]
    before, redis_before, started = cpu_seconds(workers), cpu_seconds(redis_procs), time.monotonic()
    done = drive(factory, args.seconds, args.connections)
    elapsed = time.monotonic() - started
    cores, redis_cores = cpu_seconds(workers) - before, cpu_seconds(redis_procs) - redis_before
    for spy in spies:
        spy.wait()
    return {"kind": kind, "requests_per_s": round(done / elapsed), "worker_cores": round(cores / elapsed, 2),
            "worker_us_per_request": round(1e6 * cores / max(done, 1)),
            "redis_us_per_request": round(1e6 * redis_cores / max(done, 1)), "loadavg": os.getloadavg()[0]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default="poll,post,open,floor")
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--readers", type=int, default=10, help="SSE readers of the room during 'post'")
    parser.add_argument("--profile", help="folder for py-spy raw profiles of the workers")
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    results = []
    if "floor" in kinds:
        out = subprocess.run([sys.executable, str(BENCH / "flask_floor.py"), "--seconds", str(args.seconds),
                              "--connections", str(args.connections)],
                             check=False, capture_output=True, text=True).stdout
        results.append({"kind": "floor", "line": out.strip(), "loadavg": os.getloadavg()[0]})
    # Unpaced, so a kept poller is asked as fast as it answers: the cost of the path, not of the pace.
    system = Chat(env={"CHAT_POLL_PACE_MS": "0"})
    try:
        system.start()
        system.prepare([ROOM], 1, 1)
        auth = b"Authorization: Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()) + b"\r\n"
        for i in range(10):
            http_request(system.port, "POST", f"/api/rooms/{ROOM}/messages", {"text": f"seed {i}"},
                         auth=system.posters[0])
        master = psutil.Process(system.server.pid)
        workers = [p for p in master.children(recursive=True) if "gunicorn" in " ".join(p.cmdline())]
        redis_procs = [psutil.Process(system.redis.proc.pid)]
        readers = None
        for kind in kinds:
            if kind == "floor":
                continue
            if kind == "post" and readers is None:
                readers = Readers(system.port, auth, args.readers)
            results.append(measure(kind, system, args, auth, (workers, redis_procs)))
    finally:
        system.stop()
    for result in results:
        print(json.dumps(result))


class Readers(threading.Thread):
    """``count`` SSE readers of the room, read (and dropped) as fast as they come."""

    def __init__(self, port, auth, count):
        super().__init__(daemon=True)
        self.selector = selectors.DefaultSelector()
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"GET /api/rooms/" + ROOM.encode() + b"/events HTTP/1.1\r\nHost: bench\r\n" + auth
                         + b"\r\n")
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ)
        self.start()

    def run(self):
        while True:
            for key, _ in self.selector.select():
                try:
                    if not key.fileobj.recv(1 << 20):
                        self.selector.unregister(key.fileobj)
                except BlockingIOError:
                    pass


if __name__ == "__main__":
    main()
