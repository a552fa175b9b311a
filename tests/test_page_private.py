"""Private rooms and direct messages on the page (issue 22), in a real headless Chromium against
real gunicorn: made, joined and left live, on every tab of a browser, without a reload."""

import re

import pytest
from playwright.sync_api import expect

from tests.helpers import PASSWORD, Api, say, texts, unique, wait_for_texts
from tests.test_page import converse

pytestmark = [pytest.mark.browser, pytest.mark.gunicorn]

PRIVATE_ID = re.compile(r"^p-[0-9a-f]{20}$")
DM_ID = re.compile(r"^dm-[0-9a-f]{32}$")


def open_room_id(page):
    """The id of the room open on ``page`` (its button in the list is the current one)."""
    current = page.locator("#sidebar button[aria-current='true']")
    expect(current).to_have_count(1)
    return current.get_attribute("data-room")


def create_private_room(page, title):
    """Make a private room with the create-room control's "private" box; returns its id."""
    page.check("#new-room-private")
    page.fill("#new-room-name", title)
    page.click("#new-room button[type=submit]")
    expect(page.locator("#room-title")).to_have_text(title)
    expect(page.locator("#room-title").get_by_role("img", name="private")).to_have_count(1)
    room = open_room_id(page)
    assert PRIVATE_ID.match(room), room
    return room


def invite(page, name):
    page.fill("#invite-name", name)
    page.click("#invite-submit")
    expect(page.locator(f"#member-list li[data-user='{name}']")).to_have_count(1)
    expect(page.locator("#invite-error")).to_have_text("")


def assert_no_empty_messages(page):
    """Log entries are system lines: never a message with empty text."""
    shown = page.locator("#messages .msg:not(.system) .text").all_inner_texts()
    assert all(text.strip() for text in shown), shown


def test_a_private_room_made_on_the_page_invites_by_name_and_shows_the_lock(person):
    alice_name, bob_name = unique("alice"), unique("bob")
    alice, bob = person(name=alice_name), person(name=bob_name)
    title = f"Launch plans {unique('t')}"
    room = create_private_room(alice, title)
    mine = alice.locator(f"#room-list button[data-room='{room}']")
    expect(mine.locator(".name")).to_have_text(title)  # its title, never its id
    expect(mine.get_by_role("img", name="private")).to_have_count(1)
    expect(alice.locator("#member-list li")).to_have_count(1)
    expect(alice.locator(f"#member-list li[data-user='{alice_name}']")).to_contain_text("owner")
    expect(alice.locator("#invite")).to_be_visible()

    invite(alice, bob_name)
    expect(alice.locator("#messages .msg.entry")).to_contain_text([f"{alice_name} added {bob_name}"])
    # bob's page hears of it on its stream: the room is listed, by title, with the lock.
    listed = bob.locator(f"#room-list button[data-room='{room}']")
    expect(listed.locator(".name")).to_have_text(title)
    expect(listed.get_by_role("img", name="private")).to_have_count(1)
    expect(bob.locator(f"#other-rooms button[data-room='{room}']")).to_have_count(0)
    listed.click()
    expect(bob.locator("#room-title")).to_have_text(title)
    expect(bob.locator("#room-title").get_by_role("img", name="private")).to_have_count(1)
    expect(bob.locator("#member-list li")).to_have_count(2)
    expect(bob.locator("#member-list button.remove")).to_have_count(0)  # a member manages nobody
    expect(bob.locator("#invite")).to_be_hidden()
    expect(bob.locator("#messages .msg.entry")).to_contain_text([f"{alice_name} added {bob_name}"])

    converse(alice, bob, rounds=2, tag="private")
    for page in (alice, bob):
        assert_no_empty_messages(page)
    # The owner may remove bob, not herself.
    expect(alice.locator(f"#member-list li[data-user='{bob_name}'] button.remove")).to_have_count(1)
    expect(alice.locator(f"#member-list li[data-user='{alice_name}'] button.remove")).to_have_count(0)


def test_a_direct_message_started_by_name_is_named_by_the_other_person_on_each_side(person):
    alice_name, bob_name = unique("alice"), unique("bob")
    alice, bob = person(name=alice_name), person(name=bob_name)
    expect(alice.locator("#dm-empty")).to_be_visible()
    alice.fill("#new-dm-name", bob_name)
    alice.click("#new-dm-submit")
    expect(alice.locator("#room-title")).to_have_text(bob_name)
    dm = open_room_id(alice)
    assert DM_ID.match(dm), dm
    expect(alice.locator("#dm-list button .name")).to_have_text([bob_name])
    expect(alice.locator(f"#room-list button[data-room='{dm}']")).to_have_count(0)  # not with the rooms

    listed = bob.locator(f"#dm-list button[data-room='{dm}']")
    expect(listed.locator(".name")).to_have_text(alice_name)  # live, named by the other side
    listed.click()
    expect(bob.locator("#room-title")).to_have_text(alice_name)
    converse(alice, bob, rounds=2, tag="dm")
    for page in (alice, bob):
        assert_no_empty_messages(page)

    # Away from it, bob is told who wrote, and the DM counts it.
    bob.click("#room-list button[data-room='general']")
    expect(bob.locator("#room-title")).to_have_text("#general")
    say(alice, "are you there?")
    wait_for_texts(alice, ["are you there?"])
    expect(bob.locator("#cue")).to_contain_text(f"New message from {alice_name}")
    expect(listed.locator(".badge")).to_have_text("1")
    listed.click()
    wait_for_texts(bob, ["are you there?"])

    # Starting it again by name opens the same DM.
    alice.click("#room-list button[data-room='general']")
    expect(alice.locator("#room-title")).to_have_text("#general")
    alice.fill("#new-dm-name", bob_name)
    alice.click("#new-dm-submit")
    expect(alice.locator("#room-title")).to_have_text(bob_name)
    assert open_room_id(alice) == dm
    expect(alice.locator("#dm-list button")).to_have_count(1)
    expect(alice.locator("#leave")).to_be_hidden()  # a DM can't be left
    wait_for_texts(alice, ["are you there?"])  # its history


