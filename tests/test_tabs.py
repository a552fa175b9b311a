"""Tabs of one browser share one stream: real Chromium, real gunicorn over plain HTTP/1.1;
without sharing, many tabs still work through the cluster's nginx over HTTPS with HTTP/2.

One Playwright context is one browser profile: its pages share the cookie, the
6-connections-per-host pool, Web Locks and BroadcastChannel, as tabs do. The
page elects one tab to hold the multiplexed stream (``<html data-stream-role>``
is "leader" there, "follower" in the others, "solo" without sharing).
"""

import gevent
import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import expect

from tests.helpers import (
    DESKTOP,
    PASSWORD,
    Api,
    assert_once_in_order,
    eventually,
    metric,
    page_sleep,
    say,
    texts,
    unique,
    wait_for_texts,
)

pytestmark = [pytest.mark.browser, pytest.mark.gunicorn]

LIVE_TIMEOUT = 20000


@pytest.fixture
def profile(browser, web):
    """``profile()`` -> a new browser profile (context) whose requests to /api/events are
    recorded in ``context.streams`` (full URLs, in order)."""
    contexts = []

    def open_profile():
        context = browser.new_context(viewport=DESKTOP, base_url=web.url)
        context.streams = []

        def note(request):
            if "/api/events" in request.url:
                context.streams.append(request.url)

        context.on("request", note)
        contexts.append(context)
        return context

    yield open_profile
    for context in contexts:
        context.close()


def sign_up_in_a_tab(context, query=""):
    """A new account, made in a first tab of ``context``; returns (name, the tab), live."""
    first = context.new_page()
    first.on("dialog", lambda dialog: pytest.fail(f"a dialog fired: {dialog.message}"))
    first.goto(f"/{query}")
    name = unique("tabs")
    first.fill("#username", name)
    first.fill("#password", PASSWORD)
    first.click("#register-button")
    expect(first.locator("#conn")).to_have_attribute("data-state", "live", timeout=LIVE_TIMEOUT)
    return name, first


def open_tabs(context, count, query=""):
    """Sign up in the first tab, then open ``count - 1`` more; all of them live."""
    name, first = sign_up_in_a_tab(context, query)
    pages = [first]
    for _ in range(count - 1):
        page = context.new_page()
        page.goto(f"/{query}")  # signed in already: the profile has the cookie
        pages.append(page)
    for page in pages:
        expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=LIVE_TIMEOUT)
        expect(page.locator("#room-title")).to_have_text("#general")
    return name, pages


def role(page):
    return page.locator("html").get_attribute("data-stream-role")


def wait_for_roles(pages, wanted, timeout=LIVE_TIMEOUT):
    """Wait until the pages' roles, sorted, are ``wanted`` (sorted); ``timeout`` in ms."""
    def roles_as_wanted():
        roles = sorted(role(page) for page in pages)
        assert roles == sorted(wanted), f"roles {roles}"
        return True
    eventually(roles_as_wanted, timeout / 1000, 0.1, what=f"roles {sorted(wanted)}", sleep=page_sleep(pages[0]))


def streams_open(web):
    """The server's open SSE streams (all workers), from /metrics."""
    return metric(web, "chat_streams_open")


def wait_for_streams_open(web, count, timeout=20):
    """Streams of tabs closed by earlier tests end at the next heartbeat: wait for them."""
    def as_many():
        now = streams_open(web)
        assert now == count, f"{now} streams open"
        return True
    eventually(as_many, timeout, 0.2, what=f"{count} streams open")


def message_id(page, text):
    return page.locator("#messages .msg", has_text=text).get_attribute("data-id")


def assert_shown_once_everywhere(pages, text):
    wait_for_texts(pages[0], [text])
    wanted = message_id(pages[0], text)
    assert wanted
    for page in pages:
        expect(page.locator(f"#messages .msg[data-id='{wanted}']")).to_have_count(1)
        expect(page.locator(f"#messages .msg[data-id='{wanted}'] .text")).to_have_text(text)
    return wanted


def test_eight_tabs_over_http1_share_one_stream_and_every_send_arrives_once(profile, web):
    context = profile()
    _, pages = open_tabs(context, 8)
    for page in pages:
        expect(page.locator("#conn")).to_have_text("live (SSE)")
    assert sorted(role(page) for page in pages) == ["follower"] * 7 + ["leader"]
    assert len(context.streams) == 1, context.streams
    wait_for_streams_open(web, 1)  # this browser's one stream is all the server holds

    first, last = pages[0], pages[-1]
    for page, text in ((first, unique("from the first tab")), (last, unique("from the last tab"))):
        say(page, text)  # with 6 HTTP/1.1 connections per host this POST must still leave
        for other in pages:
            wait_for_texts(other, [text])
        assert_shown_once_everywhere([page] + [p for p in pages if p is not page], text)
        expect(page.locator("#pending .msg")).to_have_count(0)
    assert len(context.streams) == 1, context.streams
    assert streams_open(web) == 1


