"""Issue 23 on the page, in a real headless Chromium against real gunicorn: a page that never drops
a word (the outbox across a server outage and a reload, the connection's states, the start-up
that waits for the server), links, errors in words, the favicon, the phone's title and drawer."""

import re

import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import expect

from tests.helpers import (
    DESKTOP,
    PASSWORD,
    PHONE,
    Api,
    assert_once_in_order,
    gunicorn_with_redis,
    say,
    texts,
    unique,
    wait_for_texts,
)
from tests.test_page_private import create_private_room

pytestmark = [pytest.mark.browser, pytest.mark.gunicorn]

LIVE = 15000


class ShellCache:
    """The browser's copy of the page itself (its HTML, scripts, styles, icon), as a service
    worker or an HTTP cache would keep it: taken from the server while it answers, served from
    here when it doesn't. Only the page's own files go through it (a route on "/" and
    "/static/..."): the API, the stream included, always meets the real server, or its absence."""

    PAGE_FILES = re.compile(r"^https?://[^/]+/(static/[^?#]*)?(\?[^#]*)?$")

    def __init__(self):
        self.saved = {}
        self.served_from_cache = 0

    def __call__(self, route):
        url = route.request.url
        try:
            response = route.fetch()
        except PlaywrightError:  # connection refused: the server is down
            if url not in self.saved:
                route.abort("connectionrefused")
                return
            self.served_from_cache += 1
            route.fulfill(**self.saved[url])
            return
        body = response.body()
        self.saved[url] = {"status": response.status, "headers": response.headers, "body": body}
        route.fulfill(response=response, body=body)


def history_texts(api, room="general"):
    return [message.get("text") for message in api.get(f"/api/rooms/{room}/messages?limit=200").json["messages"]]


def test_messages_typed_while_the_server_is_down_survive_a_reload_and_arrive_once_in_order(person, web):
    """The issue's outbox test: with gunicorn stopped, type three messages, reload the page, start
    gunicorn again: all three arrive exactly once, in order. Meanwhile the state label says when
    it tries again ("reconnecting in 2 s", then "offline, retrying in 4 s"), and the reloaded page
    waits for the server instead of asking a signed-in user to sign in."""
    name = unique("outage")
    alice, bob = person(name=name), person()
    cache = ShellCache()
    alice.context.route(ShellCache.PAGE_FILES, cache)
    alice.reload()  # the page's files, now through the cache: kept for the outage
    expect(alice.locator("#conn")).to_have_attribute("data-state", "live", timeout=LIVE)
    conn = alice.locator("#conn")
    typed = [f"{unique('down')} {i}" for i in (1, 2, 3)]
    web.stop()
    try:
        expect(conn).to_have_text(re.compile(r"^reconnecting in \d+ s$"), timeout=10000)
        expect(conn).to_have_attribute("data-state", "reconnecting")
        for text in typed:
            say(alice, text)
        expect(alice.locator("#pending .msg")).to_have_count(3)
        expect(conn).to_have_text(re.compile(r"^offline, retrying in \d+ s$"), timeout=20000)
        expect(conn).to_have_attribute("data-state", "offline")

        alice.reload()  # the server is still down: the page comes from the cache
        assert cache.served_from_cache > 0
        expect(alice.locator("#waiting")).to_be_visible()
        expect(alice.locator("#waiting-why")).to_contain_text("can't be reached")
        expect(alice.locator("#waiting-unsent")).to_have_text("3 messages you wrote are kept and will be sent.")
        expect(alice.locator("#waiting-next")).to_have_text(re.compile(r"^Trying again (in \d+ s\.|now…)$"))
        expect(alice.locator("#signin")).to_be_hidden()
    finally:
        web.start()
    expect(conn).to_have_attribute("data-state", "live", timeout=30000)
    expect(alice.locator("#signin")).to_be_hidden()
    expect(alice.locator("#me")).to_have_text(name)
    for page in (alice, bob):
        wait_for_texts(page, typed, timeout=30000)
        assert_once_in_order(page, typed)
    expect(alice.locator("#pending .msg")).to_have_count(0)
    stored = [text for text in history_texts(Api(web.url, name, PASSWORD)) if text in typed]
    assert stored == typed  # exactly once each, in the order typed


