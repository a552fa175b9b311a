"""The chat page in a real headless Chromium against real gunicorn (2 gevent workers)."""

import http.client
import json
import math
import os
import re
import signal

import gevent
import pytest
from playwright.sync_api import expect

from tests.helpers import PASSWORD, PHONE, ROOT, Api, assert_once_in_order, say, texts, unique, wait_for_texts

pytestmark = [pytest.mark.browser, pytest.mark.gunicorn]


def converse(alice, bob, rounds=4, tag="hi"):
    """Both pages talk in turns (texts unique to this call: the module shares one server)."""
    tag = unique(tag)
    sent = []
    for i in range(rounds):
        for page, who in ((alice, "alice"), (bob, "bob")):
            text = f"{tag} {i} from {who}"
            say(page, text)
            wait_for_texts(page, [text])
            sent.append(text)
    for page in (alice, bob):
        wait_for_texts(page, sent)
        assert_once_in_order(page, sent)
        expect(page.locator("#pending .msg")).to_have_count(0)
    return sent


def test_layout_on_desktop_and_phone_with_screenshots(person, web, tmp_path):
    """A conversation made for the screenshots; CHAT_UPDATE_SCREENSHOTS=1 refreshes the images
    in docs/. First in this module, so no room or message another test made is in them.

    Five people: alice (desktop), bob (phone) and carol have the page open in #deploys, so
    the online list shows them; dave and erin write with curl-like clients. alice is in 4
    rooms with news in 2 of them (counts from her stream), and 2 more rooms are listed to join.
    """
    target = ROOT / "docs" if os.environ.get("CHAT_UPDATE_SCREENSHOTS") else tmp_path
    writers = {}
    for name in ("dave", "erin"):  # this module's server has a Redis of its own: plain names are free
        Api(web.url).post("/api/auth/register", {"username": name, "password": PASSWORD})
        writers[name] = Api(web.url, name, PASSWORD)
    dave, erin = writers["dave"], writers["erin"]
    for room in ("deploys", "design", "random", "hiring", "music"):
        assert dave.post("/api/rooms", {"name": room}).status == 201
    assert dave.post("/api/rooms/deploys/join").status == 200
    assert dave.post("/api/rooms/deploys/messages",
                     {"text": "Release 2.4 goes out after the stand-up: rolling restart, one instance at a time."}
                     ).status == 201

    alice = person(name="alice")
    bob = person(name="bob", viewport=PHONE)
    carol = person(name="carol")
    bob.click("#rooms-toggle")  # the rooms are in a drawer on phones; opening one closes it
    for page in (alice, bob, carol):
        page.fill("#new-room-name", "deploys")
        page.click("#new-room button[type=submit]")
        expect(page.locator("#room-title")).to_have_text("#deploys")
    for page in (alice, bob):
        expect(page.locator("#presence-list li")).to_have_text(["alice", "bob", "carol"])
    alice_api = Api(web.url, "alice", PASSWORD)
    for room in ("design", "random"):  # joined from another device: her page hears it on its stream
        assert alice_api.post(f"/api/rooms/{room}/join").status == 200
        expect(alice.locator(f"#room-list button[data-room='{room}']")).to_have_count(1)

    lines = [(alice, "Morning! Is the schema migration in this one too?"),
             (bob, "Yes, it ran on staging last night in about 40 seconds."),
             (carol, "Draining instance 1 now."),
             (bob, "Streams resume with Last-Event-ID, so nobody should miss a message."),
             (carol, "Instance 1 is back. Draining instance 2."),
             (alice, "Error rate is flat, p99 too. Nice."),
             (carol, "All instances are on 2.4.\nI'll keep an eye on the dashboard for the next hour."),
             (bob, "Thanks, carol!")]
    for page, text in lines:
        say(page, text)
        wait_for_texts(page, [text])
    conversation = [text for _, text in lines]
    for page in (alice, bob, carol):
        wait_for_texts(page, conversation)
        assert_once_in_order(page, conversation)
        expect(page.locator("#pending .msg")).to_have_count(0)

    assert erin.post("/api/rooms/design/join").status == 200
    assert erin.post("/api/rooms/design/messages", {"text": "New mockups for the settings page are up."}).status == 201
    for text in ("Lunch at 12:30?", "The new place across the street."):
        assert dave.post("/api/rooms/general/messages", {"text": text}).status == 201
    expect(alice.locator("#room-list button[data-room='general'] .badge")).to_have_text("2")
    expect(alice.locator("#room-list button[data-room='design'] .badge")).to_have_text("1")
    expect(alice.locator("#room-list button[data-room='random'] .badge")).to_have_count(0)
    expect(alice.locator("#other-rooms button")).to_have_text(["#hiring", "#music"])
    carol_api = Api(web.url, "carol", PASSWORD)
    for page, shot in ((alice, "screenshot-desktop.png"), (bob, "screenshot-phone.png")):
        expect(page.locator("#cue")).to_contain_text("dave: The new place across the street.")
        # "carol is typing…" lasts 4 s after a notice: one for each screenshot.
        assert carol_api.post("/api/rooms/deploys/typing").status in (200, 202, 204)
        expect(page.locator("#typing")).to_have_text("carol is typing…")
        page.locator("#text").blur()
        # The cue took its height from the log, which doesn't stay pinned to the newest message
        # when it shows (static/js/cue.js): scroll down, as the reader would.
        page.locator("#log").evaluate("log => { log.scrollTop = log.scrollHeight; }")
        page.screenshot(path=str(target / shot))
    expect(bob.locator("#sidebar")).not_to_be_in_viewport()  # a drawer on phones
    expect(alice.locator("#sidebar")).to_be_in_viewport()
    bob.click("#rooms-toggle")
    expect(bob.locator("#room-list")).to_be_in_viewport()
    width = bob.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], "the page scrolls sideways on a phone"


