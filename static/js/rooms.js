// ---- rooms: the ones you are in (rooms and direct messages), and the directory of the others ----
import { api, errorOf, write } from "./api.js";
import { $ } from "./dom.js";
import { humanError } from "./errors.js";
import { cmpId, DEFAULT_ROOM, VALID_ID } from "./ids.js";
import { nameNodes, roomKind, roomLabel, showTitle } from "./names.js";
import { showNotice } from "./notice.js";
import { noteRead, setMuted } from "./readstate.js";
import { sessionEnded } from "./session.js";
import { state } from "./state.js";

const ROOMS_PAGE = 500; // rooms per GET /api/rooms (the server's maximum)
const ROOMS_MAX_PAGES = 10; // the room directory reads at most this many pages
const UNREAD_SHOWN_MAX = 99; // past this a badge reads "99+" (the server counts up to 100)
const NAME_MAX = 64; // a room name's length (ids.js ROOM_NAME)
const TITLE_MAX = 80; // a private room's title: the server's limit

// Opening a room is the conversation's (openRoom), which joins through this module:
// main.js registers it here rather than the two importing each other.
let openRoom = null;
export function whenRoomChosen(open) {
  openRoom = open;
}

// What the server told us of a room (its title, kind, our role, a DM's members), merged
// into what we knew.
export function noteRoom(room) {
  if (room && room.name) state.info.set(room.name, { ...state.info.get(room.name), ...room });
}

export async function loadJoined() {
  const r = await api("GET", "/api/me/rooms");
  if (r.status === 401) { sessionEnded(); return false; }
  if (r.status === 200) {
    state.joined = new Set(r.data.rooms);
    for (const room of r.data.joined || []) noteRoom(room);
  }
  return true;
}

// The titles and kinds of the joined rooms (a private room or DM we were added to while
// the stream was away): the list is drawn again with their names.
async function loadJoinedInfo() {
  const r = await api("GET", "/api/me/rooms").catch(() => null);
  if (!r || r.status !== 200 || !r.data.joined) return;
  for (const room of r.data.joined) noteRoom(room);
  renderRooms();
}

// One room we were just added to (a "joined" event): its title, kind and members.
async function loadRoomInfo(name) {
  const r = await api("GET", `/api/rooms/${name}`).catch(() => null);
  if (!r || r.status !== 200 || !r.data.room) return;
  noteRoom(r.data.room);
  renderRooms();
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
  if (rooms) {
    state.directory = rooms;
    for (const room of rooms) noteRoom({ kind: "public", ...room }); // only public rooms are listed
    renderRooms();
  }
  return rooms;
}

const badgeText = (count) => (count > UNREAD_SHOWN_MAX ? `${UNREAD_SHOWN_MAX}+` : String(count));

function roomButton(name, joined) {
  const item = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  button.dataset.room = name;
  const label = document.createElement("span");
  label.className = "name";
  label.append(...nameNodes(name));
  button.append(label);
  const news = joined && name !== state.room;
  const muted = joined && state.muted.has(name);
  const dm = roomKind(name) === "dm"; // every message in it is for us: one badge, the unread count
  const mentions = news && !dm ? state.mentions[name] : 0;
  const unread = news && (!muted || dm) ? state.unread[name] : 0;
  if (muted) { // a muted DM still shows its count: every message in it is a mention
    const mark = document.createElement("span");
    mark.className = "muted-mark";
    mark.textContent = "muted";
    button.append(mark);
  }
  if (mentions) {
    const badge = document.createElement("span");
    badge.className = "badge mention";
    badge.textContent = `@${badgeText(mentions)}`;
    badge.setAttribute("aria-label", `${badgeText(mentions)} ${mentions === 1 ? "mention" : "mentions"}`);
    button.append(badge);
  }
  if (unread) {
    const badge = document.createElement("span");
    badge.className = dm ? "badge unread for-me" : "badge unread";
    badge.textContent = badgeText(unread);
    badge.setAttribute("aria-label", `${badgeText(unread)} unread`);
    button.append(badge);
  }
  if (name === state.room) button.setAttribute("aria-current", "true");
  button.addEventListener("click", () => openRoom(name));
  item.append(button);
  return item;
}

