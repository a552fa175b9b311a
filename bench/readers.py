"""The readers: SSE and long-poll clients as asyncio Protocols that parse bytes incrementally
and count every message (latency, duplicates, reorders), and the forked processes that run them."""


import array
import asyncio
import json
import os
import random
import time

from measure import new_loop, raise_nofile
from wire import MARK, HeadParser, HTTPError, Target


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
        # Multiplexed streams (chat): a message whose id is not past its room's last one, and
        # how many ids list more rooms than the event's own (a frame not shared between streams).
        self.room_order_errors = 0
        self.multi_room_ids = 0

    def error(self, key):
        self.errors[key] = self.errors.get(key, 0) + 1


class BaseReader(asyncio.Protocol):
    """Shared state: message accounting per lane, connection bookkeeping."""

    def __init__(self, ctx, index, room):
        self.ctx = ctx
        self.tally = ctx.tally
        self.index = index
        self.room = room
        self.rooms = (room,)  # every room the stream follows (several for a MuxReader)
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
        self.opened_at = None  # wall clock when its first open succeeded
        # Resuming from a cursor (scenario c): the seeded lane, the seqs after the cursor
        # (every one of them must come), and the wall clock when the last of them came.
        self.catch_lane = None
        self.catch_seqs = ()
        self.caught_at = None

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

    def check_caught_up(self, now=None):
        """Has every seeded message after the reader's cursor come? Notes when it first had."""
        if self.caught_at is None and self.catch_lane is not None:
            bitmap = self.seen.get(self.catch_lane)
            if not self.catch_seqs or (bitmap is not None and all(s < len(bitmap) and bitmap[s]
                                                                  for s in self.catch_seqs)):
                self.caught_at = now or time.time()
        return self.caught_at is not None

    def expected_missing(self, expected):
        """Messages the reader should have had (lane -> (sent, failed set)) and did not get."""
        missing = 0
        for lane, (sent, failed) in expected.items():
            bitmap = self.seen.get(lane)
            have = 0 if bitmap is None else sum(bitmap[:sent]) - sum(1 for s in failed if s < len(bitmap) and bitmap[s])
            missing += sent - len(failed) - have
        return missing

    def foreign(self, expected):
        """Messages received from lanes of rooms this reader doesn't follow."""
        return sum(sum(bitmap) for lane, bitmap in self.seen.items() if lane not in expected)


class SSEReader(HeadParser, BaseReader):
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
        now = time.time_ns()
        self._scan(block, now)
        if self.caught_at is None and self.catch_lane is not None:
            self.check_caught_up(now / 1e9)
        # The resume cursor: the last "id:" line in the block.
        i = block.rfind(b"\nid:")
        if i >= 0 or block.startswith(b"id:"):
            i += 1
            j = block.find(b"\n", i)
            self.last_id = block[i + 3:j if j >= 0 else len(block)].strip()


