"""Presence: who is here, join/leave (live-only), typing — in one process, across real
workers, through a worker crash, and in the page."""

import http.client
import json
import os
import signal
import time

import gevent
import pytest
from playwright.sync_api import expect

from chatapp.web.context import services_of
from tests.helpers import (
    GENEROUS_LIMITS,
    PASSWORD,
    Api,
    LocalStream,
    eventually,
    gunicorn_with_redis,
    signed_in,
    unique,
)


@pytest.fixture
def config(config):
    return {**config, "CHAT_PRESENCE_LINGER_SECS": 0.3, "CHAT_PRESENCE_TTL_SECS": 3}


def events_of(stream, kinds=("presence", "typing"), timeout=4, until=None):
    """Collect (event, data) of ``kinds`` until ``until(collected)`` or the timeout."""
    got = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not (until and until(got)):
        event = stream.next_event(timeout=deadline - time.monotonic())
        if event is None:
            break
        if event.get("event") in kinds:
            got.append((event["event"], json.loads(event["data"])))
    return got


def presence(stream, **kw):
    return [(d["user"], d["state"]) for e, d in events_of(stream, kinds=("presence",), **kw)]


def opened(client, room="general"):
    stream = LocalStream(client, f"/api/rooms/{room}/events")
    assert stream.next_event()["retry"]
    return stream


def test_join_and_leave_reach_other_readers_but_not_yourself(app):
    alice, bob = signed_in(app, "alice"), signed_in(app, "bob")
    watching = opened(alice)
    gevent.sleep(0.2)
    bobs = opened(bob)
    assert presence(watching, until=lambda got: got) == [("bob", "join")]
    assert sorted(alice.get("/api/rooms/general/presence").json["users"]) == ["alice", "bob"]
    assert presence(bobs, timeout=0.5) == []  # bob isn't told about himself
    bobs.close()
    assert presence(watching, until=lambda got: got) == [("bob", "leave")]
    assert alice.get("/api/rooms/general/presence").json["users"] == ["alice"]
    watching.close()


def test_three_tabs_count_once_and_leave_after_the_last(app):
    alice, bob = signed_in(app, "alice"), signed_in(app, "bob")
    watching = opened(alice)
    gevent.sleep(0.2)
    tabs = [opened(bob) for _ in range(3)]
    assert presence(watching, timeout=1.5) == [("bob", "join")]
    assert alice.get("/api/rooms/general/presence").json["users"] == ["alice", "bob"]
    tabs.pop().close()
    tabs.pop().close()
    assert presence(watching, timeout=3) == []
    tabs.pop().close()
    assert presence(watching, timeout=4, until=lambda got: got) == [("bob", "leave")]
    watching.close()


def test_a_quick_reconnect_does_not_announce_leave_and_join(app):
    alice, bob = signed_in(app, "alice"), signed_in(app, "bob")
    watching = opened(alice)
    gevent.sleep(0.2)
    first = opened(bob)
    assert presence(watching, until=lambda got: got) == [("bob", "join")]
    first.close()
    again = opened(bob)  # within the linger period
    assert presence(watching, timeout=3) == []
    again.close()
    watching.close()


def test_a_resumed_reader_that_missed_a_join_gets_the_right_list(app):
    alice, bob = signed_in(app, "alice"), signed_in(app, "bob")
    away = opened(alice)
    gevent.sleep(0.2)
    away.close()
    bobs = opened(bob)  # alice is not connected: she misses this join
    gevent.sleep(0.3)
    back = opened(alice)
    gevent.sleep(0.2)  # joins are announced in batches, within 50 ms
    assert alice.get("/api/rooms/general/presence").json["users"] == ["alice", "bob"]
    back.close()
    bobs.close()


def test_long_poll_counts_as_presence_until_it_expires(app):
    alice, bob = signed_in(app, "alice"), signed_in(app, "bob")
    watching = opened(alice)
    gevent.sleep(0.2)
    assert bob.get("/api/rooms/general/poll?timeout=0").status_code == 200
    assert presence(watching, until=lambda got: got) == [("bob", "join")]
    assert presence(watching, timeout=6, until=lambda got: got) == [("bob", "leave")]  # TTL 3 s + sweep
    watching.close()


def test_typing_reaches_others_live_only_and_is_rate_limited(app, redis_client):
    services_of(app).limits._limits["CHAT_RATE_TYPING"] = __import__("limits").parse("2 per minute")
    alice, bob = signed_in(app, "alice"), signed_in(app, "bob")
    watching, own = opened(alice), opened(bob)
    gevent.sleep(0.3)
    events_of(watching, timeout=0.3)
    assert bob.post("/api/rooms/general/typing").status_code == 202
    typing = [d for e, d in events_of(watching, kinds=("typing",), until=lambda got: got)]
    assert typing == [{"type": "typing", "room": "general", "user": "bob"}]
    assert events_of(own, kinds=("typing",), timeout=0.5) == []
    assert redis_client.xlen("chat:{general}:log") == 0  # never stored
    assert bob.post("/api/rooms/general/typing").status_code == 202
    limited = bob.post("/api/rooms/general/typing")
    assert limited.status_code == 429 and "Retry-After" in limited.headers
    watching.close()
    own.close()


