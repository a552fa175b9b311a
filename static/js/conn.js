// ---- connection state (the holding tab tells the others) ----
// state.conn is {state, text, worker, at}: state is "connecting", "live", "reconnecting" or
// "offline"; ``at`` (ms since the epoch, 0 if none) is when the next try starts, so every tab
// counts down to it on its own: "reconnecting in 4 s", "offline, retrying in 12 s".
import { $ } from "./dom.js";
import { state } from "./state.js";

// Told of every change this tab makes; the tab sharing passes it on when this tab holds
// the stream (registered by main.js: tabs.js imports this module).
let onChange = null;
export function whenConnChanges(listener) {
  onChange = listener;
}

// Told when the connection becomes live again, in every tab (main.js: the outbox resends).
let onLive = null;
export function whenLive(listener) {
  onLive = listener;
}

let shownState = null;
let ticker = null;

export function connLabel({ state: stateName, text, at }) {
  if (!at) return text;
  const secs = Math.ceil((at - Date.now()) / 1000);
  if (secs > 0) return `${text} in ${secs} s`;
  return stateName === "offline" ? "offline, trying now…" : "reconnecting…";
}

export function showConn(conn) {
  const element = $("conn");
  const wasLive = shownState === "live";
  shownState = conn.state;
  element.dataset.state = conn.state;
  element.textContent = connLabel(conn);
  if (conn.worker) element.dataset.worker = conn.worker;
  clearInterval(ticker);
  ticker = null;
  if (conn.at) {
    ticker = setInterval(() => {
      element.textContent = connLabel(conn);
      if (conn.at <= Date.now()) { clearInterval(ticker); ticker = null; }
    }, 250);
  }
  if (conn.state === "live" && !wasLive && onLive) onLive();
}

export function setConn(stateName, text, worker, at = 0) {
  state.conn = { state: stateName, text, worker: worker || state.conn.worker, at };
  showConn(state.conn);
  onChange(state.conn);
}

// This tab's part in the tab sharing, on <html data-stream-role> (the tests read it).
export function setRole(role) {
  state.role = role;
  if (role) document.documentElement.dataset.streamRole = role;
  else delete document.documentElement.dataset.streamRole;
}

// This tab runs the live transport: it holds the shared stream, or has one of its own.
export const holdsStream = () => state.role === "leader" || state.role === "solo";
