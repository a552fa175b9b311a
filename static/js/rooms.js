// ---- rooms: the ones you are in, and the directory of the others ----
import { api, write } from "./api.js";
import { $ } from "./dom.js";
import { cmpId, DEFAULT_ROOM, VALID_ID } from "./ids.js";
import { markSeen } from "./readstate.js";
import { sessionEnded } from "./session.js";
import { state } from "./state.js";

const ROOMS_PAGE = 500; // rooms per GET /api/rooms (the server's maximum)
const ROOMS_MAX_PAGES = 10; // the room directory reads at most this many pages
const UNREAD_BATCH = 500; // rooms per POST /api/rooms/unread (the server's maximum)
const UNREAD_SHOWN_MAX = 99; // past this a badge reads "99+" (the server counts up to 100)

// Opening a room is the conversation's (openRoom), which joins through this module:
// main.js registers it here rather than the two importing each other.
let openRoom = null;
export function whenRoomChosen(open) {
  openRoom = open;
}

export async function loadJoined() {
  const r = await api("GET", "/api/me/rooms");
  if (r.status === 401) { sessionEnded(); return false; }
  if (r.status === 200) state.joined = new Set(r.data.rooms);
  return true;
}

// The whole directory, page by page (bounded), or null if it can't be read now.
async function fetchDirectory() {
  const rooms = [];
  let after = null;
  for (let page = 0; page < ROOMS_MAX_PAGES; page += 1) {
    const query = after === null ? "" : `&after=${encodeURIComponent(after)}`;
    const r = await api("GET", `/api/rooms?limit=${ROOMS_PAGE}${query}`);
    if (r.status === 401) { sessionEnded(); return null; }
    if (r.status !== 200) return null;
    rooms.push(...r.data.rooms);
    after = r.data.next;
    if (!after) break;
  }
  return rooms;
}

export async function refreshDirectory() {
  const rooms = await fetchDirectory();
  if (rooms) { state.directory = rooms; renderRooms(); }
  return rooms;
}

// Unread counts at sign-in, for every joined room with news, in one request per
// UNREAD_BATCH rooms (never one per room); from then on the stream keeps them.
export async function countUnread() {
  const tails = Object.fromEntries(state.directory.map((room) => [room.name, room.last_id]));
  const behind = {};
  for (const name of state.joined) {
    const tail = tails[name];
    if (tail && (!state.latest[name] || cmpId(tail, state.latest[name]) > 0)) state.latest[name] = tail;
    if (name === state.room) continue;
    if (!state.seen[name]) {
      if (tail) markSeen(name, tail); // a room never read in this browser starts as read
      continue;
    }
    if (!tail || cmpId(tail, state.seen[name]) > 0) behind[name] = state.seen[name];
  }
  const names = Object.keys(behind);
  for (let i = 0; i < names.length; i += UNREAD_BATCH) {
    const rooms = {};
    for (const name of names.slice(i, i + UNREAD_BATCH)) rooms[name] = behind[name];
    const r = await write("/api/rooms/unread", { rooms });
    if (r.status === 401) return sessionEnded();
    if (r.status !== 200) continue; // the stream still counts what arrives from now on
    for (const [name, count] of Object.entries(r.data.unread)) {
      // Opened (or read) while we asked: that answer is stale. Stream messages that
      // came while we asked are in this count already.
      if (name === state.room || state.seen[name] !== rooms[name]) continue;
      state.unread[name] = count;
    }
  }
  renderRooms();
}

const badgeText = (count) => (count > UNREAD_SHOWN_MAX ? `${UNREAD_SHOWN_MAX}+` : String(count));

function roomButton(name, joined) {
  const item = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  button.dataset.room = name;
  const label = document.createElement("span");
  label.textContent = `#${name}`;
  button.append(label);
  const unread = joined && name !== state.room ? state.unread[name] : 0;
  if (unread) {
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = badgeText(unread);
    badge.setAttribute("aria-label", `${badgeText(unread)} unread`);
    button.append(badge);
  }
  if (name === state.room) button.setAttribute("aria-current", "true");
  button.addEventListener("click", () => openRoom(name));
  item.append(button);
  return item;
}

export function renderRooms() {
  const joined = [...state.joined].sort();
  $("room-list").replaceChildren(...joined.map((name) => roomButton(name, true)));
  const others = state.directory.map((room) => room.name).filter((name) => !state.joined.has(name));
  $("other-rooms").replaceChildren(...others.map((name) => roomButton(name, false)));
  $("other-rooms-empty").hidden = others.length > 0;
  const anyUnread = joined.some((name) => name !== state.room && state.unread[name]);
  $("rooms-toggle").classList.toggle("news", anyUnread);
}

export async function onNewRoom(event) {
  event.preventDefault();
  const name = $("new-room-name").value.trim();
  const r = await write("/api/rooms", { name });
  if (r.status === 200 || r.status === 201) {
    $("new-room-name").value = "";
    $("new-room-error").textContent = "";
    await refreshDirectory();
    await openRoom(name);
  } else {
    $("new-room-error").textContent = (r.data && r.data.message) || `Failed (${r.status}).`;
  }
}

// Join a room: "ok", "missing" (no such room), "refused" (a cap; said in the sidebar) or "error".
export async function joinRoom(name) {
  let r;
  try { r = await write(`/api/rooms/${name}/join`); } catch (_) { return "error"; }
  if (r.status === 200) {
    onJoined({ room: name, at: r.data.at });
    return "ok";
  }
  if (r.status === 401) { sessionEnded(); return "error"; }
  if (r.status === 404) return "missing";
  if (r.status === 403) {
    $("new-room-error").textContent = (r.data && r.data.message) || "You can't join more rooms.";
    return "refused";
  }
  return "error";
}

export function onJoined({ room, at }) {
  if (at && VALID_ID.test(at)) {
    if (!state.seen[room]) markSeen(room, at); // what came before the join is history, not news
    if (!state.latest[room] || cmpId(at, state.latest[room]) > 0) state.latest[room] = at;
  }
  if (!state.joined.has(room)) { state.joined.add(room); renderRooms(); }
}

export function onLeft({ room }) {
  const wasIn = state.joined.delete(room);
  delete state.unread[room];
  if (!state.directory.some((known) => known.name === room)) { // listed with the others from now on
    state.directory.push({ name: room, last_id: state.latest[room] || "0-0" });
    state.directory.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }
  if (wasIn) renderRooms();
  if (room === state.room) openRoom(fallbackRoom(room));
}

// Where to go after leaving ``room``: general if we are in it, else another joined room.
function fallbackRoom(room) {
  if (room !== DEFAULT_ROOM && state.joined.has(DEFAULT_ROOM)) return DEFAULT_ROOM;
  return [...state.joined].sort().find((name) => name !== room) || DEFAULT_ROOM;
}

export async function leaveRoom() {
  const room = state.room;
  const r = await write(`/api/rooms/${room}/leave`).catch(() => null);
  if (r && r.status === 401) return sessionEnded();
  if (!r || r.status !== 200) {
    $("new-room-error").textContent = (r && r.data && r.data.message) || "Leaving failed; try again.";
    return;
  }
  onLeft({ room }); // the stream's "left" event tells the other tabs (and says it here again)
}
