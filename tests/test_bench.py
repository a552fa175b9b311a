"""The benchmark suite works: its parser, its generator, and a smoke run of bench/run.py.

Proposed as tests/test_bench.py. Costs ~15 s (the smoke run starts Redis and gunicorn
once and runs three 2-second scenarios); the peer run needs nginx's nchan module
and flask-sse, which scripts/test and requirements.txt install.
"""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

import readers  # noqa: E402
import wire  # noqa: E402


class _Ctx:
    """Just enough of readers.ReaderContext for feeding bytes by hand (no event loop)."""

    def __init__(self, system="chat"):
        self.tally = readers.Tally()
        self.target = wire.Target({"system": system, "port": 1})
        self.open_on_headers = False
        self.loop = None


class _Transport:
    def write(self, data):
        pass

    def abort(self):
        pass


def _chunked_stream(frames):
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
    first = b": stream open\nretry: 2000\n\nevent: ready\ndata: {}\n\n"
    body = b"%x\r\n%s\r\n" % (len(first), first)
    for frame in frames:
        body += b"%x\r\n%s\r\n" % (len(frame), frame)
    return head + body


def _frame(seq, lane=0):
    data = b'{"id":"1-%d","text":"bm:%d:%d:%d:","client_id":"x"}' % (seq, lane, seq, 1)
    return b"id: 1-%d\nevent: message\ndata: %s\n\n" % (seq, data)


@pytest.mark.parametrize("seed", range(5))
def test_sse_reader_counts_every_frame_however_the_bytes_are_split(seed):
    frames = [_frame(s) for s in range(50)] + [b": ping\n\n"] + [_frame(3), _frame(49)]  # two duplicates
    frames.insert(10, _frame(60))  # one out of order (60 before 10..49)
    raw = _chunked_stream(frames)
    ctx = _Ctx()
    reader = readers.SSEReader(ctx, 0, "r")
    reader.transport = _Transport()
    rnd = random.Random(seed)
    pos = 0
    while pos < len(raw):
        step = rnd.randint(1, 40)
        reader.data_received(raw[pos:pos + step])
        pos += step
    assert reader.got == 51
    assert ctx.tally.dups == 2
    assert ctx.tally.reorders == 40  # seqs 10..49 arrive after 60
    assert reader.last_id == b"1-49"
    assert reader.expected_missing({0: (50, set())}) == 0
    assert reader.expected_missing({0: (52, set())}) == 2


def _mux_frame(room, ms, seq, lane, lane_seq, *, cursor=None):
    """chat's multiplexed message event: message ``ms-seq`` of ``room``, ``lane_seq`` of ``lane``."""
    data = b'{"id":"%d-%d","ts":%d,"room":"%s","user":"u","text":"bm:%d:%d:%d:","client_id":"x"}' % (
        ms, seq, ms, room, lane, lane_seq, 1)
    return b"id: %s\nevent: message\ndata: %s\n\n" % (cursor or b"%s:%d-%d" % (room, ms, seq), data)


def test_mux_reader_checks_rooms_order_per_room_and_counts_listing_ids():
    ctx = _Ctx()
    reader = readers.MuxReader(ctx, 0, ["m0", "m1"])
    reader.transport = _Transport()
    frames = [b'event: ready\nid: m0:5-0,m1:4-0\ndata: {"worker":1,"rooms":["m0","m1"]}\n\n',
              _mux_frame(b"m0", 6, 0, 0, 0),
              _mux_frame(b"m1", 6, 1, 1, 1, cursor=b"m1:6-1,m0:6-0"),  # an id listing two rooms
              _mux_frame(b"m0", 7, 0, 0, 1),
              _mux_frame(b"m1", 5, 0, 1, 2),  # m1's id goes back: an order error (not one per lane)
              _mux_frame(b"m2", 8, 0, 2, 0)]  # a room not asked for
    raw = _chunked_stream(frames)
    for i in range(0, len(raw), 11):
        reader.data_received(raw[i:i + 11])
    assert reader.got == 5
    assert ctx.tally.room_order_errors == 1
    assert ctx.tally.multi_room_ids == 1
    assert ctx.tally.errors == {"foreign_room": 1}
    assert reader.foreign({0: (2, set()), 1: (3, set())}) == 1  # lane 2 isn't one of its rooms'
    assert reader.expected_missing({0: (2, set()), 1: (3, set())}) == 1  # lane 1's seq 0 never came
    assert reader.last_id == b"m2:8-0"
    assert b"GET /api/events?rooms=m0,m1 " in ctx.target.mux_request(reader.rooms, 0)


