"""A local cluster like the seeds' deployment: nginx in front of several gunicorn
instances sharing one Redis.

    ./scripts/cluster            # nginx on :8080, instances on :5000 and :5001, embedded Redis
    ./scripts/cluster --port 9000 --instances 3 --workers 2

Ctrl-C stops nginx, the instances, then Redis. The fault-injection tests drive
the same class (``Cluster``) to kill and restart its parts.
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chatapp.embedded_redis import EmbeddedRedis  # noqa: E402

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


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


class Instance:
    """One gunicorn (its own master and workers) on one port."""

    def __init__(self, port, redis_url, workers, data_dir, env):
        self.port = port
        self.redis_url = redis_url
        self.workers = workers
        self.data_dir = data_dir
        self.env = env
        self.proc = None

    def start(self):
        env = {**os.environ, **self.env, "REDIS_URL": self.redis_url, "BIND": f"127.0.0.1:{self.port}",
               "WEB_CONCURRENCY": str(self.workers), "CHAT_DATA_DIR": str(self.data_dir),
               "CHAT_TRUSTED_PROXIES": "1"}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        log = open(self.data_dir / f"gunicorn-{self.port}.log", "ab")  # the child process owns it
        self.proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
                                     cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_for_port(self.port, proc=self.proc)
        return self

    def worker_pids(self):
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True,
                             text=True, check=False)
        return [int(pid) for pid in out.stdout.split()]

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Stop the instance; returns how long it took."""
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
        workers = self.worker_pids()
        self.proc.kill()
        self.proc.wait()
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class Cluster:
    def __init__(self, data_dir, port=8080, instance_ports=(5000, 5001), workers=2, env=None):
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.env = env or {}
        self.redis = EmbeddedRedis(self.data_dir / "redis")
        self.instances = [Instance(p, self.redis.url, workers, self.data_dir, self.env) for p in instance_ports]
        self.nginx = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.redis.start()
        for instance in self.instances:
            instance.start()
        self.start_nginx()
        return self

    def render_nginx_conf(self):
        prefix = self.data_dir / "nginx"
        for folder in ("", "client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (prefix / folder).mkdir(parents=True, exist_ok=True)
        values = {
            "user_directive": "user root;" if os.geteuid() == 0 else "",
            "prefix": str(prefix), "listen": f"127.0.0.1:{self.port}", "static_root": str(ROOT / "static"),
            "upstream_servers": "\n".join(f"        server 127.0.0.1:{i.port} max_fails=0;" for i in self.instances),
        }
        conf = (ROOT / "deploy" / "nginx.conf").read_text()
        for name, value in values.items():
            conf = conf.replace("{{" + name + "}}", value)
        path = prefix / "nginx.conf"
        path.write_text(conf)
        return path

    def start_nginx(self):
        conf = self.render_nginx_conf()
        self.nginx = subprocess.Popen([NGINX, "-p", str(conf.parent), "-c", str(conf), "-g", "daemon off;"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        wait_for_port(self.port, proc=self.nginx)

    def stop(self):
        if self.nginx and self.nginx.poll() is None:
            self.nginx.send_signal(signal.SIGQUIT)  # graceful: finish the requests in flight
            try:
                self.nginx.wait(10)
            except subprocess.TimeoutExpired:
                self.nginx.kill()
        for instance in self.instances:
            instance.stop()
        self.redis.stop()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--first-instance-port", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data-dir", default=os.environ.get("CHAT_DATA_DIR", "var") + "/cluster")
    args = parser.parse_args(argv)
    ports = tuple(range(args.first_instance_port, args.first_instance_port + args.instances))
    cluster = Cluster(ROOT / args.data_dir, args.port, ports, args.workers)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    try:
        cluster.start()
        print(f"Chat cluster is running at {cluster.url}/  (instances on {', '.join(map(str, ports))}; "
              f"logs in {cluster.data_dir}; Ctrl-C to stop)", flush=True)
        while not stopping:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
