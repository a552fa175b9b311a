#!/usr/bin/env python3
"""Memory per stream of the chat server, in stages, and (with --trace) where it goes.

    .venv/bin/python bench/stream_memory.py                      # multiplexed, 10 of 100 rooms each
    .venv/bin/python bench/stream_memory.py --mux 0              # single-room streams, as scenario (c)
    .venv/bin/python bench/stream_memory.py --trace              # + Python allocations per stream, by line

Starts a fresh chat instance (bench/systems.py, like bench/run.py), opens streams in
stages (``--stages``, cumulative counts) and after each prints the PSS of the server's
processes per stream: *marginal* (this stage's growth over its new streams) and
*cumulative* (all growth over all streams, what scenarios (c), (j) and (k) report). The
first streams carry the server's fixed costs (first use of code paths, each room's
subscription, a heap grown for many requests at once), so the marginal figure of a late
stage is the cost of one more stream.

``--trace`` runs the workers under tracemalloc (``PYTHONTRACEMALLOC``; slow, and its own
bookkeeping inflates PSS, so the PSS figures of a traced run mean nothing) and prints the
allocations still live after the last stage that were not before it, per stream and by
source line, summed over the workers: what a stream holds in Python objects.
"""

import argparse
import asyncio
import glob
import os
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from measure import new_loop, process_tree, pss_by_command, raise_nofile  # noqa: E402
from readers import MuxReader, ReaderContext, SSEReader, mux_rooms  # noqa: E402
from systems import Chat  # noqa: E402


def snapshot(folder, n, workers, timeout=120):
    """Have every worker dump a tracemalloc snapshot; return their paths."""
    Path(folder, f"trigger-{n}").touch()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = glob.glob(f"{folder}/snap-*-{n}.tm")
        if len(found) >= workers:
            return sorted(found)
        time.sleep(0.2)
    raise RuntimeError(f"no snapshot {n} from {workers} workers in {timeout}s")


def traced_growth(before, after, streams, top):
    """Lines that allocated what is live in ``after`` and not in ``before``, per stream."""
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
    size, count = Counter(), Counter()
    for path0 in before:
        pid = Path(path0).name.split("-")[1]
        path1 = next(p for p in after if Path(p).name.split("-")[1] == pid)
        old = tracemalloc.Snapshot.load(path0).filter_traces(ignore)
        new = tracemalloc.Snapshot.load(path1).filter_traces(ignore)
        for stat in new.compare_to(old, "lineno"):
            where = str(stat.traceback[0])
            size[where] += stat.size_diff
            count[where] += stat.count_diff
    lines = [f"Python allocations live per stream: {sum(size.values()) / streams:.0f} B "
             f"(tracemalloc, {streams} streams, by line)"]
    for where, total in size.most_common(top):
        lines.append(f"{total / streams:8.0f} B {count[where] / streams:6.2f} objects  {where}")
    return "\n".join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mux", type=int, default=10, help="rooms per multiplexed stream (0: single-room streams)")
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--stages", default="1000,2000,3000", help="cumulative stream counts")
    parser.add_argument("--users", type=int, help="reader accounts (default: 10 multiplexed, 100 single-room)")
    parser.add_argument("--concurrency", type=int, default=500, help="streams opening at once")
    parser.add_argument("--settle", type=float, default=2.0)
    parser.add_argument("--trace", type=int, nargs="?", const=1, default=0, metavar="FRAMES",
                        help="tracemalloc in the workers (frames per traceback)")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    args.stages = [int(n) for n in args.stages.split(",")]
    args.users = args.users or (10 if args.mux else 100)
    return args


class Streams:
    """The readers, opened stage by stage against one chat instance."""

    def __init__(self, chat, args):
        self.args = args
        self.rooms = [f"m{i}" for i in range(args.rooms)]
        chat.prepare(self.rooms, args.users, 1, members=bool(args.mux))
        self.loop = new_loop()
        self.ctx = ReaderContext({"system": "chat", "port": chat.port, "rooms": self.rooms, "users": chat.readers},
                                 self.loop)
        self.readers = []

    def _reader(self, i):
        if self.args.mux:
            return MuxReader(self.ctx, i, mux_rooms(self.rooms, i, self.args.mux))
        return SSEReader(self.ctx, i, self.rooms[i % len(self.rooms)])

    def open_upto(self, count):
        """Open streams until ``count`` are open; return how many of the new ones opened."""
        async def run():
            sem = asyncio.Semaphore(self.args.concurrency)
            new = [self._reader(i) for i in range(len(self.readers), count)]

            async def one(r):
                async with sem:
                    return await r.open()
            opened = sum(await asyncio.gather(*(one(r) for r in new)))
            self.readers.extend(new)
            await asyncio.sleep(self.args.settle)
            return opened
        return self.loop.run_until_complete(run())

    def close(self):
        for r in self.readers:
            r.stop()
        self.loop.close()


def measure(chat, args, folder):
    streams = Streams(chat, args)
    kind = f"multiplexed over {args.mux} of {args.rooms} rooms" if args.mux else f"single-room, {args.rooms} rooms"
    print(f"chat on port {chat.port}: streams {kind}, {args.users} accounts, {args.concurrency} opening at once"
          + (" (tracemalloc: PSS figures inflated)" if args.trace else ""), flush=True)
    time.sleep(args.settle)
    base = prev = pss_by_command(process_tree(chat.pids()))
    snaps = [snapshot(folder, 0, chat.workers)] if args.trace else []
    done = 0
    for n, count in enumerate(args.stages, 1):
        opened = streams.open_upto(count)
        now = pss_by_command(process_tree(chat.pids()))
        marginal = (sum(now.values()) - sum(prev.values())) / (count - done)
        by = ", ".join(f"{k} {(v - prev.get(k, 0)) / (count - done):.2f}" for k, v in sorted(now.items()))
        print(f"{done:>6} -> {count:<6} opened {opened}/{count - done}: marginal {marginal:6.2f} KiB/stream "
              f"({by}); cumulative {(sum(now.values()) - sum(base.values())) / count:6.2f} KiB/stream", flush=True)
        if args.trace:
            snaps.append(snapshot(folder, n, chat.workers))
        prev, done = now, count
    if streams.ctx.tally.errors:
        print("errors:", streams.ctx.tally.errors)
    if args.trace:
        last = args.stages[-1] - (args.stages[-2] if len(args.stages) > 1 else 0)
        print(traced_growth(snaps[-2], snaps[-1], last, args.top))
    streams.close()


def main(argv=None):
    args = parse_args(argv)
    raise_nofile()
    folder = tempfile.mkdtemp(prefix="bench-memtrace-")
    env = {}
    if args.trace:
        env = {"PYTHONTRACEMALLOC": str(args.trace), "BENCH_MEMTRACE_DIR": folder,
               "PYTHONPATH": os.pathsep.join([str(BENCH / "memtrace"), os.environ.get("PYTHONPATH", "")])}
    chat = Chat(env=env)
    chat.start()
    try:
        measure(chat, args, folder)
    finally:
        chat.stop()
        for path in glob.glob(f"{folder}/*"):
            os.unlink(path)
        os.rmdir(folder)


if __name__ == "__main__":
    main()
