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
    result = floor(args.seconds, args.connections)
    print(f"empty Flask POST under gunicorn (2 gevent workers): {result['requests_per_s']:,.0f} requests/s, "
          f"{result['cores']:.2f} cores, {result['us_per_request']:.0f} µs of server CPU per request")


def floor(seconds=10.0, connections=20, warmup=1.0):
    """Start the empty app's gunicorn, drive it for ``seconds`` and stop it; returns
    ``{"requests", "requests_per_s", "cores", "us_per_request", ...}`` (bench/run.py calls this
    once per run with scenario e, to put chat's CPU per post beside it)."""
    with tempfile.TemporaryDirectory(prefix="flask-floor-") as folder:
        return measure(Path(folder), seconds, connections, warmup)


def measure(folder, seconds, connections, warmup=1.0):
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
        run(drive(port, warmup, connections))  # warm up
        before, started = cpu_seconds(procs), time.monotonic()
        done = run(drive(port, seconds, connections))
        elapsed, cores = time.monotonic() - started, (cpu_seconds(procs) - before)
        return {"requests": done, "seconds": round(elapsed, 3), "connections": connections,
                "requests_per_s": round(done / elapsed, 1), "cores": round(cores / elapsed, 3),
                "us_per_request": round(1e6 * cores / max(done, 1), 1), "workers": 2}
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
