"""Issue 23 on the page, in a real headless Chromium against real gunicorn: a page that never drops
a word (the outbox across a server outage and a reload, the connection's states, the start-up
that waits for the server), links, errors in words, the favicon, the phone's title and drawer."""

import re
import time

import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import expect

from tests.helpers import (
    DESKTOP,
    PASSWORD,
    PHONE,
    Api,
    assert_once_in_order,
    eventually,
    gunicorn_with_redis,
    page_sleep,
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


# Every state and label #conn shows from now on, in order, as "state|label".
RECORD_CONN = """
window.__connLabels = [];
const conn = document.getElementById("conn");
new MutationObserver(() => {
  const label = `${conn.dataset.state}|${conn.textContent}`;
  if (window.__connLabels[window.__connLabels.length - 1] !== label) window.__connLabels.push(label);
}).observe(conn, { childList: true, characterData: true, subtree: true, attributes: true });
"""


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
    alice.evaluate(RECORD_CONN)
    typed = [f"{unique('down')} {i}" for i in (1, 2, 3)]
    web.stop()
    try:
        for text in typed:
            say(alice, text)
        expect(alice.locator("#pending .msg")).to_have_count(3)
        expect(conn).to_have_text(re.compile(r"^offline, retrying in \d+ s$"), timeout=20000)
        expect(conn).to_have_attribute("data-state", "offline")
        shown = alice.evaluate("window.__connLabels")  # first a few tries, counted down
        assert any(re.match(r"^reconnecting\|reconnecting in \d+ s$", label) for label in shown), shown
        assert shown.index(next(label for label in shown if label.startswith("offline|"))) > 0, shown

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


# -- edits and deletions, read positions, mentions, notifications, muting -------------------------

def writer_account(web, prefix="writer"):
    name = unique(prefix)
    Api(web.url).post("/api/auth/register", {"username": name, "password": PASSWORD})
    return name, Api(web.url, name, PASSWORD)


def sign_in(context, name):
    """A second device (browser profile) of an existing account, signed in with the form."""
    page = context.new_page()
    page.on("dialog", lambda dialog: pytest.fail(f"a dialog fired: {dialog.message}"))
    page.goto("/")
    page.fill("#username", name)
    page.fill("#password", PASSWORD)
    page.click("#login-button")
    expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=LIVE)
    return page


def message_item(page, text):
    return page.locator("#messages li.msg", has=page.locator(".text", has_text=re.compile(f"^{re.escape(text)}$")))


def test_edits_and_deletions_by_the_author_show_live_on_another_users_page(person):
    alice_name = unique("alice")
    alice, bob = person(name=alice_name), person()
    typo = f"{unique('edit')} teh typo"
    say(alice, typo)
    wait_for_texts(bob, [typo])
    mine = message_item(alice, typo)
    message_id = mine.get_attribute("data-id")
    theirs = bob.locator(f"#messages li[data-id='{message_id}']")
    expect(theirs.locator(".actions")).to_have_count(0)  # bob may neither edit nor delete it

    mine.hover()
    mine.locator("button.edit").click()
    fixed = typo.replace("teh", "the")
    alice.locator(f"#messages li[data-id='{message_id}'] .edit-form textarea").fill(fixed)
    alice.locator(f"#messages li[data-id='{message_id}'] .edit-form textarea").press("Enter")
    for page in (alice, bob):
        item = page.locator(f"#messages li[data-id='{message_id}']")
        expect(item.locator(".text")).to_have_text(fixed)
        expect(item.locator(".edited")).to_have_text("(edited)")
    assert typo not in texts(bob)

    mine = alice.locator(f"#messages li[data-id='{message_id}']")
    mine.hover()
    mine.locator("button.delete").click()
    expect(mine.locator("button.delete")).to_have_text("Delete?")  # a second click deletes
    mine.locator("button.delete").click()
    for page in (alice, bob):
        item = page.locator(f"#messages li[data-id='{message_id}']")
        expect(item.locator(".gone")).to_have_text("message deleted")
        expect(item.locator(".text")).to_have_count(0)
    bob.reload()  # history: the deleted message is gone, its text nowhere
    expect(bob.locator("#conn")).to_have_attribute("data-state", "live", timeout=LIVE)
    expect(bob.locator("#history-edge")).not_to_have_text("Loading…")
    expect(bob.locator(f"#messages li[data-id='{message_id}']")).to_have_count(0)
    assert fixed not in bob.locator("#messages").inner_text()


