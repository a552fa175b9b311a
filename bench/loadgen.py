#!/usr/bin/env python3
"""Load generator for SSE / long-poll chat servers: raw HTTP/1.1 on asyncio (uvloop if installed).

Run by ``bench/run.py`` as its own process::

    python bench/loadgen.py run SPEC.json      # one scenario, prints one JSON result line
    python bench/loadgen.py ceiling            # this generator's own limit on one core

Every published message carries ``bm:<lane>:<seq>:<send time ns>:`` in its text. A
*lane* is one sequential publisher (one request in flight), so within a lane the
server's acceptance order is the seq order: a reader seeing a lower seq after a
higher one of the same lane counts a reorder, a seq seen twice a duplicate, and
an accepted seq never seen a loss. Latency is receive wall clock minus send wall
clock (same machine, so one clock).

Readers are asyncio Protocols parsing bytes incrementally: HTTP head, then the
body either chunked (gunicorn) or raw until close (nginx/nchan), then SSE events
split on blank lines (or, for long-poll, whole response bodies). The readers run
in ``procs`` forked processes; the parent process publishes and coordinates.

This file is the coordinator (and the command line); the parts live beside it:
``wire.py`` (requests and response heads), ``readers.py`` (the readers and
their processes), ``publishers.py`` (posting lanes, the guessing flood) and
``measure.py`` (percentiles, memory, CPU).
"""

import array
import asyncio
import json
import multiprocessing
import os
import signal
import sys
import time

import measure
from measure import (
    by_second,
    cpu_by_command,
    machine_cpu_secs,
    merge_latencies,
    new_loop,
    percentiles,
    process_tree,
    pss_by_command,
    raise_nofile,
)
from publishers import guess_flood, plan_lanes, publish, seed_rooms
from readers import ReaderContext, SSEReader, reader_process, send_message
from wire import Target


def run_scenario(spec):
    """Fork the reader processes, open every stream, publish, collect. Returns a result dict."""
    raise_nofile()
    readers = spec["readers"]
    procs = max(1, min(spec.get("procs", 1), readers or 1))
    pids = process_tree(spec.get("server_pids") or [])
    mem_before = pss_by_command(pids) if pids and spec.get("measure_memory") else None
    # (c): the seeded messages count in the streams' memory (~20 per room: nothing per stream at
    # 10,000 streams); a baseline taken after them would keep the seeding's transient garbage.
    seeded = seed(spec) if spec.get("catchup") else None
    ctx = multiprocessing.get_context("fork")
    children = []
    for p in range(procs):
        parent_end, child_end = ctx.Pipe()
        indexes = list(range(p, readers, procs))
        proc = ctx.Process(target=reader_process, args=(child_end, spec, indexes), daemon=True)
        proc.start()
        child_end.close()
        children.append((proc, parent_end))
    loop = new_loop()
    try:
        result = loop.run_until_complete(_coordinate(spec, children, pids, mem_before))
    finally:
        for proc, _end in children:
            if proc.is_alive():
                proc.kill()
            proc.join(2)
        loop.close()
    if seeded is not None:
        result["catchup"].update(seeded)
    return result


def seed(spec):
    """Scenario (c) with cursors: publish ``catchup`` messages to every room before the readers
    connect and put their ids in ``spec["cursors"]`` (what each reader resumes from). A system
    that can't resume (flask-sse) gets no cursors: its readers connect as before."""
    target = Target(spec)
    if not target.resumable:
        spec["cursors"] = None
        return None
    loop = new_loop()  # its own loop, closed before the readers are forked
    try:
        cursors, refused, secs = loop.run_until_complete(seed_rooms(spec, target, f"seed{os.getpid():x}"))
    finally:
        loop.close()
    spec["cursors"] = cursors
    return {"seed_secs": round(secs, 3), "seeded_per_room": spec["catchup"], "seed_refused": len(refused)}


async def _recv(loop, end, timeout):
    fut = loop.create_future()

    def ready():
        if not fut.done():
            loop.remove_reader(end.fileno())
            os.set_blocking(end.fileno(), True)  # add_reader made it non-blocking; recv wants whole messages
            try:
                fut.set_result(end.recv())
            except EOFError as exc:
                fut.set_exception(exc)
    loop.add_reader(end.fileno(), ready)
    try:
        return await asyncio.wait_for(fut, timeout)
    finally:
        loop.remove_reader(end.fileno())


