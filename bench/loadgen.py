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
from publishers import guess_flood, plan_lanes, publish
from readers import ReaderContext, SSEReader, reader_process, send_message
from wire import Target


def run_scenario(spec):
    """Fork the reader processes, open every stream, publish, collect. Returns a result dict."""
    raise_nofile()
    readers = spec["readers"]
    procs = max(1, min(spec.get("procs", 1), readers or 1))
    pids = process_tree(spec.get("server_pids") or [])
    mem_before = pss_by_command(pids) if pids and spec.get("measure_memory") else None
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
        return loop.run_until_complete(_coordinate(spec, children, pids, mem_before))
    finally:
        for proc, _end in children:
            if proc.is_alive():
                proc.kill()
            proc.join(2)
        loop.close()


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
    t_connect = time.monotonic()
    readies = await asyncio.gather(*(_recv(loop, end, spec.get("connect_timeout", 300)) for _, end in children))
    connect_wall = time.monotonic() - t_connect
    per_connect = sorted(ms for r in readies for ms in r.pop("per_connect_ms"))
    result = {"system": spec["system"], "scenario": spec.get("scenario"), "mode": spec.get("mode", "sse"),
              "readers": spec["readers"], "rooms": len(spec["rooms"]), "procs": len(children),
              "opened": sum(r["opened"] for r in readies), "open_failed": sum(r["failed"] for r in readies),
              "connect_secs": round(connect_wall, 3), "connect_ms": percentiles(per_connect)}
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
    lat, secs = merge_latencies(parts)
    if spec.get("timeline"):
        result["latency_by_second"] = by_second(lat, secs)
    sent = sum(s for s, _ in expected.values())
    failed = sum(len(f) for _, f in expected.values())
    accepted = sent - failed
    errors = {}
    for part in parts:
        for k, v in part["errors"].items():
            errors[k] = errors.get(k, 0) + v
    delivered = sum(p["deliveries"] for p in parts)
    result.update({
        "duration": spec["duration"], "lanes": len(lane_rooms), "sent": sent, "accepted": accepted,
        "post_failed": failed, "posts_per_s": round(accepted / pub_secs, 1),
        "post_ms": percentiles(list(post_ms)),
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
        "loadgen_cpu": {"readers_max_util": round(max(p["cpu_secs"] / max(p["wall_secs"], 1e-9) for p in parts), 3),
                        "publisher_util": round(pub_cpu / pub_secs, 3)},
        "errors": errors,
    })
    return result


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