class MuxReader(SSEReader):
    """One multiplexed stream over several rooms (chat's ``/api/events``, nchan's multi-channel
    subscriber). Besides the per-lane accounting every reader does, it checks chat's message
    events room by room: the event's room is one it asked for, its id passes that room's last
    one (exactly once, in order per room, whatever the lanes), and counts ids that list more
    than the event's own room."""

    def __init__(self, ctx, index, rooms):
        SSEReader.__init__(self, ctx, index, "*")
        self.rooms = tuple(rooms)
        self.room_set = {room.encode() for room in rooms}
        self.room_last = {}  # room -> (ms, seq) of its last message

    def connection_made(self, transport):
        self.transport = transport
        self.connected = True
        self._reset_http()
        self.buf = b""
        transport.write(self.ctx.target.mux_request(self.rooms, self.index, self.last_id))

    def _scan(self, block, now_ns):
        find = block.find
        tally = self.tally
        if b"event: ready" in block:
            self._check_ready(block)
        pos = find(b'data: {"id":"')
        while pos >= 0:
            a = pos + 13
            b = find(b'"', a)
            r = find(b'"room":"', b)
            if r < 0:
                tally.error("message_without_room")
                break
            e = find(b'"', r + 8)
            room = block[r + 8:e]
            ms, _, seq = block[a:b].partition(b"-")
            try:
                key = (int(ms), int(seq))
            except ValueError:
                tally.error("bad_message_id")
                pos = find(b'data: {"id":"', e)
                continue
            if room not in self.room_set:
                tally.error("foreign_room")
            last = self.room_last.get(room)
            if last is not None and key <= last:
                tally.room_order_errors += 1
            else:
                self.room_last[room] = key
            i = block.rfind(b"id: ", 0, pos)
            if i >= 0 and b"," in block[i:find(b"\n", i)]:
                tally.multi_room_ids += 1
            pos = find(b'data: {"id":"', e)
        BaseReader._scan(self, block, now_ns)

    def _check_ready(self, block):
        """chat's ``ready`` names the stream's rooms: exactly the ones asked for."""
        i = block.find(b"event: ready")
        j = block.find(b"data: ", i)
        if j < 0:
            return
        end = block.find(b"\n", j)
        try:
            rooms = json.loads(block[j + 6:end if end >= 0 else len(block)]).get("rooms")
        except ValueError:
            self.tally.error("bad_ready")
            return
        if rooms is not None and sorted(rooms) != sorted(self.rooms):
            self.tally.error("ready_rooms_mismatch")


class PollReader(HeadParser, BaseReader):
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
        self.send_message()
        if self.ctx.target.system == "nchan":
            # nchan answers only when a message arrives: "open" is the request sent.
            self.ctx.loop.call_soon(self._opened)

    def send_message(self):
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
            elif self.length is None and self.status == 200:
                self.body.append(data)  # no length, not chunked: the body ends with the connection
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
            self._handle_body(body, headers, now)
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
        self.send_message()

    def _handle_body(self, body, headers, now):
        """A 200 answer: count every message in it (an answer may carry several), keep the cursor."""
        self._scan(body, now)
        if self.ctx.target.system == "chat":
            i = body.find(b'"cursor":"')
            if i >= 0:
                j = body.find(b'"', i + 10)
                self.state = body[i + 10:j]
        else:
            self.state = (headers.get(b"last-modified", b""), headers.get(b"etag", b"0"))
        self._opened()

    def connection_lost(self, exc):
        if self.in_body and self.length is None and not self.chunked and self.status == 200 and not self.stopping:
            # A close-delimited answer: complete now. Count it, keep its cursor, poll again at once.
            body, self.in_body = b"".join(self.body), False
            self.body, self.body_len = [], 0
            self._handle_body(body, self.headers, time.time_ns())
            self.dropping = self._established()
        BaseReader.connection_lost(self, exc)


class ReaderContext:
    def __init__(self, spec, loop):
        self.spec = spec
        self.loop = loop
        self.target = Target(spec)
        self.tally = Tally()
        # Mixed scenario (l): the long-poll readers of ``poll_rooms`` count apart from the SSE ones.
        self.poll_tally = Tally() if spec.get("poll_rooms") else self.tally
        self.open_timeout = spec.get("open_timeout", 60.0)
        self.reconnect_delay = spec.get("reconnect_delay", 0.0)
        self.server_close_delay = spec.get("server_close_delay", 0.5)
        # flask-sse sends nothing until the first message: its stream is open with the headers.
        self.open_on_headers = spec.get("open_on_headers", False)


