#!/usr/bin/env python3
"""Load generator for SSE / long-poll chat servers: raw HTTP/1.1 on asyncio (uvloop if installed).

Run by ``bench/run.py`` as its own process::

    python bench/loadgen.py run SPEC.json      # one scenario, prints one JSON result line
    python bench/loadgen.py ceiling            # this generator's own limit on one core

Every published message carries ``bm:<lane>:<seq>:<send time ns>:`` in its text. A
*lane* is one sequential publisher (one request in flight), so within a lane the
server's acceptance order is the seq order: a reader seeing a lower seq after a
higher one of the same lane counts a reorder, a seq seen twice a duplicate, and
an accepted seq never seen a loss. Latency is receive wall clock minus send wall
clock (same machine, so one clock).

Readers are asyncio Protocols parsing bytes incrementally: HTTP head, then the
body either chunked (gunicorn) or raw until close (nginx/nchan), then SSE events
split on blank lines (or, for long-poll, whole response bodies). The readers run
in ``procs`` forked processes; the parent process publishes and coordinates.
"""

import array
import asyncio
import base64
import json
import math
import multiprocessing
import os
import random
import resource
import signal
import sys
import time

try:
    import uvloop
except ImportError:  # optional: plain asyncio works, just slower
    uvloop = None

MARK = b"bm:"


# --------------------------------------------------------------------------- helpers

def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def new_loop():
    loop = uvloop.new_event_loop() if uvloop else asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    return loop


