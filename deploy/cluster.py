"""A local cluster like the seeds' deployment: nginx in front of several gunicorn
instances sharing one Redis.

    ./scripts/cluster            # nginx on :8080 (HTTP) and :8443 (HTTPS, HTTP/2), instances on :5000 and :5001
    ./scripts/cluster --port 9000 --https-port 9443 --instances 3 --workers 2
    ./scripts/cluster --tls-cert fullchain.pem --tls-key privkey.pem    # a real certificate

Without ``--tls-cert``/``--tls-key`` (or ``CHAT_TLS_CERT``/``CHAT_TLS_KEY``) nginx uses
a self-signed certificate for localhost and 127.0.0.1, made with the ``openssl`` CLI
on the first run and kept in the data folder (``tls/``) for the next ones.

Ctrl-C stops nginx, the instances, then Redis. The fault-injection tests drive
the same class (``Cluster``) to kill and restart its parts.
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chatapp.ops.config import setting  # noqa: E402
from chatapp.store.embedded_redis import EmbeddedRedis  # noqa: E402
from deploy.launch import Gunicorn, free_port, wait_for_port  # noqa: E402

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
HTTP2_ON_DIRECTIVE = (1, 25, 1)  # from this nginx on: "http2 on;"; before it: "listen ... ssl http2;"


def nginx_version(binary=NGINX):
    """(major, minor, patch) of the nginx binary (it prints "nginx version: nginx/1.22.1" on stderr)."""
    found = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", subprocess.run([binary, "-v"], capture_output=True,
                                                                   text=True, check=True).stderr)
    if not found:
        raise RuntimeError(f"can't tell the version of {binary}")
    return tuple(int(part) for part in found.groups())


def _openssl(*args):
    if not Path(OPENSSL).exists():
        raise RuntimeError("the openssl CLI is needed to make the cluster's certificate: apt-get install openssl "
                           "(./scripts/cluster does it), or pass a certificate with --tls-cert/--tls-key")
    return subprocess.run([OPENSSL, *args], capture_output=True, text=True, check=False)


def self_signed_certificate(folder, days=365):
    """A certificate for localhost and 127.0.0.1 and its key, in ``folder`` (cert.pem, key.pem).

    Made once with the openssl CLI and reused while it is good for another day; a
    missing, unreadable or expiring one is replaced. Files are written under a
    temporary name and renamed, so an interrupted run leaves no half certificate.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "cert.pem", folder / "key.pem"
    if cert.exists() and key.exists():
        good_for_a_day = _openssl("x509", "-checkend", "86400", "-noout", "-in", str(cert)).returncode == 0
        if good_for_a_day:
            return cert, key
    new_cert, new_key = folder / "cert.pem.new", folder / "key.pem.new"
    os.close(os.open(new_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))  # private before a byte is in it
    made = _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-days", str(days), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1",
                    "-keyout", str(new_key), "-out", str(new_cert))
    if made.returncode != 0:
        raise RuntimeError(f"openssl could not make a certificate: {made.stderr.strip()}")
    new_key.replace(key)
    new_cert.replace(cert)
    return cert, key


def instance(port, redis_url, workers, data_dir, env):
    """One gunicorn behind nginx: a fixed port, logs in the data folder, nginx's address trusted."""
    env = {**env, "CHAT_DATA_DIR": str(data_dir), "CHAT_TRUSTED_PROXIES": "1"}
    # No SECRET_KEY: gunicorn.conf.py keeps one in CHAT_DATA_DIR, shared by every instance.
    return Gunicorn(redis_url, workers=workers, env=env, port=port, log_path=data_dir / f"gunicorn-{port}.log",
                    secret_key=None)


