// The chat page: sign-in, rooms, history, live updates over one multiplexed stream per
// browser (SSE, long-poll as fallback) shared by its tabs, and an outbox that never loses
// or duplicates what you type. No framework, no build step: native ES modules, one per
// job (README "The page"); this one starts the page.
import { api, refreshCsrf } from "./api.js";
import { retryDelay } from "./backoff.js";
import { holdsStream, setConn, showConn, whenConnChanges, whenLive } from "./conn.js";
import { loadOlder, markNewestSeen, onMessage, openRoom, openRoomAt } from "./conversation.js";
import { hideCue } from "./cue.js";
import { $ } from "./dom.js";
import { toggleDrawer } from "./drawer.js";
import { humanError, UNREACHABLE } from "./errors.js";
import { DEFAULT_ROOM, ROOM_NAME } from "./ids.js";
import { onInvite } from "./members.js";
import { hideNotice } from "./notice.js";
import { onNotifyToggle, renderNotifyControl, whenNotificationOpens } from "./notify.js";
import { drainOutbox, loadOutbox, onCompose, onComposerKey, resendWaiting, retryAll, whenStored } from "./outbox.js";
import { onComposerInput } from "./presence.js";
import { loadUnread, mutedElsewhere, whenCountsChange } from "./readstate.js";
import { leaveRoom, loadJoined, onMuteToggle, onNewDm, onNewRoom, onPrivateToggle, refreshDirectory, renderRooms,
  whenRoomChosen } from "./rooms.js";
import { log } from "./scroll.js";
import { whenSessionEnds } from "./session.js";
import { logout, onSignIn, showSignIn } from "./signin.js";
import { state } from "./state.js";
import { emit, shareConn, shareVisibility, startSharing } from "./tabs.js";
import { startLive, whenStreamEvent } from "./transport.js";
import { SHOWN_EVERY_MS, shownHere } from "./visibility.js";
import { hideWaiting, showWaiting, tryNow, waitOrWake } from "./waiting.js";

// ---- start-up ----
// The room named by the URL fragment, or "" when there is none or it isn't a room
// name (a fragment that doesn't decode, e.g. "#%E0%A4%A", must not stop the page).
function roomFromHash() {
  let name;
  try { name = decodeURIComponent(location.hash.slice(1)); } catch (_) { return ""; }
  return ROOM_NAME.test(name) ? name : "";
}

async function enterChat(user, admin = false) {
  state.me = user;
  state.admin = admin;
  state.room = null;
  state.cursor = null;
  state.seen = {};
  state.unread = {};
  state.mentions = {};
  state.muted = new Set();
  state.readyCount = 0;
  state.latest = {};
  state.joined = new Set();
  state.info = new Map();
  state.conn = { state: "connecting", text: "connecting…", worker: "", at: 0 };
  localStorage.setItem("chat.user", user); // the start-up's "messages kept" while the server is away
  $("me").textContent = user;
  $("me-drawer").textContent = user;
  hideWaiting();
  $("signin").hidden = true;
  $("chat").hidden = false;
  hideNotice();
  renderNotifyControl();
  loadOutbox();
  // Listen first (or hold the stream), then read: nothing falls between the two.
  startSharing();
  // The server may go away meanwhile: the chat opens anyway, and the stream's "ready" fills in.
  const [ok] = await Promise.all([loadJoined().catch(() => true), refreshDirectory().catch(() => null)]);
  if (!ok || state.me !== user) return;
  renderRooms();
  const wanted = roomFromHash() || localStorage.getItem("chat.room") || DEFAULT_ROOM;
  await openRoom(ROOM_NAME.test(wanted) ? wanted : DEFAULT_ROOM);
  if (state.me !== user) return;
  loadUnread().catch(() => {}); // the read positions and counts of every joined room, in one request
  drainOutbox();
  $("text").focus();
}

