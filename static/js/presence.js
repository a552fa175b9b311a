// ---- presence and typing (live-only: a reconnect reloads the list) ----
import { api } from "./api.js";
import { $ } from "./dom.js";
import { atBottom, scrollToBottom } from "./scroll.js";
import { state } from "./state.js";

const TYPING_SHOWN_MS = 4000; // "X is typing…" lasts this long after the last notice
const TYPING_EVERY_MS = 3000; // we tell others at most this often while typing

export async function loadPresence() {
  const room = state.room;
  if (!room) return;
  const r = await api("GET", `/api/rooms/${room}/presence`);
  if (r.status !== 200 || room !== state.room) return;
  state.online = new Set(r.data.users);
  state.online.add(state.me); // our own join may still be on its way (they are batched)
  renderPresence();
}

// A room was opened: nobody is known to be in it, or typing, until loadPresence answers.
export function clearPresence() {
  state.online = new Set();
  $("presence-list").replaceChildren();
  for (const user of [...state.typing.keys()]) stopTyping(user);
}

function renderPresence() {
  $("presence").hidden = false;
  $("presence-list").replaceChildren(...[...state.online].sort().map((user) => {
    const item = document.createElement("li");
    item.textContent = user;
    return item;
  }));
}

function systemLine(text) {
  const pinned = atBottom();
  const item = document.createElement("li");
  item.className = "msg system";
  item.textContent = text;
  $("messages").append(item);
  if (pinned) scrollToBottom();
}

// The stream's "presence" and "typing" events.
export function onRoomEvent(event) {
  if (event.room !== state.room) return; // presence and typing follow the open room
  if (event.type === "presence") {
    if (event.state === "join") state.online.add(event.user);
    else state.online.delete(event.user);
    renderPresence();
    systemLine(`${event.user} ${event.state === "join" ? "joined" : "left"}`);
    stopTyping(event.user);
  } else if (event.type === "typing") {
    clearTimeout(state.typing.get(event.user));
    state.typing.set(event.user, setTimeout(() => stopTyping(event.user), TYPING_SHOWN_MS));
    renderTyping();
  }
}

export function stopTyping(user) {
  clearTimeout(state.typing.get(user));
  if (state.typing.delete(user)) renderTyping();
}

function renderTyping() {
  const users = [...state.typing.keys()];
  $("typing").textContent = users.length === 0 ? ""
    : users.length === 1 ? `${users[0]} is typing…` : `${users.join(", ")} are typing…`;
}

export function onComposerInput() {
  const now = Date.now();
  if (!$("text").value.trim() || now - state.lastTypingSent < TYPING_EVERY_MS) return;
  state.lastTypingSent = now;
  api("POST", `/api/rooms/${state.room}/typing`).catch(() => {}); // best effort
}