def test_mux_rooms_give_every_room_the_same_readers():
    rooms = [f"j{i}" for i in range(100)]
    counts = {}
    for i in range(1000):
        chosen = readers.mux_rooms(rooms, i, 10)
        assert len(set(chosen)) == 10
        for room in chosen:
            counts[room] = counts.get(room, 0) + 1
    assert set(counts.values()) == {100}


def test_poll_reader_reads_a_whole_json_response_and_keeps_the_cursor():
    ctx = _Ctx()
    reader = readers.PollReader(ctx, 0, "r")
    sent = []
    reader.transport = type("T", (), {"write": lambda self, data: sent.append(data), "abort": lambda self: None,
                                      "close": lambda self: None})()
    body = (b'{"messages":[{"id":"5-0","text":"bm:0:0:1:"},{"id":"5-1","text":"bm:0:1:1:"}],'
            b'"cursor":"5-1"}')
    raw = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    for i in range(0, len(raw), 7):
        reader.data_received(raw[i:i + 7])
    assert reader.got == 2
    assert reader.state == b"5-1"
    assert b"cursor=5-1" in sent[-1]


def _run_bench(tmp_path, *args):
    proc = subprocess.run([sys.executable, str(BENCH / "run.py"), "--smoke", "--no-plot", "--out", str(tmp_path),
                           *args], capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((tmp_path / "benchmarks-results.json").read_text())


@pytest.mark.timeout(300)
def test_smoke_run_against_chat_loses_nothing(tmp_path):
    doc = _run_bench(tmp_path, "--scenarios", "a,d,g")
    results = {r["scenario"]: r for r in doc["results"]}
    assert set(results) == {"a", "d", "g"}
    for r in results.values():
        assert "error" not in r, r
        assert r["opened"] == r["readers"], r
        assert r["sent"] > 0 and r["accepted"] == r["sent"], r
        assert r["expected"] == r["accepted"] * r["readers"], r
        assert (r["deliveries"], r["loss"], r["dups"], r["reorders"]) == (r["expected"], 0, 0, 0), r
        assert r["latency_ms"]["p99"] is not None
        assert r["server_tracebacks"] == 0, r
    assert results["d"]["drops"] == results["d"]["readers"] * 2  # smoke: 2 cuts per reader, all resumed
    assert "(a) fan-out" in doc["table"]


@pytest.mark.timeout(300)
def test_smoke_multiplexed_streams(tmp_path):
    """Issue 13 (scenarios j, k): every reader on one stream over several rooms gets every
    message of its rooms once, in order per room, and nothing of other rooms."""
    doc = _run_bench(tmp_path, "--scenarios", "a,j,k")
    results = {r["scenario"]: r for r in doc["results"]}
    assert set(results) == {"a", "j", "k"}
    sc = doc["scenarios"]["j"]
    r = results["j"]
    assert "error" not in r and r["server_tracebacks"] == 0, r
    assert r["opened"] == r["readers"] == sc["readers"], r
    assert r["sent"] > 0 and r["accepted"] == r["sent"], r
    # Every room has readers x rooms per reader / rooms readers (the rooms are dealt evenly).
    assert r["expected"] == r["accepted"] * sc["readers"] * sc["mux"] // sc["rooms"], r
    assert (r["deliveries"], r["loss"], r["dups"], r["reorders"]) == (r["expected"], 0, 0, 0), r
    assert (r["room_order_errors"], r["foreign"], r["errors"]) == (0, 0, {}), r
    assert r["latency_ms"]["p99"] is not None and r["kib_per_stream"] is not None, r
    idle = results["k"]
    assert "error" not in idle and idle["opened"] == idle["readers"] and idle["kib_per_stream"] is not None, idle
    assert "Multiplexed streams (issue 13)" in doc["table"]


@pytest.mark.timeout(300)
def test_smoke_run_against_the_peers(tmp_path):
    doc = _run_bench(tmp_path, "--systems", "nchan,flask-sse", "--scenarios", "a,c,j")
    for r in doc["results"]:
        assert "error" not in r, r
        if r.get("na"):
            assert (r["system"], r["scenario"]) == ("flask-sse", "j"), r
            continue
        assert r["opened"] == r["readers"], r
        if r["scenario"] in "aj":
            assert r["deliveries"] == r["expected"] > 0 and r["loss"] == r["foreign"] == 0, r
        else:
            assert r["kib_per_stream"] is not None, r


@pytest.mark.timeout(120)
def test_stream_memory_runs_with_and_without_tracemalloc(tmp_path):
    for extra in ([], ["--trace"]):
        proc = subprocess.run([sys.executable, str(BENCH / "stream_memory.py"), "--stages", "6,12", "--rooms", "4",
                               "--mux", "2", "--users", "2", "--settle", "0.2", *extra], capture_output=True,
                              text=True, timeout=110, cwd=ROOT, check=False)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        assert proc.stdout.count("opened 6/6: marginal") == 2, proc.stdout
        assert ("Python allocations live per stream" in proc.stdout) == bool(extra), proc.stdout


def test_flask_floor_runs(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH / "flask_floor.py"), "--seconds", "0.5", "--connections", "4"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "requests/s" in proc.stdout


@pytest.mark.timeout(300)
def test_smoke_guessing_flood(tmp_path):
    """The fan-out with a wrong-password flood (scenarios h and i): every reader served,
    every guess answered 401, 429 or 503, nothing lost."""
    doc = _run_bench(tmp_path, "--scenarios", "a,h,i")
    results = {r["scenario"]: r for r in doc["results"]}
    for key in "hi":
        r = results[key]
        assert "error" not in r and r["server_tracebacks"] == 0, r
        assert r["opened"] == r["readers"] and r["accepted"] == r["sent"] > 0, r
        assert (r["deliveries"], r["loss"], r["dups"]) == (r["expected"], 0, 0), r
        flood = r["flood"]
        assert sum(flood["statuses"].values()) == flood["sent"] == 100, flood
        assert set(flood["statuses"]) <= {"401", "429", "503"}, flood
    assert "429" not in results["i"]["flood"]["statuses"]
    assert results["h"]["server_env"] == {"CHAT_RATE_LOGIN_IP": "(default)", "CHAT_RATE_LOGIN_USER": "(default)"}
    assert "Password guessing during the fan-out" in doc["table"]


@pytest.mark.timeout(300)
def test_smoke_redis_setups(tmp_path):
    """Issue 14: chat over the other Redis setups (fsync, a Sentinel set with replica
    acknowledgement, a Cluster) serves the closed loop's posts and readers without loss
    (the bench's full run also measures the fan-out (a) on them)."""
    from deploy.redis_topology import binaries

    try:
        binaries()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    doc = _run_bench(tmp_path, "--systems", "chat-fsync,chat-replicas,chat-cluster", "--scenarios", "e")
    assert {(r["system"], r["scenario"]) for r in doc["results"]} == {
        (s, "e") for s in ("chat-fsync", "chat-replicas", "chat-cluster")}
    for r in doc["results"]:
        assert "error" not in r and r["server_tracebacks"] == 0, r
        assert r["opened"] == r["readers"] and r["accepted"] == r["sent"] > 0, r
        assert (r["deliveries"], r["loss"], r["dups"], r["reorders"]) == (r["expected"], 0, 0, 0), r
    cores = {r["system"]: r["server_cpu_cores"] for r in doc["results"]}
    assert "redis-sentinel" in cores["chat-replicas"], cores  # the set's processes are measured too
