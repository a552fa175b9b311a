#!/usr/bin/env python3
"""The benchmark: start each system, run the scenarios with bench/loadgen.py, stop it, print one table.

    .venv/bin/python bench/run.py                       # chat only, every scenario
    .venv/bin/python bench/run.py --peers               # chat, then flask-sse, then nchan
    .venv/bin/python bench/run.py --smoke --peers       # tiny sizes (seconds), for tests
    .venv/bin/python bench/run.py --scenarios a,c --out bench/results
    .venv/bin/python bench/run.py --systems chat,chat-fsync,chat-replicas,chat-cluster --scenarios a,e
                                  # durability modes and Redis topologies (issue 14)

Scenarios (full size; --smoke shrinks them):
  a  fan-out: 1 room x 1,000 SSE readers, 50 msg/s
  b  rooms: 100 rooms x 10 readers, 200 msg/s in total
  c  idle, reconnect storm: 20 messages in each of 10 rooms, then 10,000 streams connect with a
     Last-Event-ID 0..10 messages behind their room's tail (as after a restart): time until all
     are open and caught up, catch-up loss/dups, PSS per stream (flask-sse: no cursors)
  d  resume: 200 readers at 50 msg/s, each cut 3 times, resuming with Last-Event-ID
  e  throughput: 10 rooms x 10 readers, 2 closed-loop posters per room
  f  big room: 1 room x 5,000 readers, 10 msg/s
  g  long-poll: as (a) over long-poll (chat's /poll, nchan's longpoll; flask-sse: n/a)
  h  guessing, login limits: (a) plus 50 wrong-password Basic requests/s (open loop) on a chat
     instance with the shipped login limits (CHAT_RATE_LOGIN_IP/_USER unset); chat only
  i  guessing, limits lifted: the same flood on the instance that ran (a), whose login limits
     are lifted like all the bench's limits, so every guess reaches the hash pool; chat only
  j  multiplexed: 1,000 SSE readers, each on one stream over 10 of 100 rooms (~100 readers per
     room), 200 msg/s over all rooms: loss, order per room, p99 against (a)'s, PSS per stream;
     on its own instance (chat: GET /api/events?rooms=...; nchan: /msub/a,b,...; flask-sse: n/a)
  k  multiplexed idle: (c) for multiplexed streams: 10,000 open streams, each over 10 of 100
     rooms, PSS per stream, on its own instance (at (j)'s 1,000 streams the server's fixed
     costs still weigh on the figure; at (c)'s 10,000 they don't)
  l  mixed: (a) (1 room x 1,000 SSE readers, 50 msg/s) while 1,000 long-poll readers read another
     room that gets 50 msg/s too, on the same server; each group counted apart; (l)'s SSE p99
     against (a)'s (issue 15; flask-sse: n/a)

With scenario e (and a chat system) it first measures the empty-POST floor (bench/flask_floor.py,
--floor) and prints the issue-15 targets under the table.

Writes <out>/benchmarks-results.json and <out>/benchmarks.png (bench/plot.py).
"""

import argparse
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from systems import SYSTEMS  # noqa: E402

SCENARIOS = {
    "a": dict(title="fan-out 1x1000 @50/s", rooms=1, readers=1000, rate=50),
    "b": dict(title="100 rooms x10 @200/s", rooms=100, readers=1000, rate=200),
    # Issue 15: "catchup" messages per room published during setup, then every stream connects
    # with a Last-Event-ID 0 .. "catchup_behind" messages behind its room's tail (a restart's storm).
    "c": dict(title="idle 10k streams", rooms=10, readers=10000, rate=0, idle=True, catchup=20, catchup_behind=10),
    "d": dict(title="resume 200 @50/s, 3 cuts", rooms=1, readers=200, rate=50, drops=3),
    "e": dict(title="throughput 10x10 closed loop", rooms=10, readers=100, closed_loop=True,
              posters_per_room=2, duration=10),
    "f": dict(title="big room 1x5000 @10/s", rooms=1, readers=5000, rate=10),
    "g": dict(title="long-poll 1x1000 @50/s", rooms=1, readers=1000, rate=50, mode="poll"),
    # Issue 11: (a) while a client guesses passwords. ``server_env`` starts a separate chat
    # instance with those variables (None: unset, the shipped default).
    "h": dict(title="(a) + 50 guesses/s, login limits", rooms=1, readers=1000, rate=50, flood=50,
              server_env={"CHAT_RATE_LOGIN_IP": None, "CHAT_RATE_LOGIN_USER": None}),
    "i": dict(title="(a) + 50 guesses/s, limits lifted", rooms=1, readers=1000, rate=50, flood=50),
    # Issue 13: reader i follows rooms i .. i+9 (mod 100) on one multiplexed stream. Its own
    # instance (``own_instance``), so its memory per stream is measured on a fresh server, as (c)'s.
    "j": dict(title="multiplexed 1000 x 10 of 100 rooms @200/s", rooms=100, readers=1000, rate=200, mux=10,
              own_instance=True),
    "k": dict(title="multiplexed idle 10000 x 10 of 100 rooms", rooms=100, readers=10000, rate=0, idle=True,
              mux=10, own_instance=True),
    # Issue 15: (a)'s room (the first) read over SSE while the last "poll_rooms" room(s) are read by
    # as many long-poll readers; "rate" is over both rooms (50 msg/s each).
    "l": dict(title="mixed 1x1000 SSE + 1x1000 long-poll @50/s each", rooms=2, readers=2000, rate=100,
              poll_rooms=1),
}
FLOODS = "hi"  # scenarios with a guessing flood, compared with (a)
MUX_TARGETS = {"p99_x_a": 3.0, "kib_per_stream": 8.0}  # issue 13: p99 <= 3x (a)'s, <= 8 KiB per stream
# Issue 15 (the request path at scale): name -> (limit, why). Judged in the same run, on this machine.
ISSUE15_TARGETS = {
    "g_rate_x_asked": (0.98, "(g) the publisher gets the asked rate through (50 msg/s at full size) while "
                             "1,000 long-poll readers wait: long-poll must not slow the senders"),
    "g_p99_ms": (250.0, "(g) long-poll p99 <= 250 ms: the fallback of every browser behind a buffering proxy"),
    "g_clean": (0, "(g) no loss, duplicate or reorder over long-poll"),
    "l_p99_x_a": (2.0, "(l) the SSE fan-out's p99 within 2x of (a)'s alone, with 1,000 long-poll readers "
                       "in another room of the same server"),
    "c_caught_up_secs": (3.0, "(c) every stream of the reconnect storm connected and caught up from its "
                              "cursor in < 3 s, nothing lost or doubled (after a deploy every browser reconnects)"),
    "e_posts_x_nchan": (0.5, "(e) closed-loop posts/s >= 0.5x nchan's (with Redis) in the same run"),
    "e_cpu_x_floor": (2.0, "(e) worker CPU per post (with its 10 deliveries) <= 2x the empty Flask POST's "
                           "(bench/flask_floor.py) measured in the same run"),
}
SMOKE = {
    "a": dict(readers=20, rate=20),
    "b": dict(rooms=4, readers=20, rate=20),
    "c": dict(readers=20),
    "d": dict(readers=10, rate=20, drops=2),
    "e": dict(rooms=2, readers=10, posters_per_room=1),
    "f": dict(readers=40, rate=10),
    "g": dict(readers=20, rate=20),
    "h": dict(readers=20, rate=20),
    "i": dict(readers=20, rate=20),
    "j": dict(rooms=8, readers=16, rate=16, mux=3),
    "k": dict(rooms=8, readers=20, mux=3),
    "l": dict(readers=40, rate=40),
}
# Runs (c) first, on a fresh server, so its memory baseline is not inflated by earlier load;
# (i) right after (a), on the same server.
ORDER = "caihbdefgljk"


