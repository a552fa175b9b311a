"""Kept long-pollers and the short path (chatapp.delivery.pollers), through the app in this process."""

from urllib.parse import quote

import gevent
import gevent.event
import pytest

from chatapp import create_app
from chatapp.delivery import pollers
from chatapp.web.context import services_of
from tests.helpers import CHEAP_PASSWORD_HASH, GENEROUS_LIMITS, PASSWORD, AuthActions, basic, eventually, send

FAST = {**GENEROUS_LIMITS, "CHAT_POLL_PACE_MS": 0}


def short_answers(app):
    hub = services_of(app).hub
    return services_of(app).metrics.value("chat_polls_short_total") + hub.pollers.short_answers


def poll(client, cursor=None, timeout=0, room="general", headers=None):
    query = f"timeout={timeout}" + (f"&cursor={cursor}" if cursor else "")
    return client.get(f"/api/rooms/{room}/poll?{query}", headers=headers)


def kept_readers(app):
    return [r for r in services_of(app).hub.streams() if r.room == "general"]


@pytest.mark.parametrize("config", [FAST])
def test_a_continued_poll_takes_the_short_path_without_redis(alice, app, redis_client):
    first = poll(alice).json
    cursor = first["cursor"]
    poll(alice, cursor)  # the first answer's headers are what the short path sends
    before = redis_client.info("commandstats")
    shorts = short_answers(app)
    for _ in range(20):
        answer = poll(alice, cursor)
        assert answer.status_code == 200 and answer.json == {"messages": [], "cursor": cursor}
    after = redis_client.info("commandstats")
    assert short_answers(app) - shorts == 20
    # No auth read, rate limit, nor stream lease per poll (through Flask, at least three each):
    # fewer calls than polls, whatever the hub's housekeeping ticks add meanwhile.
    calls = sum(after[k]["calls"] - before.get(k, {"calls": 0})["calls"] for k in after)
    assert calls < 20, {k: after[k]["calls"] - before.get(k, {"calls": 0})["calls"] for k in after}
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert "Set-Cookie" not in answer.headers


@pytest.mark.parametrize("config", [FAST])
def test_messages_between_polls_wait_in_the_kept_reader(alice, app):
    cursor = poll(alice).json["cursor"]
    sent = [send(alice, f"m{i}") for i in range(5)]
    got = []
    while len(got) < 5:
        answer = poll(alice, cursor, timeout=5).json
        got += answer["messages"]
        cursor = answer["cursor"]
    assert got == sent and cursor == sent[-1]["id"]
    assert short_answers(app) >= 1


@pytest.mark.parametrize("config", [FAST])
def test_a_lost_answer_is_answered_again_from_the_old_cursor(alice, app):
    cursor = poll(alice).json["cursor"]
    sent = [send(alice, f"m{i}") for i in range(3)]
    eventually(lambda: len(kept_readers(app)[0].queued()) == 3, timeout=5, interval=0.02)  # all three came over Pub/Sub
    assert poll(alice, cursor, timeout=5).json["messages"] == sent  # the client never got this answer
    again = poll(alice, cursor, timeout=5).json  # so it asks with its old cursor: Flask, from that cursor
    assert again["messages"] == sent
    more = send(alice, "more")
    assert poll(alice, again["cursor"], timeout=5).json["messages"] == [more]


@pytest.mark.parametrize("config", [{**GENEROUS_LIMITS, "CHAT_POLL_PACE_MS": 20}])
def test_pollers_sharing_an_account_each_get_every_message_once_in_order(app, client):
    """Kept pollers of one account, room and cursor are interchangeable; five clients of one
    account polling while 60 messages are posted each see all 60, once, in order."""
    AuthActions(client).register("alice")
    headers = basic("alice")
    got = {i: [] for i in range(5)}
    done = gevent.event.Event()
    started = []

    def reader(i):
        poller = app.test_client()
        cursor = poll(poller, headers=headers).json["cursor"]
        started.append(i)
        while not done.is_set() or len(got[i]) < 60:
            answer = poll(poller, cursor, timeout=1, headers=headers)
            assert answer.status_code == 200
            got[i] += [m["text"] for m in answer.json["messages"]]
            cursor = answer.json["cursor"]
            if len(got[i]) >= 60:
                return
    assert client.get("/api/auth/me", headers=headers).status_code == 200  # one hash, not five at once
    readers = [gevent.spawn(reader, i) for i in range(5)]
    eventually(lambda: len(started) == 5, timeout=30, interval=0.02)  # each started "now": before the first message
    for n in range(60):
        send(client, f"n{n}")
        if n % 7 == 0:
            gevent.sleep(0.01)
    done.set()
    gevent.joinall(readers, timeout=20, raise_error=True)
    assert all(got[i] == [f"n{n}" for n in range(60)] for i in got), got
    assert short_answers(app) > 0


