// ---- what has been read (localStorage, so every tab agrees), and the newest known ----
import { cmpId, ROOM_NAME, VALID_ID } from "./ids.js";
import { state } from "./state.js";

const seenKey = () => `chat.seen.${state.me}`;

export function loadSeen() {
  let stored = {};
  try { stored = JSON.parse(localStorage.getItem(seenKey())) || {}; } catch (_) { /* none */ }
  // Only well-formed ids: one bad value would fail the unread request of every room.
  state.seen = Object.fromEntries(Object.entries(stored).filter(
    ([name, id]) => ROOM_NAME.test(name) && typeof id === "string" && VALID_ID.test(id)));
}

export function markSeen(room, id) {
  if (state.seen[room] && cmpId(id, state.seen[room]) <= 0) return;
  loadSeen(); // other tabs write this too: keep what they marked
  if (!state.seen[room] || cmpId(id, state.seen[room]) > 0) state.seen[room] = id;
  localStorage.setItem(seenKey(), JSON.stringify(state.seen));
}

// Another tab read a room: what it read is no longer unread here either. For the
// window's "storage" event; true when an unread count changed (the room list is
// then drawn again).
export function readElsewhere(event) {
  if (!state.me || event.key !== seenKey()) return false;
  loadSeen();
  let changed = false;
  for (const room of Object.keys(state.unread)) {
    const latest = state.latest[room];
    if (state.unread[room] && state.seen[room] && latest && cmpId(state.seen[room], latest) >= 0) {
      state.unread[room] = 0;
      changed = true;
    }
  }
  return changed;
}

// The newest id known in ``room``; false if ``id`` is not newer (seen before: not news).
export function noteLatest(room, id) {
  if (state.latest[room] && cmpId(id, state.latest[room]) <= 0) return false;
  state.latest[room] = id;
  return true;
}