KINDS = {"a": "fan-out", "b": "rooms", "c": "idle", "d": "resume", "e": "throughput", "f": "big room",
         "g": "long-poll", "h": "fan-out + guesses, login limits", "i": "fan-out + guesses, limits lifted",
         "j": "multiplexed", "k": "multiplexed idle", "l": "mixed"}


def sized(key, args):
    """The scenario at the size this run uses (--smoke, --scale), with a title that says it."""
    sc = dict(SCENARIOS[key])
    if args.smoke:
        sc.update(SMOKE[key])
    if args.scale != 1.0:
        sc["readers"] = max(sc["rooms"], int(sc["readers"] * args.scale))
    if sc.get("flood") and args.guess_rate is not None:
        sc["flood"] = args.guess_rate
    if sc.get("catchup") is not None and args.catchup is not None:
        sc["catchup"] = args.catchup
    sc["title"] = title_of(key, sc)
    return sc


def title_of(key, sc):
    """A scenario's title at its size: readers, rooms, rate and what else it does."""
    if sc.get("mux"):
        title = f"{KINDS[key]} {sc['readers']} streams x {sc['mux']} of {sc['rooms']} rooms"
    elif sc.get("poll_rooms"):
        n_sse = sc["rooms"] - sc["poll_rooms"]
        per = sc["readers"] // sc["rooms"]
        title = f"{KINDS[key]} {n_sse}x{per} SSE + {sc['poll_rooms']}x{per} long-poll"
    else:
        title = f"{KINDS[key]} {sc['rooms']}x{sc['readers'] // sc['rooms']}"
    if sc.get("rate") and sc.get("poll_rooms"):
        title += f" @{sc['rate'] / sc['rooms']:g}/s each"
    elif sc.get("rate"):
        title += f" @{sc['rate']:g}/s"
    if sc.get("catchup"):
        title += f", cursors 0-{sc['catchup_behind']} behind of {sc['catchup']}/room"
    if sc.get("drops"):
        title += f", {sc['drops']} cuts"
    if sc.get("closed_loop"):
        title += ", closed loop"
    if sc.get("flood"):
        title += f", {sc['flood']:g} guesses/s"
    return title


def scenario_spec(key, args, system):
    sc = sized(key, args)
    duration = sc.pop("duration", None) or args.duration
    if args.smoke:
        duration = min(duration, args.smoke_duration)
    if sc.get("idle"):
        duration = min(duration, args.idle_hold)
    rooms = [f"{key}{i}" for i in range(sc["rooms"])]
    spec = {
        "scenario": key, "title": sc["title"], "system": getattr(system, "wire", system.name), "port": system.port,
        "mode": sc.get("mode", "sse"), "rooms": rooms, "readers": sc["readers"],
        "rate": sc.get("rate", 0), "closed_loop": sc.get("closed_loop", False),
        "posters_per_room": sc.get("posters_per_room", 2), "duration": duration, "drops": sc.get("drops", 0),
        "settle": args.settle, "drain": args.drain, "lane_rate": args.lane_rate, "seed": args.seed,
        "procs": args.procs or (2 if sc["readers"] >= 2000 else 1),
        "connect_concurrency": args.connect_concurrency, "poll_timeout": 25,
        "flood_rate": sc.get("flood", 0),
        "timeline": key in "al" or bool(sc.get("flood")) or bool(sc.get("mux") and sc.get("rate")),
        "mux": sc.get("mux", 0),
    }
    if sc.get("poll_rooms"):  # mixed (l): the last rooms are read over long-poll
        spec["poll_rooms"] = rooms[-sc["poll_rooms"]:]
    if sc.get("catchup"):  # (c): seeded messages, and readers resuming behind the tail
        spec.update(catchup=sc["catchup"], catchup_behind=sc["catchup_behind"], catchup_timeout=30.0)
    spec["server_pids"] = system.pids()
    spec["measure_memory"] = bool(sc.get("idle") or sc.get("mux"))
    return spec


