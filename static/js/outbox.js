// ---- the outbox: pending until the server has it, retried with the same key ----
import { api, errorOf, refreshCsrf } from "./api.js";
import { MAX_BACKOFF_MS, sleep } from "./backoff.js";
import { $ } from "./dom.js";
import { newClientId } from "./ids.js";
import { messageElement } from "./message.js";
import { roomGone } from "./rooms.js";
import { scrollToBottom } from "./scroll.js";
import { endSession } from "./session.js";
import { state } from "./state.js";

const SEND_ATTEMPTS = 6; // then the message is shown as failed, with a retry button

// A message the server stored goes where the stream's messages go (the conversation's
// onMessage, which settles outbox items itself): main.js registers it here, rather
// than the two modules importing each other.
let onStored = null;
export function whenStored(handler) {
  onStored = handler;
}

function saveOutbox() {
  const items = [...state.outbox].map(([id, item]) => [id, { room: item.room, text: item.text }]);
  localStorage.setItem(`chat.outbox.${state.me}`, JSON.stringify(items));
}

export function loadOutbox() {
  let items = [];
  try { items = JSON.parse(localStorage.getItem(`chat.outbox.${state.me}`)) || []; } catch (_) { /* none */ }
  state.outbox = new Map(items.map(([id, item]) => [id, { ...item, status: "pending", attempts: 0 }]));
}

// The open room's unsent messages, under its conversation.
export function renderOutbox() {
  const list = $("pending");
  list.replaceChildren();
  for (const [clientId, item] of state.outbox) {
    if (item.room !== state.room) continue;
    const element = messageElement({ user: state.me, text: item.text }, clientId);
    element.classList.add(item.status);
    const status = document.createElement("span");
    status.className = "state";
    status.textContent = item.status === "failed" ? `not sent: ${item.error || "failed"}` : "sending…";
    element.querySelector(".meta").append(status);
    if (item.status === "failed") {
      const retry = document.createElement("button");
      retry.type = "button";
      retry.className = "secondary retry";
      retry.textContent = "Retry";
      retry.addEventListener("click", () => {
        item.status = "pending";
        item.attempts = 0;
        renderOutbox();
        drainOutbox();
      });
      element.append(retry);
    }
    list.append(element);
  }
}

function queueMessage(text) {
  const clientId = newClientId();
  state.outbox.set(clientId, { room: state.room, text, status: "pending", attempts: 0 });
  saveOutbox();
  renderOutbox();
  scrollToBottom();
  drainOutbox();
}

// Sent: the server has it (our POST's answer, or the stream brought it first).
export function settle(clientId) {
  state.outbox.delete(clientId);
  saveOutbox();
  renderOutbox();
}

// One message at a time, in the order typed: each keeps its client_id across
// retries, so a retry after a lost answer is never stored twice. Any tab sends
// its own (POST directly), whichever tab holds the stream.
let draining = false;
export async function drainOutbox() {
  if (draining) return;
  draining = true;
  try {
    for (;;) {
      const next = [...state.outbox].find(([, item]) => item.status === "pending");
      if (!next || !(await deliver(...next))) return;
    }
  } finally {
    draining = false;
  }
}

// Returns true when the item is settled (sent or failed), false to stop for now
// (offline, or signed out: the "online" event or the next sign-in resumes).
async function deliver(clientId, item) {
  for (;;) {
    let retryIn;
    try {
      const r = await api("POST", `/api/rooms/${item.room}/messages`, { text: item.text, client_id: clientId });
      if (r.status === 201) {
        settle(clientId);
        onStored(r.data);
        return true;
      }
      if (r.status === 401) {
        endSession("Your session ended; sign in again. Unsent messages are kept.");
        return false;
      }
      if (r.status === 403 && errorOf(r).code === "csrf_failed") {
        await refreshCsrf();
        retryIn = 0;
      } else if (r.status === 429 || r.status >= 500) {
        retryIn = 1000 * Number(r.headers.get("Retry-After") || 0) || backoffFor(item);
      } else {
        // A private room or DM we were removed from answers as if it never existed.
        if (r.status === 404 && errorOf(r).code === "unknown_room") roomGone(item.room);
        return fail(item, errorOf(r).message || `error ${r.status}`);
      }
    } catch (_) {
      if (!navigator.onLine) return false;
      retryIn = backoffFor(item);
    }
    item.attempts += 1;
    if (item.attempts >= SEND_ATTEMPTS) return fail(item, "the server did not answer");
    await sleep(retryIn);
  }
}

const backoffFor = (item) => Math.min(500 * 2 ** item.attempts, MAX_BACKOFF_MS);

function fail(item, error) {
  item.status = "failed";
  item.error = error;
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
