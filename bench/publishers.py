"""The publishers: sequential lanes of POSTs (open or closed loop) and the wrong-password flood."""


import array
import asyncio
import math
import random
import time

from measure import percentiles


class HttpConn:
    """A keep-alive HTTP/1.1 client connection for POSTs (one request in flight)."""

    def __init__(self, host, port):
        self.host, self.port = host, port
        self.reader = self.writer = None

    def close(self):
        if self.writer is not None:
            self.writer.transport.abort()
        self.reader = self.writer = None

    async def request(self, make, tries=3, with_body=False):
        """``make()`` builds the request bytes (taking the send time); returns the status (0: failed),
        or with ``with_body`` (status, body bytes)."""
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
                body = []
                if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
                    while True:
                        size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                        body.append((await self.reader.readexactly(size + 2))[:size])
                        if size == 0:
                            break
                else:
                    body.append(await self.reader.readexactly(int(headers.get(b"content-length", b"0"))))
                if headers.get(b"connection", b"").lower() == b"close":
                    self.close()
                return (status, b"".join(body)) if with_body else status
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError):
                self.close()
                if attempt + 1 < tries:
                    await asyncio.sleep(0.05 * (attempt + 1))
        return (0, b"") if with_body else 0


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


CURSOR_LANE0 = 1_000_000  # lanes of the messages seeded before the readers connect (scenario c)


async def seed_rooms(spec, target, run_id):
    """Scenario (c) with cursors: before any reader connects, publish ``catchup`` messages to
    every room (one sequential lane per room, ``CURSOR_LANE0`` + the room's index, the rooms
    in parallel) and keep each message's event id from the publish answer, so a reader can
    resume a few messages behind the room's tail. Returns ``{room: {"lane", "ids"}}`` (ids
    of the accepted messages, by seq; a refused one is ``None``), the posts refused and the
    seconds it took."""
    count = spec["catchup"]
    cursors, refused = {}, []
    t = time.monotonic()

    async def one_room(k, room):
        conn = HttpConn(target.host, target.port)
        lane, ids = CURSOR_LANE0 + k, []
        try:
            for seq in range(count):
                status, body = await conn.request(
                    lambda s=seq: target.publish_request(room, lane, s, run_id, want_id=True), with_body=True)
                try:
                    ids.append(target.published_id(body) if 200 <= status < 300 else None)
                except (ValueError, KeyError):
                    ids.append(None)
                if ids[-1] is None:
                    refused.append((room, seq, status))
        finally:
            conn.close()
        cursors[room] = {"lane": lane, "ids": ids}

    await asyncio.gather(*(one_room(k, room) for k, room in enumerate(spec["rooms"])))
    return cursors, refused, time.monotonic() - t


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
