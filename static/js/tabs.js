// ---- tab sharing: one tab holds the stream (a Web Lock), the others listen ----
import { setRole, showConn } from "./conn.js";
import { refreshOpenRoom } from "./conversation.js";
import { onStreamEvent } from "./events.js";
import { endSession } from "./session.js";
import { state } from "./state.js";
import { startLive } from "./transport.js";
import { noteTab, shownHere, TAB_ID } from "./visibility.js";

// One stream per browser, shared by its tabs, needs both APIs; ?share=0 turns it off.
const CAN_SHARE = new URLSearchParams(location.search).get("share") !== "0" && "BroadcastChannel" in window
  && Boolean(navigator.locks && navigator.locks.request);

const isLeader = () => Boolean(state.share && state.share.leader);

export function share(message) {
  if (state.share) state.share.channel.postMessage(message);
}

// This tab's connection state changed (conn.js): the holder tells the others.
export function shareConn(conn) {
  if (isLeader()) share({ kind: "conn", conn });
}

// This tab was shown or hidden (or is going away): the others know whether anyone sees the chat.
export function shareVisibility(gone = false) {
  share({ kind: "visibility", tab: TAB_ID, shown: !gone && shownHere() });
}

// The holding tab: pass it on to the other tabs, then handle it here.
export function emit(type, data, lastEventId) {
  if (isLeader()) share({ kind: "event", type, data, lastEventId });
  onStreamEvent(type, data, lastEventId);
}

export function startSharing() {
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
  shareVisibility();
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

export function stopSharing() {
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
      shareVisibility(); // every tab: the new one learns who is shown
      break;
    case "visibility":
      noteTab(message.tab, message.shown);
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
      if (state.me) endSession(message.message);
      break;
    default: break;
  }
}
