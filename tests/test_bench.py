"""The benchmark suite works: its parser, its generator, and a smoke run of bench/run.py.

Proposed as tests/test_bench.py. The chat smoke run starts Redis and gunicorn once and
runs five short scenarios (~25 s); the peer run needs nginx's nchan module and flask-sse,
which scripts/test and requirements.txt install.
"""

import json
import random
import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.bench
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

import readers  # noqa: E402
import run  # noqa: E402
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


def _poll_transport(sent):
    return type("T", (), {"write": lambda self, data: sent.append(data), "abort": lambda self: None,
                          "close": lambda self: None})()


@pytest.mark.parametrize("step", [1, 5, 64, 10_000])
def test_poll_reader_counts_every_message_of_a_chunked_multi_message_answer(step):
    """A long-poll answer may carry every message of a short window: each counts, once."""
    ctx = _Ctx()
    reader = readers.PollReader(ctx, 0, "r")
    sent = []
    reader.transport = _poll_transport(sent)
    answers = []
    for first in (0, 3):
        msgs = b",".join(b'{"id":"5-%d","room":"r","text":"bm:0:%d:1:"}' % (s, s) for s in range(first, first + 3))
        body = b'{"messages":[' + msgs + b'],"cursor":"5-%d"}' % (first + 2)
        half = len(body) // 2
        answers.append(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                       + b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (half, body[:half], len(body) - half, body[half:]))
    for raw in answers:
        for i in range(0, len(raw), step):
            reader.data_received(raw[i:i + step])
    assert reader.got == 6 and ctx.tally.dups == ctx.tally.reorders == 0
    assert reader.state == b"5-5" and b"cursor=5-5" in sent[-1]
    assert reader.expected_missing({0: (6, set())}) == 0


