"""gunicorn settings: gevent workers that each hold thousands of SSE streams.

Environment: HOST (127.0.0.1), PORT (8000), WEB_CONCURRENCY (2 workers),
CHAT_WORKER_CONNECTIONS (11000), CHAT_DATA_DIR (var). Without REDIS_URL the
master starts the embedded Redis before the workers and stops it after them.
"""

import gc
import os
import resource
import secrets
import shutil
import signal
from pathlib import Path

import gevent

from chatapp.core.reasons import Ending
from chatapp.ops.config import ConfigError, load_settings, setting
from chatapp.store.embedded_redis import EmbeddedRedis

bind = os.environ.get("BIND") or f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gevent"
# A stream holds a connection slot only until it is live (then chatapp.web.takeover
# takes its socket out of gunicorn's pool; CHAT_MAX_STREAMS caps live ones); a
# burst of 10,000 opening at once still needs the slots.
worker_connections = int(os.environ.get("CHAT_WORKER_CONNECTIONS", "11000"))
# Streams end themselves on SIGTERM (see post_worker_init); this only bounds stragglers.
graceful_timeout = 10
# Idle keep-alive connections delay a graceful stop by this much; stay at the default.
keepalive = 2
# A multiplexed stream's cursor lists the rooms that are behind, about 30-90 bytes each:
# room for all of a user's rooms in Last-Event-ID, and for most in a long-poll's query
# (gunicorn's defaults are 4094 and 8190; 8190 is the most a request line may be).
limit_request_line = 8190
limit_request_field_size = 16384
# Several instances on one machine (tests, a local cluster) must not share one socket.
control_socket_disable = True

DATA_DIR = Path(os.environ.get("CHAT_DATA_DIR", "var")).resolve()
_embedded = {}


def on_starting(server):
    """Raise the open-file limit, start the embedded Redis if needed, check the config."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Workers write their metric values here; /metrics on any worker sums them.
        metrics_dir = DATA_DIR / "metrics" / str(os.getpid())
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        _embedded["metrics_dir"] = metrics_dir
    if not os.environ.get("REDIS_URL"):
        try:
            maxmemory, durability = setting("CHAT_REDIS_MAXMEMORY"), setting("CHAT_DURABILITY")
        except ConfigError as exc:
            raise SystemExit(f"configuration error: {exc}") from None
        redis_server = EmbeddedRedis(DATA_DIR / "redis", maxmemory=maxmemory, durability=durability)
        os.environ["REDIS_URL"] = redis_server.start()
        _embedded["redis"] = redis_server
    if not os.environ.get("SECRET_KEY"):
        os.environ["SECRET_KEY"] = _persistent_secret(DATA_DIR / "secret_key")
    try:
        load_settings()
    except ConfigError as exc:
        on_exit(server)
        raise SystemExit(f"configuration error: {exc}") from None


def _persistent_secret(path):
    """One key shared by all workers and kept across restarts, so sessions survive both."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip()


def when_ready(server):
    for listener in server.LISTENERS:
        host, port = listener.sock.getsockname()[:2]
        print(f"Chat is running at http://{host}:{port}/  (Ctrl-C to stop)", flush=True)


def tune_gc():
    """Fewer, cheaper cyclic-GC passes. A worker holds thousands of long-lived
    streams (readers, sinks, sockets); every full collection walks all of them
    and stalls every stream at once. Freezing what start-up built and
    collecting less often cut scenario (a)'s p99 from 99 to 50 ms when each
    stream was still a greenlet (docs/benchmarks-history.md). Reference counting
    still frees almost everything."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 1000)


def post_worker_init(worker):
    """On SIGTERM, end this worker's streams at once so clients resume elsewhere."""
    tune_gc()
    from chatapp.web.context import services_of  # in the worker: Flask only after gevent's patching

    hub = services_of(worker.wsgi).hub
    stop_accepting = worker.handle_exit

    def handle_exit(sig, frame):
        stop_accepting(sig, frame)
        # Not in the signal handler itself: closing takes a gevent lock.
        worker.chat_closing = gevent.spawn(hub.close, Ending.DRAINING)

    signal.signal(signal.SIGTERM, handle_exit)


def worker_exit(server, worker):
    """Live streams no longer hold gunicorn's connection pool, so gunicorn would not wait
    for them: let the hub finish closing them (farewells, presence leaves) first, also
    when the worker ends without a SIGTERM (max_requests, a lost parent)."""
    closing = getattr(worker, "chat_closing", None)
    app = getattr(worker, "wsgi", None)
    if closing is None and hasattr(app, "extensions"):  # in a worker; the arbiter calls this too
        from chatapp.web.context import services_of

        closing = gevent.spawn(services_of(app).hub.close, Ending.DRAINING)
    if closing is not None:
        closing.join(timeout=5)


def child_exit(server, worker):
    """A dead worker's open streams must stop counting (prometheus-client's mark_process_dead,
    done by hand: importing prometheus_client here would import ssl before the workers patch it)."""
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if metrics_dir:
        for path in Path(metrics_dir).glob(f"gauge_live*_{worker.pid}.db"):
            path.unlink(missing_ok=True)


def on_exit(server):
    redis_server = _embedded.pop("redis", None)
    if redis_server is not None:
        redis_server.stop()
    metrics_dir = _embedded.pop("metrics_dir", None)
    if metrics_dir is not None:
        shutil.rmtree(metrics_dir, ignore_errors=True)