def test_two_users_chat_both_ways_over_sse(person):
    alice, bob = person(), person()
    converse(alice, bob)
    assert alice.locator("#conn").inner_text() == "live (SSE)"
    mine = alice.locator("#messages .msg.mine .text").all_inner_texts()
    assert mine and all("from alice" in text for text in mine)


def test_two_users_chat_over_forced_long_poll(person):
    alice, bob = person(query="?transport=longpoll"), person(query="?transport=longpoll")
    converse(alice, bob)
    assert bob.locator("#conn").inner_text() == "live (long-poll)"


def test_without_eventsource_the_page_falls_back_and_histories_match(person):
    sse = person()
    poll = person(init_script="delete window.EventSource;")
    expect(poll.locator("#conn")).to_have_text("live (long-poll)")
    converse(sse, poll, tag="mixed")
    assert texts(sse) == texts(poll)


def test_reload_keeps_the_session_the_room_and_the_messages(person):
    page = person()
    room = unique("r")
    page.fill("#new-room-name", room)
    page.click("#new-room button[type=submit]")
    expect(page.locator("#room-title")).to_have_text(f"#{room}")
    say(page, "before reload")
    wait_for_texts(page, ["before reload"])
    page.reload()
    expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=15000)
    expect(page.locator("#room-title")).to_have_text(f"#{room}")
    wait_for_texts(page, ["before reload"])  # the title shows as the history is asked for
    assert texts(page) == ["before reload"]


def test_worker_killed_mid_chat_page_reconnects_and_shows_every_message_once(person, web):
    page = person()
    name = unique("poster")
    Api(web.url).post("/api/auth/register", {"username": name, "password": PASSWORD})
    poster = Api(web.url, name, PASSWORD)
    worker = int(page.locator("#conn").get_attribute("data-worker"))
    sent = []

    def post(i):
        try:
            return poster.post("/api/rooms/general/messages", {"text": f"steady {i}", "client_id": f"s{i}"}).status
        except (OSError, http.client.HTTPException):  # in flight on the worker as it was killed
            return None

    def post_steadily():
        for i in range(40):
            while post(i) != 201:  # a poster retries with the same key, like the page does
                gevent.sleep(0.1)
            sent.append(f"steady {i}")
            gevent.sleep(0.05)

    posting = gevent.spawn(post_steadily)
    gevent.sleep(0.5)
    os.kill(worker, signal.SIGKILL)
    expect(page.locator("#conn")).not_to_have_attribute("data-state", "live", timeout=5000)
    expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=15000)
    posting.get(timeout=60)
    wait_for_texts(page, sent)
    assert_once_in_order(page, sent)


