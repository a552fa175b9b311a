// The chat page: sign-in, rooms, history, live updates over SSE (long-poll as fallback),
// and an outbox that never loses or duplicates what you type. No framework, no build step.
"use strict";

(() => {
  const HISTORY_PAGE = 50;
  const FIRST_BYTE_TIMEOUT_MS = 5000; // no "ready" event by then: a proxy buffers the stream
  const POLL_TIMEOUT_SECS = 25;
  const ROOMS_REFRESH_MS = 10000; // unread counts come from polling the room list, never extra streams
  const ROOMS_PAGE = 500; // rooms per GET /api/rooms (the server's maximum)
  const ROOMS_MAX_PAGES = 10; // a refresh reads at most this many pages of the room list
  const UNREAD_BATCH = 500; // rooms per POST /api/rooms/unread (the server's maximum)
  const ROOM_NAME = /^[a-z0-9_-]{1,64}$/; // the server's rule for room names
  const MAX_BACKOFF_MS = 15000;
  const SEND_ATTEMPTS = 6; // then the message is shown as failed, with a retry button
  const TYPING_SHOWN_MS = 4000; // "X is typing…" lasts this long after the last notice
  const TYPING_EVERY_MS = 3000; // we tell others at most this often while typing
  const SESSION_ENDED = new Set(["logged_out", "kicked", "banned", "session_expired", "password_changed"]);

  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);

  const state = {
    me: null,
    csrf: null,
    room: null,
    rooms: [],
    roomsLoaded: false, // the first room list after sign-in sets the unread baseline
    messages: new Map(), // id -> message, current room only
    lastId: "0-0", // newest id seen in the current room: the live cursor
    oldestId: null,
    more: true,
    loadingOlder: false,
    live: null, // {stop()} of the running transport
    liveGeneration: 0,
    preferPoll: params.get("transport") === "longpoll" || !("EventSource" in window),
    outbox: new Map(), // client_id -> {room, text, status, attempts, timer}
    seen: {},
    unread: {},
    online: new Set(), // who is in the current room (presence)
    typing: new Map(), // user -> timer
    lastTypingSent: 0,
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
  const maxId = (a, b) => (cmpId(a, b) >= 0 ? a : b);

  function newClientId() {
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

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

  async function refreshCsrf() {
    const r = await api("GET", "/api/auth/csrf");
    if (r.status === 200) state.csrf = r.data.csrf_token;
  }

  // ---- sign-in ----
  function showSignIn(message) {
    stopLive();
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

  // ---- rooms ----
  function loadSeen() {
    let stored = {};
    try { stored = JSON.parse(localStorage.getItem(`chat.seen.${state.me}`)) || {}; } catch (_) { /* none */ }
    // Only well-formed ids: one bad value would fail the unread request of every room.
    state.seen = Object.fromEntries(Object.entries(stored).filter(
      ([name, id]) => ROOM_NAME.test(name) && typeof id === "string" && /^\d{1,20}-\d{1,20}$/.test(id)));
  }
  function markSeen(room, id) {
    if (!state.seen[room] || cmpId(id, state.seen[room]) > 0) {
      state.seen[room] = id;
      localStorage.setItem(`chat.seen.${state.me}`, JSON.stringify(state.seen));
    }
  }

  // The whole room list, page by page (bounded), or null if it can't be read now.
  async function fetchRooms() {
    const rooms = [];
    let after = null;
    for (let page = 0; page < ROOMS_MAX_PAGES; page += 1) {
      const query = after === null ? "" : `&after=${encodeURIComponent(after)}`;
      const r = await api("GET", `/api/rooms?limit=${ROOMS_PAGE}${query}`);
      if (r.status === 401) { showSignIn("Your session ended; sign in again."); return null; }
      if (r.status !== 200) return null;
      rooms.push(...r.data.rooms);
      after = r.data.next;
      if (!after) break;
    }
    return rooms;
  }

  async function refreshRooms() {
    const rooms = await fetchRooms();
    if (!rooms) return;
    const firstLook = !state.roomsLoaded;
    state.roomsLoaded = true;
    state.rooms = rooms;
    const behind = {}; // room -> the last id seen, for rooms with newer messages
    for (const room of state.rooms) {
      if (room.name === state.room) continue;
      if (!state.seen[room.name]) {
        // Rooms known when the page opened start as read; a room that appears
        // while you are here is unread from its first message.
        markSeen(room.name, firstLook ? room.last_id : "0-0");
      }
      if (cmpId(room.last_id, state.seen[room.name]) > 0) behind[room.name] = state.seen[room.name];
      else state.unread[room.name] = 0;
    }
    await countUnread(behind);
    renderRooms();
  }

  // Unread counts of many rooms in one request (per UNREAD_BATCH rooms), never one per room.
  async function countUnread(behind) {
    const names = Object.keys(behind);
    for (let i = 0; i < names.length; i += UNREAD_BATCH) {
      const rooms = {};
      for (const name of names.slice(i, i + UNREAD_BATCH)) rooms[name] = behind[name];
      let r = await api("POST", "/api/rooms/unread", { rooms });
      if (r.status === 403 && r.data && r.data.error === "csrf_failed") {
        await refreshCsrf();
        r = await api("POST", "/api/rooms/unread", { rooms });
      }
      if (r.status === 401) return showSignIn("Your session ended; sign in again.");
      if (r.status !== 200) continue; // keep the counts shown; the next refresh tries again
      const { unread, cap } = r.data;
      for (const [name, count] of Object.entries(unread)) {
        // Opened (or read) while we asked: that answer is stale.
        if (name === state.room || state.seen[name] !== rooms[name]) continue;
        state.unread[name] = count >= cap ? "99+" : count;
      }
    }
  }

  function renderRooms() {
    const list = $("room-list");
    list.replaceChildren(...state.rooms.map(({ name }) => {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.room = name;
      const label = document.createElement("span");
      label.textContent = `#${name}`;
      button.append(label);
      const unread = state.unread[name];
      if (name !== state.room && unread) {
        const badge = document.createElement("span");
        badge.className = "badge";
        badge.textContent = unread;
        badge.setAttribute("aria-label", `${unread} unread`);
        button.append(badge);
      }
      if (name === state.room) button.setAttribute("aria-current", "true");
      button.addEventListener("click", () => openRoom(name));
      item.append(button);
      return item;
    }));
  }

  async function onNewRoom(event) {
    event.preventDefault();
    const name = $("new-room-name").value.trim();
    const r = await api("POST", "/api/rooms", { name });
    if (r.status === 200 || r.status === 201) {
      $("new-room-name").value = "";
      $("new-room-error").textContent = "";
      await refreshRooms();
      await openRoom(name);
    } else {
      $("new-room-error").textContent = (r.data && r.data.message) || `Failed (${r.status}).`;
    }
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
    if (message.user && state.me && message.user.toLowerCase() === state.me.toLowerCase()) {
      item.classList.add("mine");
    }
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

  function onMessage(message) {
    const pinned = atBottom();
    stopTyping(message.user);
    if (message.client_id && state.outbox.has(message.client_id)) settle(message.client_id);
    if (!insertMessage(message)) return;
    state.lastId = maxId(state.lastId, message.id);
    if (document.visibilityState === "visible") markSeen(state.room, message.id);
    if (pinned) scrollToBottom();
  }

  // ---- presence and typing (live-only: a reconnect reloads the list) ----
  async function loadPresence() {
    const room = state.room;
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

  function onEvent(event) {
    if (event.room !== state.room) return;
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
    $("history-edge").textContent = state.more ? "Scroll up for older messages" : `This is the beginning of #${state.room}.`;
  }

  async function loadLatest() {
    const r = await api("GET", `/api/rooms/${state.room}/messages?limit=${HISTORY_PAGE}`);
    if (r.status === 401) { showSignIn("Your session ended; sign in again."); return false; }
    if (r.status !== 200) throw new Error(`history: ${r.status}`);
    $("messages").replaceChildren();
    state.messages.clear();
    state.oldestId = null;
    state.more = r.data.more;
    state.lastId = "0-0";
    for (const message of r.data.messages) insertMessage(message);
    const newest = r.data.messages[r.data.messages.length - 1];
    if (newest) { state.lastId = newest.id; markSeen(state.room, newest.id); }
    setEdge();
    scrollToBottom();
    await fillViewport();
    return true;
  }

  async function fillViewport() {
    while (state.more && log().scrollHeight <= log().clientHeight) {
      if (!(await loadOlder())) break;
    }
  }

  async function loadOlder() {
    if (state.loadingOlder || !state.more || !state.oldestId) return false;
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

  async function openRoom(name) {
    closeDrawer();
    if (!state.rooms.some((room) => room.name === name)) name = "general";
    stopLive();
    state.room = name;
    state.unread[name] = 0;
    history.replaceState(null, "", `${location.pathname}${location.search}#${name}`);
    localStorage.setItem("chat.room", name);
    $("room-title").textContent = `#${name}`;
    renderRooms();
    renderOutbox();
    state.online = new Set();
    for (const user of [...state.typing.keys()]) stopTyping(user);
    try {
      if (!(await loadLatest())) return;
    } catch (_) {
      setConn("reconnecting", "reconnecting…");
    }
    startLive();
  }

  // ---- connection state ----
  function setConn(stateName, text) {
    const element = $("conn");
    element.dataset.state = stateName;
    element.textContent = text;
  }

  // ---- live transport: SSE by default, long-poll as the fallback ----
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

  function startSSE(generation) {
    let source = null;
    let gotBytes = false;
    let backoff = 1000;
    let reopenTimer = null;
    let firstByteTimer = null;
    const current = () => generation === state.liveGeneration;

    function open() {
      source = new EventSource(`/api/rooms/${state.room}/events?last_event_id=${state.lastId}`);
      firstByteTimer = setTimeout(() => {
        if (current() && !gotBytes) { // headers came (or not), but no byte: a buffering proxy
          state.preferPoll = true;
          startLive();
        }
      }, FIRST_BYTE_TIMEOUT_MS);
      source.addEventListener("ready", (event) => {
        gotBytes = true;
        backoff = 1000;
        $("conn").dataset.worker = JSON.parse(event.data).worker; // which worker holds this stream
        setConn("live", "live (SSE)");
        loadPresence().catch(() => {}); // joins and leaves missed while away are not replayed
      });
      for (const type of ["presence", "typing"]) {
        source.addEventListener(type, (event) => onEvent(JSON.parse(event.data)));
      }
      source.addEventListener("message", (event) => onMessage(JSON.parse(event.data)));
      source.addEventListener("reset", () => { loadLatest().catch(() => {}); });
      source.addEventListener("retry", (event) => {
        const reason = JSON.parse(event.data).reason;
        if (SESSION_ENDED.has(reason)) {
          source.close();
          showSignIn(reason === "kicked" || reason === "banned" ? "You were signed out by an admin."
            : "Your session ended; sign in again.");
        } else {
          setConn("reconnecting", "reconnecting…");
        }
      });
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
      if (me && me.status === 401) return showSignIn("Your session ended; sign in again.");
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
          const url = `/api/rooms/${state.room}/poll?cursor=${state.lastId}&timeout=${wait}`;
          const response = await fetch(url, { credentials: "same-origin", signal: controller.signal });
          if (!current()) return;
          if (response.status === 401) return showSignIn("Your session ended; sign in again.");
          if (response.status === 429) {
            await sleep(1000 * Number(response.headers.get("Retry-After") || 5));
            continue;
          }
          if (response.status !== 200) throw new Error(`poll: ${response.status}`);
          const data = await response.json();
          backoff = 1000;
          if (wait === 0) loadPresence().catch(() => {}); // (re)connected: reload the list
          wait = POLL_TIMEOUT_SECS;
          setConn("live", "live (long-poll)");
          for (const event of data.events || []) onEvent(event);
          if (data.reset) { await loadLatest(); continue; }
          for (const message of data.messages) onMessage(message);
          state.lastId = maxId(state.lastId, data.cursor);
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
  // retries, so a retry after a lost answer is never stored twice.
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
          if (r.data.room === state.room) onMessage(r.data);
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
    state.roomsLoaded = false;
    $("me").textContent = user;
    $("signin").hidden = true;
    $("chat").hidden = false;
    loadSeen();
    loadOutbox();
    await refreshRooms();
    const wanted = roomFromHash() || localStorage.getItem("chat.room") || "general";
    await openRoom(wanted);
    drainOutbox();
    $("text").focus();
  }

  async function boot() {
    $("signin-form").addEventListener("submit", onSignIn);
    $("logout").addEventListener("click", logout);
    $("new-room").addEventListener("submit", onNewRoom);
    $("composer").addEventListener("submit", onCompose);
    $("text").addEventListener("keydown", onComposerKey);
    $("text").addEventListener("input", onComposerInput);
    $("rooms-toggle").addEventListener("click", toggleDrawer);
    log().addEventListener("scroll", () => { if (log().scrollTop < 80) loadOlder(); });
    window.addEventListener("online", () => { drainOutbox(); if (state.me) startLive(); });
    window.addEventListener("offline", () => setConn("offline", "offline"));
    window.addEventListener("hashchange", () => {
      const room = roomFromHash();
      if (state.me && room && room !== state.room) openRoom(room);
    });
    setInterval(() => { if (state.me) refreshRooms().catch(() => {}); }, ROOMS_REFRESH_MS);
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