def test_long_poll_gets_presence_and_typing_as_events(app):
    alice, bob = signed_in(app, "alice"), signed_in(app, "bob")
    alice.get("/api/rooms/general/poll?timeout=0")
    waiting = gevent.spawn(alice.get, "/api/rooms/general/poll?timeout=5")
    gevent.sleep(0.3)
    bob.post("/api/rooms/general/typing")
    body = waiting.get(timeout=5).json
    assert body["messages"] == []
    assert {"type": "typing", "room": "general", "user": "bob"} in body["events"]


# -- across real workers ----------------------------------------------------------

@pytest.fixture(scope="module")
def crowd(tmp_path_factory):
    env = {**GENEROUS_LIMITS, "CHAT_PRESENCE_TTL_SECS": "4", "CHAT_PRESENCE_LINGER_SECS": "0.5",
           "CHAT_HEARTBEAT_SECS": "1"}
    with gunicorn_with_redis(tmp_path_factory.mktemp("presence"), env=env) as (server, _):
        yield server


class Watcher:
    """An SSE stream whose presence events are collected in the background."""

    def __init__(self, api, room, headers=None):
        self.stream = api.stream(f"/api/rooms/{room}/events", headers)
        self.pid = self.stream.pid
        self.events = []
        self._greenlet = gevent.spawn(self._read)

    def _read(self):
        try:
            for event in self.stream.events():
                if event.get("event") == "presence":
                    data = json.loads(event["data"])
                    self.events.append((data["user"], data["state"]))
        except (OSError, http.client.HTTPException):
            pass  # its worker was killed

    def wait_for(self, item, timeout=10):
        """Until ``item`` (user, state) was heard; fails if it wasn't within ``timeout``."""
        def heard():
            assert item in self.events, f"heard {self.events}"
            return True
        return eventually(heard, timeout, what=f"{item} heard by the watcher on worker {self.pid}")

    def close(self):
        self._greenlet.kill()
        self.stream.close()


def user_api(server):
    name = unique("v")
    Api(server.url).post("/api/auth/register", {"username": name, "password": PASSWORD})
    return name, Api(server.url, name, PASSWORD)


def on_worker(api, room, pid, tries=40):
    """A watcher held by worker ``pid`` (connections land where they land: retry)."""
    for _ in range(tries):
        watcher = Watcher(api, room)
        if watcher.pid == pid:
            return watcher
        watcher.close()
    raise AssertionError(f"no stream landed on worker {pid}")


@pytest.mark.gunicorn
def test_users_on_different_workers_see_each_other_join_and_leave(crowd):
    room = unique("p")
    a_name, a = user_api(crowd)
    b_name, b = user_api(crowd)
    a.post("/api/rooms", {"name": room})
    first, second = crowd.worker_pids()
    watcher_a = on_worker(a, room, first)
    gevent.sleep(0.3)
    watcher_b = on_worker(b, room, second)
    watcher_a.wait_for((b_name, "join"))
    assert sorted(a.get(f"/api/rooms/{room}/presence").json["users"]) == sorted([a_name, b_name])
    watcher_b.close()
    watcher_a.wait_for((b_name, "leave"))
    watcher_a.close()


@pytest.mark.gunicorn
def test_worker_sigkill_user_leaves_within_expiry_and_every_reader_hears_it(crowd):
    room = unique("k")
    victim_name, victim = user_api(crowd)
    victim.post("/api/rooms", {"name": room})
    doomed, survivor = crowd.worker_pids()
    observers = [on_worker(user_api(crowd)[1], room, survivor) for _ in range(3)]
    gevent.sleep(0.3)
    held = on_worker(victim, room, doomed)
    for observer in observers:
        observer.wait_for((victim_name, "join"))
    killed_at = time.monotonic()
    os.kill(doomed, signal.SIGKILL)
    for observer in observers:
        observer.wait_for((victim_name, "leave"), timeout=15)
    took = time.monotonic() - killed_at
    print(f"\nSIGKILLed worker's user left the list after {took:.1f}s (TTL 4 s + sweep 2 s)")
    assert took < 4 + 2 + 3  # TTL + sweep + slack
    assert victim_name not in victim.get(f"/api/rooms/{room}/presence").json["users"]
    held.close()
    for observer in observers:
        assert observer.events.count((victim_name, "leave")) == 1  # no ghost, no repeat
        observer.close()


def test_presence_and_typing_show_in_the_page(person, web):
    alice = person()
    bob_name = unique("bob")
    bob = person(name=bob_name)
    expect(alice.locator("#presence-list li", has_text=bob_name)).to_have_count(1, timeout=10000)
    expect(alice.locator("#messages .msg.system", has_text=f"{bob_name} joined")).to_have_count(1)
    bob.fill("#text", "hel")
    bob.type("#text", "lo")
    expect(alice.locator("#typing")).to_have_text(f"{bob_name} is typing…", timeout=5000)
    bob.context.close()
    expect(alice.locator("#messages .msg.system", has_text=f"{bob_name} left")).to_have_count(1, timeout=15000)
    expect(alice.locator("#presence-list li", has_text=bob_name)).to_have_count(0)
