// ---- the conversation: the open room's messages, history and live ----
import { api, errorOf } from "./api.js";
import { hideCue, showCue } from "./cue.js";
import { $ } from "./dom.js";
import { closeDrawer } from "./drawer.js";
import { cmpId, DEFAULT_ROOM, ROOM_NAME } from "./ids.js";
import { applyChange, isChange, renderMessage } from "./edits.js";
import { clearMembers, loadMembers } from "./members.js";
import { isMe, mentionsMe } from "./message.js";
import { historyName, showTitle } from "./names.js";
import { notifyOf } from "./notify.js";
import { renderOutbox, settle } from "./outbox.js";
import { clearPresence, loadPresence, stopTyping } from "./presence.js";
import { countNews, isUnreadNews, markSeen, noteLatest } from "./readstate.js";
import { joinRoom, onRoomChange, renderRooms, roomGone } from "./rooms.js";
import { atBottom, log, scrollToBottom } from "./scroll.js";
import { sessionEnded } from "./session.js";
import { state } from "./state.js";

const HISTORY_PAGE = 50;

// Shown once, in id order, whatever path it came by (history, stream, our own POST). An edit or
// a deletion changes the message it names instead (false: nothing new is shown).
function insertMessage(message) {
  if (message.room !== state.room || state.messages.has(message.id)) return false;
  state.messages.set(message.id, message);
  if (!state.oldestId || cmpId(message.id, state.oldestId) < 0) state.oldestId = message.id;
  if (isChange(message)) {
    applyChange(message);
    return false;
  }
  const element = renderMessage(message);
  const list = $("messages");
  let after = list.lastElementChild;
  while (after && after.dataset.id && cmpId(after.dataset.id, message.id) > 0) after = after.previousElementSibling;
  list.insertBefore(element, after ? after.nextSibling : list.firstChild);
  return true;
}

const reading = () => document.visibilityState === "visible";

// The open room is read up to its newest message, if the reader can see it (the page shown,
// the conversation scrolled to the bottom).
export function markNewestSeen() {
  if (!state.room || !reading() || !atBottom()) return;
  const newest = [...$("messages").querySelectorAll("li[data-id]")].pop();
  if (newest) markSeen(state.room, newest.dataset.id);
}

// A message from the stream (any room) or from our own POST. A log entry (a "kind") is
// shown in its room too, but is not news: it counts as no unread message and shows no cue.
export function onMessage(message) {
  if (message.client_id && state.outbox.has(message.client_id)) settle(message.client_id);
  const isNew = noteLatest(message.room, message.id);
  if (isNew && message.kind === "room") onRoomChange(message);
  const news = isNew && !message.kind && state.joined.has(message.room) && !isMe(message.user)
    && isUnreadNews(message.room, message.id);
  if (news) notifyOf(message); // a mention or a DM while the page is hidden
  if (message.room === state.room) {
    const pinned = atBottom();
    if (!message.kind) stopTyping(message.user);
    if (!insertMessage(message)) return;
    if (pinned) scrollToBottom();
    if (reading() && pinned) markSeen(state.room, message.id);
    if (message.kind === "member") loadMembers().catch(() => {}); // someone added, removed, left
  } else if (news) {
    countNews(message.room, mentionsMe(message));
    renderRooms();
    if (!state.muted.has(message.room) || mentionsMe(message)) showCue(message);
  }
}

function setEdge() {
  $("history-edge").textContent = !state.historyLoaded ? "Loading…"
    : state.more ? "Scroll up for older messages" : `This is the beginning of ${historyName(state.room)}.`;
}

export function clearConversation() {
  $("messages").replaceChildren();
  state.messages.clear();
  state.changes.clear();
  state.oldestId = null;
  state.more = true;
  state.historyLoaded = false;
  setEdge();
}

