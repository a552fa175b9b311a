// The chat page: sign-in, rooms, history, live updates over one multiplexed stream per
// browser (SSE, long-poll as fallback) shared by its tabs, and an outbox that never loses
// or duplicates what you type. No framework, no build step.
"use strict";

(() => {
  const HISTORY_PAGE = 50;
  const FIRST_BYTE_TIMEOUT_MS = 5000; // no "ready" event by then: a proxy buffers the stream
  const POLL_TIMEOUT_SECS = 25;
  const ROOMS_PAGE = 500; // rooms per GET /api/rooms (the server's maximum)
  const ROOMS_MAX_PAGES = 10; // the room directory reads at most this many pages
  const UNREAD_BATCH = 500; // rooms per POST /api/rooms/unread (the server's maximum)
  const UNREAD_SHOWN_MAX = 99; // past this a badge reads "99+" (the server counts up to 100)
  const ROOM_NAME = /^[a-z0-9_-]{1,64}$/; // the server's rule for room names
  const DEFAULT_ROOM = "general";
  const MAX_BACKOFF_MS = 15000;
  const SEND_ATTEMPTS = 6; // then the message is shown as failed, with a retry button
  const TYPING_SHOWN_MS = 4000; // "X is typing…" lasts this long after the last notice
  const TYPING_EVERY_MS = 3000; // we tell others at most this often while typing
  const CUE_SHOWN_MS = 8000; // "New message in #room" stays this long
  const SESSION_ENDED = new Set(["logged_out", "kicked", "banned", "session_expired", "password_changed",
    "account_gone"]);
  // What the multiplexed stream sends (docs: README "The page"); "cursor" is the
  // long-poll's batch cursor, passed on like an event so every tab keeps it.
  const STREAM_EVENTS = ["ready", "message", "reset", "presence", "typing", "joined", "left", "retry"];

  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  // One stream per browser, shared by its tabs, needs both APIs; ?share=0 turns it off.
  const CAN_SHARE = params.get("share") !== "0" && "BroadcastChannel" in window
    && Boolean(navigator.locks && navigator.locks.request);

  const state = {
    me: null,
    csrf: null,
    room: null, // the open room
    opening: 0, // generation of openRoom: a newer call wins
    joined: new Set(), // rooms this user is in (GET /api/me/rooms, then joined/left events)
    directory: [], // every room, {name, last_id} (GET /api/rooms, paged): to open others
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
    conn: { state: "connecting", text: "connecting…", worker: "" },
    outbox: new Map(), // client_id -> {room, text, status, attempts, timer}
    seen: {}, // room -> newest id read (localStorage, shared by tabs)
    unread: {}, // room -> count
    latest: {}, // room -> newest id known here: stream messages at or before it are not counted again
    online: new Set(), // who is in the open room (presence)
    typing: new Map(), // user -> timer
    lastTypingSent: 0,
    cueTimer: null,
  };

  // ---- ids: "<ms>-<seq>", compared as integer pairs, never as strings ----
  function parseId(id) {
    const [ms, seq] = id.split("-");
    return [BigInt(ms), BigInt(seq || "0")];
  }
  function cmpId(a, b) {
    const [am, as] = parseId(a);
    const [bm, bs] = parseId(b);
    if (am !== bm) return am < bm ? -1 : 1;
    return as === bs ? 0 : as < bs ? -1 : 1;
  }
  const VALID_ID = /^\d{1,20}-\d{1,20}$/;

  function newClientId() {
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const isMe = (user) => Boolean(user && state.me && user.toLowerCase() === state.me.toLowerCase());
  const sessionEnded = () => showSignIn("Your session ended; sign in again.");

  // ---- the JSON API ----
  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (method !== "GET" && state.csrf) headers["X-CSRFToken"] = state.csrf;
    const response = await fetch(path, {
      method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try { data = await response.json(); } catch (_) { /* empty or non-JSON body */ }
    return { status: response.status, data, headers: response.headers };
  }

  // A write, retried once with a fresh CSRF token if the one we hold went stale.
  async function write(path, body) {
    let r = await api("POST", path, body);
    if (r.status === 403 && r.data && r.data.error === "csrf_failed") {
      await refreshCsrf();
      r = await api("POST", path, body);
    }
    return r;
  }

  async function refreshCsrf() {
    const r = await api("GET", "/api/auth/csrf");
    if (r.status === 200) state.csrf = r.data.csrf_token;
  }

  // ---- sign-in ----
  // The session is the browser's: a tab that finds it ended tells the others.
  function showSignIn(message) {
    if (state.me) share({ kind: "signout", message: message || "" });
    stopSharing();
    stopLive();
    setRole(null);
    state.me = null;
    $("chat").hidden = true;
    $("signin").hidden = false;
    $("signin-error").textContent = message || "";
    $("username").focus();
  }

  async function onSignIn(event) {
    event.preventDefault();
    const action = event.submitter && event.submitter.value === "register" ? "register" : "login";
    const username = $("username").value.trim();
    const password = $("password").value;
    $("signin-error").textContent = "";
    try {
      if (!state.csrf) await refreshCsrf();
      const r = await api("POST", `/api/auth/${action}`, { username, password });
      if (r.status === 200 || r.status === 201) {
        state.csrf = r.data.csrf_token;
        $("password").value = "";
        await enterChat(r.data.user);
      } else {
        $("signin-error").textContent = (r.data && r.data.message) || `Failed (${r.status}).`;
      }
    } catch (_) {
      $("signin-error").textContent = "The server can't be reached. Try again.";
    }
  }

  async function logout() {
    try { await api("POST", "/api/auth/logout"); } catch (_) { /* signed out locally anyway */ }
    state.csrf = null;
    await refreshCsrf().catch(() => {});
    showSignIn();
  }

  // ---- what has been read (localStorage, so every tab agrees) ----
  const seenKey = () => `chat.seen.${state.me}`;
  function loadSeen() {
    let stored = {};
    try { stored = JSON.parse(localStorage.getItem(seenKey())) || {}; } catch (_) { /* none */ }
    // Only well-formed ids: one bad value would fail the unread request of every room.
    state.seen = Object.fromEntries(Object.entries(stored).filter(
      ([name, id]) => ROOM_NAME.test(name) && typeof id === "string" && VALID_ID.test(id)));
  }
  function markSeen(room, id) {
    if (state.seen[room] && cmpId(id, state.seen[room]) <= 0) return;
    loadSeen(); // other tabs write this too: keep what they marked
    if (!state.seen[room] || cmpId(id, state.seen[room]) > 0) state.seen[room] = id;
    localStorage.setItem(seenKey(), JSON.stringify(state.seen));
  }
  // Another tab read a room: what it read is no longer unread here either.
  function onStorage(event) {
    if (!state.me || event.key !== seenKey()) return;
    loadSeen();
    let changed = false;
    for (const room of Object.keys(state.unread)) {
      const latest = state.latest[room];
      if (state.unread[room] && state.seen[room] && latest && cmpId(state.seen[room], latest) >= 0) {
        state.unread[room] = 0;
        changed = true;
      }
    }
    if (changed) renderRooms();
  }

  // ---- rooms: the ones you are in, and the directory of the others ----
  async function loadJoined() {
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

  async function refreshDirectory() {
    const rooms = await fetchDirectory();
    if (rooms) { state.directory = rooms; renderRooms(); }
    return rooms;
  }

  // Unread counts at sign-in, for every joined room with news, in one request per
  // UNREAD_BATCH rooms (never one per room); from then on the stream keeps them.
  async function countUnread() {
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

  function renderRooms() {
    const joined = [...state.joined].sort();
    $("room-list").replaceChildren(...joined.map((name) => roomButton(name, true)));
    const others = state.directory.map((room) => room.name).filter((name) => !state.joined.has(name));
    $("other-rooms").replaceChildren(...others.map((name) => roomButton(name, false)));
    $("other-rooms-empty").hidden = others.length > 0;
    const anyUnread = joined.some((name) => name !== state.room && state.unread[name]);
    $("rooms-toggle").classList.toggle("news", anyUnread);
  }

  async function onNewRoom(event) {
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
  async function joinRoom(name) {
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

  function onJoined({ room, at }) {
    if (at && VALID_ID.test(at)) {
      if (!state.seen[room]) markSeen(room, at); // what came before the join is history, not news
      if (!state.latest[room] || cmpId(at, state.latest[room]) > 0) state.latest[room] = at;
    }
    if (!state.joined.has(room)) { state.joined.add(room); renderRooms(); }
  }

  function onLeft({ room }) {
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

  async function leaveRoom() {
    const room = state.room;
    const r = await write(`/api/rooms/${room}/leave`).catch(() => null);
    if (r && r.status === 401) return sessionEnded();
    if (!r || r.status !== 200) {
      $("new-room-error").textContent = (r && r.data && r.data.message) || "Leaving failed; try again.";
      return;
    }
    onLeft({ room }); // the stream's "left" event tells the other tabs (and says it here again)
  }

  // ---- the conversation ----
  const log = () => $("log");
  const atBottom = () => log().scrollHeight - log().scrollTop - log().clientHeight < 40;
  const scrollToBottom = () => { log().scrollTop = log().scrollHeight; };

  function formatTime(ts) {
    return new Date(ts).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function messageElement(message, pending) {
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

  // Shown once, in id order, whatever path it came by (history, stream, our own POST).
  function insertMessage(message) {
    if (message.room !== state.room || state.messages.has(message.id)) return false;
    state.messages.set(message.id, message);
    const element = messageElement(message);
    const list = $("messages");
    let after = list.lastElementChild;
    while (after && after.dataset.id && cmpId(after.dataset.id, message.id) > 0) after = after.previousElementSibling;
    list.insertBefore(element, after ? after.nextSibling : list.firstChild);
    if (!state.oldestId || cmpId(message.id, state.oldestId) < 0) state.oldestId = message.id;
    return true;
  }

  function noteLatest(room, id) {
    if (state.latest[room] && cmpId(id, state.latest[room]) <= 0) return false;
    state.latest[room] = id;
    return true;
  }

  // A message from the stream (any room) or from our own POST.
  function onMessage(message) {
    if (message.client_id && state.outbox.has(message.client_id)) settle(message.client_id);
    const isNew = noteLatest(message.room, message.id);
    if (message.room === state.room) {
      const pinned = atBottom();
      stopTyping(message.user);
      if (!insertMessage(message)) return;
      if (document.visibilityState === "visible") markSeen(state.room, message.id);
      if (pinned) scrollToBottom();
    } else if (isNew && state.joined.has(message.room) && !isMe(message.user)
               && !(state.seen[message.room] && cmpId(message.id, state.seen[message.room]) <= 0)) {
      state.unread[message.room] = (state.unread[message.room] || 0) + 1;
      renderRooms();
      showCue(message);
    }
  }

  // "New message in #room": a bar over the conversation that opens the room.
  function showCue(message) {
    const pinned = atBottom(); // the bar takes room from the list: stay at the newest message
    const cue = $("cue");
    cue.dataset.room = message.room;
    $("cue-room").textContent = `New message in #${message.room}`;
    $("cue-text").textContent = `${message.user}: ${message.text}`;
    cue.hidden = false;
    if (pinned) scrollToBottom();
    clearTimeout(state.cueTimer);
    state.cueTimer = setTimeout(hideCue, CUE_SHOWN_MS);
  }
  function hideCue() {
    clearTimeout(state.cueTimer);
    $("cue").hidden = true;
  }

  // ---- presence and typing (live-only: a reconnect reloads the list) ----
  async function loadPresence() {
    const room = state.room;
    if (!room) return;
    const r = await api("GET", `/api/rooms/${room}/presence`);
    if (r.status !== 200 || room !== state.room) return;
    state.online = new Set(r.data.users);
    state.online.add(state.me); // our own join may still be on its way (they are batched)
    renderPresence();
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

  function onRoomEvent(event) {
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

  function stopTyping(user) {
    clearTimeout(state.typing.get(user));
    if (state.typing.delete(user)) renderTyping();
  }

  function renderTyping() {
    const users = [...state.typing.keys()];
    $("typing").textContent = users.length === 0 ? ""
      : users.length === 1 ? `${users[0]} is typing…` : `${users.join(", ")} are typing…`;
  }

  function onComposerInput() {
    const now = Date.now();
    if (!$("text").value.trim() || now - state.lastTypingSent < TYPING_EVERY_MS) return;
    state.lastTypingSent = now;
    api("POST", `/api/rooms/${state.room}/typing`).catch(() => {}); // best effort
  }

  function setEdge() {
    $("history-edge").textContent = !state.historyLoaded ? "Loading…"
      : state.more ? "Scroll up for older messages" : `This is the beginning of #${state.room}.`;
  }

  function clearConversation() {
    $("messages").replaceChildren();
    state.messages.clear();
    state.oldestId = null;
    state.more = true;
    state.historyLoaded = false;
    setEdge();
  }

  // The open room's newest page, merged with what the stream already showed (never
  // cleared here: a stream message newer than this page may be in already).
  async function loadLatest() {
    const room = state.room;
    const r = await api("GET", `/api/rooms/${room}/messages?limit=${HISTORY_PAGE}`);
    if (r.status === 401) { sessionEnded(); return false; }
    if (r.status !== 200) throw new Error(`history: ${r.status}`);
    if (room !== state.room) return false;
    const first = !state.historyLoaded;
    const pinned = first || atBottom();
    for (const message of r.data.messages) insertMessage(message);
    const newest = r.data.messages[r.data.messages.length - 1];
    if (newest) { noteLatest(room, newest.id); markSeen(room, newest.id); }
    if (first) state.more = r.data.more;
    state.historyLoaded = true;
    setEdge();
    if (pinned) scrollToBottom();
    await fillViewport();
    return true;
  }

  async function fillViewport() {
    while (state.more && log().scrollHeight <= log().clientHeight) {
      if (!(await loadOlder())) break;
    }
  }

  async function loadOlder() {
    if (state.loadingOlder || !state.historyLoaded || !state.more || !state.oldestId) return false;
    state.loadingOlder = true;
    const room = state.room;
    try {
      const r = await api("GET", `/api/rooms/${room}/messages?limit=${HISTORY_PAGE}&before=${state.oldestId}`);
      if (r.status !== 200 || room !== state.room) return false;
      const before = log().scrollHeight;
      for (const message of r.data.messages) insertMessage(message);
      state.more = r.data.more;
      setEdge();
      log().scrollTop += log().scrollHeight - before; // keep the reader's place
      return true;
    } finally {
      state.loadingOlder = false;
    }
  }

  // The stream may have skipped something for this tab (a fresh start, a takeover):
  // merge the newest page again. Never a reconnect.
  function refreshOpenRoom() {
    if (state.room && state.historyLoaded) loadLatest().catch(() => {});
  }

  // Open a room: join it if we aren't in it (the stream follows it from the join
  // point; its history comes from the messages API). Never touches the stream.
  async function openRoom(name) {
    closeDrawer();
    if (!ROOM_NAME.test(name)) name = DEFAULT_ROOM;
    const generation = ++state.opening;
    if (!state.joined.has(name)) {
      const outcome = await joinRoom(name);
      if (generation !== state.opening || !state.me) return;
      if (outcome === "missing" && name !== DEFAULT_ROOM) return openRoom(DEFAULT_ROOM);
      if (outcome === "refused") { // a cap: stay where we are
        if (state.room) return;
        if (name !== DEFAULT_ROOM) return openRoom(DEFAULT_ROOM);
      }
      // "error": show it anyway; the next "ready" of the stream tries to join again.
    }
    if (name === state.room && state.historyLoaded) return;
    state.room = name;
    state.unread[name] = 0;
    if ($("cue").dataset.room === name) hideCue();
    history.replaceState(null, "", `${location.pathname}${location.search}#${name}`);
    localStorage.setItem("chat.room", name);
    $("room-title").textContent = `#${name}`;
    renderRooms();
    renderOutbox();
    clearConversation();
    state.online = new Set();
    $("presence-list").replaceChildren();
    for (const user of [...state.typing.keys()]) stopTyping(user);
    loadPresence().catch(() => {});
    try {
      await loadLatest();
    } catch (_) {
      if (generation === state.opening) $("history-edge").textContent = "History can't be loaded now.";
    }
  }

  // ---- connection state (the holding tab tells the others) ----
  function showConn({ state: stateName, text, worker }) {
    const element = $("conn");
    element.dataset.state = stateName;
    element.textContent = text;
    if (worker) element.dataset.worker = worker;
  }

  function setConn(stateName, text, worker) {
    state.conn = { state: stateName, text, worker: worker || state.conn.worker };
    showConn(state.conn);
    if (isLeader()) share({ kind: "conn", conn: state.conn });
  }

  function setRole(role) {
    state.role = role;
    if (role) document.documentElement.dataset.streamRole = role;
    else delete document.documentElement.dataset.streamRole;
  }

  // ---- everything the stream says, in whichever tab it arrives ----
  function onStreamEvent(type, data, lastEventId) {
    if (lastEventId) state.cursor = lastEventId;
    if (!state.me) return;
    let payload = {};
    try { payload = data ? JSON.parse(data) : {}; } catch (_) { return; }
    switch (type) {
      case "ready": {
        if (Array.isArray(payload.rooms)) {
          state.joined = new Set(payload.rooms);
          renderRooms();
        }
        if (state.room && !state.joined.has(state.room)) joinRoom(state.room); // a join that failed earlier
        loadPresence().catch(() => {}); // joins and leaves missed while away are not replayed
        refreshOpenRoom(); // a stream that started afresh may have missed what came before it
        break;
      }
      case "message": onMessage(payload); break;
      case "reset":
        if (payload.room === state.room) { clearConversation(); loadLatest().catch(() => {}); }
        if (payload.latest && VALID_ID.test(payload.latest)) noteLatest(payload.room, payload.latest);
        break;
      case "presence": case "typing":
        onRoomEvent({ ...payload, type });
        break;
      case "joined": onJoined(payload); break;
      case "left": onLeft(payload); break;
      case "retry": {
        const reason = payload.reason;
        if (SESSION_ENDED.has(reason)) {
          showSignIn(reason === "kicked" || reason === "banned" ? "You were signed out by an admin."
            : "Your session ended; sign in again.");
        } else if (holdsStream()) {
          setConn("reconnecting", "reconnecting…");
        }
        break;
      }
      default: break;
    }
  }

  // The holding tab: pass it on to the other tabs, then handle it here.
  function emit(type, data, lastEventId) {
    if (isLeader()) share({ kind: "event", type, data, lastEventId });
    onStreamEvent(type, data, lastEventId);
  }

  // ---- tab sharing: one tab holds the stream (a Web Lock), the others listen ----
  const isLeader = () => Boolean(state.share && state.share.leader);
  const holdsStream = () => state.role === "leader" || state.role === "solo";

  function share(message) {
    if (state.share) state.share.channel.postMessage(message);
  }

  function startSharing() {
    if (!CAN_SHARE) {
      setRole("solo");
      startLive();
      return;
    }
    const name = `chat.stream.${state.me.toLowerCase()}`;
    const session = { channel: new BroadcastChannel(name), leader: false, release: null,
      abort: new AbortController() };
    state.share = session;
    session.channel.onmessage = (event) => { if (state.share === session) onShared(event.data); };
    setRole("follower");
    showConn(state.conn);
    session.channel.postMessage({ kind: "hello" }); // the holder answers with its state and cursor
    // Granted when no other tab of this browser holds it, and held until this tab
    // signs out or goes away (closed or crashed: the browser releases it, and
    // exactly one waiting tab gets it).
    navigator.locks.request(name, { mode: "exclusive", signal: session.abort.signal }, () => {
      if (state.share !== session) return undefined;
      session.leader = true;
      setRole("leader");
      share({ kind: "leader", cursor: state.cursor });
      startLive(); // from the last cursor this tab saw: nothing missed, nothing twice
      return new Promise((resolve) => { session.release = resolve; });
    }).catch(() => { /* aborted: signed out before it was our turn */ });
  }

  function stopSharing() {
    const session = state.share;
    if (!session) return;
    state.share = null;
    session.abort.abort();
    if (session.release) session.release();
    session.channel.close();
  }

  function onShared(message) {
    switch (message.kind) {
      case "event":
        if (!isLeader()) onStreamEvent(message.type, message.data, message.lastEventId);
        break;
      case "conn":
        if (!isLeader()) { state.conn = message.conn; showConn(message.conn); }
        break;
      case "hello":
        if (isLeader()) share({ kind: "state", conn: state.conn, cursor: state.cursor });
        break;
      case "state":
        if (!isLeader()) {
          if (message.cursor) state.cursor = message.cursor;
          state.conn = message.conn;
          showConn(message.conn);
        }
        break;
      case "leader":
        // A new holder resumes from its cursor; if ours differs, this tab may have
        // missed or will see again something: merge the open room's newest page.
        if (!isLeader()) {
          if (message.cursor !== state.cursor) refreshOpenRoom();
          if (message.cursor) state.cursor = message.cursor;
        }
        break;
      case "signout":
        if (state.me) showSignIn(message.message);
        break;
      default: break;
    }
  }

  // ---- live transport (the holding tab): SSE by default, long-poll as the fallback ----
  function stopLive() {
    state.liveGeneration += 1;
    if (state.live) state.live.stop();
    state.live = null;
  }

  function startLive() {
    stopLive();
    const generation = state.liveGeneration;
    state.live = state.preferPoll ? startPoll(generation) : startSSE(generation);
  }

  const resumeQuery = (sep) => (state.cursor ? `${sep}last_event_id=${encodeURIComponent(state.cursor)}` : "");

  function startSSE(generation) {
    let source = null;
    let gotBytes = false;
    let backoff = 1000;
    let reopenTimer = null;
    let firstByteTimer = null;
    const current = () => generation === state.liveGeneration;

    function open() {
      source = new EventSource(`/api/events${resumeQuery("?")}`);
      firstByteTimer = setTimeout(() => {
        if (current() && !gotBytes) { // headers came (or not), but no byte: a buffering proxy
          state.preferPoll = true;
          startLive();
        }
      }, FIRST_BYTE_TIMEOUT_MS);
      for (const type of STREAM_EVENTS) {
        source.addEventListener(type, (event) => {
          if (!current()) return;
          if (type === "ready") {
            gotBytes = true;
            backoff = 1000;
            let worker = "";
            try { worker = String(JSON.parse(event.data).worker || ""); } catch (_) { /* none */ }
            setConn("live", "live (SSE)", worker); // which worker holds this stream
          }
          // EventSource keeps the last id across events without one, and resends it
          // (Last-Event-ID) on its own reconnects.
          emit(type, event.data, event.lastEventId);
        });
      }
      source.onerror = () => {
        if (!current()) return;
        if (source.readyState === EventSource.CLOSED) {
          reopenLater(); // a non-200 answer: EventSource gave up, we don't
        } else {
          setConn(navigator.onLine ? "reconnecting" : "offline", navigator.onLine ? "reconnecting…" : "offline");
        }
      };
    }

    async function reopenLater() {
      source.close();
      clearTimeout(firstByteTimer);
      const me = await api("GET", "/api/auth/me").catch(() => null);
      if (!current()) return;
      if (me && me.status === 401) return sessionEnded();
      setConn(navigator.onLine ? "reconnecting" : "offline",
        `${navigator.onLine ? "reconnecting" : "offline"}, retry in ${Math.round(backoff / 1000)}s`);
      reopenTimer = setTimeout(() => { if (current()) open(); }, backoff);
      backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
    }

    setConn("connecting", "connecting…");
    open();
    return {
      stop() {
        clearTimeout(reopenTimer);
        clearTimeout(firstByteTimer);
        if (source) source.close();
      },
    };
  }

  function startPoll(generation) {
    const controller = new AbortController();
    const current = () => generation === state.liveGeneration;

    async function loop() {
      let backoff = 1000;
      let wait = 0; // the first poll answers at once, so the page knows the link works
      setConn("connecting", "connecting…");
      while (current()) {
        try {
          const cursor = state.cursor ? `&cursor=${encodeURIComponent(state.cursor)}` : "";
          const response = await fetch(`/api/poll?timeout=${wait}${cursor}`,
            { credentials: "same-origin", signal: controller.signal });
          if (!current()) return;
          if (response.status === 401) return sessionEnded();
          if (response.status === 429) {
            await sleep(1000 * Number(response.headers.get("Retry-After") || 5));
            continue;
          }
          if (response.status !== 200) throw new Error(`poll: ${response.status}`);
          const data = await response.json();
          if (!current()) return;
          backoff = 1000;
          if (wait === 0) { // (re)connected: like the stream's "ready"
            setConn("live", "live (long-poll)", response.headers.get("X-Worker-Pid") || "");
            emit("ready", JSON.stringify({ rooms: data.rooms }), "");
          }
          wait = POLL_TIMEOUT_SECS;
          for (const reset of data.resets || []) emit("reset", JSON.stringify(reset), "");
          for (const event of data.events || []) {
            if (STREAM_EVENTS.includes(event.type)) emit(event.type, JSON.stringify(event), "");
          }
          for (const message of data.messages || []) emit("message", JSON.stringify(message), "");
          if (data.cursor) emit("cursor", "", data.cursor);
        } catch (error) {
          if (!current()) return;
          wait = 0;
          setConn(navigator.onLine ? "reconnecting" : "offline",
            `${navigator.onLine ? "reconnecting" : "offline"}, retry in ${Math.round(backoff / 1000)}s`);
          await sleep(backoff);
          backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
        }
      }
    }

    loop();
    return { stop() { controller.abort(); } };
  }

  // ---- the outbox: pending until the server has it, retried with the same key ----
  function saveOutbox() {
    const items = [...state.outbox].map(([id, item]) => [id, { room: item.room, text: item.text }]);
    localStorage.setItem(`chat.outbox.${state.me}`, JSON.stringify(items));
  }

  function loadOutbox() {
    let items = [];
    try { items = JSON.parse(localStorage.getItem(`chat.outbox.${state.me}`)) || []; } catch (_) { /* none */ }
    state.outbox = new Map(items.map(([id, item]) => [id, { ...item, status: "pending", attempts: 0 }]));
  }

  function renderOutbox() {
    const list = $("pending");
    list.replaceChildren();
    for (const [clientId, item] of state.outbox) {
      if (item.room !== state.room) continue;
      const element = messageElement({ user: state.me, text: item.text }, clientId);
      element.classList.add(item.status);
      const status = document.createElement("span");
      status.className = "state";
      status.textContent = item.status === "failed" ? `not sent: ${item.error || "failed"}` : "sending…";
      element.querySelector(".meta").append(status);
      if (item.status === "failed") {
        const retry = document.createElement("button");
        retry.type = "button";
        retry.className = "secondary retry";
        retry.textContent = "Retry";
        retry.addEventListener("click", () => {
          item.status = "pending";
          item.attempts = 0;
          renderOutbox();
          drainOutbox();
        });
        element.append(retry);
      }
      list.append(element);
    }
  }

  function queueMessage(text) {
    const clientId = newClientId();
    state.outbox.set(clientId, { room: state.room, text, status: "pending", attempts: 0 });
    saveOutbox();
    renderOutbox();
    scrollToBottom();
    drainOutbox();
  }

  function settle(clientId) {
    state.outbox.delete(clientId);
    saveOutbox();
    renderOutbox();
  }

  // One message at a time, in the order typed: each keeps its client_id across
  // retries, so a retry after a lost answer is never stored twice. Any tab sends
  // its own (POST directly), whichever tab holds the stream.
  let draining = false;
  async function drainOutbox() {
    if (draining) return;
    draining = true;
    try {
      for (;;) {
        const next = [...state.outbox].find(([, item]) => item.status === "pending");
        if (!next || !(await deliver(...next))) return;
      }
    } finally {
      draining = false;
    }
  }

  // Returns true when the item is settled (sent or failed), false to stop for now
  // (offline, or signed out: the "online" event or the next sign-in resumes).
  async function deliver(clientId, item) {
    for (;;) {
      let retryIn;
      try {
        const r = await api("POST", `/api/rooms/${item.room}/messages`, { text: item.text, client_id: clientId });
        if (r.status === 201) {
          settle(clientId);
          onMessage(r.data);
          return true;
        }
        if (r.status === 401) {
          showSignIn("Your session ended; sign in again. Unsent messages are kept.");
          return false;
        }
        if (r.status === 403 && r.data && r.data.error === "csrf_failed") {
          await refreshCsrf();
          retryIn = 0;
        } else if (r.status === 429 || r.status >= 500) {
          retryIn = 1000 * Number(r.headers.get("Retry-After") || 0) || backoffFor(item);
        } else {
          return fail(item, (r.data && r.data.message) || `error ${r.status}`);
        }
      } catch (_) {
        if (!navigator.onLine) return false;
        retryIn = backoffFor(item);
      }
      item.attempts += 1;
      if (item.attempts >= SEND_ATTEMPTS) return fail(item, "the server did not answer");
      await sleep(retryIn);
    }
  }

  const backoffFor = (item) => Math.min(500 * 2 ** item.attempts, MAX_BACKOFF_MS);

  function fail(item, error) {
    item.status = "failed";
    item.error = error;
    renderOutbox();
    return true;
  }

  function onComposerKey(event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  }

  function onCompose(event) {
    event.preventDefault();
    const text = $("text").value;
    if (!text.trim()) return;
    $("text").value = "";
    queueMessage(text);
  }

  // ---- drawer on phones ----
  function closeDrawer() {
    $("sidebar").classList.remove("open");
    $("rooms-toggle").setAttribute("aria-expanded", "false");
  }
  function toggleDrawer() {
    const open = $("sidebar").classList.toggle("open");
    $("rooms-toggle").setAttribute("aria-expanded", String(open));
  }

  // ---- start-up ----
  // The room named by the URL fragment, or "" when there is none or it isn't a room
  // name (a fragment that doesn't decode, e.g. "#%E0%A4%A", must not stop the page).
  function roomFromHash() {
    let name;
    try { name = decodeURIComponent(location.hash.slice(1)); } catch (_) { return ""; }
    return ROOM_NAME.test(name) ? name : "";
  }

  async function enterChat(user) {
    state.me = user;
    state.room = null;
    state.cursor = null;
    state.unread = {};
    state.latest = {};
    state.joined = new Set();
    state.conn = { state: "connecting", text: "connecting…", worker: "" };
    $("me").textContent = user;
    $("signin").hidden = true;
    $("chat").hidden = false;
    loadSeen();
    loadOutbox();
    // Listen first (or hold the stream), then read: nothing falls between the two.
    startSharing();
    const [ok] = await Promise.all([loadJoined(), refreshDirectory()]);
    if (!ok || state.me !== user) return;
    renderRooms();
    const wanted = roomFromHash() || localStorage.getItem("chat.room") || DEFAULT_ROOM;
    await openRoom(ROOM_NAME.test(wanted) ? wanted : DEFAULT_ROOM);
    if (state.me !== user) return;
    countUnread().catch(() => {});
    drainOutbox();
    $("text").focus();
  }

  async function boot() {
    $("signin-form").addEventListener("submit", onSignIn);
    $("logout").addEventListener("click", logout);
    $("leave").addEventListener("click", leaveRoom);
    $("new-room").addEventListener("submit", onNewRoom);
    $("rooms-refresh").addEventListener("click", () => refreshDirectory().catch(() => {}));
    $("cue").addEventListener("click", () => { const room = $("cue").dataset.room; hideCue(); openRoom(room); });
    $("composer").addEventListener("submit", onCompose);
    $("text").addEventListener("keydown", onComposerKey);
    $("text").addEventListener("input", onComposerInput);
    $("rooms-toggle").addEventListener("click", toggleDrawer);
    log().addEventListener("scroll", () => { if (log().scrollTop < 80) loadOlder(); });
    window.addEventListener("storage", onStorage);
    window.addEventListener("online", () => {
      drainOutbox();
      if (state.me && holdsStream()) startLive(); // from the cursor: nothing missed
    });
    window.addEventListener("offline", () => {
      if (holdsStream()) setConn("offline", "offline");
      else showConn({ state: "offline", text: "offline" });
    });
    window.addEventListener("hashchange", () => {
      const room = roomFromHash();
      if (state.me && room && room !== state.room) openRoom(room);
    });
    try {
      const me = await api("GET", "/api/auth/me");
      await refreshCsrf();
      if (me.status === 200) await enterChat(me.data.user);
      else showSignIn();
    } catch (_) {
      showSignIn("The server can't be reached. Reload to try again.");
    }
  }

  boot();
})();
