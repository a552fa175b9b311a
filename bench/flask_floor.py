"""What an almost empty Flask POST costs under the same gunicorn: the floor under scenario (e).

    .venv/bin/python bench/flask_floor.py [--seconds 10] [--connections 20]

Starts gunicorn (2 gevent workers, like the chat) serving one view that parses
a small JSON body and answers 201 with JSON, then drives it for a while from
keep-alive connections in a closed loop (asyncio, uvloop if installed), and
prints the requests/s and the server's CPU per request. No Redis, no auth, no
fan-out: whatever the chat's POST does costs more than this.
"""

import argparse
import asyncio
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from deploy.launch import free_port

try:
    import uvloop
except ImportError:  # pragma: no cover - optional
    uvloop = None

APP = '''
from flask import Flask, request, jsonify

app = Flask(__name__)


@app.post("/messages")
def send():
    """Parse the body and answer as the chat does, with nothing behind it."""
    return jsonify(ok=True, text=request.get_json()["text"]), 201
'''
BODY = b'{"text":"hello"}'
REQUEST = (b"POST /messages HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY))


def wait_for(port, timeout=15):
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


async def client(port, deadline, counts):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while time.monotonic() < deadline:
        writer.write(REQUEST)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        counts[0] += 1
    writer.close()


async def drive(port, seconds, connections):
    counts = [0]
    deadline = time.monotonic() + seconds
    await asyncio.gather(*(client(port, deadline, counts) for _ in range(connections)))
    return counts[0]


def cpu_seconds(procs):
    return sum(sum(p.cpu_times()[:2]) for p in procs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="flask-floor-") as folder:
        measure(Path(folder), args)


def measure(folder, args):
    (folder / "floor_app.py").write_text(APP)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", "2", "--worker-connections", "11000",
         "-b", f"127.0.0.1:{port}", "floor_app:app"],
        cwd=folder,  # not the project's gunicorn.conf.py, which starts Redis and the hub
        stdout=subprocess.DEVNULL, stderr=open(folder / "gunicorn.log", "w"))
    try:
        wait_for(port)
        time.sleep(1)  # both workers up
        procs = [psutil.Process(server.pid), *psutil.Process(server.pid).children()]
        run = uvloop.run if uvloop else asyncio.run
        run(drive(port, 1, args.connections))  # warm up
        before, started = cpu_seconds(procs), time.monotonic()
        done = run(drive(port, args.seconds, args.connections))
        elapsed, cores = time.monotonic() - started, (cpu_seconds(procs) - before)
        print(f"empty Flask POST under gunicorn (2 gevent workers): {done / elapsed:,.0f} requests/s, "
              f"{cores / elapsed:.2f} cores, {1e6 * cores / done:.0f} µs of server CPU per request")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