// By the name shown (a public room's is its name unless renamed), then by id.
function byLabel(a, b) {
  const [la, lb] = [roomLabel(a).toLowerCase(), roomLabel(b).toLowerCase()];
  if (la !== lb) return la < lb ? -1 : 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

export function renderRooms() {
  const joined = [...state.joined].sort(byLabel);
  const dms = joined.filter((name) => roomKind(name) === "dm");
  const rooms = joined.filter((name) => roomKind(name) !== "dm");
  $("room-list").replaceChildren(...rooms.map((name) => roomButton(name, true)));
  $("dm-list").replaceChildren(...dms.map((name) => roomButton(name, true)));
  $("dm-empty").hidden = dms.length > 0;
  const others = state.directory.map((room) => room.name).filter((name) => !state.joined.has(name));
  $("other-rooms").replaceChildren(...others.map((name) => roomButton(name, false)));
  $("other-rooms-empty").hidden = others.length > 0;
  const anyUnread = joined.some((name) => name !== state.room
    && ((state.unread[name] && !state.muted.has(name)) || state.mentions[name]));
  $("rooms-toggle").classList.toggle("news", anyUnread);
  showTitle(); // a title learnt or changed since the room was opened
  renderMute();
}

// The open room's Mute button says whether it is muted.
function renderMute() {
  const button = $("mute");
  const muted = Boolean(state.room && state.muted.has(state.room));
  button.hidden = !state.room || !state.joined.has(state.room);
  button.textContent = muted ? "Unmute" : "Mute";
  button.setAttribute("aria-pressed", String(muted));
  button.title = muted ? "Show this room's unread count and notify again" : "No unread count, no notifications";
}

export async function onMuteToggle() {
  const room = state.room;
  const r = await setMuted(room, !state.muted.has(room));
  if (r && r.status === 401) return sessionEnded();
  if (!r || r.status !== 200) $("new-room-error").textContent = humanError(r);
  renderRooms();
}

// A room change in a room's log (renamed, archived), live: what the list and the title show.
export function onRoomChange(entry) {
  const info = state.info.get(entry.room);
  if (!info) return;
  if (entry.change === "renamed" && typeof entry.title === "string") info.title = entry.title;
  if (entry.change === "archived" || entry.change === "unarchived") info.archived = entry.change === "archived";
  renderRooms();
}

// The create-room control makes a public room by name, or (ticked "private") a private
// room by title: a title is free text, so the name's pattern goes while it is ticked.
export function onPrivateToggle() {
  const input = $("new-room-name");
  const isPrivate = $("new-room-private").checked;
  if (input.dataset.pattern === undefined) input.dataset.pattern = input.getAttribute("pattern");
  if (isPrivate) input.removeAttribute("pattern");
  else input.setAttribute("pattern", input.dataset.pattern);
  input.maxLength = isPrivate ? TITLE_MAX : NAME_MAX;
  input.placeholder = isPrivate ? "Room title" : "room-name";
  $("new-room-label").textContent = isPrivate ? "Create a private room" : "Join or create a room";
  $("new-room-submit").textContent = isPrivate ? "Create" : "Open";
  $("new-room-error").textContent = "";
}

export async function onNewRoom(event) {
  event.preventDefault();
  const value = $("new-room-name").value.trim();
  const isPrivate = $("new-room-private").checked;
  const r = await write("/api/rooms", isPrivate ? { title: value, private: true } : { name: value })
    .catch(() => null);
  if (r && r.status === 401) return sessionEnded();
  if (r && (r.status === 200 || r.status === 201)) {
    $("new-room-name").value = "";
    $("new-room-error").textContent = "";
    if (isPrivate) {
      $("new-room-private").checked = false;
      onPrivateToggle();
      await enterNew(r.data.room); // private: never in the directory
    } else {
      await refreshDirectory();
      await openRoom(value);
    }
  } else {
    $("new-room-error").textContent = humanError(r);
  }
}

// A private room or DM we just made (or found): in it already, so open it without a join.
async function enterNew(room) {
  noteRoom(room);
  onJoined({ room: room.name });
  await openRoom(room.name);
}

// "Message someone": a DM with one user, or several separated by commas or spaces. The
// server answers with the existing DM of exactly those members if there is one.
export async function onNewDm(event) {
  event.preventDefault();
  const users = $("new-dm-name").value.split(/[\s,]+/).filter(Boolean);
  if (users.length === 0) return;
  const r = await write("/api/dms", { users }).catch(() => null);
  if (r && r.status === 401) return sessionEnded();
  if (r && (r.status === 200 || r.status === 201) && r.data.room) {
    $("new-dm-name").value = "";
    $("new-dm-error").textContent = "";
    await enterNew(r.data.room);
  } else {
    $("new-dm-error").textContent = errorOf(r).code === "blocked" ? "You can't message them." : humanError(r);
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
    $("new-room-error").textContent = humanError(r);
    return "refused";
  }
  return "error";
}

export function onJoined({ room, at }) {
  if (at && VALID_ID.test(at)) {
    if (!state.seen[room]) noteRead(room, at); // what came before the join is history, not news
    if (!state.latest[room] || cmpId(at, state.latest[room]) > 0) state.latest[room] = at;
  }
  if (isLeaving(room)) markLeaving(room, false); // in again: a removal from now on is news
  if (!state.info.has(room)) loadRoomInfo(room); // added to a private room or a DM: its name
  if (!state.joined.has(room)) { state.joined.add(room); renderRooms(); }
}

// The stream's "ready": the rooms it follows now. A private room or DM that is no longer
// among them was left or lost while the stream was away; one we know nothing of was
// added meanwhile (its title comes with GET /api/me/rooms).
export function syncJoined(rooms) {
  const now = new Set(rooms);
  const lost = [...state.joined].filter((name) => !now.has(name) && roomKind(name) !== "public");
  const unknown = rooms.some((name) => !state.info.has(name));
  state.joined = new Set([...now, ...lost]); // the lost ones go through dropRoom
  for (const room of lost) dropRoom(room, `You are no longer in ${roomLabel(room)}.`);
  renderRooms();
  if (unknown) loadJoinedInfo();
}

// The stream's "left": a leave (here, in another tab or device) or, with reason
// "removed", someone removed us. Every tab hears it and drops the room.
export function onLeft({ room, reason }) {
  if (reason === "removed") roomGone(room);
  else dropRoom(room);
}

// We were removed from ``room`` (told by the stream, or a request for it answered 404
// unknown_room): it goes from the list with a notice, once however many say it.
export function roomGone(room) {
  if (!state.joined.has(room) && !(room === state.room && roomKind(room) !== "public")) return;
  dropRoom(room, isLeaving(room) ? "" : `You were removed from ${roomLabel(room)}.`);
}

// Rooms this browser is leaving, in any of its tabs (localStorage). The stream tells a
// leave of a private room like a removal ("left" with reason "removed": it, too, ends our
// access), which is no news to the one who left. A mark lasts until we are in the room
// again, or LEAVING_MS.
const LEAVING_MS = 60000;
const leavingKey = () => `chat.leaving.${state.me}`;

function leavingMarks() {
  try { return JSON.parse(localStorage.getItem(leavingKey())) || {}; } catch (_) { return {}; }
}

function markLeaving(room, leaving) {
  const marks = leavingMarks();
  const now = Date.now();
  for (const [name, at] of Object.entries(marks)) if (!(now - at < LEAVING_MS)) delete marks[name];
  if (leaving) marks[room] = now;
  else delete marks[room];
  localStorage.setItem(leavingKey(), JSON.stringify(marks));
}

function isLeaving(room) {
  const at = leavingMarks()[room];
  return typeof at === "number" && Date.now() - at < LEAVING_MS;
}

// A room we are no longer in: a public one is listed with the others from now on; a
// private room or DM can't be opened any more, so it is forgotten. If it was open,
// we go elsewhere.
function dropRoom(room, notice) {
  const wasIn = state.joined.delete(room);
  if (!wasIn && room !== state.room) return; // dropped already (told twice)
  delete state.unread[room];
  delete state.mentions[room];
  if (roomKind(room) !== "public") {
    state.info.delete(room);
  } else if (wasIn && !state.directory.some((known) => known.name === room)) {
    state.directory.push({ ...state.info.get(room), name: room, last_id: state.latest[room] || "0-0" });
    state.directory.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }
  if (notice) showNotice(notice);
  renderRooms();
  if (room === state.room) openRoom(fallbackRoom(room));
}

// Where to go after leaving ``room``: general if we are in it, else another joined room.
function fallbackRoom(room) {
  if (room !== DEFAULT_ROOM && state.joined.has(DEFAULT_ROOM)) return DEFAULT_ROOM;
  return [...state.joined].sort().find((name) => name !== room) || DEFAULT_ROOM;
}

export async function leaveRoom() {
  const room = state.room;
  markLeaving(room, true); // before asking: the other tabs may hear of it first
  const r = await write(`/api/rooms/${room}/leave`).catch(() => null);
  if (r && r.status === 401) return sessionEnded();
  if (!r || r.status !== 200) {
    markLeaving(room, false);
    $("new-room-error").textContent = errorOf(r).code === "owner_must_stay"
      ? "You own this room: you can't leave it." : humanError(r);
    return;
  }
  onLeft({ room }); // the stream's "left" event tells the other tabs (and says it here again)
}