@pytest.mark.parametrize("end", ["close", "crash"])
def test_closing_the_tab_holding_the_stream_loses_and_repeats_nothing(profile, web, end):
    context = profile()
    _, pages = open_tabs(context, 4)
    wait_for_roles(pages, ["leader", "follower", "follower", "follower"])
    leader = next(page for page in pages if role(page) == "leader")
    followers = [page for page in pages if page is not leader]
    name = unique("poster")
    Api(web.url).post("/api/auth/register", {"username": name, "password": PASSWORD})
    poster = Api(web.url, name, PASSWORD)  # a member of general, like every new account
    tag = unique("handover")
    sent = []

    def post_steadily():
        for i in range(60):
            text = f"{tag} {i}"
            response = poster.post("/api/rooms/general/messages", {"text": text, "client_id": f"{tag}-{i}"})
            assert response.status == 201, response.body
            sent.append(text)
            gevent.sleep(0.03)

    posting = gevent.spawn(post_steadily)
    while len(sent) < 20:  # some before the close, the rest during and after the takeover
        gevent.sleep(0.02)
    if end == "close":
        leader.close()
    else:  # the renderer dies: the browser releases its lock all the same
        leader.on("crash", lambda page: None)
        try:
            context.new_cdp_session(leader).send("Page.crash", timeout=2000)
        except PlaywrightError:  # never answered: the session dies with the page it crashed
            pass
    wait_for_roles(followers, ["leader", "follower", "follower"])
    posting.get(timeout=60)
    for page in followers:
        wait_for_texts(page, sent, timeout=20000)
        assert_once_in_order(page, sent)
        expect(page.locator("#conn")).to_have_text("live (SSE)")
    # One tab took over, resuming from the last cursor it saw; no storm of reconnects.
    resumed = context.streams[1:]
    assert len(resumed) == 1 and "last_event_id=" in resumed[0], context.streams


def test_joining_reading_and_leaving_in_one_tab_shows_in_every_tab(profile, web):
    context = profile()
    _, (one, two) = open_tabs(context, 2)
    room = unique("shared")
    one.fill("#new-room-name", room)  # creates the room and joins it
    one.click("#new-room button[type=submit]")
    expect(one.locator("#room-title")).to_have_text(f"#{room}")
    expect(two.locator(f"#room-list button[data-room='{room}']")).to_have_count(1)  # the "joined" event
    one.click("#room-list button[data-room='general']")
    expect(one.locator("#room-title")).to_have_text("#general")

    name = unique("writer")
    Api(web.url).post("/api/auth/register", {"username": name, "password": PASSWORD})
    writer = Api(web.url, name, PASSWORD)
    assert writer.post(f"/api/rooms/{room}/join").status == 200
    news = [f"news {i}" for i in range(3)]
    for text in news:
        assert writer.post(f"/api/rooms/{room}/messages", {"text": text}).status == 201
    for page in (one, two):  # unread everywhere, from the stream; a cue that opens the room
        expect(page.locator(f"#room-list button[data-room='{room}'] .badge")).to_have_text("3")
        expect(page.locator("#cue")).to_contain_text(f"New message in #{room}")
        expect(page.locator("#cue")).to_contain_text(f"{name}: news 2")
    two.click("#cue")
    expect(two.locator("#room-title")).to_have_text(f"#{room}")
    wait_for_texts(two, news)
    expect(two.locator("#cue")).to_be_hidden()
    expect(one.locator(f"#room-list button[data-room='{room}'] .badge")).to_have_count(0)  # read in the other tab

    one.click(f"#room-list button[data-room='{room}']")
    expect(one.locator("#room-title")).to_have_text(f"#{room}")
    one.click("#leave")
    for page in (one, two):  # the tab that had it open goes back to general too
        expect(page.locator("#room-title")).to_have_text("#general")
        expect(page.locator(f"#room-list button[data-room='{room}']")).to_have_count(0)
        expect(page.locator(f"#other-rooms button[data-room='{room}']")).to_have_count(1)  # to join again
    assert len(context.streams) == 1, context.streams  # joins, leaves and switches never reconnect


