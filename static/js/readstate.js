// ---- what has been read: the server keeps a read position per room for each user, so a
// read on one device clears the badges of every other tab and device (their streams get
// "read"). Here: the positions, the unread and mention counts, the muted rooms, and the
// newest id known per room ----
import { api, write } from "./api.js";
import { cmpId, VALID_ID } from "./ids.js";
import { state } from "./state.js";

const READ_EVERY_MS = 500; // at most this often a read is sent, by all the tabs of a browser together
const readSentKey = () => `chat.readSent.${state.me}`; // when a tab of this browser last sent one

// A room we read up to ``id`` locally (the position known, no request): false if not newer.
export function noteRead(room, id) {
  if (!id || !VALID_ID.test(id) || (state.seen[room] && cmpId(id, state.seen[room]) <= 0)) return false;
  state.seen[room] = id;
  if (state.latest[room] && cmpId(id, state.latest[room]) >= 0) {
    state.unread[room] = 0;
    state.mentions[room] = 0;
  }
  return true;
}

// Read here, now: the server is told (coalesced: the newest id per room, at most one request
// per READ_EVERY_MS from this browser, however fast messages come or the reader scrolls).
export function markSeen(room, id) {
  if (!noteRead(room, id)) return;
  toSend.set(room, id);
  scheduleSend();
}

const toSend = new Map(); // room -> newest id read, not sent yet
let sendTimer = null;

function lastSent() {
  return Number(localStorage.getItem(readSentKey())) || 0;
}

function scheduleSend() {
  if (sendTimer || toSend.size === 0) return;
  const wait = Math.max(0, lastSent() + READ_EVERY_MS - Date.now());
  sendTimer = setTimeout(sendOne, Math.min(wait, READ_EVERY_MS));
}

async function sendOne() {
  sendTimer = null;
  if (!state.me || toSend.size === 0) return;
  if (Date.now() - lastSent() < READ_EVERY_MS) { scheduleSend(); return; } // another tab just sent one
  const [room, id] = toSend.entries().next().value;
  toSend.delete(room);
  localStorage.setItem(readSentKey(), String(Date.now()));
  const r = await write(`/api/rooms/${room}/read`, { id }).catch(() => null);
  if (r && r.status === 200 && r.data && r.data.read) noteRead(room, r.data.read); // may be newer
  else if (!r || r.status === 429 || r.status >= 500) { // not stored: again later (a newer one wins)
    if (!toSend.has(room)) toSend.set(room, id);
  }
  scheduleSend();
}

// The stream's "read": this user read ``room`` up to ``id`` somewhere (here, another tab, another
// device). True if the room's counts changed (the room list is then drawn again); a read that
// stops short of the newest message known asks the server for the counts.
export function onRead({ room, id }) {
  if (!noteRead(room, id)) return false;
  if (state.unread[room] || state.mentions[room]) refreshUnreadSoon();
  return true;
}

// ---- the counts: GET /api/me/unread (at sign-in, after a reconnect), then the stream ----
let refreshTimer = null;
let onCounts = null; // rooms.js draws the list again (registered by main.js)
export function whenCountsChange(listener) {
  onCounts = listener;
}

// The answer counts up to some moment the page can't see: news the stream brought while it was
// on its way may be in it or not. So a room's count is at least what the stream counted
// meanwhile, and a room read meanwhile (here or elsewhere) keeps its newer, local state.
let newsWhileAsking = null; // room -> [messages, mentions] counted from the stream during the request

export async function loadUnread() {
  const during = new Map();
  newsWhileAsking = during;
  let r;
  try {
    r = await api("GET", "/api/me/unread");
  } finally {
    if (newsWhileAsking === during) newsWhileAsking = null;
  }
  if (r.status !== 200 || !r.data || !r.data.rooms) return false;
  state.muted = new Set();
  for (const [room, counts] of Object.entries(r.data.rooms)) {
    if (counts.muted) state.muted.add(room);
    const read = VALID_ID.test(counts.read || "") ? counts.read : null;
    if (read && (!state.seen[room] || cmpId(read, state.seen[room]) > 0)) state.seen[room] = read;
    if (state.seen[room] && read && cmpId(state.seen[room], read) > 0) continue; // read since it was counted
    if (room === state.room && document.visibilityState === "visible") continue; // being read here
    const [messages, mentions] = during.get(room) || [0, 0];
    state.unread[room] = Math.max(counts.unread || 0, messages);
    state.mentions[room] = Math.max(counts.mentions || 0, mentions);
  }
  if (onCounts) onCounts();
  return true;
}

export function refreshUnreadSoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => { if (state.me) loadUnread().catch(() => {}); }, 300);
}

// A message from the stream that is news here: one more unread (and mention) in its room.
export function countNews(room, mentionsMe) {
  state.unread[room] = (state.unread[room] || 0) + 1;
  if (mentionsMe) state.mentions[room] = (state.mentions[room] || 0) + 1;
  if (newsWhileAsking) {
    const [messages, mentions] = newsWhileAsking.get(room) || [0, 0];
    newsWhileAsking.set(room, [messages + 1, mentions + (mentionsMe ? 1 : 0)]);
  }
}

export const isUnreadNews = (room, id) => !(state.seen[room] && cmpId(id, state.seen[room]) <= 0);

// The newest id known in ``room``; false if ``id`` is not newer (seen before: not news).
export function noteLatest(room, id) {
  if (state.latest[room] && cmpId(id, state.latest[room]) <= 0) return false;
  state.latest[room] = id;
  return true;
}

// ---- muting: no unread badge and no notification for the room (mentions still count).
// Told to this browser's other tabs through localStorage; other devices learn it with the counts.
const mutedKey = () => `chat.muted.${state.me}`;

export async function setMuted(room, muted) {
  const r = await write(`/api/rooms/${room}/mute`, { muted }).catch(() => null);
  if (!r || r.status !== 200) return r;
  if (r.data.muted) state.muted.add(room);
  else state.muted.delete(room);
  localStorage.setItem(mutedKey(), JSON.stringify({ room, muted: Boolean(r.data.muted), at: Date.now() }));
  return r;
}

// The window's "storage" event: another tab muted or unmuted a room. True if something changed.
export function mutedElsewhere(event) {
  if (!state.me || event.key !== mutedKey() || !event.newValue) return false;
  let change;
  try { change = JSON.parse(event.newValue); } catch (_) { return false; }
  if (!change || typeof change.room !== "string") return false;
  if (change.muted) state.muted.add(change.room);
  else state.muted.delete(change.room);
  return true;
}
