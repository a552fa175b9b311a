// ---- connection state (the holding tab tells the others) ----
import { $ } from "./dom.js";
import { state } from "./state.js";

// Told of every change this tab makes; the tab sharing passes it on when this tab holds
// the stream (registered by main.js: tabs.js imports this module).
let onChange = null;
export function whenConnChanges(listener) {
  onChange = listener;
}

export function showConn({ state: stateName, text, worker }) {
  const element = $("conn");
  element.dataset.state = stateName;
  element.textContent = text;
  if (worker) element.dataset.worker = worker;
}

export function setConn(stateName, text, worker) {
  state.conn = { state: stateName, text, worker: worker || state.conn.worker };
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