class Cluster:
    """nginx on ``port`` (HTTP/1.1) and ``https_port`` (HTTPS with HTTP/2; a free port when not
    given) in front of one gunicorn per ``instance_ports``, sharing one embedded Redis.

    ``tls_cert``/``tls_key``: the certificate nginx serves; by default a self-signed one
    kept in ``data_dir/tls/`` (see :func:`self_signed_certificate`).
    """

    def __init__(self, data_dir, port=8080, instance_ports=(5000, 5001), workers=2, *, env=None,
                 https_port=None, tls_cert=None, tls_key=None):
        if bool(tls_cert) != bool(tls_key):
            raise ValueError("give both tls_cert and tls_key, or neither")
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.https_port = https_port or free_port()
        self.tls_cert = Path(tls_cert).resolve() if tls_cert else None
        self.tls_key = Path(tls_key).resolve() if tls_key else None
        self.env = env or {}
        self.redis = EmbeddedRedis(self.data_dir / "redis", maxmemory=setting("CHAT_REDIS_MAXMEMORY"),
                                   durability=setting("CHAT_DURABILITY"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.instances = [instance(p, self.redis.url, workers, self.data_dir, self.env) for p in instance_ports]
        self.nginx = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def https_url(self):
        """The same site over HTTPS, where browsers speak HTTP/2."""
        return f"https://127.0.0.1:{self.https_port}"

    def certificate(self):
        """(cert, key) paths nginx serves: the ones given, or the cluster's self-signed pair."""
        if self.tls_cert:
            return self.tls_cert, self.tls_key
        return self_signed_certificate(self.data_dir / "tls")

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
        cert, key = self.certificate()
        http2_on = nginx_version() >= HTTP2_ON_DIRECTIVE
        values = {
            "user_directive": "user root;" if os.geteuid() == 0 else "",
            "prefix": str(prefix), "listen": f"127.0.0.1:{self.port}", "static_root": str(ROOT / "static"),
            "listen_tls": f"127.0.0.1:{self.https_port}", "listen_http2": "" if http2_on else " http2",
            "http2_on": "http2 on;" if http2_on else "# (http2 is on the listen line: nginx < 1.25.1)",
            "tls_cert": str(cert), "tls_key": str(key),
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
        wait_for_port(self.https_port, proc=self.nginx)

    def stop_nginx(self):
        if self.nginx and self.nginx.poll() is None:
            self.nginx.send_signal(signal.SIGQUIT)  # graceful: finish the requests in flight
            try:
                self.nginx.wait(10)
            except subprocess.TimeoutExpired:
                self.nginx.kill()
                self.nginx.wait()

    def stop(self):
        self.stop_nginx()
        for instance in self.instances:
            instance.stop()
        self.redis.stop()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")), help="plain HTTP")
    parser.add_argument("--https-port", type=int, default=int(os.environ.get("HTTPS_PORT", "8443")),
                        help="HTTPS with HTTP/2")
    parser.add_argument("--tls-cert", default=os.environ.get("CHAT_TLS_CERT"),
                        help="certificate (chain) in PEM; default: a self-signed one in the data folder")
    parser.add_argument("--tls-key", default=os.environ.get("CHAT_TLS_KEY"), help="its private key in PEM")
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--first-instance-port", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data-dir", default=os.environ.get("CHAT_DATA_DIR", "var") + "/cluster")
    args = parser.parse_args(argv)
    ports = tuple(range(args.first_instance_port, args.first_instance_port + args.instances))
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    cluster = Cluster(ROOT / args.data_dir, args.port, ports, args.workers, https_port=args.https_port,
                      tls_cert=args.tls_cert, tls_key=args.tls_key)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    try:
        cluster.start()
        cert, _ = cluster.certificate()
        kind = "given" if args.tls_cert else "self-signed, kept for later runs"
        print(f"Chat cluster is running at {cluster.url}/\n"
              f"  and over HTTPS with HTTP/2 at {cluster.https_url}/ (certificate {cert}: {kind})\n"
              f"  instances on {', '.join(map(str, ports))}; logs in {cluster.data_dir}; Ctrl-C to stop", flush=True)
        while not stopping:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