def test_without_sharing_each_tab_holds_its_own_stream(profile, web):
    context = profile()
    _, pages = open_tabs(context, 3, query="?share=0")
    assert [role(page) for page in pages] == ["solo"] * 3
    assert len(context.streams) == 3, context.streams
    wait_for_streams_open(web, 3)
    text = unique("solo")
    say(pages[-1], text)
    assert_shown_once_everywhere(pages, text)


def test_tabs_share_a_long_poll_too(profile, web):
    context = profile()
    _, pages = open_tabs(context, 3, query="?transport=longpoll")
    for page in pages:
        expect(page.locator("#conn")).to_have_text("live (long-poll)")
    assert sorted(role(page) for page in pages) == ["follower", "follower", "leader"]
    text = unique("polled")
    say(pages[1], text)
    assert_shown_once_everywhere(pages, text)
    assert texts(pages[0]) == texts(pages[2])


def protocols(page):
    """[url, protocol] of the page's navigation, then of every request it finished that went
    over the network (Resource Timing; one served from the browser's cache has no protocol)."""
    return page.evaluate("""() => [
        ...performance.getEntriesByType('navigation'), ...performance.getEntriesByType('resource'),
    ].filter((entry) => entry.nextHopProtocol).map((entry) => [entry.name, entry.nextHopProtocol])""")


def test_ten_tabs_without_sharing_over_the_clusters_http2_nginx_are_all_live_and_sends_arrive(browser, edge_cluster):
    """Over HTTP/1.1 a browser holds at most 6 connections per host and each tab's own stream
    holds one; over HTTP/2 (the cluster's nginx, HTTPS) they are streams of one connection, so
    10 tabs, each with its own stream, are all live and a POST still leaves."""
    context = browser.new_context(viewport=DESKTOP, base_url=edge_cluster.https_url, ignore_https_errors=True)
    context.streams = []

    def note(request):
        if "/api/events" in request.url:
            context.streams.append(request.url)

    context.on("request", note)
    try:
        _, pages = open_tabs(context, 10, query="?share=0")
        for page in pages:
            expect(page.locator("#conn")).to_have_text("live (SSE)")
        assert [role(page) for page in pages] == ["solo"] * 10
        assert len(context.streams) == 10, context.streams  # one stream per tab: nothing shared
        for page in pages:
            used = protocols(page)
            assert used[0] == [f"{edge_cluster.https_url}/?share=0", "h2"], used[0]  # the navigation
            assert len(used) > 1 and {protocol for _, protocol in used} == {"h2"}, used  # and its API calls

        first, last = pages[0], pages[-1]
        for page, text in ((first, unique("from tab 1 over h2")), (last, unique("from tab 10 over h2"))):
            say(page, text)
            for other in pages:
                wait_for_texts(other, [text])
            assert_shown_once_everywhere([page] + [p for p in pages if p is not page], text)
            expect(page.locator("#pending .msg")).to_have_count(0)
        assert len(context.streams) == 10, context.streams  # no tab had to reconnect
    finally:
        context.close()


def test_over_plain_http1_without_sharing_a_seventh_tab_waits_for_a_connection(browser, edge_cluster):
    """The contrast, on the same cluster's plain HTTP/1.1 listener: 6 tabs, each holding its own
    stream, hold all 6 connections the browser allows to a host, so a 7th tab can't even load
    until one of them closes. (No timing is measured: the 6 tabs are live one after another
    before the 7th is opened, so its page request has no connection to go out on; the 5 s only
    bound how long we watch it not load. Then a closed tab frees a connection and it loads.)"""
    context = browser.new_context(viewport=DESKTOP, base_url=edge_cluster.url)
    try:
        _, first = sign_up_in_a_tab(context, "?share=0")
        pages = [first]
        for _ in range(5):
            page = context.new_page()
            page.goto("/?share=0")
            expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=LIVE_TIMEOUT)
            pages.append(page)
        assert [role(page) for page in pages] == ["solo"] * 6
        assert [protocols(page)[0][1] for page in pages] == ["http/1.1"] * 6
        seventh = context.new_page()
        with pytest.raises(PlaywrightTimeout):
            seventh.goto("/?share=0", wait_until="commit", timeout=5000)  # no response, not even headers
        first.close()  # its stream's connection goes back to the pool: the 7th tab's request leaves
        expect(seventh.locator("#conn")).to_have_attribute("data-state", "live", timeout=LIVE_TIMEOUT)
        assert role(seventh) == "solo"
    finally:
        context.close()
