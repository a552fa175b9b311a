// ---- ids: "<ms>-<seq>", compared as integer pairs, never as strings ----
function parseId(id) {
  const [ms, seq] = id.split("-");
  return [BigInt(ms), BigInt(seq || "0")];
}
export function cmpId(a, b) {
  const [am, as] = parseId(a);
  const [bm, bs] = parseId(b);
  if (am !== bm) return am < bm ? -1 : 1;
  return as === bs ? 0 : as < bs ? -1 : 1;
}
export const VALID_ID = /^\d{1,20}-\d{1,20}$/;

// A message's idempotency key: the server stores a retry with the same one only once.
export function newClientId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// ---- room names ----
export const ROOM_NAME = /^[a-z0-9_-]{1,64}$/; // the server's rule for room names
export const DEFAULT_ROOM = "general";

// A room's kind by its name alone (the server gives private rooms and DMs these generated names,
// and reserves the prefixes): for a room whose details haven't come yet, e.g. a DM whose first
// message arrives right behind the "joined" that announced it.
const PRIVATE_NAME = /^p-[0-9a-f]{20}$/;
const DM_NAME = /^dm-[0-9a-f]{32}$/;
export const kindByName = (name) => (DM_NAME.test(name) ? "dm" : PRIVATE_NAME.test(name) ? "private" : "public");