def send_message(conn, msg):
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
        poll_rooms = set(spec.get("poll_rooms") or ())
        if spec.get("mux"):  # reader i follows rooms i .. i+mux-1 (mod the room count) on one stream
            self.readers = [MuxReader(self.ctx, i, mux_rooms(rooms, i, spec["mux"])) for i in indexes]
        else:
            self.readers = []
            for i in indexes:
                room = rooms[i % len(rooms)]
                if spec.get("mode") == "poll" or room in poll_rooms:
                    reader = PollReader(self.ctx, i, room)
                    reader.tally = self.ctx.poll_tally
                else:
                    reader = SSEReader(self.ctx, i, room)
                self.readers.append(reader)
        # Mixed (l): the readers of the poll rooms, reported apart ("poll"); the rest as ever.
        self.groups = {"main": [r for r in self.readers if r.room not in poll_rooms]}
        if poll_rooms:
            self.groups["poll"] = [r for r in self.readers if r.room in poll_rooms]
        for r in self.readers:
            cursor = (spec.get("cursors") or {}).get(r.room)
            if cursor is not None and isinstance(r, SSEReader):
                r.last_id, r.catch_seqs = cursor_plan(cursor["ids"], cursor_behind(r.index, spec))
                r.catch_lane = cursor["lane"]
                if r.last_id is not None:
                    r.last_id = r.last_id.encode()
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
                if ok:
                    reader.opened_at = time.time()
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

    async def catch_up(self):
        """Scenario (c) with cursors: wait until every open reader has every seeded message after
        its cursor (or ``catchup_timeout``); the catch-up's own figures."""
        readers = [r for r in self.readers if r.catch_lane is not None and r.opened_at is not None]
        for r in readers:
            if not r.catch_seqs:
                r.caught_at = r.opened_at  # at the tail: caught up once open
        deadline = time.monotonic() + self.spec.get("catchup_timeout", 30.0)
        while time.monotonic() < deadline and not all(r.check_caught_up() for r in readers):
            await asyncio.sleep(0.01)
        caught = [r for r in readers if r.caught_at is not None]
        missing, early = [], 0
        for r in readers:
            bitmap = r.seen.get(r.catch_lane) or bytearray()
            missing.append(sum(1 for seq in r.catch_seqs if seq >= len(bitmap) or not bitmap[seq]))
            # Seeded messages at or before the cursor that came anyway (a resume that replays too much).
            early += sum(bitmap[seq] for seq in range(min(len(bitmap), len(self.spec["cursors"][r.room]["ids"])))
                         if seq not in r.catch_seqs)
        tally = self.ctx.tally
        return {"readers": len(readers), "caught_up": len(caught),
                "caught_up_wall": max((r.caught_at for r in caught), default=None),
                # Per stream: from the start of its open to its last catch-up message.
                "catch_up_ms": [(r.caught_at - r.opened_at + r.connect_secs) * 1000 for r in caught],
                "expected": sum(len(r.catch_seqs) for r in readers),
                "received": sum(len(r.catch_seqs) - m for r, m in zip(readers, missing)),
                "loss": sum(missing), "readers_with_loss": sum(1 for m in missing if m),
                # Nothing is published before "go": every duplicate or reorder so far is a catch-up's.
                "dups": tally.dups, "reorders": tally.reorders, "before_cursor": early,
                "behind": sorted({len(r.catch_seqs) for r in readers})}

    async def main(self):
        started = time.monotonic()
        opened = await self.open_all()
        opened_wall = time.time()
        per = [r.connect_secs * 1000 for r in self.readers if r.connect_secs is not None]
        ready = {"type": "ready", "opened": opened, "failed": len(self.readers) - opened,
                 "connect_secs": time.monotonic() - started, "per_connect_ms": per, "opened_wall": opened_wall}
        if "poll" in self.groups:
            ready["opened_poll"] = sum(1 for r in self.groups["poll"] if r.opened_at is not None)
        if self.spec.get("cursors"):
            ready["catchup"] = await self.catch_up()
        send_message(self.conn, ready)
        go = await self._command("go")
        for tally in {id(t): t for t in (self.ctx.tally, self.ctx.poll_tally)}.values():
            if self.spec.get("cursors"):
                tally.lat = array.array("f")  # the catch-up's "latencies" are the time since setup
            if self.spec.get("timeline"):
                tally.go_ns = int(go["at"] * 1e9)
                tally.secs = array.array("H")
        cpu0, t0 = time.process_time(), time.monotonic()
        self.schedule_drops(max(0.0, go["at"] - time.time()))
        stop = await self._command("stop")
        expected = {int(k): (v[0], set(v[1])) for k, v in stop["expected"].items()}
        room_lanes = {}
        for lane, room in stop["lane_rooms"].items():
            room_lanes.setdefault(room, {})[int(lane)] = expected[int(lane)]
        lanes_of = {}
        for r in self.readers:
            lanes = lanes_of[r.index] = {}
            for room in r.rooms:
                lanes.update(room_lanes.get(room, {}))
            if r.catch_lane is not None:  # the seeded messages after its cursor (the rest: not expected)
                n = len(self.spec["cursors"][r.room]["ids"])
                lanes[r.catch_lane] = (n, set(range(n)) - set(r.catch_seqs))
        per_reader = {r.index: sum(n - len(f) for n, f in lanes_of[r.index].values()) for r in self.readers}
        await self.drain(per_reader)
        t1, cpu = time.monotonic(), time.process_time() - cpu0
        for r in self.readers:
            r.stop()
        reports = {name: report(readers, lanes_of, per_reader) for name, readers in self.groups.items()}
        await asyncio.sleep(0.05)
        self.loop.remove_reader(self.conn.fileno())
        out = reports.pop("main")
        out.update(type="result", cpu_secs=cpu, wall_secs=t1 - t0)
        if "poll" in reports:
            out["poll"] = reports["poll"]
        send_message(self.conn, out)