def test_a_room_owner_deletes_a_members_message(person, web):
    owner_name, member_name = unique("owner"), unique("member")
    owner, member = person(name=owner_name), person(name=member_name)
    room = create_private_room(owner, f"Moderated {unique('t')}")
    owner.fill("#invite-name", member_name)
    owner.click("#invite-submit")
    member.click(f"#room-list button[data-room='{room}']")
    expect(member.locator("#room-title")).to_have_text(re.compile("^Moderated"))
    text = f"{unique('oops')} my password is hunter2"
    say(member, text)
    wait_for_texts(owner, [text])
    theirs = message_item(owner, text)
    message_id = theirs.get_attribute("data-id")
    theirs.hover()
    expect(theirs.locator("button.edit")).to_have_count(0)  # only the author edits
    theirs.locator("button.delete").click()
    theirs.locator("button.delete").click()
    for page in (owner, member):
        expect(page.locator(f"#messages li[data-id='{message_id}'] .gone")).to_have_text("message deleted")
    assert all(text not in shown for shown in texts(member))


def test_a_read_on_one_device_clears_the_badges_on_another_live(person, browser, web):
    name = unique("reader")
    laptop = person(name=name)
    phone_context = browser.new_context(viewport=DESKTOP, base_url=web.url)
    try:
        phone = sign_in(phone_context, name)  # a second device: another profile, another stream
        _, writer = writer_account(web)
        room = unique("news")
        assert writer.post("/api/rooms", {"name": room}).status == 201
        assert Api(web.url, name, PASSWORD).post(f"/api/rooms/{room}/join").status == 200
        for page in (laptop, phone):
            expect(page.locator(f"#room-list button[data-room='{room}']")).to_have_count(1)
        for text in ("one", f"two for @{name}", "three"):
            assert writer.post(f"/api/rooms/{room}/messages", {"text": text}).status == 201
        for page in (laptop, phone):
            button = page.locator(f"#room-list button[data-room='{room}']")
            expect(button.locator(".badge.unread")).to_have_text("3")
            expect(button.locator(".badge.mention")).to_have_text("@1")  # next to the unread count

        reads = []

        def note(request):
            if request.method == "POST" and request.url.endswith(f"/api/rooms/{room}/read"):
                reads.append(request.post_data_json["id"])

        laptop.on("request", note)
        laptop.click(f"#room-list button[data-room='{room}']")  # read on the laptop ...
        wait_for_texts(laptop, ["one", f"two for @{name}", "three"])
        expect(message_item(laptop, f"two for @{name}")).to_have_class(re.compile(r"\bmention\b"))
        button = phone.locator(f"#room-list button[data-room='{room}']")
        expect(button.locator(".badge")).to_have_count(0)  # ... clears the phone's badges, live
        assert len(reads) == 1, reads

        # Read positions are the server's: a reload of the phone shows none unread either, and
        # new messages count again from there (the laptop looks at another room meanwhile).
        laptop.click("#room-list button[data-room='general']")
        expect(laptop.locator("#room-title")).to_have_text("#general")
        phone.reload()
        expect(phone.locator("#conn")).to_have_attribute("data-state", "live", timeout=LIVE)
        expect(phone.locator(f"#room-list button[data-room='{room}']")).to_have_count(1)
        assert writer.post(f"/api/rooms/{room}/messages", {"text": "four"}).status == 201
        for page in (laptop, phone):
            expect(page.locator(f"#room-list button[data-room='{room}'] .badge.unread")).to_have_text("1")
    finally:
        phone_context.close()


def test_reading_a_busy_room_sends_at_most_two_read_positions_a_second(person, web):
    name = unique("busy")
    page = person(name=name)
    _, writer = writer_account(web)
    reads = []

    def note(request):
        if request.method == "POST" and request.url.endswith("/api/rooms/general/read"):
            reads.append(request.post_data_json["id"])

    page.on("request", note)
    started = time.monotonic()
    sent = [f"{unique('burst')} {i}" for i in range(30)]
    ids = [writer.post("/api/rooms/general/messages", {"text": text}).json["id"] for text in sent]
    wait_for_texts(page, sent)

    def read_to_the_newest():
        assert reads and reads[-1] == ids[-1], reads[-3:]
        return True

    eventually(read_to_the_newest, 5, 0.1, what="the newest message read", sleep=page_sleep(page))
    elapsed = time.monotonic() - started
    assert len(reads) <= 2 * elapsed + 1, (len(reads), elapsed)  # not one per message


