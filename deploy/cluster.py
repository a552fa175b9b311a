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
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chatapp.config import setting  # noqa: E402
from chatapp.embedded_redis import EmbeddedRedis  # noqa: E402
from deploy.launch import Gunicorn, free_port, wait_for_port  # noqa: E402, F401 (free_port: for callers)

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def instance(port, redis_url, workers, data_dir, env):
    """One gunicorn behind nginx: a fixed port, logs in the data folder, nginx's address trusted."""
    env = {**env, "CHAT_DATA_DIR": str(data_dir), "CHAT_TRUSTED_PROXIES": "1"}
    # No SECRET_KEY: gunicorn.conf.py keeps one in CHAT_DATA_DIR, shared by every instance.
    return Gunicorn(redis_url, workers=workers, env=env, port=port, log_path=data_dir / f"gunicorn-{port}.log",
                    secret_key=None)


class Cluster:
    def __init__(self, data_dir, port=8080, instance_ports=(5000, 5001), workers=2, env=None):
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.env = env or {}
        self.redis = EmbeddedRedis(self.data_dir / "redis", maxmemory=setting("CHAT_REDIS_MAXMEMORY"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.instances = [instance(p, self.redis.url, workers, self.data_dir, self.env) for p in instance_ports]
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