@pytest.mark.parametrize("config", [FAST])
def test_logout_everywhere_ends_a_kept_poller(alice, app):
    """A kept poller is a stream: ending the session closes it, and the next poll with the
    same cookie goes through Flask, which refuses it."""
    cursor = poll(alice).json["cursor"]
    assert poll(alice, cursor).status_code == 200
    other = app.test_client()
    AuthActions(other).login("alice")
    assert other.post("/api/auth/logout-everywhere").status_code == 200
    eventually(lambda: all(r.closed_reason for r in kept_readers(app)), timeout=5, interval=0.02)
    answer = poll(alice, cursor)
    assert answer.status_code == 401


@pytest.mark.parametrize("config", [FAST])
def test_a_password_change_ends_a_basic_poller(app, client):
    AuthActions(client).register("bob")
    headers = basic("bob")
    cursor = poll(client, headers=headers).json["cursor"]
    assert poll(client, cursor, headers=headers).status_code == 200
    changed = client.post("/api/auth/password", json={"current_password": PASSWORD, "new_password": "another pw 1"},
                          headers=headers)
    assert changed.status_code == 200
    eventually(lambda: all(r.closed_reason for r in kept_readers(app)), timeout=5, interval=0.02)
    assert poll(client, cursor, headers=headers).status_code == 401


@pytest.mark.parametrize("config", [{**GENEROUS_LIMITS, "CHAT_POLL_PACE_MS": 200}])
def test_the_pace_bounds_a_client_polling_in_a_tight_loop(alice, app):
    """``timeout=0`` in a loop: a kept poller still answers at most once per pace."""
    cursor = poll(alice).json["cursor"]
    answers = 0
    with gevent.Timeout(1.0, False):
        while True:
            assert poll(alice, cursor).status_code == 200
            answers += 1
    assert answers <= 1 + 1.0 / 0.2 + 1


@pytest.mark.parametrize("config", [{**FAST, "CHAT_POLL_LINGER_SECS": 0.3}])
def test_a_poller_not_asked_again_ends_and_gives_back_its_lease(alice, app, redis_client):
    hub = services_of(app).hub
    poll(alice)
    assert len(hub.pollers) == 1 and hub.reader_count() == 1
    eventually(lambda: len(hub.pollers) == 0 and hub.reader_count() == 0, timeout=5, interval=0.02)
    eventually(lambda: redis_client.zcard("chat:{user:alice}:streams") == 0, timeout=5, interval=0.02)


@pytest.mark.parametrize("config", [FAST])
def test_a_draining_worker_answers_a_waiting_short_poll_at_once(alice, app):
    cursor = poll(alice).json["cursor"]
    poll(alice, cursor)
    waiting = gevent.spawn(poll, alice, cursor, 30)
    eventually(lambda: services_of(app).hub.pollers.waiting == 1, timeout=5, interval=0.02)
    services_of(app).hub.close()
    answer = waiting.get(timeout=5)
    assert answer.status_code == 200 and answer.json == {"messages": [], "cursor": cursor}


@pytest.mark.parametrize("config", [FAST])
def test_the_multiplexed_poll_continues_on_the_short_path(alice, app):
    """``/api/poll``'s cursor (``@ms`` and rooms) comes back URL-encoded, as the page sends it."""
    first = alice.get("/api/poll?timeout=0").json
    cursor = first["cursor"]
    got, shorts = [], short_answers(app)
    sent = [send(alice, f"m{i}") for i in range(4)]
    assert alice.post("/api/rooms", json={"name": "random"}).status_code == 201
    assert alice.post("/api/rooms/random/join").status_code == 200
    other = send(alice, "elsewhere", room="random")
    events = []
    while len(got) < 5:
        answer = alice.get(f"/api/poll?timeout=5&cursor={quote(cursor, safe='')}").json
        got += answer["messages"]
        events += answer["events"]
        cursor = answer["cursor"]
    assert got == [*sent, other]
    assert any(e.get("type") == "joined" and e.get("room") == "random" for e in events)
    assert short_answers(app) > shorts


