"""Starting the real thing: one gunicorn launcher for the tests, the benchmarks and
``./scripts/cluster`` (which adds nginx in front, see ``deploy/cluster.py``).

A :class:`Gunicorn` is one instance (a master and its gevent workers) running
``gunicorn -c gunicorn.conf.py wsgi:app`` from this checkout, on a given port
or a free one, with the environment it is given. Its output is kept (and
written to ``log_path`` if given), and :meth:`Gunicorn.start` returns once every
worker has booted.
"""

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# For tests and benchmarks that are not about limits: every rate and per-user cap
# lifted (the ones that are set their own).
LIFTED_LIMITS = {
    "CHAT_RATE_MESSAGES": "1000000 per minute", "CHAT_RATE_ROOMS": "1000000 per minute",
    "CHAT_RATE_STREAMS": "1000000 per minute", "CHAT_RATE_LOGIN_IP": "1000000 per minute",
    "CHAT_RATE_LOGIN_USER": "1000000 per minute", "CHAT_RATE_REGISTER_IP": "1000000 per minute",
    "CHAT_RATE_UNREAD": "1000000 per minute", "CHAT_MAX_STREAMS_PER_USER": "1000000",
    "CHAT_RATE_MEMBERSHIP": "1000000 per minute",
    "CHAT_MAX_ROOMS_PER_USER": "1000000",
}


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port, timeout=20, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for port {port} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


class Gunicorn:
    """One gunicorn instance serving the app from this checkout.

    ``port=0`` binds a free port (read back from gunicorn's log). ``env`` adds to
    (and overrides) this process's environment, a value of None removing it; ``redis_url`` sets ``REDIS_URL``;
    ``secret_key=None`` leaves ``SECRET_KEY`` to gunicorn.conf.py (kept in
    ``CHAT_DATA_DIR``).
    """

    def __init__(self, redis_url, workers=2, env=None, *, port=0, log_path=None, secret_key="test-secret"):
        self.redis_url = redis_url
        self.workers = workers
        self.extra_env = env or {}
        self.port = port
        self.log_path = Path(log_path) if log_path else None
        self.secret_key = secret_key
        self.proc = None
        self.url = None
        self.log = []

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def env(self):
        env = {**os.environ, "REDIS_URL": self.redis_url, "WEB_CONCURRENCY": str(self.workers),
               "BIND": f"127.0.0.1:{self.port}", **self.extra_env}
        for name in [name for name, value in env.items() if value is None]:
            del env[name]  # None in ``env``: the server's own default
        if self.secret_key:
            env["SECRET_KEY"] = self.secret_key
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # each instance's master makes its own
        return env

    def start(self, timeout=30):
        """Start, and return the URL once every worker has booted."""
        self.proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
                                     cwd=ROOT, env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        booted = threading.Event()
        threading.Thread(target=self._read_log, args=(self.proc, booted), daemon=True).start()
        if not booted.wait(timeout):
            self.kill()
            raise RuntimeError(f"gunicorn did not boot {self.workers} workers in {timeout}s:\n" + "".join(self.log))
        if self.proc.poll() is not None:
            raise RuntimeError("gunicorn exited:\n" + "".join(self.log))
        self._wait_ready(timeout)
        return self.url

    def _wait_ready(self, timeout):
        """Until /readyz answers 200: "Booting worker" is logged before a worker has loaded the app."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    return
            except (OSError, http.client.HTTPException):
                pass
            finally:
                conn.close()
            if self.proc.poll() is not None:
                raise RuntimeError("gunicorn exited:\n" + "".join(self.log))
            time.sleep(0.05)
        raise RuntimeError(f"gunicorn answered no /readyz in {timeout}s:\n" + "".join(self.log[-30:]))

    def _read_log(self, proc, booted):
        sink = open(self.log_path, "a") if self.log_path else None
        workers = 0
        try:
            for line in proc.stdout:
                self.log.append(line)
                if sink:
                    sink.write(line)
                    sink.flush()
                match = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", line)
                if match:
                    self.port = int(match[1])
                    self.url = f"http://127.0.0.1:{self.port}"
                workers += "Booting worker" in line
                if workers >= self.workers and self.url:
                    booted.set()
        finally:
            booted.set()  # exited: start() reports it
            if sink:
                sink.close()

    def worker_pids(self):
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True,
                             check=False)
        return sorted(int(pid) for pid in out.stdout.split())

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Stop the instance (SIGTERM: streams end, clients resume elsewhere); return how long it took."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        started = time.monotonic()
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        return time.monotonic() - started

    def kill(self):
        """SIGKILL the master, then its orphaned workers (as a crashed host would lose them)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        workers = self.worker_pids()
        self.proc.kill()
        self.proc.wait()
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def create_user(self, name, password):
        """Create an account the operator's way (``flask users create``), as admins must be;
        an existing account is left as it is."""
        result = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi:app", "users", "create", name,
                                 "--password", password], cwd=ROOT, env=self.env(), capture_output=True,
                                text=True, check=False)
        if result.returncode != 0 and "taken" not in result.stderr:
            raise RuntimeError(f"flask users create {name} failed: {result.stderr}")
