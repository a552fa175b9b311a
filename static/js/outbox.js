// ---- the outbox: pending until the server has it, retried with the same key ----
// Every message typed is kept here (and in localStorage, per user, so a reload loses none)
// until the server has it. One at a time, in the order typed, each with its client_id for
// every try: a retry after a lost answer is never stored twice. A message the server can't
// take now (unreachable, busy, rate limited) waits, with the ones after it, and is sent again
// on its own when the connection comes back; one it refuses says why, with Retry and Discard.
import { api, errorOf, refreshCsrf } from "./api.js";
import { retryDelay } from "./backoff.js";
import { $ } from "./dom.js";
import { humanError, retryAfter } from "./errors.js";
import { newClientId, ROOM_NAME } from "./ids.js";
import { messageElement } from "./message.js";
import { roomGone } from "./rooms.js";
import { atBottom, scrollToBottom } from "./scroll.js";
import { endSession } from "./session.js";
import { state } from "./state.js";

const SEND_ATTEMPTS = 6; // tries in a row (about 30 s) before a message waits for the connection
const LONGEST_NAP_S = 60; // a longer Retry-After: the message waits (Retry, or the connection back)

// item.status: "pending" (being sent), "waiting" (not sent yet: again when the connection comes
// back, at Retry, or when another message is typed), "failed" (the server refused it).

// A message the server stored goes where the stream's messages go (the conversation's
// onMessage, which settles outbox items itself): main.js registers it here, rather
// than the two modules importing each other.
let onStored = null;
export function whenStored(handler) {
  onStored = handler;
}

// ---- kept in localStorage: [[client_id, {room, text}], …] in the order typed. Other tabs of
// this browser keep theirs there too: add and remove by id, never write our list over theirs.
const storageKey = () => `chat.outbox.${state.me}`;

function stored() {
  let items = [];
  try { items = JSON.parse(localStorage.getItem(storageKey())) || []; } catch (_) { /* none */ }
  return Array.isArray(items) ? items.filter((entry) => Array.isArray(entry) && typeof entry[0] === "string"
    && entry[1] && typeof entry[1].text === "string" && ROOM_NAME.test(entry[1].room)) : [];
}

function keep(clientId, item) {
  const items = stored().filter(([id]) => id !== clientId);
  items.push([clientId, { room: item.room, text: item.text }]);
  localStorage.setItem(storageKey(), JSON.stringify(items));
}

function forget(clientId) {
  localStorage.setItem(storageKey(), JSON.stringify(stored().filter(([id]) => id !== clientId)));
}

export function loadOutbox() {
  state.outbox = new Map(stored().map(([id, { room, text }]) => [id, { room, text, status: "pending", attempts: 0 }]));
}

// ---- shown: the open room's unsent messages under its conversation, and a bar over the
// composer while any message (in any room) is not sent ----
function control(label, className, onClick) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = `secondary small ${className}`;
  button.textContent = label;
  button.addEventListener("click", onClick);
  return button;
}

function pendingElement(clientId, item) {
  const element = messageElement({ user: state.me, text: item.text }, clientId);
  element.classList.add(item.status);
  const meta = element.querySelector(".meta");
  const status = document.createElement("span");
  status.className = "state";
  status.textContent = item.status === "pending" ? "sending…"
    : item.status === "waiting" ? `not sent yet: ${item.error}` : `not sent: ${item.error}`;
  meta.append(status);
  if (item.status !== "pending") meta.append(control("Retry", "retry", () => retry([clientId])));
  if (item.status === "failed") meta.append(control("Discard", "discard", () => discard(clientId)));
  return element;
}

export function renderOutbox() {
  const pinned = atBottom();
  $("pending").replaceChildren(...[...state.outbox].filter(([, item]) => item.room === state.room)
    .map(([clientId, item]) => pendingElement(clientId, item)));
  const unsent = [...state.outbox.values()].filter((item) => item.status !== "pending");
  const waiting = unsent.some((item) => item.status === "waiting");
  $("outbox-bar").hidden = unsent.length === 0;
  $("outbox-count").textContent = `${unsent.length === 1 ? "1 message is" : `${unsent.length} messages are`} not sent`
    + (waiting ? ` yet; ${unsent.length === 1 ? "it goes" : "they go"} when the connection is back.` : ".");
  if (pinned) scrollToBottom(); // a "not sent" line and its Retry stay in sight
}