def report(readers, lanes_of, per_reader):
    """What one group of a process's readers got (they share one :class:`Tally`)."""
    tally = readers[0].tally if readers else Tally()
    missing = [r.expected_missing(lanes_of[r.index]) for r in readers]
    return {
        "readers": len(readers), "expected": sum(per_reader[r.index] for r in readers),
        "deliveries": tally.deliveries, "loss": sum(missing), "readers_with_loss": sum(1 for m in missing if m),
        "dups": tally.dups, "reorders": tally.reorders, "foreign": sum(r.foreign(lanes_of[r.index]) for r in readers),
        "room_order_errors": tally.room_order_errors, "multi_room_ids": tally.multi_room_ids,
        "server_closes": tally.server_closes, "drops": tally.drops, "reconnects": tally.reconnects,
        "reconnect_failures": tally.reconnect_failures, "errors": tally.errors, "bytes": tally.bytes,
        "poll_requests": sum(getattr(r, "requests", 0) for r in readers),
        "lat": tally.lat.tobytes(), "secs": tally.secs.tobytes() if tally.secs is not None else None}


def cursor_behind(index, spec):
    """How many seeded messages reader ``index`` resumes behind its room's tail: 0 ..
    ``catchup_behind``, spread over each room's readers (7 is prime to 11 and to the room count)."""
    return (index * 7) % (spec.get("catchup_behind", 10) + 1)


def cursor_plan(ids, behind):
    """(Last-Event-ID, seqs expected after it) for a reader ``behind`` messages behind the tail
    of a room seeded with ``ids`` (by seq; ``None`` for a refused post, never sent)."""
    at = len(ids) - 1 - behind
    while at >= 0 and ids[at] is None:
        at -= 1
    if at < 0:
        return None, ()
    return ids[at], tuple(s for s in range(at + 1, len(ids)) if ids[s] is not None)


def mux_rooms(rooms, index, count):
    """The rooms multiplexed reader ``index`` follows: ``count`` consecutive ones from
    ``index`` on, wrapping, so every room has the same number of readers."""
    return [rooms[(index + k) % len(rooms)] for k in range(min(count, len(rooms)))]


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