def test_messages_typed_offline_are_delivered_once(person):
    alice, bob = person(), person()
    alice.context.set_offline(True)
    expect(alice.locator("#conn")).to_have_attribute("data-state", "offline", timeout=10000)
    typed = ["typed offline 1", "typed offline 2\nwith a second line"]
    for text in typed:
        say(alice, text)
    expect(alice.locator("#pending .msg")).to_have_count(2)
    alice.context.set_offline(False)
    for page in (alice, bob):
        wait_for_texts(page, typed, timeout=20000)
        assert_once_in_order(page, typed)
    expect(alice.locator("#pending .msg")).to_have_count(0)


def test_markup_is_rendered_as_text_and_no_script_runs(person):
    alice, bob = person(), person()
    attacks = ["<script>alert(1)</script>", '<img src=x onerror="alert(2)">']
    for text in attacks:
        say(alice, text)
    wait_for_texts(bob, attacks)
    assert bob.locator("#messages img").count() == 0
    assert bob.locator("#messages script").count() == 0
    assert bob.evaluate("window.__pwned === undefined")


def test_scrolling_up_loads_older_history_to_the_first_message(person, web):
    room = unique("long")
    name = unique("writer")
    Api(web.url).post("/api/auth/register", {"username": name, "password": PASSWORD})
    writer = Api(web.url, name, PASSWORD)
    writer.post("/api/rooms", {"name": room})
    for i in range(130):
        writer.post(f"/api/rooms/{room}/messages", {"text": f"old {i}"})
    page = person()
    page.goto(f"/#{room}")
    expect(page.locator("#room-title")).to_have_text(f"#{room}")
    wait_for_texts(page, ["old 129"])
    for _ in range(10):
        page.locator("#log").evaluate("log => { log.scrollTop = 0; }")
        page.wait_for_timeout(300)
        if "beginning" in page.locator("#history-edge").inner_text():
            break
    expect(page.locator("#history-edge")).to_contain_text("beginning")
    assert texts(page) == [f"old {i}" for i in range(130)]


def test_unread_counts_and_a_cue_come_live_and_switching_rooms_never_reconnects(person):
    alice, bob = person(), person()
    streams = []

    def note(request):
        if "/api/events" in request.url:
            streams.append(request.url)

    bob.on("request", note)  # bob is live already: any request now would be a second stream
    room = unique("side")
    for page in (alice, bob):  # opening a room joins it
        page.fill("#new-room-name", room)
        page.click("#new-room button[type=submit]")
        expect(page.locator("#room-title")).to_have_text(f"#{room}")
    bob.click("#room-list button[data-room='general']")
    expect(bob.locator("#room-title")).to_have_text("#general")
    say(alice, "in the side room")
    say(alice, "twice")
    wait_for_texts(alice, ["in the side room", "twice"])
    badge = bob.locator(f"#room-list button[data-room='{room}'] .badge")
    expect(badge).to_have_text("2")  # from bob's one stream: nothing is polled
    expect(bob.locator("#cue")).to_contain_text(f"New message in #{room}")
    expect(bob.locator("#cue")).to_contain_text("twice")
    expect(bob.locator("#room-list button[aria-current='true']")).to_have_attribute("data-room", "general")
    bob.click("#cue")
    expect(bob.locator("#room-title")).to_have_text(f"#{room}")
    wait_for_texts(bob, ["in the side room", "twice"])
    expect(badge).to_have_count(0)
    expect(bob.locator("#cue")).to_be_hidden()
    say(alice, "live in the side room")
    wait_for_texts(bob, ["live in the side room"])
    say(bob, "bob answers")
    wait_for_texts(alice, ["bob answers"])
    for target in ("general", room, "general"):
        bob.click(f"#room-list button[data-room='{target}']")
        expect(bob.locator("#room-title")).to_have_text(f"#{target}")
        expect(bob.locator("#conn")).to_have_text("live (SSE)")
    assert streams == []  # switching rooms never reconnects


