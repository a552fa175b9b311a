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
        self._scan(block, time.time_ns())
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
        self.send_message()

    def connection_lost(self, exc):
        BaseReader.connection_lost(self, exc)


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
        if spec.get("mux"):  # reader i follows rooms i .. i+mux-1 (mod the room count) on one stream
            self.readers = [MuxReader(self.ctx, i, mux_rooms(rooms, i, spec["mux"])) for i in indexes]
        else:
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
        send_message(self.conn, {"type": "ready", "opened": opened, "failed": len(self.readers) - opened,
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
        lanes_of = {}
        for r in self.readers:
            lanes = lanes_of[r.index] = {}
            for room in r.rooms:
                lanes.update(room_lanes.get(room, {}))
        per_reader = {r.index: sum(n - len(f) for n, f in lanes_of[r.index].values()) for r in self.readers}
        await self.drain(per_reader)
        t1, cpu = time.monotonic(), time.process_time() - cpu0
        for r in self.readers:
            r.stop()
        missing = [r.expected_missing(lanes_of[r.index]) for r in self.readers]
        foreign = sum(r.foreign(lanes_of[r.index]) for r in self.readers)
        await asyncio.sleep(0.05)
        self.loop.remove_reader(self.conn.fileno())
        tally = self.ctx.tally
        send_message(self.conn, {
            "type": "result", "expected": sum(per_reader.values()), "deliveries": tally.deliveries,
            "loss": sum(missing), "readers_with_loss": sum(1 for m in missing if m), "dups": tally.dups,
            "reorders": tally.reorders, "foreign": foreign, "room_order_errors": tally.room_order_errors,
            "multi_room_ids": tally.multi_room_ids, "server_closes": tally.server_closes, "drops": tally.drops,
            "reconnects": tally.reconnects, "reconnect_failures": tally.reconnect_failures,
            "errors": tally.errors, "bytes": tally.bytes, "cpu_secs": cpu, "wall_secs": t1 - t0,
            "poll_requests": sum(getattr(r, "requests", 0) for r in self.readers),
            "lat": tally.lat.tobytes(), "secs": tally.secs.tobytes() if tally.secs is not None else None})


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
