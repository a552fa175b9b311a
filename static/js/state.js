// What the page knows, in one object every module imports and changes in place.

const params = new URLSearchParams(location.search);

export const state = {
  me: null,
  csrf: null,
  room: null, // the open room
  opening: 0, // generation of openRoom: a newer call wins
  joined: new Set(), // rooms this user is in (GET /api/me/rooms, then joined/left events)
  directory: [], // every public room, {name, title, last_id} (GET /api/rooms, paged): to open others
  info: new Map(), // room -> {name, title, kind, role, archived, members (dm only)}: the rooms we know of
  messages: new Map(), // id -> message, open room only
  historyLoaded: false, // the open room's newest page is in (older pages may load)
  oldestId: null,
  more: true,
  loadingOlder: false,
  cursor: null, // the stream's last cursor seen (opaque), whichever tab held the stream
  live: null, // {stop()} of the running transport (leader or solo tab only)
  liveGeneration: 0,
  preferPoll: params.get("transport") === "longpoll" || !("EventSource" in window),
  share: null, // {channel, leader, release, abort} while tab sharing runs
  role: null, // "leader" | "follower" | "solo"
  conn: { state: "connecting", text: "connecting…", worker: "", at: 0 }, // conn.js
  outbox: new Map(), // client_id -> {room, text, status, attempts, error} (outbox.js)
  admin: false, // an operator (GET /api/auth/me): may delete any message
  seen: {}, // room -> the read position (the server's, readstate.js)
  unread: {}, // room -> count
  mentions: {}, // room -> messages mentioning us (in a DM: every message from the others)
  muted: new Set(), // rooms muted: no unread badge, no notification
  changes: new Map(), // target id -> the newest edit or delete entry for it, open room only (edits.js)
  readyCount: 0, // "ready" events seen since sign-in: after the first, a reconnect
  latest: {}, // room -> newest id known here: stream messages at or before it are not counted again
  online: new Set(), // who is in the open room (presence)
  members: [], // the open private room's or DM's members, [{user, role}]
  membersAsked: 0, // generation of loadMembers: a newer answer wins
  typing: new Map(), // user -> timer
  lastTypingSent: 0,
  cueTimer: null,
};
