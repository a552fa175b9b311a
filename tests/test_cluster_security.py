"""Security behaviour that must hold across gunicorn workers: kicks and shared rate limits."""

import statistics
import time

import gevent
import pytest

from deploy.launch import Gunicorn
from tests.helpers import GENEROUS_LIMITS, PASSWORD, Api, account, operator_account, unique

pytestmark = pytest.mark.gunicorn


@pytest.fixture(scope="module")
def guarded(cluster_redis):
    """gunicorn (2 workers) with an admin and small message / stream limits."""
    env = {**GENEROUS_LIMITS, "CHAT_ADMINS": "boss", "CHAT_RATE_MESSAGES": "10 per minute",
           "CHAT_HEARTBEAT_SECS": "1"}
    with Gunicorn(cluster_redis.url, workers=2, env=env) as server:
        yield server


def session_client(server, name):
    """A cookie-authenticated client (like a browser), via a raw login."""
    api = Api(server.url)
    response = api.post("/api/auth/login", {"username": name, "password": PASSWORD})
    assert response.status == 200
    cookie = response.headers["Set-Cookie"].split(";")[0]
    return api, {"Cookie": cookie}


def test_kick_closes_live_streams_on_both_workers_within_2_seconds(guarded, cluster_redis):
    name = unique("victim")
    account(guarded, name)
    boss = operator_account(guarded, "boss")
    api, cookie = session_client(guarded, name)
    streams = []
    while len({s.pid for s in streams}) < 2 and len(streams) < 30:
        streams.append(api.stream("/api/rooms/general/events", headers=cookie))
    assert len({s.pid for s in streams}) == 2, "streams all landed on one worker"
    gevent.sleep(0.3)
    kicked_at = time.monotonic()
    assert boss.post(f"/api/admin/users/{name}/kick").status == 200
    ends = []

    def read_to_end(stream):
        for event in stream.events():
            if event.get("event") == "retry":
                assert "kicked" in event["data"]
        ends.append(time.monotonic() - kicked_at)

    gevent.joinall([gevent.spawn(read_to_end, s) for s in streams], timeout=5)
    assert len(ends) == len(streams), "some streams stayed open after the kick"
    assert max(ends) < 2.0
    assert api.get("/api/auth/me", headers=cookie).status == 401


def test_message_limit_is_shared_by_both_workers(guarded):
    user = account(guarded)
    # Concurrent, so both workers take some (sequential requests may all go to one).
    posts = [gevent.spawn(user.post, "/api/rooms/general/messages", {"text": f"m{i}"}) for i in range(14)]
    responses = [g.get() for g in posts]
    statuses = [r.status for r in responses]
    for response in responses:
        if response.status == 429:
            assert int(response.headers["Retry-After"]) >= 1
            assert response.json["error"] == "rate_limited"
    assert len({r.pid for r in responses}) == 2, "requests all landed on one worker"
    assert statuses.count(201) == 10 and statuses.count(429) == 4


def test_login_takes_the_same_time_for_unknown_user_and_wrong_password(guarded):
    """Printed for the record; asserted only loosely (no wall-clock promises in tests)."""
    name = unique("t")
    account(guarded, name)
    api = Api(guarded.url)

    def timed(username):
        started = time.perf_counter()
        response = api.post("/api/auth/login", {"username": username, "password": "wrong password"})
        assert response.status == 401
        return time.perf_counter() - started

    wrong, unknown = [], []
    for i in range(8):
        wrong.append(timed(name))
        unknown.append(timed(f"nobody{i}x"))
    w, u = statistics.median(wrong), statistics.median(unknown)
    print(f"\nlogin median: wrong password {w * 1000:.1f} ms, unknown user {u * 1000:.1f} ms, "
          f"difference {abs(w - u) * 1000:.1f} ms")
    assert abs(w - u) < 0.5 * max(w, u)  # both pay one scrypt hash; an early return would be ~0