async def _coordinate(spec, children, pids, mem_before):
    loop = asyncio.get_running_loop()
    target = Target(spec)
    t_connect, t_connect_wall = time.monotonic(), time.time()
    readies = await asyncio.gather(*(_recv(loop, end, spec.get("connect_timeout", 300)) for _, end in children))
    result = connected(spec, readies, time.monotonic() - t_connect, t_connect_wall, len(children))
    poll_rooms = set(spec.get("poll_rooms") or ())
    await asyncio.sleep(spec.get("settle", 1.0))
    if mem_before is not None:
        result.update(memory(mem_before, pss_by_command(process_tree(spec.get("server_pids"))), result["opened"]))
    lane_rooms = plan_lanes(spec)
    go_wall = time.time() + 0.2
    go_mono = time.monotonic() + 0.2
    for _, end in children:
        send_message(end, {"type": "go", "at": go_wall})
    cpu0 = time.process_time()
    server_cpu0 = cpu_by_command(process_tree(spec.get("server_pids") or []))
    load0 = os.getloadavg()[0]
    machine0 = machine_cpu_secs()
    run_id = f"{os.getpid():x}{int(time.time()) % 100000:x}"
    # A guessing client (scenarios h, i) alongside the publishers, over the same window.
    flood = asyncio.ensure_future(guess_flood(spec, target, go_mono)) if spec.get("flood_rate") else None
    if lane_rooms:
        await asyncio.sleep(max(0.0, go_mono - time.monotonic()))
        lanes, post_ms = await publish(spec, target, lane_rooms, go_mono, run_id)
    else:
        await asyncio.sleep(spec["duration"] + 0.2)
        lanes, post_ms = {}, array.array("f")
    pub_secs = max(1e-9, time.monotonic() - go_mono)
    pub_cpu = time.process_time() - cpu0
    server_cpu1 = cpu_by_command(process_tree(spec.get("server_pids") or []))
    # Cores the server's processes used while publishing (by command name), and the
    # machine's load: anything else running on it shows here.
    result["server_cpu_cores"] = {name: round((secs - server_cpu0.get(name, 0.0)) / pub_secs, 2)
                                  for name, secs in server_cpu1.items()}
    result["loadavg_1m"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    # Every core's busy time: the server's, the generator's, and whatever else runs on the machine.
    result["machine_busy_cores"] = round((machine_cpu_secs() - machine0) / pub_secs, 2)
    if mem_before is not None and lane_rooms:  # the same streams after the publishing (scenario j)
        loaded = memory(mem_before, pss_by_command(process_tree(spec.get("server_pids"))), result["opened"])
        result["loaded"] = {k.replace("pss_after", "pss"): v for k, v in loaded.items() if k != "pss_before_kib"}
    if flood is not None:  # its last answers (queued hashes) come after the window measured above
        result["flood"] = await flood
    expected = {lane: (sent, failed) for lane, (sent, failed, _) in lanes.items()}
    for _, end in children:
        send_message(end, {"type": "stop", "expected": {str(k): v for k, v in expected.items()},
                  "lane_rooms": {str(k): v for k, v in lane_rooms.items()}})
    parts = await asyncio.gather(*(_recv(loop, end, spec.get("drain", 5.0) + 60) for _, end in children))
    # Mixed (l): the top level counts the SSE room's lanes and readers, "poll" the poll room's.
    main_lanes = {k: v for k, v in lanes.items() if lane_rooms[k] not in poll_rooms}
    result.update(accounting(spec, parts, main_lanes, pub_secs))
    result["post_ms"] = percentiles(list(post_ms))  # every lane's: the publisher's answer times
    if poll_rooms:
        poll_lanes = {k: v for k, v in lanes.items() if lane_rooms[k] in poll_rooms}
        result["poll"].update(accounting(spec, [p["poll"] for p in parts], poll_lanes, pub_secs))
        result["poll"].pop("duration")
        result["all_posts_per_s"] = round(sum(s - len(f) for s, f, _ in lanes.values()) / pub_secs, 1)
    result["loadgen_cpu"] = {
        "readers_max_util": round(max(p["cpu_secs"] / max(p["wall_secs"], 1e-9) for p in parts), 3),
        "publisher_util": round(pub_cpu / pub_secs, 3)}
    result["errors"] = result.pop("errors")  # last, as it always was
    return result


def connected(spec, readies, connect_secs, t0_wall, procs):
    """The result's opening figures from the reader processes' "ready" reports."""
    if spec.get("cursors"):  # the processes' "ready" waited for the catch-ups too: the opens alone
        connect_secs = max(r["opened_wall"] for r in readies) - t0_wall
    per_connect = sorted(ms for r in readies for ms in r.pop("per_connect_ms"))
    poll_rooms = set(spec.get("poll_rooms") or ())
    n_poll = sum(1 for i in range(spec["readers"]) if spec["rooms"][i % len(spec["rooms"])] in poll_rooms)
    result = {"system": spec["system"], "scenario": spec.get("scenario"), "mode": spec.get("mode", "sse"),
              "readers": spec["readers"] - n_poll, "rooms": len(spec["rooms"]) - len(poll_rooms),
              "procs": procs, "opened": sum(r["opened"] - r.get("opened_poll", 0) for r in readies),
              "open_failed": sum(r["failed"] for r in readies),
              "connect_secs": round(connect_secs, 3), "connect_ms": percentiles(per_connect)}
    if poll_rooms:  # mixed (l): the top level is the SSE readers' (as (a)); "poll" the long-poll readers'
        result["poll"] = {"mode": "poll", "readers": n_poll, "rooms": len(poll_rooms),
                          "opened": sum(r.get("opened_poll", 0) for r in readies)}
    if spec.get("cursors"):
        result["catchup"] = catchup(spec, readies, t0_wall)
        result["caught_up_secs"] = result["catchup"]["caught_up_secs"]
    return result


def accounting(spec, parts, lanes, pub_secs):
    """Sent, delivered, lost, latency ... of the lanes ``lanes`` ({lane: (sent, failed, lag)})
    over the reader reports ``parts`` (one per process, of the readers of those lanes' rooms)."""
    out = {}
    lat, secs = merge_latencies(parts)
    if spec.get("timeline"):
        out["latency_by_second"] = by_second(lat, secs)
    sent = sum(v[0] for v in lanes.values())
    failed = sum(len(v[1]) for v in lanes.values())
    accepted = sent - failed
    errors = {}
    for part in parts:
        for k, v in part["errors"].items():
            errors[k] = errors.get(k, 0) + v
    delivered = sum(p["deliveries"] for p in parts)
    out.update({
        "duration": spec["duration"], "lanes": len(lanes), "sent": sent, "accepted": accepted,
        "post_failed": failed, "posts_per_s": round(accepted / pub_secs, 1),
        "max_publish_lag_s": round(max((v[2] for v in lanes.values()), default=0), 3),
        "expected": sum(p["expected"] for p in parts), "deliveries": delivered,
        "loss": sum(p["loss"] for p in parts), "readers_with_loss": sum(p["readers_with_loss"] for p in parts),
        "dups": sum(p["dups"] for p in parts), "reorders": sum(p["reorders"] for p in parts),
        "foreign": sum(p["foreign"] for p in parts),
        "room_order_errors": sum(p["room_order_errors"] for p in parts),
        "multi_room_ids": sum(p["multi_room_ids"] for p in parts),
        "deliveries_per_s": round(delivered / pub_secs, 1),
        "latency_ms": percentiles(list(lat)),
        "server_closes": sum(p["server_closes"] for p in parts), "drops": sum(p["drops"] for p in parts),
        "reconnects": sum(p["reconnects"] for p in parts),
        "reconnect_failures": sum(p["reconnect_failures"] for p in parts),
        "poll_requests": sum(p["poll_requests"] for p in parts),
        "bytes_received": sum(p["bytes"] for p in parts),
        "errors": errors,
    })
    return out


def catchup(spec, readies, t0_wall):
    """Scenario (c) with cursors: every stream resumed a few seeded messages behind its room's
    tail; ``caught_up_secs`` is from the start of the connecting until the last stream had every
    message after its cursor (None if some never did within ``catchup_timeout``)."""
    parts = [r.pop("catchup") for r in readies]
    n = {k: sum(p[k] for p in parts) for k in ("readers", "caught_up", "expected", "received", "loss",
                                                "readers_with_loss", "dups", "reorders", "before_cursor")}
    last = [p["caught_up_wall"] for p in parts if p["caught_up_wall"] is not None]
    every = n["caught_up"] == n["readers"] == spec["readers"] and last
    out = {"caught_up_secs": round(max(last) - t0_wall, 3) if every else None, **n,
           "catch_up_ms": percentiles([ms for p in parts for ms in p["catch_up_ms"]]),
           "behind": [min(b for p in parts for b in p["behind"]), max(b for p in parts for b in p["behind"])]
           if any(p["behind"] for p in parts) else None}
    return out


def memory(before, after, opened):
    """PSS of the server's processes before and after ``opened`` streams, in all and by command
    (``{command: KiB}``; for chat the gunicorn master and workers, and redis-server)."""
    out = {"pss_before_kib": sum(before.values()), "pss_after_kib": sum(after.values())}
    if opened:
        out["kib_per_stream"] = round((out["pss_after_kib"] - out["pss_before_kib"]) / opened, 2)
        out["kib_per_stream_by_command"] = {name: round((kib - before.get(name, 0)) / opened, 2)
                                            for name, kib in after.items()}
    return out


def fake_server(sock, frames_per_chunk, conns_expected, seconds, ready):
    """Accept ``conns_expected`` SSE clients, then blast chat-shaped frames at all of them."""
    loop = new_loop()
    transports = []
    all_in = loop.create_future()

    class Server(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            self.got = b""

        def data_received(self, data):
            self.got += data
            if b"\r\n\r\n" in self.got and self.transport not in transports:
                first = b": stream open\nretry: 2000\n\nevent: ready\ndata: {}\n\n"
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                     b"Transfer-Encoding: chunked\r\n\r\n"
                                     + b"%x\r\n%s\r\n" % (len(first), first))
                transports.append(self.transport)
                if len(transports) >= conns_expected and not all_in.done():
                    all_in.set_result(None)

    async def main():
        server = await loop.create_server(Server, sock=sock)
        ready.send(True)
        await all_in
        seq = 0
        ms = int(time.time() * 1000)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            frames = []
            ns = time.time_ns()
            for _ in range(frames_per_chunk):
                data = (b'{"id":"%d-%d","ts":%d,"room":"r","user":"u","text":"bm:0:%d:%d:","client_id":"x"}'
                        % (ms, seq, ms, seq, ns))
                frames.append(b"id: %d-%d\nevent: message\ndata: %s\n\n" % (ms, seq, data))
                seq += 1
            payload = b"".join(frames)
            chunk = b"%x\r\n%s\r\n" % (len(payload), payload)
            transports[:] = [t for t in transports if not t.is_closing()]
            for t in transports:
                t.write(chunk)
            while any(t.get_write_buffer_size() > 256 * 1024 and not t.is_closing() for t in transports):
                await asyncio.sleep(0.0005)
            await asyncio.sleep(0)
        server.close()
    loop.run_until_complete(main())
    os._exit(0)


def ceiling(conns=200, seconds=3.0, frames_per_chunk=1):
    """Deliveries/s that one reader process parses (and accounts) against a loopback blaster."""
    import socket
    raise_nofile()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    port = sock.getsockname()[1]
    ctx = multiprocessing.get_context("fork")
    ready_r, ready_w = ctx.Pipe(False)
    server = ctx.Process(target=fake_server, args=(sock, frames_per_chunk, conns, seconds + 1.5, ready_w),
                         daemon=True)
    server.start()
    sock.close()
    ready_r.recv()
    loop = new_loop()
    spec = {"system": "fake", "port": port, "rooms": ["r"], "readers": conns}
    rctx = ReaderContext(spec, loop)
    readers = [SSEReader(rctx, i, "r") for i in range(conns)]

    async def main():
        await asyncio.gather(*(r.open() for r in readers))
        await asyncio.sleep(0.5)  # warm up
        d0, c0, t0 = rctx.tally.deliveries, time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        d1, c1, t1 = rctx.tally.deliveries, time.process_time(), time.monotonic()
        for r in readers:
            r.stop()
        return (d1 - d0) / (t1 - t0), (c1 - c0) / (t1 - t0)

    try:
        rate, util = loop.run_until_complete(main())
    finally:
        server.kill()
        server.join(2)
        loop.close()
    lost = sum(1 for r in readers if r.tally.dups or r.tally.reorders)
    return {"conns": conns, "frames_per_chunk": frames_per_chunk, "seconds": seconds,
            "deliveries_per_s": round(rate), "reader_cpu_util": round(util, 2),
            "uvloop": measure.uvloop is not None, "anomalies": lost}


def main(argv):
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_run = sub.add_parser("run", help="run one scenario from a JSON spec file ('-' for stdin)")
    p_run.add_argument("spec")
    p_ceil = sub.add_parser("ceiling", help="measure this generator's parse ceiling on one core")
    p_ceil.add_argument("--conns", type=int, default=200)
    p_ceil.add_argument("--seconds", type=float, default=3.0)
    p_ceil.add_argument("--frames-per-chunk", type=int, nargs="*", default=[1, 16])
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.cmd == "run":
        spec = json.load(sys.stdin if args.spec == "-" else open(args.spec))
        print(json.dumps(run_scenario(spec)), flush=True)
    else:
        out = [ceiling(args.conns, args.seconds, f) for f in args.frames_per_chunk]
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