def test_an_unsent_message_keeps_its_retry_in_sight_and_goes_when_the_browser_is_back(person, web):
    name = unique("writer")
    Api(web.url).post("/api/auth/register", {"username": name, "password": PASSWORD})
    writer = Api(web.url, name, PASSWORD)
    room = unique("long")
    assert writer.post("/api/rooms", {"name": room}).status == 201
    for i in range(40):  # more than the log shows: the log scrolls
        assert writer.post(f"/api/rooms/{room}/messages", {"text": f"filler {i}"}).status == 201
    alice = person()
    alice.goto(f"/#{room}")
    wait_for_texts(alice, ["filler 39"])
    alice.context.set_offline(True)
    expect(alice.locator("#conn")).to_have_attribute("data-state", "offline", timeout=10000)
    say(alice, "typed offline")
    unsent = alice.locator("#pending .msg.waiting")
    expect(unsent).to_have_count(1)
    expect(unsent).to_contain_text("not sent yet")
    expect(unsent.locator("button.retry")).to_be_in_viewport()  # not cut off below the list
    expect(alice.locator("#outbox-bar")).to_contain_text(
        "1 message is not sent yet; it goes when the connection is back.")
    expect(alice.locator("#outbox-retry")).to_be_in_viewport()
    alice.context.set_offline(False)  # sent on its own: no click
    wait_for_texts(alice, ["typed offline"], timeout=20000)
    expect(alice.locator("#pending .msg")).to_have_count(0)
    expect(alice.locator("#outbox-bar")).to_be_hidden()
    assert history_texts(writer, room).count("typed offline") == 1


def test_urls_become_links_and_nothing_else_becomes_markup(person):
    alice, bob = person(), person()
    text = (f"{unique('links')} see https://example.org/a?b=1&c=2. or (https://en.wikipedia.org/wiki/Foo_(bar)) "
            "<b>bold</b> <a href=\"javascript:alert(1)\">x</a> javascript:alert(2) ftp://example.org/f")
    say(alice, text)
    wait_for_texts(bob, [text])
    message = bob.locator("#messages .msg", has_text=text[:12])
    assert message.locator(".text").inner_text() == text  # shown as typed, every character
    links = message.locator(".text a")
    expect(links).to_have_count(2)
    assert links.evaluate_all("links => links.map((a) => a.getAttribute('href'))") == [
        "https://example.org/a?b=1&c=2", "https://en.wikipedia.org/wiki/Foo_(bar)"]
    for i in range(2):
        expect(links.nth(i)).to_have_attribute("rel", "noopener noreferrer")
        expect(links.nth(i)).to_have_attribute("target", "_blank")
    assert message.locator(".text b").count() == 0
    assert message.locator(".text *").count() == 2  # the two links, and nothing else is an element


@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    """A server that allows one registration per address an hour (the default is ten)."""
    env = {"CHAT_RATE_REGISTER_IP": "1 per hour"}
    with gunicorn_with_redis(tmp_path_factory.mktemp("strict"), workers=1, env=env) as (server, _):
        yield server


def test_a_rate_limited_registration_says_when_to_try_again_in_words(browser, strict):
    assert Api(strict.url).post("/api/auth/register", {"username": unique("first"), "password": PASSWORD}
                                ).status == 201
    raw = Api(strict.url).post("/api/auth/register", {"username": unique("second"), "password": PASSWORD})
    assert raw.status == 429 and "Rate limit of" in raw.json["message"]  # what the server says, for machines
    context = browser.new_context(viewport=DESKTOP, base_url=strict.url)
    try:
        page = context.new_page()
        page.goto("/")
        page.fill("#username", unique("third"))
        page.fill("#password", PASSWORD)
        page.click("#register-button")
        error = page.locator("#signin-error")
        expect(error).to_have_text(re.compile(r"^Too many attempts; try again in \d+ minutes?\.$"))
        assert "Rate limit" not in error.inner_text()
    finally:
        context.close()


def test_the_page_has_a_favicon_that_its_policy_allows(person):
    refused = []

    def note(message):
        if "Content Security Policy" in message.text:
            refused.append(message.text)

    page = person()
    page.on("console", note)
    icon = page.locator("link[rel=icon]")
    href = icon.get_attribute("href")
    assert href.endswith(".svg")
    response = page.request.get(href)
    assert response.status == 200
    assert response.headers["content-type"].startswith("image/svg+xml")
    assert response.body().lstrip().startswith(b"<svg")
    page.reload()  # loads the icon again, with the listener on
    expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=LIVE)
    assert refused == []


def test_on_a_phone_the_full_room_title_and_who_you_are_are_shown(person):
    name = unique("phone")
    page = person(name=name, viewport=PHONE)
    page.click("#rooms-toggle")
    expect(page.locator("#whoami")).to_be_in_viewport()
    expect(page.locator("#whoami")).to_contain_text(f"Signed in as {name}")
    expect(page.locator("#logout-drawer")).to_be_in_viewport()
    title = "Quarterly planning for the platform team and everyone on call"
    create_private_room(page, title)  # opening it closes the drawer
    heading = page.locator("#room-title")
    expect(heading).to_have_text(title)
    expect(heading).to_be_in_viewport(ratio=1)
    clipped = heading.evaluate("h => h.scrollWidth > h.clientWidth || h.scrollHeight > h.clientHeight")
    assert not clipped, "the room's title is cut off"
    box = heading.bounding_box()
    assert box["width"] > PHONE["width"] / 2, box  # the title has the width, not ~100 px
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    expect(page.locator("#conn")).to_be_in_viewport()
    say(page, "from the phone")
    wait_for_texts(page, ["from the phone"])
    assert texts(page) == ["from the phone"]