def test_leaving_a_room_goes_back_to_general_and_its_news_stops(person, web):
    bob = person()
    room = unique("leave")
    bob.fill("#new-room-name", room)
    bob.click("#new-room button[type=submit]")
    expect(bob.locator("#room-title")).to_have_text(f"#{room}")
    expect(bob.locator(f"#room-list button[data-room='{room}']")).to_have_count(1)
    bob.click("#leave")
    expect(bob.locator("#room-title")).to_have_text("#general")
    expect(bob.locator(f"#room-list button[data-room='{room}']")).to_have_count(0)
    expect(bob.locator(f"#other-rooms button[data-room='{room}']")).to_have_count(1)
    name = unique("writer")
    Api(web.url).post("/api/auth/register", {"username": name, "password": PASSWORD})
    writer = Api(web.url, name, PASSWORD)
    writer.post(f"/api/rooms/{room}/messages", {"text": "not for bob"})
    writer.post("/api/rooms/general/messages", {"text": "for everyone"})
    wait_for_texts(bob, ["for everyone"])  # later than the other: that one would have come first
    expect(bob.locator("#cue")).to_be_hidden()
    bob.click(f"#other-rooms button[data-room='{room}']")  # joins it again, with its history
    expect(bob.locator("#room-title")).to_have_text(f"#{room}")
    wait_for_texts(bob, ["not for bob"])
    expect(bob.locator(f"#room-list button[data-room='{room}']")).to_have_count(1)


def test_a_malformed_fragment_falls_back_to_general_without_a_page_error(person, web):
    # Errors thrown before a listener could be attached (during the sign-in of person())
    # are recorded by the page itself.
    record = ("window.__errors = [];"
              "addEventListener('error', (e) => window.__errors.push(String(e.message)));"
              "addEventListener('unhandledrejection', (e) => window.__errors.push(String(e.reason)));")
    name = unique("frag")
    page = person(name=name, query="#%E0%A4%A", init_script=record)  # decodeURIComponent throws on it
    expect(page.locator("#room-title")).to_have_text("#general")
    assert page.evaluate("window.__errors") == []
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    # Changed while the page runs (hashchange), next to fragments that decode but name no room ...
    for fragment in ("%C3%A9t%C3%A9", "no%20spaces", "x" * 65, "%E0%A4%A"):
        page.evaluate(f"location.hash = {json.dumps(fragment)}")
        assert page.evaluate("location.hash") == f"#{fragment}"
        page.wait_for_timeout(100)
        expect(page.locator("#room-title")).to_have_text("#general")
    # ... and read at start-up by a page opened while signed in.
    page.reload()
    expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=15000)
    expect(page.locator("#room-title")).to_have_text("#general")
    expect(page.locator("#signin")).to_be_hidden()
    room = unique("frag")
    assert Api(web.url, name, PASSWORD).post("/api/rooms", {"name": room}).status == 201
    page.fill("#new-room-name", "general")  # refreshes the room list, stays in #general
    page.click("#new-room button[type=submit]")
    expect(page.locator(f"#other-rooms button[data-room='{room}']")).to_have_count(1)
    page.evaluate(f"location.hash = {json.dumps(room)}")  # the listener still works
    expect(page.locator("#room-title")).to_have_text(f"#{room}")
    expect(page.locator(f"#room-list button[data-room='{room}']")).to_have_count(1)  # opened means joined
    assert errors == []
    assert page.evaluate("window.__errors") == []