@pytest.mark.parametrize("query", ["", "?transport=longpoll"], ids=["sse", "longpoll"])
def test_a_removed_member_loses_the_room_in_every_tab_without_a_reload(person, query):
    alice_name, bob_name = unique("alice"), unique("bob")
    alice = person(name=alice_name)
    bob = person(name=bob_name, query=query)
    title = f"Secret {unique('t')}"
    room = create_private_room(alice, title)
    invite(alice, bob_name)

    bob.click(f"#room-list button[data-room='{room}']")
    second = bob.context.new_page()  # a second tab of bob's browser: the same session
    second.goto(f"/{query}#{room}")
    tabs = (bob, second)
    for tab in tabs:
        expect(tab.locator("#conn")).to_have_attribute("data-state", "live", timeout=15000)
        expect(tab.locator("#room-title")).to_have_text(title)
        tab.evaluate("window.__notReloaded = true")  # gone if the page loads again
    roles = sorted(tab.evaluate("document.documentElement.dataset.streamRole") for tab in tabs)
    assert roles == ["follower", "leader"]  # one stream for both tabs
    say(second, "hello from the second tab")
    wait_for_texts(alice, ["hello from the second tab"])
    wait_for_texts(bob, ["hello from the second tab"])

    alice.click(f"#member-list li[data-user='{bob_name}'] button.remove")
    expect(alice.locator(f"#member-list li[data-user='{bob_name}']")).to_have_count(0)
    expect(alice.locator("#messages .msg.entry")).to_contain_text([f"{alice_name} added {bob_name}",
                                                                  f"{alice_name} removed {bob_name}"])
    for tab in tabs:
        expect(tab.locator("#notice-text")).to_have_text(f"You were removed from {title}.")
        expect(tab.locator(f"#sidebar button[data-room='{room}']")).to_have_count(0)
        expect(tab.locator("#room-title")).to_have_text("#general")
        assert tab.evaluate("window.__notReloaded") is True
        assert "hello from the second tab" not in texts(tab)
    # The notice stays until dismissed; the room can't be opened again by its address.
    bob.click("#notice-close")
    expect(bob.locator("#notice")).to_be_hidden()
    expect(second.locator("#notice")).to_be_visible()  # each tab's own
    with second.expect_response(lambda response: f"/api/rooms/{room}/join" in response.url) as joining:
        second.evaluate(f"location.hash = '{room}'")
    assert joining.value.status == 404  # to an outsider, as if it never existed
    expect(second.locator("#room-title")).to_have_text("#general")
    expect(second.locator(f"#sidebar button[data-room='{room}']")).to_have_count(0)


def test_renames_leaves_and_archiving_show_as_system_lines_and_the_title_follows(person, web):
    alice_name, bob_name = unique("alice"), unique("bob")
    alice, bob = person(name=alice_name), person(name=bob_name)
    room = create_private_room(alice, f"Old name {unique('t')}")
    invite(alice, bob_name)
    bob.click(f"#room-list button[data-room='{room}']")
    expect(bob.locator("#member-list li")).to_have_count(2)

    renamed = f"New name {unique('t')}"
    owner = Api(web.url, alice_name, PASSWORD)  # renamed elsewhere (curl): both pages follow live
    assert owner.request("PATCH", f"/api/rooms/{room}", {"title": renamed}).status == 200
    for page in (alice, bob):
        expect(page.locator("#room-title")).to_have_text(renamed)
        expect(page.locator(f"#room-list button[data-room='{room}'] .name")).to_have_text(renamed)
        expect(page.locator("#messages .msg.entry").last).to_contain_text(
            f"{alice_name} renamed the room to “{renamed}”")

    second = bob.context.new_page()  # another tab of bob's, in the room too
    second.goto(f"/#{room}")
    expect(second.locator("#room-title")).to_have_text(renamed)
    bob.click("#leave")  # his own leave: the room goes from both tabs, with no notice
    for tab in (bob, second):
        expect(tab.locator("#room-title")).to_have_text("#general")
        expect(tab.locator(f"#sidebar button[data-room='{room}']")).to_have_count(0)
        expect(tab.locator("#notice")).to_be_hidden()
    expect(alice.locator("#messages .msg.entry").last).to_contain_text(f"{bob_name} left")
    expect(alice.locator("#member-list li")).to_have_count(1)

    assert owner.request("PATCH", f"/api/rooms/{room}", {"archived": True}).status == 200
    expect(alice.locator("#messages .msg.entry").last).to_contain_text(f"{alice_name} archived the room")
    assert_no_empty_messages(alice)
    assert_no_empty_messages(bob)