def run_loadgen(spec, timeout):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(spec, fh)
        path = fh.name
    proc = subprocess.Popen([sys.executable, str(BENCH / "loadgen.py"), "run", path],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return {"error": f"loadgen timed out after {timeout}s", "stderr": err.decode(errors="replace")[-2000:]}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # any reader process left behind
        except ProcessLookupError:
            pass
        os.unlink(path)
    lines = [line for line in out.decode().splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"loadgen exit {proc.returncode}", "stderr": err.decode(errors="replace")[-2000:]}
    return json.loads(lines[-1])


def unsupported(key, cls):
    """Why system class ``cls`` can't run scenario ``key`` (None: it can)."""
    sc = SCENARIOS[key]
    if (sc.get("mode") == "poll" or sc.get("poll_rooms")) and not cls.has_poll:
        return "no long-poll"
    if sc.get("flood") and not cls.has_accounts:
        return "no accounts"
    if sc.get("mux") and not cls.has_mux:
        return "no multiplexed stream"
    return None


def instances(keys):
    """[(server env, keys)]: the scenarios that need their own ``server_env`` (or ask for
    ``own_instance``) get their own instance of the system, started after the one that runs
    the rest, in ``keys``' order."""
    groups = {}
    for key in keys:
        env = SCENARIOS[key].get("server_env") or {}
        own = key if SCENARIOS[key].get("own_instance") else ""
        groups.setdefault((own, tuple(sorted(env.items()))), []).append(key)
    ordered = sorted(groups.items(), key=lambda kv: bool(kv[0][0] or kv[0][1]))  # stable: keys' order
    return [(dict(env), group) for (_own, env), group in ordered]


def run_systems(name, keys, args, log):
    """Every scenario in ``keys`` against system ``name``: n/a ones noted, the rest run on as
    many instances as their server environments need."""
    cls = SYSTEMS[name]
    results, runnable = [], []
    for key in keys:
        reason = unsupported(key, cls)
        if reason:
            results.append({"system": name, "scenario": key, "title": sized(key, args)["title"], "na": reason})
            log(f"[{name}] {key}: n/a ({reason})")
        else:
            runnable.append(key)
    for env, group in instances(runnable):
        results.extend(run_system(name, group, args, log, env))
    return results


def run_system(name, keys, args, log, env=None):
    cls = SYSTEMS[name]
    system = cls(redis_unix=args.redis_unix, aof=not args.no_aof, cold_auth=args.cold_auth, env=env)
    results = []
    try:
        t = time.monotonic()
        system.start()
        with_env = ", ".join(f"{k}={'(default)' if v is None else v}" for k, v in (env or {}).items())
        log(f"[{name}] started on port {system.port} in {time.monotonic() - t:.1f}s (pids {system.pids()})"
            + (f" with {with_env}" if with_env else ""))
        for key in keys:
            sc = SCENARIOS[key]
            reason = unsupported(key, cls)
            if reason:
                results.append({"system": name, "scenario": key, "title": sc["title"], "na": reason})
                log(f"[{name}] {key}: n/a ({reason})")
                continue
            spec = scenario_spec(key, args, system)
            n_users = min(spec["readers"], args.mux_users if spec["mux"] else args.users)
            n_posters = max(1, min(args.posters, len(spec["rooms"]) * 2))
            t = time.monotonic()
            system.prepare(spec["rooms"], n_users, n_posters, members=bool(spec["mux"]))
            spec.update(system.spec_extra())
            prep = time.monotonic() - t
            log(f"[{name}] {key}: {spec['title']} readers={spec['readers']} rooms={len(spec['rooms'])} "
                f"duration={spec['duration']}s (setup {prep:.1f}s)")
            timeout = 120 + spec["duration"] + spec["drain"] + spec["readers"] / 50
            short_before = system.polls_short()
            res = run_loadgen(spec, timeout)
            res.update({"title": spec["title"], "scenario": key, "system": name, "setup_secs": round(prep, 2)})
            if short_before is not None and (spec["mode"] == "poll" or spec.get("poll_rooms")):
                # chat: long-polls its workers answered on the short path (kept pollers), from
                # /metrics (the housekeeper adds them every 0.5 s)
                time.sleep(0.6)
                short_after = system.polls_short()
                if short_before is not None and short_after is not None:
                    res["server_polls_short"] = short_after - short_before
            if env:
                res["server_env"] = {k: v if v is not None else "(default)" for k, v in env.items()}
            if not system.server.alive():
                res["server_died"] = True
            results.append(res)
            log("    " + one_line(res))
            time.sleep(args.pause)
    except Exception as exc:  # keep the other systems' results
        results.append({"system": name, "scenario": "*", "error": f"{type(exc).__name__}: {exc}"})
        log(f"[{name}] FAILED: {exc}")
    finally:
        logs = system.logs()
        system.stop()
    tracebacks = logs.count("Traceback")
    if tracebacks:
        log(f"[{name}] server log has {tracebacks} traceback(s); last lines:\n" + logs[-1500:])
    for r in results:
        r.setdefault("server_tracebacks", tracebacks)
    return results


def one_line(r):
    if "error" in r:
        return f"ERROR {r['error']} {r.get('stderr', '')[-600:]}"
    lat = r.get("latency_ms", {})
    return (f"opened {r['opened']}/{r['readers']} in {r['connect_secs']}s; sent {r['sent']} "
            f"({r['posts_per_s']}/s); delivered {r['deliveries']}/{r['expected']} loss {r['loss']} "
            f"dups {r['dups']} reorders {r['reorders']}; p50 {lat.get('p50')} p99 {lat.get('p99')} ms; "
            f"{r['deliveries_per_s']}/s" + (f"; {r['kib_per_stream']} KiB/stream" if "kib_per_stream" in r else "")
            + f"; loadgen cpu {r['loadgen_cpu']}; server cores {r.get('server_cpu_cores')}"
            + f"; loadavg {r.get('loadavg_1m')}; machine busy cores {r.get('machine_busy_cores')}"
            + (f"\n    {flood_line(r['flood'])}" if r.get("flood") else "")
            + (f"\n    {timeline_line(r)}" if r.get("latency_by_second") else "")
            + (f"\n    {mux_line(r)}" if SCENARIOS.get(r.get("scenario"), {}).get("mux") else "")
            + (f"\n    {poll_line(r['poll'])}" if r.get("poll") else "")
            + (f"\n    {catchup_line(r['catchup'])}" if r.get("catchup") else ""))


def poll_line(p):
    """Mixed (l): the long-poll readers of the other room, counted apart from the SSE ones."""
    lat = p.get("latency_ms", {})
    return (f"long-poll room: opened {p['opened']}/{p['readers']}; sent {p['sent']} ({p['posts_per_s']}/s); "
            f"delivered {p['deliveries']}/{p['expected']} loss {p['loss']} dups {p['dups']} "
            f"reorders {p['reorders']}; p50 {lat.get('p50')} p99 {lat.get('p99')} ms; "
            f"{p['poll_requests']} polls")


def catchup_line(c):
    """(c) with cursors: the reconnect storm's catch-up."""
    ms = c.get("catch_up_ms") or {}
    return (f"cursors: caught up {c['caught_up']}/{c['readers']} in {c['caught_up_secs']} s "
            f"(per stream p50 {ms.get('p50')} p99 {ms.get('p99')} ms); catch-up messages "
            f"{c['received']}/{c['expected']} loss {c['loss']} dups {c['dups']} reorders {c['reorders']} "
            f"before cursor {c['before_cursor']}; behind {c['behind']} of {c.get('seeded_per_room')}/room "
            f"(seeded in {c.get('seed_secs')} s, {c.get('seed_refused')} refused)")


def mux_line(r):
    """The multiplexed scenarios' own checks: messages from rooms not asked for, per-room
    order, ids listing several rooms; memory per stream by process."""
    line = (f"foreign {r.get('foreign')} room order errors {r.get('room_order_errors')} "
            f"ids listing several rooms {r.get('multi_room_ids')}; KiB/stream by process "
            f"{r.get('kib_per_stream_by_command')}")
    if r.get("loaded"):
        line += f"; after publishing {r['loaded'].get('kib_per_stream')} KiB/stream"
    return line


def timeline_line(r):
    """p99 delivery latency (ms) for each second of sending, and the guesses hashed (401) in it."""
    hashed = {int(k): v.get("401", 0) for k, v in (r.get("flood") or {}).get("statuses_by_second", {}).items()}
    cells = [f"{b['p99']:.0f}" + (f"/{hashed[b['s']]}" if hashed.get(b["s"]) else "") for b in r["latency_by_second"]]
    return "p99 ms by second" + (" (/guesses answered 401 sent in it)" if hashed else "") + ": " + " ".join(cells)


def flood_line(flood):
    """The guessing client's answers: how many of each status, and how fast."""
    statuses = ", ".join(f"{k if k != '0' else 'no answer'}: {v}" for k, v in flood["statuses"].items())
    ms = ", ".join(f"{k} p50 {v['p50']} p99 {v['p99']} ms" for k, v in flood["answer_ms"].items() if k != "0")
    return (f"guesses: {flood['sent']} sent at {flood['sent_per_s']}/s (max lag {flood['max_lag_s']} s); "
            f"answers {statuses}; {ms}")


COLUMNS = [
    ("system", 20), ("sent", 7), ("deliv", 8), ("loss", 6), ("dups", 6), ("reord", 6),
    ("p50ms", 7), ("p99ms", 8), ("posts/s", 8), ("deliv/s", 9), ("KiB/str", 8), ("conn s", 7), ("cores", 6),
]


def fmt(v, width):
    if v is None or v == "":
        s = "-"
    elif isinstance(v, float):
        s = f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
    else:
        s = str(v)
    return s.rjust(width)


def row_values(r):
    if r.get("na"):
        return [r["system"], "n/a"] + [""] * (len(COLUMNS) - 2)
    if "error" in r:
        return [r["system"], "ERROR"] + [""] * (len(COLUMNS) - 2)
    lat = r.get("latency_ms", {})
    idle = bool(SCENARIOS.get(r.get("scenario"), {}).get("idle"))
    return [r["system"], r["sent"], r["deliveries"], r["loss"], r["dups"], r["reorders"],
            lat.get("p50"), lat.get("p99"), None if idle else r["posts_per_s"],
            None if idle else r["deliveries_per_s"], r.get("kib_per_stream"), r["connect_secs"],
            None if idle or "server_cpu_cores" not in r else round(sum(r["server_cpu_cores"].values()), 2)]


def ratio(a, b):
    if a in (None, 0) or b in (None, 0) or isinstance(a, str) or isinstance(b, str):
        return None
    return round(a / b, 2)


def table(results, keys, systems, titles=None, *, sized_scenarios=None, floor=None):
    out = []
    head = "".join(name.rjust(w) if i else name.ljust(w) for i, (name, w) in enumerate(COLUMNS))
    by = {(r["system"], r["scenario"]): r for r in results}
    for key in keys:
        out.append(f"\n({key}) {(titles or {}).get(key) or SCENARIOS[key]['title']}")
        out.append(head)
        for name in systems:
            r = by.get((name, key)) or by.get((name, "*"))
            if r is None:
                continue
            vals = row_values(r)
            out.append("".join(fmt(v, w) if i else str(v).ljust(w) for i, ((_, w), v) in enumerate(zip(COLUMNS, vals))))
            if r.get("poll"):  # mixed (l): the long-poll room's readers on a row of their own
                vals = row_values({**r["poll"], "system": f"{name} (lp)", "scenario": key,
                                   "connect_secs": r["connect_secs"]})
                out.append("".join(fmt(v, w) if i else str(v).ljust(w)
                                   for i, ((_, w), v) in enumerate(zip(COLUMNS, vals))))
        chat = by.get(("chat", key))
        for peer in systems[1:]:
            other = by.get((peer, key))
            if not chat or not other or "error" in chat or "error" in other or chat.get("na") or other.get("na"):
                continue
            a, b = row_values(chat), row_values(other)
            vals = [f"chat/{peer}"] + [""] * 5 + [ratio(x, y) for x, y in zip(a[6:], b[6:])]
            out.append("".join(fmt(v, w) if i else str(v).ljust(w) for i, ((_, w), v) in enumerate(zip(COLUMNS, vals))))
        if key in FLOODS:
            for name in systems:
                r, base = by.get((name, key)), by.get((name, "a"))
                if r and r.get("flood"):
                    if base and "error" not in base and not base.get("na"):
                        a, b = row_values(r), row_values(base)
                        vals = [f"{name}/(a)"] + [""] * 5 + [ratio(a[6], b[6]), ratio(a[7], b[7])]
                        vals += [""] * (len(COLUMNS) - len(vals))
                        out.append("".join(fmt(v, w) if i else str(v).ljust(w)
                                           for i, ((_, w), v) in enumerate(zip(COLUMNS, vals))))
                    out.append(f"  {name} {flood_line(r['flood'])}")
    for summary in (guess_summary(results, keys, systems), mux_summary(results, keys, systems),
                    issue15_summary(issue15_targets(results, keys, systems, sized_scenarios=sized_scenarios,
                                                    floor=floor))):
        if summary:
            out.append(summary)
    return "\n".join(out)


def python_cores(r):
    """Cores the server's Python processes used (gunicorn master and workers; not Redis)."""
    cores = r.get("server_cpu_cores") or {}
    py = [v for k, v in cores.items() if not k.startswith(("redis", "nginx"))]
    return sum(py) if py else None


def issue15_targets(results, keys, systems, *, sized_scenarios=None, floor=None, targets=ISSUE15_TARGETS):
    """Issue 15's targets judged on this run's results, per system that ran the scenario: a list
    of {"target", "system", "scenario", "value", "limit", "detail", "pass"} (pass None: not
    judged, e.g. no (a), nchan or floor in this run). ``sized_scenarios``: {key: the scenario at
    this run's size} (the rate asked of (g)); ``floor``: bench/flask_floor.py's figure."""
    by = {(r["system"], r["scenario"]): r for r in results}
    rows = []
    for name in systems:
        for key, judge in (("g", _judge_g), ("l", _judge_l), ("c", _judge_c), ("e", _judge_e)):
            r = by.get((name, key)) if key in keys else None
            if not r or "error" in r or r.get("na"):
                continue
            for target, value, detail, passed in judge(r, by, sized_scenarios or SCENARIOS, floor):
                rows.append({"target": target, "system": name, "scenario": key, "value": value,
                             "limit": targets[target][0], "detail": detail,
                             "pass": None if passed is None else bool(passed)})
    return rows


def _ok(r):
    return r if r and "error" not in r and not r.get("na") else None


def _judge_g(g, _by, scenarios, _floor, t=ISSUE15_TARGETS):
    """(g): the publisher's achieved rate against the asked one, p99, loss/dups/reorders."""
    asked = scenarios.get("g", {}).get("rate")
    x = ratio(g["posts_per_s"], asked)
    lat = g["latency_ms"]
    bad = g["loss"] + g["dups"] + g["reorders"]
    return [
        ("g_rate_x_asked", x, f"{g['posts_per_s']}/s of {asked:g}/s asked, max publish lag "
                              f"{g['max_publish_lag_s']} s", None if x is None else x >= t["g_rate_x_asked"][0]),
        ("g_p99_ms", lat.get("p99"), f"p50 {lat.get('p50')} ms",
         None if lat.get("p99") is None else lat["p99"] <= t["g_p99_ms"][0]),
        ("g_clean", bad, f"loss {g['loss']} dups {g['dups']} reorders {g['reorders']}, delivered "
                         f"{g['deliveries']}/{g['expected']}", bad == 0 and g["deliveries"] == g["expected"] > 0),
    ]


def _judge_l(mixed, by, _scenarios, _floor, t=ISSUE15_TARGETS):
    """(l): its SSE readers' p99 against (a)'s of the same system in this run."""
    base = _ok(by.get((mixed["system"], "a")))
    p99 = mixed["latency_ms"].get("p99")
    a99 = base["latency_ms"].get("p99") if base else None
    x = ratio(p99, a99)
    lp = mixed.get("poll") or {}
    detail = (f"SSE p99 {p99} ms vs (a) {a99 if base else '(not run)'} ms, SSE loss/dups/reord {mixed['loss']}/"
              f"{mixed['dups']}/{mixed['reorders']}; long-poll p99 {lp.get('latency_ms', {}).get('p99')} ms, "
              f"loss/dups/reord {lp.get('loss')}/{lp.get('dups')}/{lp.get('reorders')}")
    return [("l_p99_x_a", x, detail, None if x is None else x <= t["l_p99_x_a"][0])]


def _judge_c(idle, _by, _scenarios, _floor, t=ISSUE15_TARGETS):
    """(c): every stream open and caught up from its cursor, nothing lost, doubled or replayed."""
    c = idle.get("catchup")
    if not c:
        return [("c_caught_up_secs", None, f"no cursors (no resume); opened in {idle['connect_secs']} s", None)]
    secs = c["caught_up_secs"]
    detail = (f"opened {idle['opened']}/{idle['readers']} in {idle['connect_secs']} s, caught up "
              f"{c['caught_up']}/{c['readers']}, catch-up {c['received']}/{c['expected']} loss {c['loss']} "
              f"dups {c['dups']} before cursor {c['before_cursor']}")
    passed = (secs is not None and secs < t["c_caught_up_secs"][0]
              and c["loss"] == c["dups"] == c["before_cursor"] == 0)
    return [("c_caught_up_secs", secs, detail, passed)]


def _judge_e(e, by, _scenarios, floor, t=ISSUE15_TARGETS):
    """(e): posts/s against nchan's of this run; the workers' CPU per post against the floor."""
    rows = []
    if e["system"] != "nchan":
        peer = _ok(by.get(("nchan", "e")))
        x = ratio(e["posts_per_s"], peer["posts_per_s"] if peer else None)
        rows.append(("e_posts_x_nchan", x, f"{e['posts_per_s']} vs nchan {peer['posts_per_s'] if peer else '(not run)'}"
                     " posts/s", None if x is None else x >= t["e_posts_x_nchan"][0]))
    cores = python_cores(e)
    if cores is not None and e["posts_per_s"]:
        us = round(cores / e["posts_per_s"] * 1e6, 1)
        fl = (floor or {}).get("us_per_request")
        x = ratio(us, fl)
        rows.append(("e_cpu_x_floor", x, f"{us:g} µs of worker CPU per post ({cores:.2f} cores at "
                     f"{e['posts_per_s']}/s) vs floor {fl if fl else '(not measured)'} µs",
                     None if x is None else x <= t["e_cpu_x_floor"][0]))
    return rows


def issue15_summary(rows, targets=ISSUE15_TARGETS):
    """The issue-15 targets, one line per target and system: measured, limit, PASS/MISS."""
    if not rows:
        return ""
    labels = {"g_rate_x_asked": "(g) publisher rate >= {:g}x asked", "g_p99_ms": "(g) p99 <= {:g} ms",
              "g_clean": "(g) no loss/dup/reorder", "l_p99_x_a": "(l) SSE p99 <= {:g}x (a)'s",
              "c_caught_up_secs": "(c) all caught up < {:g} s", "e_posts_x_nchan": "(e) posts/s >= {:g}x nchan",
              "e_cpu_x_floor": "(e) CPU/post <= {:g}x floor"}
    out = ["\nIssue 15 targets (the request path at scale), same run:",
           f"{'target':<36}{'system':<15}{'measured':>10}  {'verdict':<7} detail"]
    for row in rows:
        verdict = "-" if row["pass"] is None else ("PASS" if row["pass"] else "MISS")
        label = labels[row["target"]].format(targets[row["target"]][0])
        out.append(f"{label:<36}{row['system']:<15}{fmt(row['value'], 10)}  {verdict:<7} {row['detail']}")
    return "\n".join(out)


def mux_summary(results, keys, systems, targets=MUX_TARGETS):
    """Issue 13: the multiplexed streams (j) beside the single-room fan-out (a) of the same run,
    and their memory per stream at 1,000 (j) and, idle, at 10,000 (k; (c) for single rooms)."""
    if "j" not in keys and "k" not in keys:
        return ""
    by = {(r["system"], r["scenario"]): r for r in results}

    def ok(r):
        return r if r and "error" not in r and not r.get("na") else {}

    out = [f"\nMultiplexed streams (issue 13): p99 within {targets['p99_x_a']:g}x of (a)'s, "
           f"<= {targets['kib_per_stream']:g} KiB per stream (judged at 10,000 streams (k) when it ran)",
           f"{'system':<10}{'opened':>11}{'posts ok':>11}{'posts/s':>9}{'loss':>6}{'dups':>6}{'reord':>6}"
           f"{'order':>6}{'foreign':>8}{'p50ms':>8}{'p99ms':>8}{'(a)p50':>8}{'(a)p99':>8}{'x(a)p99':>8}"
           f"{'KiB(j)':>8}{'KiB(k)':>8}{'KiB(c)':>8}  target"]
    for name in systems:
        r, idle = by.get((name, "j")), by.get((name, "k"))
        if all(not x or x.get("na") for x in (r, idle)):
            continue
        for x in (r, idle):
            if x and "error" in x:
                out.append(f"{name:<10}  ({x['scenario']}) ERROR {x['error'][:80]}")
        r, idle = ok(r), ok(idle)
        blat = ok(by.get((name, "a"))).get("latency_ms", {})
        lat = r.get("latency_ms", {})
        x99 = ratio(lat.get("p99"), blat.get("p99"))
        kib = idle.get("kib_per_stream", r.get("kib_per_stream"))
        verdict = []
        if x99 is not None:
            verdict.append(f"p99 {'met' if x99 <= targets['p99_x_a'] else 'MISSED'}")
        if kib is not None:
            verdict.append(f"memory {'met' if kib <= targets['kib_per_stream'] else 'MISSED'}")
        if r:
            clean = r["loss"] == r["dups"] == r["reorders"] == r.get("room_order_errors", 0) == r.get("foreign", 0)
            verdict.append("no loss" if clean and r["loss"] == 0 else "LOSS/ORDER")
        cells = [f"{r['opened']}/{r['readers']}" if r else None, f"{r['accepted']}/{r['sent']}" if r else None,
                 r.get("posts_per_s"), r.get("loss"), r.get("dups"), r.get("reorders"), r.get("room_order_errors"),
                 r.get("foreign"), lat.get("p50"), lat.get("p99"), blat.get("p50"), blat.get("p99"), x99,
                 r.get("kib_per_stream"), idle.get("kib_per_stream"), ok(by.get((name, "c"))).get("kib_per_stream")]
        widths = [11, 11, 9, 6, 6, 6, 6, 8, 8, 8, 8, 8, 8, 8, 8, 8]
        out.append(f"{name:<10}" + "".join(fmt(v, w) for v, w in zip(cells, widths)) + "  " + ", ".join(verdict))
    return "\n".join(out) if len(out) > 2 else ""


def guess_summary(results, keys, systems, target=1.5):
    """Issue 11: (a)'s delivery latency alone and under each guessing flood, side by side."""
    floods = [k for k in FLOODS if k in keys]
    if not floods or "a" not in keys:
        return ""
    by = {(r["system"], r["scenario"]): r for r in results}
    out = [f"\nPassword guessing during the fan-out (issue 11): p99 within {target:g}x of (a)'s",
           f"{'system':<10}{'variant':<20}{'opened':>11}{'posts ok':>11}{'p50ms':>8}{'p99ms':>8}{'x(a)p50':>9}"
           f"{'x(a)p99':>9}"
           f"{'401':>6}{'429':>6}{'503':>6}{'other':>6}  target"]
    for name in systems:
        base = by.get((name, "a"))
        if not base or "error" in base or base.get("na") \
                or all(not by.get((name, k)) or by[(name, k)].get("na") for k in floods):
            continue
        blat = base.get("latency_ms", {})
        rows = [("a", "(a) alone", base)] + [(k, f"({k}) {KINDS[k].split(', ')[-1]}", by.get((name, k)))
                                            for k in floods]
        for key, label, r in rows:
            if not r or r.get("na"):
                continue
            if "error" in r:
                out.append(f"{name:<10}{label:<20}  ERROR {r['error'][:60]}")
                continue
            lat = r.get("latency_ms", {})
            st = (r.get("flood") or {}).get("statuses", {})
            other = sum(v for k, v in st.items() if k not in ("401", "429", "503"))
            x50, x99 = ratio(lat.get("p50"), blat.get("p50")), ratio(lat.get("p99"), blat.get("p99"))
            verdict = "" if key == "a" or x99 is None else ("met" if x99 <= target else "MISSED")
            cells = [f"{r['opened']}/{r['readers']}", f"{r['accepted']}/{r['sent']}", lat.get("p50"), lat.get("p99"),
                     x50, x99]
            cells += ["", "", "", ""] if key == "a" else [st.get("401", 0), st.get("429", 0), st.get("503", 0), other]
            widths = [11, 11, 8, 8, 9, 9, 6, 6, 6, 6]
            out.append(f"{name:<10}{label:<20}" + "".join(fmt(v, w) for v, w in zip(cells, widths)) + f"  {verdict}")
    return "\n".join(out) if len(out) > 2 else ""


def parse_args(argv):
    parser = argparse.ArgumentParser(description="Benchmark chat (and flask-sse, nchan) on this machine.")
    parser.add_argument("--peers", action="store_true", help="also run flask-sse and nchan")
    parser.add_argument("--systems", help="comma list instead of chat[,flask-sse,nchan]; also chat-fsync, "
                        "chat-replicas, chat-cluster (chat over other Redis setups, issue 14)")
    parser.add_argument("--scenarios", default="abcdefghijkl", help="e.g. a,c,e (default: all)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, ~2 s each")
    parser.add_argument("--out", default=str(BENCH / "results"), help="folder (or .json path) for results")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of publishing per scenario")
    parser.add_argument("--smoke-duration", type=float, default=2.0)
    parser.add_argument("--idle-hold", type=float, default=5.0, help="seconds (c) holds its streams")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply reader counts")
    parser.add_argument("--settle", type=float, help="pause after all streams open (1 s; smoke 0.5 s)")
    parser.add_argument("--drain", type=float, default=5.0, help="max wait for late deliveries")
    parser.add_argument("--users", type=int, default=100, help="reader accounts (chat); readers share them")
    parser.add_argument("--mux-users", type=int, default=10,
                        help="reader accounts of the multiplexed scenario j (chat), each a member of every room")
    parser.add_argument("--posters", type=int, default=20, help="poster accounts (chat)")
    parser.add_argument("--procs", type=int, default=0, help="reader processes (0: 2 from 2,000 readers)")
    parser.add_argument("--lane-rate", type=float, default=10.0, help="msgs/s per sequential publisher")
    parser.add_argument("--connect-concurrency", type=int, default=500)
    parser.add_argument("--redis-unix", action="store_true", help="chat/flask-sse Redis on a unix socket")
    parser.add_argument("--no-aof", action="store_true", help="Redis without AOF (default: AOF everysec)")
    parser.add_argument("--cold-auth", action="store_true",
                        help="chat: don't sign readers in during setup; stream opens then pay the scrypt hash")
    parser.add_argument("--guess-rate", type=float,
                        help="wrong-password requests/s in the guessing scenarios h and i (default 50)")
    parser.add_argument("--pause", type=float, help="seconds between scenarios (1 s; smoke 0.2 s)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--ceiling", action=argparse.BooleanOptionalAction, default=None,
                        help="measure the loadgen's own ceiling first (~10 s; default: on, off with --smoke)")
    parser.add_argument("--catchup", type=int,
                        help="messages seeded per room before (c)'s streams connect with cursors 0-10 behind "
                             "the tail (default 20; 0: (c) without cursors)")
    parser.add_argument("--floor", action=argparse.BooleanOptionalAction, default=None,
                        help="measure the empty Flask POST's CPU (bench/flask_floor.py) once, before the "
                             "systems, for (e)'s CPU per post (default: on when scenario e runs on a chat system)")
    parser.add_argument("--floor-seconds", type=float, help="seconds the floor is driven (10; smoke 2)")
    args = parser.parse_args(argv)
    if args.settle is None:
        args.settle = 0.5 if args.smoke else 1.0
    if args.pause is None:
        args.pause = 0.2 if args.smoke else 1.0
    if args.floor_seconds is None:
        args.floor_seconds = 2.0 if args.smoke else 10.0
    if args.smoke:
        args.idle_hold = min(args.idle_hold, 1.0)
        args.drain = min(args.drain, 3.0)
    args.system_list = args.systems.split(",") if args.systems else (
        ["chat"] + (["flask-sse", "nchan"] if args.peers else []))
    for s in args.system_list:
        if s not in SYSTEMS:
            parser.error(f"unknown system {s!r}")
    return args


def measure_ceiling(log):
    proc = subprocess.run([sys.executable, str(BENCH / "loadgen.py"), "ceiling"], capture_output=True,
                          text=True, timeout=120, check=False)
    ceiling = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else proc.stderr[-500:]
    log(f"loadgen ceiling (one reader process, one core): {ceiling}")
    return ceiling


def measure_floor(args, log):
    """bench/flask_floor.py's empty POST under the same gunicorn: its server CPU per request."""
    try:
        from flask_floor import floor
    except ImportError as exc:
        log(f"no floor ({exc})")
        return {"error": f"{type(exc).__name__}: {exc}"}
    try:
        result = floor(args.floor_seconds, 20, warmup=0.5 if args.smoke else 1.0)
    except Exception as exc:  # the run goes on without it
        log(f"floor FAILED: {exc}")
        return {"error": f"{type(exc).__name__}: {exc}"}
    log(f"empty Flask POST floor (bench/flask_floor.py, 2 gevent workers): {result['requests_per_s']:,.0f} "
        f"requests/s, {result['cores']:.2f} cores, {result['us_per_request']:.0f} µs of server CPU per request")
    return result


def main(argv=None):
    args = parse_args(argv)

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by every server and loadgen
    systems = args.system_list
    keys = [k for k in args.scenarios.replace(",", "") if k in SCENARIOS]
    run_keys = sorted(keys, key=ORDER.index)
    out = Path(args.out)
    json_path = out if out.suffix == ".json" else out / "benchmarks-results.json"
    png_path = json_path.with_name("benchmarks.png")
    json_path.parent.mkdir(parents=True, exist_ok=True)

    def log(msg):
        print(msg, flush=True)

    # SIGTERM ends the run through the finally blocks that stop every server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.time()
    results = []
    ceiling = None
    if args.ceiling or (args.ceiling is None and not args.smoke):
        ceiling = measure_ceiling(log)
    floor = None
    if args.floor or (args.floor is None and "e" in keys and any(SYSTEMS[s].has_accounts for s in systems)):
        floor = measure_floor(args, log)  # before any system starts: the machine to itself
    for name in systems:
        results.extend(run_systems(name, run_keys, args, log))
    sized_scenarios = {k: sized(k, args) for k in keys}
    text = table(results, keys, systems, {k: sc["title"] for k, sc in sized_scenarios.items()},
                 sized_scenarios=sized_scenarios, floor=floor)
    print(text, flush=True)
    targets = issue15_targets(results, keys, systems, sized_scenarios=sized_scenarios, floor=floor)
    doc = {"started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
           "wall_secs": round(time.time() - started, 1), "args": vars(args), "smoke": args.smoke,
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                       "platform": platform.platform()},
           "loadgen_ceiling": ceiling, "systems": systems, "scenarios": {k: sized(k, args) for k in keys},
           "results": results, "table": text}
    if floor is not None:
        doc["flask_floor"] = floor
    if targets:
        doc["targets_issue15"] = {"targets": {k: {"limit": v[0], "why": v[1]} for k, v in ISSUE15_TARGETS.items()},
                                  "results": targets}
    json_path.write_text(json.dumps(doc, indent=1))
    log(f"\nresults: {json_path}")
    if not args.no_plot:
        try:
            from plot import plot
            plot(doc, png_path)
            log(f"plot: {png_path}")
        except ImportError as exc:
            log(f"no plot ({exc}); pip install -r requirements.txt")
    failed = [r for r in results if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