// Lower modules call up through these (they would otherwise import the modules that
// import them): set before anything can call them.
function registerCallbacks() {
  whenSessionEnds(showSignIn); // a 401, a "retry" with a reason, another tab's sign-out
  whenRoomChosen(openRoom); // a click in the room list, a new room, leaving the open one
  whenStored(onMessage); // the outbox's POST answered: shown like the stream's messages
  whenConnChanges(shareConn); // the holding tab tells the others its connection state
  whenLive(resendWaiting); // the connection is back: what waits in the outbox is sent
  whenStreamEvent(emit); // the live transport's events: to the other tabs, then here
  whenCountsChange(renderRooms); // unread and mention counts loaded
  whenNotificationOpens(openRoomAt); // a notification clicked: its room, at its message
}

async function boot() {
  registerCallbacks();
  $("signin-form").addEventListener("submit", (event) => onSignIn(event, enterChat));
  $("logout").addEventListener("click", logout);
  $("logout-drawer").addEventListener("click", logout);
  $("outbox-retry").addEventListener("click", retryAll);
  $("waiting-retry").addEventListener("click", tryNow);
  $("leave").addEventListener("click", leaveRoom);
  $("mute").addEventListener("click", onMuteToggle);
  $("notify-toggle").addEventListener("click", onNotifyToggle);
  $("new-room").addEventListener("submit", onNewRoom);
  $("new-room-private").addEventListener("change", onPrivateToggle);
  $("new-dm").addEventListener("submit", onNewDm);
  $("invite").addEventListener("submit", onInvite);
  $("notice-close").addEventListener("click", hideNotice);
  $("rooms-refresh").addEventListener("click", () => refreshDirectory().catch(() => {}));
  $("cue").addEventListener("click", () => { const room = $("cue").dataset.room; hideCue(); openRoom(room); });
  $("composer").addEventListener("submit", onCompose);
  $("text").addEventListener("keydown", onComposerKey);
  $("text").addEventListener("input", onComposerInput);
  $("rooms-toggle").addEventListener("click", toggleDrawer);
  log().addEventListener("scroll", () => {
    if (log().scrollTop < 80) loadOlder();
    markNewestSeen(); // scrolled down to the newest: read
  });
  window.addEventListener("storage", (event) => { if (mutedElsewhere(event)) renderRooms(); });
  document.addEventListener("visibilitychange", () => {
    shareVisibility();
    markNewestSeen(); // shown again: what is on screen is read
  });
  window.addEventListener("pagehide", () => shareVisibility(true));
  setInterval(() => { if (shownHere()) shareVisibility(); }, SHOWN_EVERY_MS);
  window.addEventListener("online", () => {
    resendWaiting();
    drainOutbox();
    if (state.me && holdsStream()) startLive(); // from the cursor: nothing missed
  });
  window.addEventListener("offline", () => {
    if (holdsStream()) setConn("offline", "offline");
    else showConn({ state: "offline", text: "offline" });
  });
  window.addEventListener("hashchange", () => {
    const room = roomFromHash();
    if (state.me && room && room !== state.room) openRoom(room);
  });
  await whoAmI();
}

// Signed in (the session cookie) or not: the chat or the sign-in form. While the server can't
// say (unreachable, restarting, its store down), a card says so and it is asked again and
// again: a signed-in user comes back signed in, without a reload.
async function whoAmI() {
  for (let failures = 1; ; failures += 1) {
    let me = null;
    try { me = await api("GET", "/api/auth/me"); } catch (_) { /* no answer */ }
    if (me && (me.status === 200 || me.status === 401)) {
      await refreshCsrf().catch(() => {}); // a write refreshes it again if this one failed
      if (me.status === 200) return enterChat(me.data.user, Boolean(me.data.admin));
      return showSignIn();
    }
    const delay = retryDelay(failures);
    showWaiting(me ? humanError(me) : UNREACHABLE, Date.now() + delay);
    await waitOrWake(delay);
  }
}

boot();
