// ---- what a room is called: its title (not its id), a DM by its other members; the lock mark ----
import { $ } from "./dom.js";
import { kindByName } from "./ids.js";
import { isMe } from "./message.js";
import { state } from "./state.js";

const SVG = "http://www.w3.org/2000/svg";
// A padlock, drawn rather than an emoji: no font is needed for it, and it adds no text to
// the name it marks (the list's buttons and the title keep their text).
const LOCK_PATH = "M4 7V5a4 4 0 0 1 8 0v2h1v8H3V7zm2 0h4V5a2 2 0 0 0-4 0z";

// "public", "private" or "dm" (for a room we know nothing of yet, told by its name: every room
// was public before kinds).
export const roomKind = (room) => (state.info.get(room) || {}).kind || kindByName(room);

// A DM's members other than us, as the server spells them (lowercase).
function others(info) {
  return (info.members || []).filter((user) => !isMe(user));
}

// The name shown for a room: "#title" for a public room (its name unless renamed), the
// title of a private room, the other members of a DM. Never the generated id of a private
// room or DM while anything better is known.
export function roomLabel(room) {
  const info = state.info.get(room) || {};
  if (info.kind === "dm") return others(info).join(", ") || "Direct message";
  if (info.kind === "private") return info.title || "Private room";
  return `#${info.title || room}`;
}

export function lockMark() {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "lock");
  svg.setAttribute("viewBox", "0 0 16 16");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "private");
  const path = document.createElementNS(SVG, "path");
  path.setAttribute("d", LOCK_PATH);
  path.setAttribute("fill-rule", "evenodd");
  svg.append(path);
  return svg;
}

// The room's name as nodes: the lock mark first for a private room.
export function nameNodes(room) {
  const text = document.createTextNode(roomLabel(room));
  return roomKind(room) === "private" ? [lockMark(), text] : [text];
}

// The open room's header (again when its title or members become known): its name, and
// the Leave button unless it is a DM (a DM can't be left; the server says block instead).
export function showTitle() {
  if (!state.room) return;
  $("room-title").replaceChildren(...nameNodes(state.room));
  $("leave").hidden = roomKind(state.room) === "dm";
}

// "the beginning of …": a DM's history is "your conversation with bob".
export function historyName(room) {
  return roomKind(room) === "dm" ? `your conversation with ${roomLabel(room)}` : roomLabel(room);
}