def basic_auth(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def percentiles(values, points=(50, 90, 99)):
    """Nearest-rank percentiles of a list of floats, plus max and mean."""
    if not values:
        return {f"p{p}": None for p in points} | {"max": None, "mean": None}
    ordered = sorted(values)
    n = len(ordered)
    out = {f"p{p}": round(ordered[min(n - 1, max(0, math.ceil(p / 100 * n) - 1))], 3) for p in points}
    out["max"] = round(ordered[-1], 3)
    out["mean"] = round(sum(ordered) / n, 3)
    return out


def pss_kib(pids):
    """Sum of Pss (KiB) over the given pids, from /proc/<pid>/smaps_rollup."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
    return total


def cpu_by_command(pids):
    """{command name: CPU seconds (user+system)} summed over the given pids."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                raw = fh.read()
        except (FileNotFoundError, ProcessLookupError):
            continue
        name = raw[raw.index("(") + 1:raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2:].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def process_tree(roots):
    """The given pids and all their descendants (via /proc/<pid>/task/*/children)."""
    seen, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.append(pid)
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except (FileNotFoundError, ProcessLookupError):
            pass
    return seen


# --------------------------------------------------------------------------- systems

class Target:
    """How to talk to one system: request bytes for subscribe / poll / publish."""

    def __init__(self, spec):
        self.system = spec["system"]
        self.host = spec.get("host", "127.0.0.1")
        self.port = spec["port"]
        self.hostport = f"{self.host}:{self.port}".encode()
        self.users = [basic_auth(u, p) for u, p in spec.get("users") or []]
        self.posters = [basic_auth(u, p) for u, p in spec.get("posters") or []]
        self.poll_timeout = spec.get("poll_timeout", 25)
        self.resumable = self.system in ("chat", "nchan", "fake")

    def _auth(self, index, pool):
        if self.system != "chat" or not pool:
            return b""
        return b"Authorization: " + pool[index % len(pool)].encode() + b"\r\n"

    def sse_request(self, room, index, last_id=None):
        if self.system == "chat":
            path = f"/api/rooms/{room}/events"
        else:  # nchan, flask-sse and the fake server share /sub/<room>
            path = f"/sub/{room}"
        extra = b"Last-Event-ID: " + last_id + b"\r\n" if last_id and self.resumable else b""
        return (b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + self.hostport + b"\r\n"
                + self._auth(index, self.users) + b"Accept: text/event-stream\r\nCache-Control: no-cache\r\n"
                + extra + b"\r\n")

    def poll_request(self, room, index, state):
        """``state``: chat: the cursor (bytes) or None; nchan: (last_modified, etag) or None."""
        if self.system == "chat":
            if state is None:
                path = f"/api/rooms/{room}/poll?timeout=0".encode()
            else:
                path = f"/api/rooms/{room}/poll?timeout={self.poll_timeout}&cursor=".encode() + state
            extra = b""
        elif self.system == "nchan":
            path = f"/lp/{room}".encode()
            extra = (b"If-Modified-Since: " + state[0] + b"\r\nIf-None-Match: " + state[1] + b"\r\n"
                     if state else b"")
        else:
            raise ValueError(f"{self.system} has no long-poll")
        return (b"GET " + path + b" HTTP/1.1\r\nHost: " + self.hostport + b"\r\n"
                + self._auth(index, self.users) + extra + b"\r\n")

    def publish_request(self, room, lane, seq, run_id):
        """(request bytes, send_ns): the send time is taken here, just before the write."""
        ns = time.time_ns()
        text = f"bm:{lane}:{seq}:{ns}:"
        if self.system == "chat":
            path = f"/api/rooms/{room}/messages"
            body = json.dumps({"text": text, "client_id": f"{run_id}.{lane}.{seq}"}).encode()
            ctype = b"application/json"
        else:
            path = f"/pub/{room}"
            body = text.encode()
            ctype = b"text/plain"
        head = (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: " + self.hostport + b"\r\n"
                + self._auth(lane, self.posters) + b"Content-Type: " + ctype
                + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        return head + body

    def guess_request(self, user, password):
        """A password guess: ``GET /api/auth/me`` with HTTP Basic, one request per connection."""
        return (b"GET /api/auth/me HTTP/1.1\r\nHost: " + self.hostport + b"\r\nAuthorization: "
                + basic_auth(user, password).encode() + b"\r\nConnection: close\r\n\r\n")


# --------------------------------------------------------------------------- readers

class Tally:
    """One process's counters, shared by its readers (hot path: plain attributes)."""

    def __init__(self):
        self.lat = array.array("f")  # ms, first receipt of each expected message
        # With spec["timeline"]: the send second (since "go") of each entry of lat.
        self.secs = None
        self.go_ns = 0
        self.deliveries = 0  # first receipts
        self.dups = 0
        self.reorders = 0
        self.server_closes = 0
        self.drops = 0
        self.reconnects = 0
        self.reconnect_failures = 0
        self.errors = {}
        self.bytes = 0

    def error(self, key):
        self.errors[key] = self.errors.get(key, 0) + 1


class BaseReader(asyncio.Protocol):
    """Shared state: message accounting per lane, connection bookkeeping."""

    def __init__(self, ctx, index, room):
        self.ctx = ctx
        self.tally = ctx.tally
        self.index = index
        self.room = room
        self.seen = {}  # lane -> bytearray bitmap of seqs
        self.high = {}  # lane -> highest seq seen
        self.got = 0  # distinct messages received
        self.transport = None
        self.opened = None  # future: first body bytes of the first response
        self.stopping = False
        self.dropping = False
        self.connected = False
        self.connect_started = 0.0
        self.connect_secs = None

    # -- accounting (the hot path)
    def _scan(self, block, now_ns):
        """Count every ``bm:<lane>:<seq>:<ns>:`` in ``block``; return nothing."""
        find = block.find
        pos = find(MARK)
        if pos < 0:
            return
        tally = self.tally
        lat = tally.lat
        secs = tally.secs
        seen, high = self.seen, self.high
        while pos >= 0:
            a = pos + 3
            b = find(b":", a)
            c = find(b":", b + 1)
            d = find(b":", c + 1)
            try:
                lane = int(block[a:b])
                seq = int(block[b + 1:c])
                ns = int(block[c + 1:d])
            except ValueError:
                tally.error("bad_marker")
                pos = find(MARK, a)
                continue
            bitmap = seen.get(lane)
            if bitmap is None:
                bitmap = seen[lane] = bytearray(max(1024, seq + 1))
                high[lane] = -1
            elif seq >= len(bitmap):
                bitmap.extend(bytes(max(seq + 1 - len(bitmap), len(bitmap))))
            if bitmap[seq]:
                tally.dups += 1
            else:
                bitmap[seq] = 1
                self.got += 1
                tally.deliveries += 1
                lat.append((now_ns - ns) / 1e6)
                if secs is not None:
                    secs.append(min(65535, max(0, ns - tally.go_ns) // 1_000_000_000))
                if seq < high[lane]:
                    tally.reorders += 1
                else:
                    high[lane] = seq
            pos = find(MARK, d)

    # -- connection lifecycle
    async def open(self, attempts=5):
        loop = self.ctx.loop
        for attempt in range(attempts):
            self.opened = loop.create_future()
            try:
                await loop.create_connection(lambda: self, self.ctx.target.host, self.ctx.target.port)
                await asyncio.wait_for(self.opened, self.ctx.open_timeout)
                return True
            except (TimeoutError, OSError, ConnectionError, HTTPError) as exc:
                self.tally.error(f"open:{type(exc).__name__}:{exc}"[:80])
                if self.transport is not None:
                    self.transport.abort()
                if self.stopping:
                    return False
                await asyncio.sleep(min(2.0, 0.1 * 2 ** attempt) * (0.5 + random.random()))
        return False

    def _opened(self):
        if self.opened is not None and not self.opened.done():
            self.opened.set_result(True)

    def _failed(self, exc):
        if self.opened is not None and not self.opened.done():
            self.opened.set_exception(exc)

    def _established(self):
        opened = self.opened
        return opened is not None and opened.done() and not opened.cancelled() and opened.exception() is None

    def connection_lost(self, exc):
        self.connected = False
        self.transport = None
        if not self._established():
            # Still opening: open() sees the failure and retries. (Reconnecting here as well
            # would leave two connections, and duplicates, for one reader.)
            self.dropping = False
            self._failed(ConnectionError("closed before the stream opened"))
            return
        if self.stopping:
            return
        if self.dropping:
            self.dropping = False
            delay = self.ctx.reconnect_delay
        else:
            self.tally.server_closes += 1
            delay = self.ctx.server_close_delay
        self.ctx.loop.call_later(delay, self._reconnect)

    def _reconnect(self):
        if self.stopping:
            return
        self.tally.reconnects += 1

        async def go():
            if not await self.open(attempts=10):
                self.tally.reconnect_failures += 1
        self.ctx.loop.create_task(go())

    def drop(self):
        """Cut the connection like a network failure; the reader resumes from its last id."""
        if self.transport is not None and not self.stopping:
            self.tally.drops += 1
            self.dropping = True
            self.transport.abort()

    def stop(self):
        self.stopping = True
        if self.transport is not None:
            self.transport.abort()

    def expected_missing(self, expected):
        """Messages the reader should have had (lane -> (sent, failed set)) and did not get."""
        missing = 0
        for lane, (sent, failed) in expected.items():
            bitmap = self.seen.get(lane)
            have = 0 if bitmap is None else sum(bitmap[:sent]) - sum(1 for s in failed if s < len(bitmap) and bitmap[s])
            missing += sent - len(failed) - have
        return missing


class HTTPError(Exception):
    pass


class _HeadParser:
    """Mixin: collect the HTTP head, then hand body bytes on (chunked or identity)."""

    def _reset_http(self):
        self.head = b""
        self.in_body = False
        self.chunked = False
        self.length = None  # Content-Length, if any
        self.remaining = 0  # bytes left in the current chunk
        self.crlf = 0  # bytes of CRLF still to skip after a chunk
        self.cbuf = b""  # an incomplete chunk-size line
        self.body_done = False
        self.status = 0
        self.headers = {}

    def _head_or_abort(self, data):
        """Feed response-head bytes; the body bytes that follow, None for "need more",
        or False when the head was malformed (the connection is already aborted)."""
        try:
            return self._feed_head(data)
        except HTTPError as exc:
            self._failed(exc)
            self.transport.abort()
            return False

    def _feed_head(self, data):
        """Return body bytes after the head, or None while the head is incomplete."""
        head = self.head + data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            self.head = head
            return None
        raw, rest = head[:end], head[end + 4:]
        self.head = b""
        lines = raw.split(b"\r\n")
        try:
            self.status = int(lines[0].split(b" ", 2)[1])
        except (IndexError, ValueError):
            raise HTTPError(f"bad status line {lines[0][:40]!r}") from None
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        self.headers = headers
        self.chunked = headers.get(b"transfer-encoding", b"").lower() == b"chunked"
        cl = headers.get(b"content-length")
        self.length = int(cl) if cl is not None and not self.chunked else None
        self.in_body = True
        return rest

    def _dechunk(self, data):
        """Chunked transfer decoding, incremental; returns the payload bytes in ``data``."""
        if self.cbuf:
            data = self.cbuf + data
            self.cbuf = b""
        out = []
        pos, n = 0, len(data)
        while pos < n:
            if self.remaining:
                take = min(self.remaining, n - pos)
                out.append(data[pos:pos + take])
                pos += take
                self.remaining -= take
                if not self.remaining:
                    self.crlf = 2
                continue
            if self.crlf:
                take = min(self.crlf, n - pos)
                pos += take
                self.crlf -= take
                continue
            eol = data.find(b"\r\n", pos)
            if eol < 0:
                self.cbuf = data[pos:]
                break
            size = int(data[pos:eol].split(b";", 1)[0], 16)
            pos = eol + 2
            if size == 0:
                self.body_done = True
                break
            self.remaining = size
        if len(out) == 1:
            return out[0]
        return b"".join(out)


class SSEReader(_HeadParser, BaseReader):
    """One EventSource-like stream: reconnects with Last-Event-ID (where the system has it)."""

    def __init__(self, ctx, index, room):
        BaseReader.__init__(self, ctx, index, room)
        self.last_id = None
        self.buf = b""
        self._reset_http()

    def connection_made(self, transport):
        self.transport = transport
        self.connected = True
        self._reset_http()
        self.buf = b""
        transport.write(self.ctx.target.sse_request(self.room, self.index, self.last_id))

    def data_received(self, data):
        self.tally.bytes += len(data)
        if not self.in_body:
            data = self._head_or_abort(data)
            if data is None or data is False:
                return
            if self.status != 200:
                self.tally.error(f"status:{self.status}")
                self._failed(HTTPError(f"status {self.status}"))
                self.transport.abort()
                return
            if self.ctx.open_on_headers:
                self._opened()
            if not data:
                return
        if self.chunked:
            data = self._dechunk(data)
            if not data:
                return
        self._opened()
        buf = self.buf + data if self.buf else data
        end = buf.rfind(b"\n\n")
        if end < 0:
            self.buf = buf
            return
        block = buf[:end]
        self.buf = buf[end + 2:]
        self._scan(block, time.time_ns())
        # The resume cursor: the last "id:" line in the block.
        i = block.rfind(b"\nid:")
        if i >= 0 or block.startswith(b"id:"):
            i += 1
            j = block.find(b"\n", i)
            self.last_id = block[i + 3:j if j >= 0 else len(block)].strip()


class PollReader(_HeadParser, BaseReader):
    """Long-poll loop on one keep-alive connection: request, whole response, next request."""

    def __init__(self, ctx, index, room):
        BaseReader.__init__(self, ctx, index, room)
        self.state = None  # chat: cursor bytes; nchan: (Last-Modified, Etag)
        self.body = []
        self.body_len = 0
        self.requests = 0
        self._reset_http()

    def connection_made(self, transport):
        self.transport = transport
        self.connected = True
        self._send()
        if self.ctx.target.system == "nchan":
            # nchan answers only when a message arrives: "open" is the request sent.
            self.ctx.loop.call_soon(self._opened)

    def _send(self):
        self._reset_http()
        self.body, self.body_len = [], 0
        self.requests += 1
        self.transport.write(self.ctx.target.poll_request(self.room, self.index, self.state))

    def data_received(self, data):
        self.tally.bytes += len(data)
        while data:
            if not self.in_body:
                data = self._head_or_abort(data)
                if data is None or data is False:
                    return
            if self.chunked:
                part = self._dechunk(data)
                data = b""  # a response ends the exchange: no pipelining, nothing follows
                if part:
                    self.body.append(part)
                if not self.body_done:
                    return
            else:
                need = (self.length or 0) - self.body_len
                part, data = data[:need], data[need:]
                if part:
                    self.body.append(part)
                    self.body_len += len(part)
                if self.body_len < (self.length or 0):
                    return
            self._response(b"".join(self.body))

    def _response(self, body):
        status, headers = self.status, self.headers
        now = time.time_ns()
        if status == 200:
            self._scan(body, now)
            if self.ctx.target.system == "chat":
                i = body.find(b'"cursor":"')
                if i >= 0:
                    j = body.find(b'"', i + 10)
                    self.state = body[i + 10:j]
            else:
                self.state = (headers.get(b"last-modified", b""), headers.get(b"etag", b"0"))
            self._opened()
        elif status in (304, 408):
            pass  # nchan: nothing new before its timeout; ask again
        else:
            self.tally.error(f"poll_status:{status}")
            self._failed(HTTPError(f"status {status}"))
            self.transport.abort()
            return
        if headers.get(b"connection", b"").lower() == b"close":
            self.dropping = True  # not a failure: reconnect at once and resend with self.state
            self.transport.close()
            return
        self._send()

    def connection_lost(self, exc):
        BaseReader.connection_lost(self, exc)


# --------------------------------------------------------------------------- reader process

class ReaderContext:
    def __init__(self, spec, loop):
        self.spec = spec
        self.loop = loop
        self.target = Target(spec)
        self.tally = Tally()
        self.open_timeout = spec.get("open_timeout", 60.0)
        self.reconnect_delay = spec.get("reconnect_delay", 0.0)
        self.server_close_delay = spec.get("server_close_delay", 0.5)
        # flask-sse sends nothing until the first message: its stream is open with the headers.
        self.open_on_headers = spec.get("open_on_headers", False)


def _send(conn, msg):
    os.set_blocking(conn.fileno(), True)  # an event loop's add_reader makes it non-blocking
    conn.send(msg)


class ReaderProcess:
    """A forked reader process: open every stream, report, run until told to stop, report."""

    def __init__(self, conn, spec, indexes):
        self.conn = conn
        self.spec = spec
        self.loop = new_loop()
        self.ctx = ReaderContext(spec, self.loop)
        rooms = spec["rooms"]
        cls = PollReader if spec.get("mode") == "poll" else SSEReader
        self.readers = [cls(self.ctx, i, rooms[i % len(rooms)]) for i in indexes]
        self.commands = asyncio.Queue()
        self.loop.add_reader(conn.fileno(), self._on_command)

    def _on_command(self):
        os.set_blocking(self.conn.fileno(), True)  # recv needs whole messages
        self.commands.put_nowait(self.conn.recv())

    async def _command(self, kind):
        msg = await self.commands.get()
        assert msg["type"] == kind, msg
        return msg

    async def open_all(self):
        sem = asyncio.Semaphore(self.spec.get("connect_concurrency", 500))

        async def one(reader):
            async with sem:
                t = time.monotonic()
                ok = await reader.open()
                reader.connect_secs = time.monotonic() - t if ok else None
                return ok

        return sum(await asyncio.gather(*(one(r) for r in self.readers)))

    def schedule_drops(self, delay0):
        drops = self.spec.get("drops", 0)
        rnd = random.Random(self.spec.get("seed", 1) * 1000 + os.getpid())
        for r in self.readers:
            for _ in range(drops):
                self.loop.call_later(delay0 + rnd.uniform(0.1, 0.9) * self.spec["duration"], r.drop)

    async def drain(self, per_reader_expected):
        """Until every reader has every accepted message, or the drain time is up."""
        deadline = time.monotonic() + self.spec.get("drain", 5.0)
        while time.monotonic() < deadline:
            if all(r.got >= per_reader_expected[r.index] for r in self.readers):
                return
            await asyncio.sleep(0.05)

    async def main(self):
        started = time.monotonic()
        opened = await self.open_all()
        per = [r.connect_secs * 1000 for r in self.readers if r.connect_secs is not None]
        _send(self.conn, {"type": "ready", "opened": opened, "failed": len(self.readers) - opened,
                          "connect_secs": time.monotonic() - started, "per_connect_ms": per})
        go = await self._command("go")
        if self.spec.get("timeline"):
            self.ctx.tally.go_ns = int(go["at"] * 1e9)
            self.ctx.tally.secs = array.array("H")
        cpu0, t0 = time.process_time(), time.monotonic()
        self.schedule_drops(max(0.0, go["at"] - time.time()))
        stop = await self._command("stop")
        expected = {int(k): (v[0], set(v[1])) for k, v in stop["expected"].items()}
        room_lanes = {}
        for lane, room in stop["lane_rooms"].items():
            room_lanes.setdefault(room, {})[int(lane)] = expected[int(lane)]
        per_reader = {r.index: sum(n - len(f) for n, f in room_lanes.get(r.room, {}).values())
                      for r in self.readers}
        await self.drain(per_reader)
        t1, cpu = time.monotonic(), time.process_time() - cpu0
        for r in self.readers:
            r.stop()
        missing = [r.expected_missing(room_lanes.get(r.room, {})) for r in self.readers]
        await asyncio.sleep(0.05)
        self.loop.remove_reader(self.conn.fileno())
        tally = self.ctx.tally
        _send(self.conn, {
            "type": "result", "expected": sum(per_reader.values()), "deliveries": tally.deliveries,
            "loss": sum(missing), "readers_with_loss": sum(1 for m in missing if m), "dups": tally.dups,
            "reorders": tally.reorders, "server_closes": tally.server_closes, "drops": tally.drops,
            "reconnects": tally.reconnects, "reconnect_failures": tally.reconnect_failures,
            "errors": tally.errors, "bytes": tally.bytes, "cpu_secs": cpu, "wall_secs": t1 - t0,
            "poll_requests": sum(getattr(r, "requests", 0) for r in self.readers),
            "lat": tally.lat.tobytes(), "secs": tally.secs.tobytes() if tally.secs is not None else None})


def reader_process(conn, spec, indexes):
    """Entry point of a forked reader process."""
    raise_nofile()
    proc = ReaderProcess(conn, spec, indexes)
    try:
        proc.loop.run_until_complete(proc.main())
    finally:
        proc.loop.close()
        conn.close()
        os._exit(0)


# --------------------------------------------------------------------------- publisher

class HttpConn:
    """A keep-alive HTTP/1.1 client connection for POSTs (one request in flight)."""

    def __init__(self, host, port):
        self.host, self.port = host, port
        self.reader = self.writer = None

    def close(self):
        if self.writer is not None:
            self.writer.transport.abort()
        self.reader = self.writer = None

    async def request(self, make, tries=3):
        """``make()`` builds the request bytes (taking the send time); returns the status (0: failed)."""
        for attempt in range(tries):
            try:
                if self.writer is None:
                    self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
                self.writer.write(make())
                head = await self.reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                status = int(lines[0].split(b" ", 2)[1])
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    headers[name.strip().lower()] = value.strip()
                if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
                    while True:
                        size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                        await self.reader.readexactly(size + 2)
                        if size == 0:
                            break
                else:
                    await self.reader.readexactly(int(headers.get(b"content-length", b"0")))
                if headers.get(b"connection", b"").lower() == b"close":
                    self.close()
                return status
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError):
                self.close()
                if attempt + 1 < tries:
                    await asyncio.sleep(0.05 * (attempt + 1))
        return 0


async def publish(spec, target, lane_rooms, go_mono, run_id):
    """Open-loop (``rate`` msgs/s over all rooms) or closed-loop lanes; returns per-lane results."""
    duration = spec["duration"]
    closed = spec.get("closed_loop", False)
    rooms = spec["rooms"]
    per_room = {}
    for lane, room in lane_rooms.items():
        per_room.setdefault(room, []).append(lane)
    results = {}
    post_ms = array.array("f")
    end = go_mono + duration

    async def run_lane(lane, room, interval, offset):
        conn = HttpConn(target.host, target.port)
        seq, failed, lag = 0, [], 0.0
        try:
            while True:
                now = time.monotonic()
                if closed:
                    if now >= end:
                        break
                else:
                    due = go_mono + offset + seq * interval
                    if due >= end:
                        break
                    if due > now:
                        await asyncio.sleep(due - now)
                    else:
                        lag = max(lag, now - due)
                t = time.monotonic()
                status = await conn.request(lambda s=seq: target.publish_request(room, lane, s, run_id))
                post_ms.append((time.monotonic() - t) * 1000)
                if not 200 <= status < 300:
                    failed.append(seq)
                seq += 1
        finally:
            conn.close()
            results[lane] = (seq, failed, lag)

    tasks = []
    rnd = random.Random(spec.get("seed", 1))
    for room in rooms:
        lanes = per_room[room]
        if closed:
            for lane in lanes:
                tasks.append(run_lane(lane, room, 0, 0))
        else:
            room_rate = spec["rate"] / len(rooms)
            lane_interval = len(lanes) / room_rate
            start = rnd.uniform(0, 1 / room_rate)
            for k, lane in enumerate(lanes):
                tasks.append(run_lane(lane, room, lane_interval, start + k / room_rate))
    await asyncio.gather(*tasks)
    return results, post_ms


def guess_names(spec, count, seed):
    """Who each guess is at: even guesses an existing reader account (round robin), odd ones
    a random valid username that doesn't exist; every password is wrong."""
    rnd = random.Random(seed)
    accounts = [u for u, _ in spec.get("users") or []] or ["nobody"]
    out = []
    for k in range(count):
        user = accounts[(k // 2) % len(accounts)] if k % 2 == 0 else f"guess{rnd.getrandbits(40):010x}"
        out.append((user, f"wrong-{rnd.getrandbits(48):012x}"))
    return out


async def _guess(target, user, password):
    """One guess on its own connection: the HTTP status (the body is read to the end)."""
    reader, writer = await asyncio.open_connection(target.host, target.port)
    try:
        writer.write(target.guess_request(user, password))
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        if length is None:
            await reader.read()  # Connection: close: the body ends with the connection
        else:
            await reader.readexactly(length)
        return status
    finally:
        writer.close()


async def guess_flood(spec, target, go_mono):
    """Open loop: ``flood_rate`` wrong-password requests/s, evenly spaced over the publishing
    window, each sent on time whatever the earlier ones are still waiting for. Counts the
    answers by status (0: no answer: connection error or ``flood_timeout``)."""
    rate, duration = spec["flood_rate"], spec["duration"]
    timeout = spec.get("flood_timeout", 30.0)
    guesses = guess_names(spec, max(1, int(rate * duration)), spec.get("seed", 1))
    statuses, answer_ms, errors, by_sec = {}, {}, {}, {}
    lag = 0.0

    async def one(user, password):
        t = time.monotonic()
        sec = by_sec.setdefault(str(int(t - go_mono)), {})
        try:
            status = await asyncio.wait_for(_guess(target, user, password), timeout)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError,
                IndexError) as exc:
            status = 0
            key = type(exc).__name__
            errors[key] = errors.get(key, 0) + 1
        statuses[status] = statuses.get(status, 0) + 1
        sec[str(status)] = sec.get(str(status), 0) + 1
        answer_ms.setdefault(status, []).append((time.monotonic() - t) * 1000)

    tasks = []
    for k, (user, password) in enumerate(guesses):
        due = go_mono + k / rate
        now = time.monotonic()
        if due > now:
            await asyncio.sleep(due - now)
        else:
            lag = max(lag, now - due)
        tasks.append(asyncio.ensure_future(one(user, password)))
    sent_secs = max(1e-9, time.monotonic() - go_mono)
    await asyncio.gather(*tasks)
    return {"rate": rate, "sent": len(guesses), "sent_per_s": round(len(guesses) / max(sent_secs, duration), 1),
            "max_lag_s": round(lag, 3), "users": "half existing reader accounts, half unknown names",
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "answer_ms": {str(k): percentiles(v) for k, v in sorted(answer_ms.items())},
            "errors": errors, "statuses_by_second": by_sec}


def _merge_latencies(parts):
    """The reader processes' latency arrays (and send seconds, if kept), concatenated."""
    lat, secs = array.array("f"), array.array("H")
    for part in parts:
        chunk = array.array("f")
        chunk.frombytes(part.pop("lat"))
        lat.extend(chunk)
        raw = part.pop("secs")
        if raw is not None:
            secs.frombytes(raw)
    return lat, secs


def by_second(lat, secs):
    """Delivery latency per second of sending: [{"s", "n", "p50", "p99", "max"}]."""
    buckets = {}
    for ms, sec in zip(lat, secs):
        buckets.setdefault(sec, []).append(ms)
    out = []
    for sec in sorted(buckets):
        p = percentiles(buckets[sec])
        out.append({"s": sec, "n": len(buckets[sec]), "p50": p["p50"], "p99": p["p99"], "max": p["max"]})
    return out


def plan_lanes(spec):
    """lane id -> room. Open loop: one lane per ``lane_rate`` msgs/s of a room; closed: ``posters_per_room``."""
    rooms = spec["rooms"]
    if spec.get("closed_loop"):
        per = spec.get("posters_per_room", 2)
    elif spec.get("rate", 0) > 0:
        per = max(1, math.ceil(spec["rate"] / len(rooms) / spec.get("lane_rate", 10)))
    else:
        return {}
    lanes, lane = {}, 0
    for room in rooms:
        for _ in range(per):
            lanes[lane] = room
            lane += 1
    return lanes


# --------------------------------------------------------------------------- coordinator

def run_scenario(spec):
    """Fork the reader processes, open every stream, publish, collect. Returns a result dict."""
    raise_nofile()
    readers = spec["readers"]
    procs = max(1, min(spec.get("procs", 1), readers or 1))
    pids = process_tree(spec.get("server_pids") or [])
    mem_before = pss_kib(pids) if pids and spec.get("measure_memory") else None
    ctx = multiprocessing.get_context("fork")
    children = []
    for p in range(procs):
        parent_end, child_end = ctx.Pipe()
        indexes = list(range(p, readers, procs))
        proc = ctx.Process(target=reader_process, args=(child_end, spec, indexes), daemon=True)
        proc.start()
        child_end.close()
        children.append((proc, parent_end))
    loop = new_loop()
    try:
        return loop.run_until_complete(_coordinate(spec, children, pids, mem_before))
    finally:
        for proc, _end in children:
            if proc.is_alive():
                proc.kill()
            proc.join(2)
        loop.close()


async def _recv(loop, end, timeout):
    fut = loop.create_future()

    def ready():
        if not fut.done():
            loop.remove_reader(end.fileno())
            os.set_blocking(end.fileno(), True)  # add_reader made it non-blocking; recv wants whole messages
            try:
                fut.set_result(end.recv())
            except EOFError as exc:
                fut.set_exception(exc)
    loop.add_reader(end.fileno(), ready)
    try:
        return await asyncio.wait_for(fut, timeout)
    finally:
        loop.remove_reader(end.fileno())


async def _coordinate(spec, children, pids, mem_before):
    loop = asyncio.get_running_loop()
    target = Target(spec)
    t_connect = time.monotonic()
    readies = await asyncio.gather(*(_recv(loop, end, spec.get("connect_timeout", 300)) for _, end in children))
    connect_wall = time.monotonic() - t_connect
    per_connect = sorted(ms for r in readies for ms in r.pop("per_connect_ms"))
    result = {"system": spec["system"], "scenario": spec.get("scenario"), "mode": spec.get("mode", "sse"),
              "readers": spec["readers"], "rooms": len(spec["rooms"]), "procs": len(children),
              "opened": sum(r["opened"] for r in readies), "open_failed": sum(r["failed"] for r in readies),
              "connect_secs": round(connect_wall, 3), "connect_ms": percentiles(per_connect)}
    await asyncio.sleep(spec.get("settle", 1.0))
    if mem_before is not None:
        result["pss_before_kib"] = mem_before
        result["pss_after_kib"] = pss_kib(process_tree(spec.get("server_pids")))
        if result["opened"]:
            result["kib_per_stream"] = round((result["pss_after_kib"] - mem_before) / result["opened"], 2)
    lane_rooms = plan_lanes(spec)
    go_wall = time.time() + 0.2
    go_mono = time.monotonic() + 0.2
    for _, end in children:
        _send(end, {"type": "go", "at": go_wall})
    cpu0 = time.process_time()
    server_cpu0 = cpu_by_command(process_tree(spec.get("server_pids") or []))
    load0 = os.getloadavg()[0]
    run_id = f"{os.getpid():x}{int(time.time()) % 100000:x}"
    # A guessing client (scenarios h, i) alongside the publishers, over the same window.
    flood = asyncio.ensure_future(guess_flood(spec, target, go_mono)) if spec.get("flood_rate") else None
    if lane_rooms:
        await asyncio.sleep(max(0.0, go_mono - time.monotonic()))
        lanes, post_ms = await publish(spec, target, lane_rooms, go_mono, run_id)
    else:
        await asyncio.sleep(spec["duration"] + 0.2)
        lanes, post_ms = {}, array.array("f")
    pub_secs = max(1e-9, time.monotonic() - go_mono)
    pub_cpu = time.process_time() - cpu0
    server_cpu1 = cpu_by_command(process_tree(spec.get("server_pids") or []))
    # Cores the server's processes used while publishing (by command name), and the
    # machine's load: anything else running on it shows here.
    result["server_cpu_cores"] = {name: round((secs - server_cpu0.get(name, 0.0)) / pub_secs, 2)
                                  for name, secs in server_cpu1.items()}
    result["loadavg_1m"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    if flood is not None:  # its last answers (queued hashes) come after the window measured above
        result["flood"] = await flood
    expected = {lane: (sent, failed) for lane, (sent, failed, _) in lanes.items()}
    for _, end in children:
        _send(end, {"type": "stop", "expected": {str(k): v for k, v in expected.items()},
                  "lane_rooms": {str(k): v for k, v in lane_rooms.items()}})
    parts = await asyncio.gather(*(_recv(loop, end, spec.get("drain", 5.0) + 60) for _, end in children))
    lat, secs = _merge_latencies(parts)
    if spec.get("timeline"):
        result["latency_by_second"] = by_second(lat, secs)
    sent = sum(s for s, _ in expected.values())
    failed = sum(len(f) for _, f in expected.values())
    accepted = sent - failed
    errors = {}
    for part in parts:
        for k, v in part["errors"].items():
            errors[k] = errors.get(k, 0) + v
    delivered = sum(p["deliveries"] for p in parts)
    result.update({
        "duration": spec["duration"], "lanes": len(lane_rooms), "sent": sent, "accepted": accepted,
        "post_failed": failed, "posts_per_s": round(accepted / pub_secs, 1),
        "post_ms": percentiles(list(post_ms)),
        "max_publish_lag_s": round(max((v[2] for v in lanes.values()), default=0), 3),
        "expected": sum(p["expected"] for p in parts), "deliveries": delivered,
        "loss": sum(p["loss"] for p in parts), "readers_with_loss": sum(p["readers_with_loss"] for p in parts),
        "dups": sum(p["dups"] for p in parts), "reorders": sum(p["reorders"] for p in parts),
        "deliveries_per_s": round(delivered / pub_secs, 1),
        "latency_ms": percentiles(list(lat)),
        "server_closes": sum(p["server_closes"] for p in parts), "drops": sum(p["drops"] for p in parts),
        "reconnects": sum(p["reconnects"] for p in parts),
        "reconnect_failures": sum(p["reconnect_failures"] for p in parts),
        "poll_requests": sum(p["poll_requests"] for p in parts),
        "bytes_received": sum(p["bytes"] for p in parts),
        "loadgen_cpu": {"readers_max_util": round(max(p["cpu_secs"] / max(p["wall_secs"], 1e-9) for p in parts), 3),
                        "publisher_util": round(pub_cpu / pub_secs, 3)},
        "errors": errors,
    })
    return result


# --------------------------------------------------------------------------- ceiling

def fake_server(sock, frames_per_chunk, conns_expected, seconds, ready):
    """Accept ``conns_expected`` SSE clients, then blast chat-shaped frames at all of them."""
    loop = new_loop()
    transports = []
    all_in = loop.create_future()

    class Server(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            self.got = b""

        def data_received(self, data):
            self.got += data
            if b"\r\n\r\n" in self.got and self.transport not in transports:
                first = b": stream open\nretry: 2000\n\nevent: ready\ndata: {}\n\n"
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                     b"Transfer-Encoding: chunked\r\n\r\n"
                                     + b"%x\r\n%s\r\n" % (len(first), first))
                transports.append(self.transport)
                if len(transports) >= conns_expected and not all_in.done():
                    all_in.set_result(None)

    async def main():
        server = await loop.create_server(Server, sock=sock)
        ready.send(True)
        await all_in
        seq = 0
        ms = int(time.time() * 1000)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            frames = []
            ns = time.time_ns()
            for _ in range(frames_per_chunk):
                data = (b'{"id":"%d-%d","ts":%d,"room":"r","user":"u","text":"bm:0:%d:%d:","client_id":"x"}'
                        % (ms, seq, ms, seq, ns))
                frames.append(b"id: %d-%d\nevent: message\ndata: %s\n\n" % (ms, seq, data))
                seq += 1
            payload = b"".join(frames)
            chunk = b"%x\r\n%s\r\n" % (len(payload), payload)
            transports[:] = [t for t in transports if not t.is_closing()]
            for t in transports:
                t.write(chunk)
            while any(t.get_write_buffer_size() > 256 * 1024 and not t.is_closing() for t in transports):
                await asyncio.sleep(0.0005)
            await asyncio.sleep(0)
        server.close()
    loop.run_until_complete(main())
    os._exit(0)


def ceiling(conns=200, seconds=3.0, frames_per_chunk=1):
    """Deliveries/s that one reader process parses (and accounts) against a loopback blaster."""
    import socket
    raise_nofile()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    port = sock.getsockname()[1]
    ctx = multiprocessing.get_context("fork")
    ready_r, ready_w = ctx.Pipe(False)
    server = ctx.Process(target=fake_server, args=(sock, frames_per_chunk, conns, seconds + 1.5, ready_w),
                         daemon=True)
    server.start()
    sock.close()
    ready_r.recv()
    loop = new_loop()
    spec = {"system": "fake", "port": port, "rooms": ["r"], "readers": conns}
    rctx = ReaderContext(spec, loop)
    readers = [SSEReader(rctx, i, "r") for i in range(conns)]

    async def main():
        await asyncio.gather(*(r.open() for r in readers))
        await asyncio.sleep(0.5)  # warm up
        d0, c0, t0 = rctx.tally.deliveries, time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        d1, c1, t1 = rctx.tally.deliveries, time.process_time(), time.monotonic()
        for r in readers:
            r.stop()
        return (d1 - d0) / (t1 - t0), (c1 - c0) / (t1 - t0)

    try:
        rate, util = loop.run_until_complete(main())
    finally:
        server.kill()
        server.join(2)
        loop.close()
    lost = sum(1 for r in readers if r.tally.dups or r.tally.reorders)
    return {"conns": conns, "frames_per_chunk": frames_per_chunk, "seconds": seconds,
            "deliveries_per_s": round(rate), "reader_cpu_util": round(util, 2),
            "uvloop": uvloop is not None, "anomalies": lost}


# --------------------------------------------------------------------------- CLI

def main(argv):
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_run = sub.add_parser("run", help="run one scenario from a JSON spec file ('-' for stdin)")
    p_run.add_argument("spec")
    p_ceil = sub.add_parser("ceiling", help="measure this generator's parse ceiling on one core")
    p_ceil.add_argument("--conns", type=int, default=200)
    p_ceil.add_argument("--seconds", type=float, default=3.0)
    p_ceil.add_argument("--frames-per-chunk", type=int, nargs="*", default=[1, 16])
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.cmd == "run":
        spec = json.load(sys.stdin if args.spec == "-" else open(args.spec))
        print(json.dumps(run_scenario(spec)), flush=True)
    else:
        out = [ceiling(args.conns, args.seconds, f) for f in args.frames_per_chunk]
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