def test_poll_reader_counts_an_answer_that_ends_with_the_connection():
    """No Content-Length, not chunked: the body ends at the close; counted, then polled again."""
    ctx = _Ctx()
    reader = readers.PollReader(ctx, 0, "r")
    reader.transport = _poll_transport([])
    reader.opened = type("F", (), {"done": lambda self: True, "cancelled": lambda self: False,
                                   "exception": lambda self: None, "set_result": lambda self, v: None})()
    reconnects = []
    ctx.loop = type("L", (), {"call_later": lambda self, delay, fn: reconnects.append(delay)})()
    ctx.reconnect_delay = 0.0
    body = b'{"messages":[{"id":"5-0","text":"bm:0:0:1:"},{"id":"5-1","text":"bm:0:1:1:"}],"cursor":"5-1"}'
    reader.data_received(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n" + body)
    assert reader.got == 0
    reader.connection_lost(None)
    assert reader.got == 2 and reader.state == b"5-1"
    assert reconnects == [0.0] and ctx.tally.server_closes == 0


def test_cursor_plan_resumes_behind_the_tail():
    ids = [f"1-{s}" for s in range(20)]
    assert readers.cursor_plan(ids, 0) == ("1-19", ())
    assert readers.cursor_plan(ids, 3) == ("1-16", (17, 18, 19))
    ids[16] = ids[18] = None  # refused posts: never sent, never expected, never a cursor
    assert readers.cursor_plan(ids, 3) == ("1-15", (17, 19))
    spec = {"catchup_behind": 10}
    behind = {readers.cursor_behind(i, spec) for i in range(0, 110, 10)}  # one room's readers (10 rooms)
    assert behind == set(range(11))


def test_sse_reader_notes_when_it_has_caught_up_from_its_cursor():
    ctx = _Ctx()
    reader = readers.SSEReader(ctx, 0, "r")
    reader.transport = _Transport()
    reader.catch_lane, reader.catch_seqs = 7, (2, 3)
    raw = _chunked_stream([_frame(2, lane=7), _frame(3, lane=7)])
    cut = raw.index(b"id: 1-3")
    reader.data_received(raw[:cut])
    assert reader.caught_at is None
    reader.data_received(raw[cut:])
    assert reader.caught_at is not None
    assert b"Last-Event-ID: 1-1\r\n" in ctx.target.sse_request("r", 0, b"1-1")


def test_issue15_targets_judge_each_against_the_same_run():
    def res(system, key, **kw):
        base = {"system": system, "scenario": key, "loss": 0, "dups": 0, "reorders": 0, "deliveries": 10,
                "expected": 10, "accepted": 10, "max_publish_lag_s": 0.0, "opened": 10, "readers": 10,
                "connect_secs": 0.5, "latency_ms": {"p50": 1.0, "p99": 10.0}, "posts_per_s": 50.0}
        return base | kw
    results = [
        res("chat", "a"), res("chat", "g", posts_per_s=49.5, latency_ms={"p50": 100.0, "p99": 300.0}),
        res("chat", "l", latency_ms={"p50": 1.0, "p99": 15.0}, poll={"latency_ms": {"p99": 99.0}, "loss": 0}),
        res("chat", "c", catchup={"caught_up_secs": 2.5, "caught_up": 10, "readers": 10, "received": 50,
                                  "expected": 50, "loss": 0, "dups": 0, "before_cursor": 0}),
        res("chat", "e", posts_per_s=1000.0, server_cpu_cores={"python": 0.6, "redis-server": 0.2}),
        res("nchan", "e", posts_per_s=4000.0, server_cpu_cores={"nginx": 0.5}),
        {"system": "flask-sse", "scenario": "l", "na": "no long-poll"},
    ]
    rows = run.issue15_targets(results, "acegl", ["chat", "flask-sse", "nchan"],
                               sized_scenarios={"g": {"rate": 50}}, floor={"us_per_request": 200.0})
    verdict = {(r["system"], r["target"]): (r["value"], r["pass"]) for r in rows}
    assert verdict == {
        ("chat", "g_rate_x_asked"): (0.99, True), ("chat", "g_p99_ms"): (300.0, False),
        ("chat", "g_clean"): (0, True), ("chat", "l_p99_x_a"): (1.5, True),
        ("chat", "c_caught_up_secs"): (2.5, True), ("chat", "e_posts_x_nchan"): (0.25, False),
        ("chat", "e_cpu_x_floor"): (3.0, False)}  # 0.6 cores / 1000 posts/s = 600 us
    text = run.issue15_summary(rows)
    assert "Issue 15 targets" in text and text.count("PASS") == 4 and text.count("MISS") == 3


def _run_bench(tmp_path, *args):
    proc = subprocess.run([sys.executable, str(BENCH / "run.py"), "--smoke", "--no-plot", "--out", str(tmp_path),
                           *args], capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((tmp_path / "benchmarks-results.json").read_text())


def _delivered_everything(r):
    assert r["opened"] == r["readers"], r
    assert r["sent"] > 0 and r["accepted"] == r["sent"], r
    assert r["expected"] == r["accepted"] * r["readers"], r
    assert (r["deliveries"], r["loss"], r["dups"], r["reorders"]) == (r["expected"], 0, 0, 0), r
    assert r["latency_ms"]["p99"] is not None, r


@pytest.mark.gunicorn
@pytest.mark.timeout(300)
def test_smoke_run_against_chat_loses_nothing(tmp_path):
    """(a), (d), the long-poll (g) on chat's /api/rooms/<r>/poll, the mixed (l) (SSE readers in one
    room, long-poll readers in another, counted apart) and the reconnect storm (c) with cursors."""
    doc = _run_bench(tmp_path, "--scenarios", "a,c,d,g,l")
    results = {r["scenario"]: r for r in doc["results"]}
    assert set(results) == {"a", "c", "d", "g", "l"}
    for r in results.values():
        assert "error" not in r, r
        assert r["server_tracebacks"] == 0, r
    for key in "adgl":
        _delivered_everything(results[key])
    assert results["d"]["drops"] == results["d"]["readers"] * 2  # smoke: 2 cuts per reader, all resumed
    assert results["g"]["poll_requests"] > 0
    # Every poll after a reader's first continues on its worker's kept poller (chatapp.delivery.pollers).
    assert results["g"]["server_polls_short"] > 0 and results["l"]["server_polls_short"] > 0
    mixed, sc = results["l"], doc["scenarios"]["l"]
    assert mixed["mode"] == "sse" and mixed["readers"] == sc["readers"] // 2 and "latency_by_second" in mixed
    assert mixed["poll"]["mode"] == "poll" and mixed["poll"]["readers"] == sc["readers"] // 2
    _delivered_everything(mixed["poll"])
    assert mixed["poll"]["poll_requests"] > 0 and mixed["poll_requests"] == 0  # the SSE readers don't poll
    assert mixed["poll"]["errors"] == mixed["errors"] == {}
    idle, c = results["c"], results["c"]["catchup"]
    assert idle["opened"] == idle["readers"] and idle["kib_per_stream"] is not None, idle
    assert c["seed_refused"] == 0 and c["seeded_per_room"] == doc["scenarios"]["c"]["catchup"], c
    assert c["caught_up"] == c["readers"] == idle["readers"] and c["caught_up_secs"] is not None, c
    assert c["expected"] > 0 and c["behind"][1] > c["behind"][0], c  # real catch-ups, of different lengths
    assert (c["received"], c["loss"], c["dups"], c["reorders"], c["before_cursor"]) == (c["expected"], 0, 0, 0, 0), c
    assert (idle["deliveries"], idle["expected"], idle["loss"], idle["dups"]) == (c["expected"], c["expected"], 0, 0)
    assert "(a) fan-out" in doc["table"] and "Issue 15 targets" in doc["table"]
    judged = {(r["target"], r["system"]): r for r in doc["targets_issue15"]["results"]}
    assert judged[("g_clean", "chat")]["pass"] and judged[("l_p99_x_a", "chat")]["value"] is not None
    assert judged[("c_caught_up_secs", "chat")]["value"] == c["caught_up_secs"]


@pytest.mark.gunicorn
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


@pytest.mark.gunicorn  # flask-sse's
@pytest.mark.nginx  # nchan's
@pytest.mark.timeout(300)
def test_smoke_run_against_the_peers(tmp_path):
    doc = _run_bench(tmp_path, "--systems", "nchan,flask-sse", "--scenarios", "a,c,j,l")
    for r in doc["results"]:
        assert "error" not in r, r
        if r.get("na"):
            assert (r["system"], r["scenario"]) in {("flask-sse", "j"), ("flask-sse", "l")}, r
            continue
        assert r["opened"] == r["readers"], r
        if r["scenario"] in "ajl":
            assert r["deliveries"] == r["expected"] > 0 and r["loss"] == r["foreign"] == 0, r
        else:
            assert r["kib_per_stream"] is not None, r
    by = {(r["system"], r["scenario"]): r for r in doc["results"]}
    lp = by[("nchan", "l")]["poll"]  # nchan's /lp/<room> beside its EventSource room
    assert lp["opened"] == lp["readers"] and lp["deliveries"] == lp["expected"] > 0 and lp["loss"] == 0, lp
    c = by[("nchan", "c")]["catchup"]  # nchan resumes from the ids its publisher answered with
    assert c["caught_up"] == c["readers"] and (c["received"], c["loss"], c["dups"]) == (c["expected"], 0, 0), c
    assert "catchup" not in by[("flask-sse", "c")]  # no resume: (c) as before


@pytest.mark.gunicorn
@pytest.mark.timeout(120)
def test_stream_memory_runs_with_and_without_tracemalloc(tmp_path):
    for extra in ([], ["--trace"]):
        proc = subprocess.run([sys.executable, str(BENCH / "stream_memory.py"), "--stages", "6,12", "--rooms", "4",
                               "--mux", "2", "--users", "2", "--settle", "0.2", *extra], capture_output=True,
                              text=True, timeout=110, cwd=ROOT, check=False)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        assert proc.stdout.count("opened 6/6: marginal") == 2, proc.stdout
        assert ("Python allocations live per stream" in proc.stdout) == bool(extra), proc.stdout


@pytest.mark.gunicorn  # a bare Flask app's
def test_flask_floor_runs(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH / "flask_floor.py"), "--seconds", "0.5", "--connections", "4"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "requests/s" in proc.stdout


@pytest.mark.gunicorn
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


@pytest.mark.gunicorn
@pytest.mark.topology
@pytest.mark.timeout(300)
def test_smoke_redis_setups(tmp_path):
    """Issue 14: chat over the other Redis setups (fsync, a Sentinel set with replica
    acknowledgement, a Cluster) serves the closed loop's posts and readers without loss
    (the bench's full run also measures the fan-out (a) on them)."""
    doc = _run_bench(tmp_path, "--systems", "chat-fsync,chat-replicas,chat-cluster", "--scenarios", "e")
    assert {(r["system"], r["scenario"]) for r in doc["results"]} == {
        (s, "e") for s in ("chat-fsync", "chat-replicas", "chat-cluster")}
    for r in doc["results"]:
        assert "error" not in r and r["server_tracebacks"] == 0, r
        assert r["opened"] == r["readers"] and r["accepted"] == r["sent"] > 0, r
        assert (r["deliveries"], r["loss"], r["dups"], r["reorders"]) == (r["expected"], 0, 0, 0), r
    cores = {r["system"]: r["server_cpu_cores"] for r in doc["results"]}
    assert "redis-sentinel" in cores["chat-replicas"], cores  # the set's processes are measured too
