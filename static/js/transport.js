// ---- live transport (the holding tab): SSE by default, long-poll as the fallback ----
import { api } from "./api.js";
import { retryDelay, sleep } from "./backoff.js";
import { setConn } from "./conn.js";
import { STREAM_EVENTS } from "./events.js";
import { sessionEnded } from "./session.js";
import { state } from "./state.js";

const FIRST_BYTE_TIMEOUT_MS = 5000; // no "ready" event by then: a proxy buffers the stream
const POLL_TIMEOUT_SECS = 25;
const OFFLINE_AFTER_FAILURES = 3; // tries in a row that found no server: "offline", not "reconnecting"
// A stream the server ended with "retry" and one of these reasons comes back no sooner than this.
const RETRY_HINT_MS = { too_many_streams: 5000, rate_limited: 5000, storage_full: 5000 };

// Waiting ``delay`` ms before the next try, the ``failures``-th in a row: said in every tab.
function waitShown(failures, delay) {
  const offline = !navigator.onLine || failures >= OFFLINE_AFTER_FAILURES;
  setConn(offline ? "offline" : "reconnecting", offline ? "offline, retrying" : "reconnecting", undefined,
    Date.now() + delay);
}

// Where every event goes, (type, data, lastEventId): the tab sharing's emit, which
// passes it on to the other tabs too (registered by main.js: tabs.js imports this module).
let emit = null;
export function whenStreamEvent(sink) {
  emit = sink;
}

export function stopLive() {
  state.liveGeneration += 1;
  if (state.live) state.live.stop();
  state.live = null;
}

export function startLive() {
  stopLive();
  const generation = state.liveGeneration;
  state.live = state.preferPoll ? startPoll(generation) : startSSE(generation);
}

const resumeQuery = (sep) => (state.cursor ? `${sep}last_event_id=${encodeURIComponent(state.cursor)}` : "");

// EventSource would reconnect on its own, but never says when: this one closes it at the first
// error and opens a new one after a backoff it shows ("reconnecting in 4 s"), resuming from the
// last cursor any tab saw (state.cursor, updated by every event's id): nothing missed or repeated.
function startSSE(generation) {
  let source = null;
  let gotBytes = false;
  let failures = 0; // tries in a row that ended without a "ready"
  let hint = 0; // the wait a "retry" event asked for
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
          failures = 0;
          let worker = "";
          try { worker = String(JSON.parse(event.data).worker || ""); } catch (_) { /* none */ }
          setConn("live", "live (SSE)", worker); // which worker holds this stream
        } else if (type === "retry") {
          try { hint = RETRY_HINT_MS[JSON.parse(event.data).reason] || 0; } catch (_) { /* none */ }
        }
        emit(type, event.data, event.lastEventId);
      });
    }
    source.onerror = () => {
      if (!current()) return;
      const refused = source.readyState === EventSource.CLOSED; // a non-200 answer: 401, 404…
      source.close();
      clearTimeout(firstByteTimer);
      reopenLater(refused);
    };
  }

  async function reopenLater(refused) {
    failures += 1;
    if (refused) {
      const me = await api("GET", "/api/auth/me").catch(() => null);
      if (!current()) return;
      if (me && me.status === 401) return sessionEnded();
    }
    const delay = Math.max(hint, retryDelay(failures));
    hint = 0;
    waitShown(failures, delay);
    reopenTimer = setTimeout(() => { if (current()) open(); }, delay);
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
    let failures = 0;
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
          const delay = 1000 * Number(response.headers.get("Retry-After") || 5);
          wait = 0;
          waitShown(0, delay);
          await sleep(delay);
          continue;
        }
        if (response.status !== 200) throw new Error(`poll: ${response.status}`);
        const data = await response.json();
        if (!current()) return;
        failures = 0;
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
        failures += 1;
        const delay = retryDelay(failures);
        waitShown(failures, delay);
        await sleep(delay);
      }
    }
  }

  loop();
  return { stop() { controller.abort(); } };
}
