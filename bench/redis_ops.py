#!/usr/bin/env python3
"""What one POST costs on each Redis setup (issue 14): Redis commands and answer time.

    .venv/bin/python bench/redis_ops.py                          # chat, chat-fsync, chat-replicas, chat-cluster
    .venv/bin/python bench/redis_ops.py --systems chat,chat-cluster --posts 500

Starts each system as bench/run.py does (bench/systems.py), makes one room and one
poster, then sends ``--posts`` POSTs one after another on one keep-alive connection
(no readers, no other load) and prints per POST: the answer time (p50, p99) and the
commands the Redis primaries ran (INFO commandstats, every primary summed), minus what
they ran in an idle window just as long (the hubs' pings and lease renewals).
"""

import argparse
import base64
import http.client
import json
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from systems import SYSTEMS, Topology  # noqa: E402


def primaries(system):
    """redis-py clients of the system's Redis primaries."""
    import redis

    if isinstance(system.redis, Topology):
        nodes = [n for n in system.redis.set.processes if n.kind == "redis" and n.alive]
        return [n.client() for n in nodes if n.role == "master"]
    return [redis.Redis(host="127.0.0.1", port=system.redis.port, decode_responses=True)]


def commandstats(clients):
    total = {}
    for client in clients:
        for key, stats in client.info("commandstats").items():
            name = key.removeprefix("cmdstat_")
            total[name] = total.get(name, 0) + stats["calls"]
    return total


def delta(after, before):
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def measure(name, posts):
    system = SYSTEMS[name]()
    try:
        system.start()
        system.prepare(["ops0"], 1, 1)
        user, password = system.posters[0]
        auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        conn = http.client.HTTPConnection("127.0.0.1", system.port, timeout=30)

        def post(i):
            body = json.dumps({"text": f"ops {i}", "client_id": f"ops.{i}"})
            conn.request("POST", "/api/rooms/ops0/messages", body=body,
                         headers={"Authorization": auth, "Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 201:
                raise RuntimeError(f"{name}: POST answered {resp.status}")
        for i in range(20):  # warm: connections, script caches
            post(f"w{i}")
        clients = primaries(system)
        times = []
        before = commandstats(clients)
        t0 = time.monotonic()
        for i in range(posts):
            t = time.monotonic()
            post(i)
            times.append((time.monotonic() - t) * 1000)
        busy = delta(commandstats(clients), before)
        window = time.monotonic() - t0
        before = commandstats(clients)
        time.sleep(window)
        idle = delta(commandstats(clients), before)
        conn.close()
        per_post = {k: round((v - idle.get(k, 0)) / posts, 2) for k, v in busy.items()}
        per_post = {k: v for k, v in sorted(per_post.items(), key=lambda kv: -kv[1]) if v >= 0.05}
        times.sort()
        return {"system": name, "posts": posts, "answer_ms_p50": round(times[len(times) // 2], 2),
                "answer_ms_p99": round(times[int(len(times) * 0.99)], 2),
                "commands_per_post": round(sum(per_post.values()), 2), "by_command": per_post}
    finally:
        system.stop()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", default="chat,chat-fsync,chat-replicas,chat-cluster")
    parser.add_argument("--posts", type=int, default=300)
    args = parser.parse_args(argv)
    for name in args.systems.split(","):
        r = measure(name, args.posts)
        print(f"{name:14} answer p50 {r['answer_ms_p50']} ms p99 {r['answer_ms_p99']} ms; "
              f"{r['commands_per_post']} commands per POST on the primaries: {r['by_command']}", flush=True)
        print(json.dumps(r))


if __name__ == "__main__":
    main()