def all_room_names(api):
    names, after = [], None
    while True:
        listing = api.get("/api/rooms?limit=500" + (f"&after={after}" if after else "")).json
        names += [room["name"] for room in listing["rooms"]]
        after = listing["next"]
        if not after:
            return names


def room_buttons(page, list_id):
    return page.locator(f"#{list_id} button").evaluate_all("buttons => buttons.map((b) => b.dataset.room)")


def test_a_room_list_refresh_asks_for_unread_counts_in_one_request(person, web):
    """A reload asks for the read positions and unread counts of every joined room in one
    request (GET /api/me/unread); from then on the stream keeps the counts (no polling, never
    a request per room)."""
    writer_name = unique("writer")
    Api(web.url).post("/api/auth/register", {"username": writer_name, "password": PASSWORD})
    writer = Api(web.url, writer_name, PASSWORD)
    rooms = [unique("a") for _ in range(5)]  # "a…": listed on the first pages
    for room in rooms:
        assert writer.post("/api/rooms", {"name": room}).status == 201
        assert writer.post(f"/api/rooms/{room}/messages", {"text": "before"}).status == 201
    reader_name = unique("reader")
    page = person(name=reader_name)
    reader = Api(web.url, reader_name, PASSWORD)
    for room in rooms:  # joined elsewhere (curl): the page hears of it on its stream
        assert reader.post(f"/api/rooms/{room}/join").status == 200
    for room in rooms:  # joined rooms start as read at the join
        expect(page.locator(f"#room-list button[data-room='{room}']")).to_have_count(1)
    wanted = dict(zip(rooms, [0, 1, 2, 3, 101]))
    for room, count in wanted.items():
        for i in range(count):
            assert writer.post(f"/api/rooms/{room}/messages", {"text": f"unread {i}"}).status == 201

    # Small pages, so the page has to follow "next" through several of them.
    page.route(re.compile(r"/api/rooms\?"),
               lambda route: route.continue_(url=route.request.url.replace("limit=500", "limit=2")))
    requests = []

    def note(request):  # a named function: Playwright can't wrap a bound builtin like list.append
        requests.append(request)

    page.on("request", note)
    page.reload()
    expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=15000)
    expect(page.locator("#room-title")).to_have_text("#general")
    for room, count in wanted.items():
        badge = page.locator(f"#room-list button[data-room='{room}'] .badge")
        if count:
            expect(badge).to_have_text("99+" if count >= 100 else str(count))
        else:
            expect(badge).to_have_count(0)
    sent = list(requests)

    paths = [request.url.split("/", 3)[3] for request in sent]
    assert not [p for p in paths if re.match(r"api/rooms/[^/?]+/messages\?after=", p)], paths
    assert not [p for p in paths if any(p.startswith(f"api/rooms/{room}/") for room in rooms)], paths
    unread = [r for r in sent if r.method == "GET" and r.url.endswith("/api/me/unread")]
    assert len(unread) == 1, paths
    assert len([p for p in paths if p.startswith("api/events")]) == 1, paths  # one stream for every room

    names = all_room_names(writer)
    listed = [p for p in paths if p.startswith("api/rooms?")]
    assert len(listed) == min(math.ceil(len(names) / 2), 10), listed
    joined = sorted([*rooms, "general"])
    assert room_buttons(page, "room-list") == joined
    assert room_buttons(page, "other-rooms") == [name for name in names[:20] if name not in joined]

    # From here on the stream keeps the counts: a new message adds one, with no request.
    requests.clear()
    assert writer.post(f"/api/rooms/{rooms[1]}/messages", {"text": "one more"}).status == 201
    expect(page.locator(f"#room-list button[data-room='{rooms[1]}'] .badge")).to_have_text("2")
    expect(page.locator("#cue")).to_contain_text(f"New message in #{rooms[1]}")
    assert not [r.url for r in requests if "/api/rooms" in r.url], [r.url for r in requests]
