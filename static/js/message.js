// One message as shown: the only place a message becomes markup (history, stream,
// our own POST, the outbox's pending ones).
import { state } from "./state.js";

export const isMe = (user) => Boolean(user && state.me && user.toLowerCase() === state.me.toLowerCase());

function formatTime(ts) {
  return new Date(ts).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

export function messageElement(message, pending) {
  const item = document.createElement("li");
  item.className = "msg";
  if (isMe(message.user)) item.classList.add("mine");
  const meta = document.createElement("div");
  meta.className = "meta";
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = message.user;
  const when = document.createElement("time");
  if (message.ts) {
    when.dateTime = new Date(message.ts).toISOString();
    when.textContent = formatTime(message.ts);
  }
  meta.append(who, when);
  const text = document.createElement("p");
  text.className = "text";
  text.textContent = message.text; // always text, never HTML
  item.append(meta, text);
  if (message.id) item.dataset.id = message.id;
  if (pending) item.dataset.clientId = pending;
  return item;
}