@pytest.mark.parametrize("config", [{**FAST, "CHAT_POLL_LINGER_SECS": 60}])
def test_a_client_whose_polls_alternate_between_workers_leaves_no_pile_of_pollers(app, client, redis_server,
                                                                                  redis_client):
    """Regression: behind nginx a client's polls reach any worker. Each worker kept a poller
    at the cursor it last answered, the client came back with a newer cursor, so each poll
    went through Flask and kept one more, each holding a stream slot: after 20 polls the
    account was at its cap of 20 and was refused (429 too_many_streams)."""
    other = create_app({"REDIS_URL": redis_server.url, "SECRET_KEY": "test", "TESTING": True,
                        **GENEROUS_LIMITS, **CHEAP_PASSWORD_HASH, "CHAT_POLL_PACE_MS": 0, "CHAT_POLL_LINGER_SECS": 60})
    try:
        AuthActions(client).register("alice")
        headers = basic("alice")
        workers = [app.test_client(), other.test_client()]
        cursor = poll(workers[0], headers=headers).json["cursor"]
        sent = []
        for turn in range(30):
            sent.append(send(client, f"m{turn}"))
            answer = poll(workers[turn % 2], cursor, timeout=5, headers=headers)
            assert answer.status_code == 200, answer.json
            cursor = answer.json["cursor"]
        assert cursor == sent[-1]["id"]
        assert len(services_of(app).hub.pollers) <= 2 and len(services_of(other).hub.pollers) <= 2
        # releases are batched
        eventually(lambda: redis_client.zcard("chat:{user:alice}:streams") <= 4, timeout=5, interval=0.02)
    finally:
        services_of(other).hub.close("test over")


@pytest.mark.parametrize("config", [FAST])
def test_a_kept_poller_ends_at_its_max_age_so_flask_refreshes_the_session(alice, app, monkeypatch):
    """Regression (review): the short path never refreshed the session (its time to live in
    Redis, the cookie's expiry), so a client that only long-polled was signed out after
    CHAT_SESSION_LIFETIME_SECS however active it was."""
    monkeypatch.setattr(pollers, "MAX_AGE_SECS", 0.3)
    hub = services_of(app).hub
    cursor = poll(alice).json["cursor"]
    assert poll(alice, cursor).status_code == 200 and short_answers(app) == 1
    eventually(lambda: len(hub.pollers) == 0, timeout=5, interval=0.02)  # ended at 0.3 s, before the 3 s linger
    answer = poll(alice, cursor)
    assert answer.status_code == 200 and short_answers(app) == 1  # through Flask
    assert "chat_session=" in answer.headers.get("Set-Cookie", "")  # which refreshed the session


@pytest.mark.parametrize("config", [FAST])
@pytest.mark.parametrize("path", ["/api/rooms/general/poll", "/api/poll"])
def test_regression_a_poll_closed_for_a_reason_other_than_its_session_is_a_503_on_both_polls(alice, app, path):
    """The room poll answered 401 ("your session ended") for any close but a drain, where the
    multiplexed poll said 503: a client would sign its user out when the store failed."""
    waiting = gevent.spawn(alice.get, f"{path}?timeout=10")
    eventually(lambda: services_of(app).hub.pollers.waiting == 1, timeout=5)
    assert services_of(app).hub.close_matching("store_unavailable", user="alice") == 1
    answer = waiting.get(timeout=5)
    assert answer.status_code == 503 and answer.json["error"] == "store_unavailable"
    waiting = gevent.spawn(alice.get, f"{path}?timeout=10")
    eventually(lambda: services_of(app).hub.pollers.waiting == 1, timeout=5)
    services_of(app).hub.close_matching("kicked", user="alice")
    answer = waiting.get(timeout=5)
    assert answer.status_code == 401 and answer.json["error"] == "kicked"


@pytest.mark.parametrize("config", [FAST])
def test_regression_a_kept_poll_shows_its_user_by_the_signed_in_name(auth, client, app):
    """The short path refreshed presence under the lowercased name, Flask under the name as
    registered: a user named Carol polling showed up as both Carol and carol."""
    assert auth.register("Carol").status_code == 201
    cursor = poll(client).json["cursor"]
    shorts = short_answers(app)
    for _ in range(3):
        cursor = poll(client, cursor).json["cursor"]
    assert short_answers(app) > shorts
    assert client.get("/api/rooms/general/presence").json["users"] == ["Carol"]