NOTIFICATIONS = """
window.__notes = []; window.__noteObjects = []; window.__asked = 0;
const RealNotification = window.Notification;
class CountedNotification extends RealNotification {
  constructor(title, options) {
    super(title, options);
    window.__notes.push({ title, body: options && options.body });
    window.__noteObjects.push(this);
  }
  static get permission() { return RealNotification.permission; }
  static requestPermission(...args) { window.__asked += 1; return RealNotification.requestPermission(...args); }
}
window.Notification = CountedNotification;
"""
HIDE = ("Object.defineProperty(document, 'visibilityState', {configurable: true, get: () => 'hidden'});"
        "document.dispatchEvent(new Event('visibilitychange'));")
SHOW = "delete document.visibilityState; document.dispatchEvent(new Event('visibilitychange'));"


def notes(page):
    return page.evaluate("window.__notes")


def test_mentions_and_dms_notify_while_the_page_is_hidden_but_not_when_shown_or_muted(person, web):
    bob_name = unique("bob")
    bob = person(name=bob_name, init_script=NOTIFICATIONS)
    bob.context.grant_permissions(["notifications"], origin=web.url)
    alice_name, alice = writer_account(web, "alice")
    assert bob.evaluate("window.__asked") == 0  # never asked on load
    expect(bob.locator("#notify-toggle")).to_have_text("Enable notifications")
    bob.click("#notify-toggle")
    expect(bob.locator("#notify-toggle")).to_have_text("Notifications on")
    assert bob.evaluate("window.__asked") == 1  # asked once, after the click

    bob.evaluate(HIDE)
    tag = unique("n")
    assert alice.post("/api/rooms/general/messages", {"text": f"{tag} no mention"}).status == 201
    assert alice.post("/api/rooms/general/messages", {"text": f"{tag} hey @{bob_name}"}).status == 201
    wait_for_texts(bob, [f"{tag} no mention", f"{tag} hey @{bob_name}"])
    assert notes(bob) == [{"title": f"{alice_name} in #general", "body": f"{tag} hey @{bob_name}"}]

    dm = alice.post("/api/dms", {"users": [bob_name]}).json["room"]["name"]
    assert alice.post(f"/api/rooms/{dm}/messages", {"text": f"{tag} a direct message"}).status == 201
    dm_badge = bob.locator(f"#dm-list button[data-room='{dm}'] .badge")
    expect(dm_badge).to_have_text("1")  # in a DM every message is for us: one badge, highlighted
    expect(dm_badge).to_have_class(re.compile(r"\bfor-me\b"))
    assert notes(bob)[1:] == [{"title": alice_name, "body": f"{tag} a direct message"}]

    bob.evaluate("window.__noteObjects[1].dispatchEvent(new Event('click'))")  # opens the DM at the message
    expect(bob.locator("#room-title")).to_have_text(alice_name)
    wait_for_texts(bob, [f"{tag} a direct message"])

    bob.evaluate(SHOW)  # shown: no notification
    assert alice.post("/api/rooms/general/messages", {"text": f"{tag} seen @{bob_name}"}).status == 201
    expect(bob.locator("#room-list button[data-room='general'] .badge.mention")).to_have_text("@1")
    assert len(notes(bob)) == 2

    bob.click("#room-list button[data-room='general']")
    wait_for_texts(bob, [f"{tag} seen @{bob_name}"])  # read: shown, visible, at the bottom
    bob.click("#mute")
    expect(bob.locator("#mute")).to_have_text("Unmute")
    bob.click(f"#dm-list button[data-room='{dm}']")
    expect(bob.locator("#room-title")).to_have_text(alice_name)
    bob.evaluate(HIDE)  # hidden, but general is muted: no notification, no unread badge; the mention counts
    assert alice.post("/api/rooms/general/messages", {"text": f"{tag} muted @{bob_name}"}).status == 201
    assert alice.post("/api/rooms/general/messages", {"text": f"{tag} muted, plain"}).status == 201
    general = bob.locator("#room-list button[data-room='general']")
    expect(general.locator(".badge.mention")).to_have_text("@1")
    expect(general.locator(".muted-mark")).to_have_text("muted")
    expect(general.locator(".badge.unread")).to_have_count(0)
    assert len(notes(bob)) == 2

    def the_server_agrees():  # the read of general goes out within half a second (throttled)
        unread = Api(web.url, bob_name, PASSWORD).get("/api/me/unread").json["rooms"]["general"]
        assert unread == {**unread, "muted": True, "mentions": 1, "unread": 2}, unread
        return True

    eventually(the_server_agrees, 5, 0.1, what="general muted, 2 unread, 1 mention", sleep=page_sleep(bob))
