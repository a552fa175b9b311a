// One message as shown: the only place a message becomes markup (history, stream,
// our own POST, the outbox's pending ones); its URLs become links through links.js.
import { kindByName } from "./ids.js";
import { linkedText } from "./links.js";
import { state } from "./state.js";

export const isMe = (user) => Boolean(user && state.me && user.toLowerCase() === state.me.toLowerCase());

// A message that is for us: it names us (@name: the server lists "mentions", lowercase), or it
// is in a DM and from someone else.
export function mentionsMe(message) {
  if (message.kind || !state.me || isMe(message.user)) return false;
  if (((state.info.get(message.room) || {}).kind || kindByName(message.room)) === "dm") return true;
  return Array.isArray(message.mentions) && message.mentions.includes(state.me.toLowerCase());
}

function formatTime(ts) {
  return new Date(ts).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

// A log entry (it has a "kind": a member or room change) in a few words. Its "user" is
// who made the change.
export function describeEntry(entry) {
  const actor = entry.user || "someone";
  if (entry.kind === "member") {
    switch (entry.change) {
      case "added": return `${actor} added ${entry.member}`;
      case "removed": return `${actor} removed ${entry.member}`;
      case "left": return `${entry.member || actor} left`;
      case "role": return `${actor} made ${entry.member} ${entry.role === "moderator" ? "a moderator" : "a member"}`;
      default: break;
    }
  } else if (entry.kind === "room") {
    switch (entry.change) {
      case "renamed": return `${actor} renamed the room to “${entry.title}”`;
      case "archived": return `${actor} archived the room`;
      case "unarchived": return `${actor} unarchived the room`;
      default: break;
    }
  }
  return `${actor} changed the room`; // a change this page doesn't know yet
}

// A log entry as a quiet line between the messages, never a message with empty text.
function entryElement(entry) {
  const item = document.createElement("li");
  item.className = "msg system entry";
  const line = document.createElement("span");
  line.className = "line";
  line.textContent = describeEntry(entry);
  item.append(line);
  if (entry.ts) {
    const when = document.createElement("time");
    when.dateTime = new Date(entry.ts).toISOString();
    when.textContent = formatTime(entry.ts);
    item.append(" ", when);
  }
  if (entry.id) item.dataset.id = entry.id;
  return item;
}

// ``message`` as shown: with ``edited`` (ms) it says "(edited)"; with ``deleted`` it is a
// quiet "message deleted" in its place, without the text.
export function messageElement(message, pending) {
  if (message.kind) return entryElement(message);
  const item = document.createElement("li");
  item.className = "msg";
  if (isMe(message.user)) item.classList.add("mine");
  if (mentionsMe(message) && Array.isArray(message.mentions)) item.classList.add("mention"); // named: highlighted
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
  if (message.edited && !message.deleted) {
    const edited = document.createElement("span");
    edited.className = "edited";
    edited.textContent = "(edited)";
    edited.title = `edited at ${formatTime(message.edited)}`;
    meta.append(edited);
  }
  const text = document.createElement("p");
  if (message.deleted) {
    item.classList.add("deleted");
    text.className = "gone";
    text.textContent = "message deleted";
  } else {
    text.className = "text";
    text.append(...linkedText(message.text)); // text nodes and links, never HTML
  }
  item.append(meta, text);
  if (message.id) item.dataset.id = message.id;
  if (pending) item.dataset.clientId = pending;
  return item;
}
