"""Loaded by every Python process started with this folder on PYTHONPATH (bench/stream_memory.py
puts it there for the chat server it starts, with PYTHONTRACEMALLOC set): in each forked
process (a gunicorn worker) that traces allocations, a thread dumps a tracemalloc snapshot to
``$BENCH_MEMTRACE_DIR/snap-<pid>-<n>.tm`` once ``$BENCH_MEMTRACE_DIR/trigger-<n>`` exists."""

import gc
import os
import threading
import time
import tracemalloc

_sleep = time.sleep  # the real one: gevent patches time.sleep in the workers later
_DIR = os.environ.get("BENCH_MEMTRACE_DIR")


def _watch():
    n = 0
    while True:
        _sleep(0.2)
        if os.path.exists(f"{_DIR}/trigger-{n}"):
            gc.collect()
            tracemalloc.take_snapshot().dump(f"{_DIR}/snap-{os.getpid()}-{n}.tm.part")
            os.rename(f"{_DIR}/snap-{os.getpid()}-{n}.tm.part", f"{_DIR}/snap-{os.getpid()}-{n}.tm")
            n += 1


def _in_child():
    if _DIR and tracemalloc.is_tracing():
        threading.Thread(target=_watch, daemon=True, name="memtrace").start()


os.register_at_fork(after_in_child=_in_child)