// ---- sending ----
function queueMessage(text) {
  const clientId = newClientId();
  const item = { room: state.room, text, status: "pending", attempts: 0 };
  state.outbox.set(clientId, item);
  keep(clientId, item);
  retry([...state.outbox.keys()].filter((id) => state.outbox.get(id).status === "waiting"), false);
  renderOutbox();
  scrollToBottom();
  drainOutbox();
}

// Sent: the server has it (our POST's answer, or the stream brought it first).
export function settle(clientId) {
  state.outbox.delete(clientId);
  forget(clientId);
  renderOutbox();
}

function discard(clientId) {
  settle(clientId);
  drainOutbox();
}

// The given messages (by client_id) are tried again from the first try.
function retry(clientIds, drain = true) {
  for (const clientId of clientIds) {
    const item = state.outbox.get(clientId);
    if (item && item.status !== "pending") Object.assign(item, { status: "pending", attempts: 0, error: "" });
  }
  if (!drain) return;
  renderOutbox();
  drainOutbox();
}

// "Retry now" over the composer: every unsent message, refused ones too.
export const retryAll = () => retry([...state.outbox.keys()]);

// The connection is back (live again, or the browser online): the waiting ones go.
export function resendWaiting() {
  retry([...state.outbox].filter(([, item]) => item.status === "waiting").map(([clientId]) => clientId));
}

// A pause between tries that a retry or a new message cuts short.
let wake = null;
function nap(ms) {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      wake = null;
      resolve();
    }
    wake = done;
  });
}

let draining = false;
export async function drainOutbox() {
  if (draining) {
    if (wake) wake();
    return;
  }
  draining = true;
  try {
    for (;;) {
      if (!state.me) return;
      // The first message not refused goes first; while it waits, so do the ones after it.
      const next = [...state.outbox].find(([, item]) => item.status !== "failed");
      if (!next || next[1].status !== "pending" || !(await deliver(...next))) return;
    }
  } finally {
    draining = false;
  }
}

// True when the message is settled (sent, or refused), false to stop for now (it waits, or
// we were signed out: the connection's return, a retry or the next sign-in resumes).
async function deliver(clientId, item) {
  const me = state.me;
  for (;;) {
    if (state.outbox.get(clientId) !== item) return true; // the stream settled it, or it was discarded
    let r = null;
    try {
      r = await api("POST", `/api/rooms/${item.room}/messages`, { text: item.text, client_id: clientId });
    } catch (_) { /* no answer: the server can't be reached */ }
    if (state.me !== me) return false;
    if (state.outbox.get(clientId) !== item) return true; // the stream settled it, or it was discarded
    if (r && r.status === 201) {
      settle(clientId);
      onStored(r.data);
      return true;
    }
    if (r && r.status === 401) {
      endSession("Your session ended; sign in again. Unsent messages are kept.");
      return false;
    }
    const stale = r && r.status === 403 && errorOf(r).code === "csrf_failed";
    if (r && !stale && r.status !== 429 && r.status < 500) { // refused: trying again changes nothing
      if (r.status === 404 && errorOf(r).code === "unknown_room") roomGone(item.room);
      return fail(item, "failed", humanError(r));
    }
    if (!r && !navigator.onLine) return fail(item, "waiting", "you are offline") && false;
    item.attempts += 1;
    const wait = r ? retryAfter(r) : null;
    if (item.attempts >= SEND_ATTEMPTS || wait > LONGEST_NAP_S) {
      return fail(item, "waiting", r ? humanError(r) : "the server can't be reached") && false;
    }
    if (stale) await refreshCsrf().catch(() => {});
    await nap(wait ? wait * 1000 : stale ? 0 : retryDelay(item.attempts));
  }
}

function fail(item, status, error) {
  item.status = status;
  item.error = error.replace(/\.$/, "");
  renderOutbox();
  return true;
}

// ---- the composer ----
export function onComposerKey(event) {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
}

export function onCompose(event) {
  event.preventDefault();
  const text = $("text").value;
  if (!text.trim()) return;
  $("text").value = "";
  queueMessage(text);
}
