// ---- live transport (the holding tab): SSE by default, long-poll as the fallback ----
import { api } from "./api.js";
import { MAX_BACKOFF_MS, sleep } from "./backoff.js";
import { setConn } from "./conn.js";
import { STREAM_EVENTS } from "./events.js";
import { sessionEnded } from "./session.js";
import { state } from "./state.js";

const FIRST_BYTE_TIMEOUT_MS = 5000; // no "ready" event by then: a proxy buffers the stream
const POLL_TIMEOUT_SECS = 25;

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