// The open room's newest page, merged with what the stream already showed (never
// cleared here: a stream message newer than this page may be in already).
export async function loadLatest() {
  const room = state.room;
  const r = await api("GET", `/api/rooms/${room}/messages?limit=${HISTORY_PAGE}`);
  if (r.status === 401) { sessionEnded(); return false; }
  if (r.status === 404 && errorOf(r).code === "unknown_room") { roomGone(room); return false; } // removed
  if (r.status !== 200) throw new Error(`history: ${r.status}`);
  if (room !== state.room) return false;
  const first = !state.historyLoaded;
  const pinned = first || atBottom();
  for (const message of r.data.messages) insertMessage(message);
  const newest = r.data.messages[r.data.messages.length - 1];
  if (newest) noteLatest(room, newest.id);
  if (first) state.more = r.data.more;
  state.historyLoaded = true;
  setEdge();
  if (pinned) scrollToBottom();
  markNewestSeen();
  await fillViewport();
  return true;
}

async function fillViewport() {
  while (state.more && log().scrollHeight <= log().clientHeight) {
    if (!(await loadOlder())) break;
  }
}

// The page before the oldest shown (the log scrolled near its top).
export async function loadOlder() {
  if (state.loadingOlder || !state.historyLoaded || !state.more || !state.oldestId) return false;
  state.loadingOlder = true;
  const room = state.room;
  try {
    const r = await api("GET", `/api/rooms/${room}/messages?limit=${HISTORY_PAGE}&before=${state.oldestId}`);
    if (r.status !== 200 || room !== state.room) return false;
    const before = log().scrollHeight;
    for (const message of r.data.messages) insertMessage(message);
    state.more = r.data.more;
    setEdge();
    log().scrollTop += log().scrollHeight - before; // keep the reader's place
    return true;
  } finally {
    state.loadingOlder = false;
  }
}

// The stream may have skipped something for this tab (a fresh start, a takeover), or the
// history could not be loaded (the server was away): merge the newest page again. Never a
// reconnect.
export function refreshOpenRoom() {
  if (state.room) loadLatest().catch(() => {});
}

// Open a room: join it if we aren't in it (the stream follows it from the join
// point; its history comes from the messages API). Never touches the stream.
export async function openRoom(name) {
  closeDrawer();
  if (!ROOM_NAME.test(name)) name = DEFAULT_ROOM;
  const generation = ++state.opening;
  if (!state.joined.has(name)) {
    const outcome = await joinRoom(name);
    if (generation !== state.opening || !state.me) return;
    if (outcome === "missing" && name !== DEFAULT_ROOM) return openRoom(DEFAULT_ROOM);
    if (outcome === "refused") { // a cap: stay where we are
      if (state.room) return;
      if (name !== DEFAULT_ROOM) return openRoom(DEFAULT_ROOM);
    }
    // "error": show it anyway; the next "ready" of the stream tries to join again.
  }
  if (name === state.room && state.historyLoaded) return;
  state.room = name;
  state.unread[name] = 0;
  state.mentions[name] = 0;
  if ($("cue").dataset.room === name) hideCue();
  history.replaceState(null, "", `${location.pathname}${location.search}#${name}`);
  localStorage.setItem("chat.room", name);
  showTitle();
  renderRooms();
  renderOutbox();
  clearConversation();
  clearPresence();
  clearMembers();
  loadPresence().catch(() => {});
  loadMembers().catch(() => {});
  try {
    await loadLatest();
  } catch (_) {
    if (generation === state.opening) $("history-edge").textContent = "History can't be loaded now.";
  }
}

// Open ``room`` with the message ``id`` in sight, marked for a moment (a notification's click).
export async function openRoomAt(room, id) {
  await openRoom(room);
  if (state.room !== room) return;
  const element = document.querySelector(`#messages li[data-id="${id}"]`);
  if (!element) return;
  element.scrollIntoView({ block: "center" });
  element.classList.add("flash");
  setTimeout(() => element.classList.remove("flash"), 3000);
}
