// ---- everything the stream says, in whichever tab it arrives ----
import { holdsStream, setConn } from "./conn.js";
import { clearConversation, loadLatest, onMessage, refreshOpenRoom } from "./conversation.js";
import { VALID_ID } from "./ids.js";
import { loadMembers } from "./members.js";
import { loadPresence, onRoomEvent } from "./presence.js";
import { roomKind } from "./names.js";
import { noteLatest, onRead, refreshUnreadSoon } from "./readstate.js";
import { joinRoom, onJoined, onLeft, renderRooms, roomGone, syncJoined } from "./rooms.js";
import { endSession } from "./session.js";
import { state } from "./state.js";

// What the multiplexed stream sends (docs: README "The page"); "cursor" is the
// long-poll's batch cursor, passed on like an event so every tab keeps it.
// A new type goes here and in onStreamEvent's switch.
export const STREAM_EVENTS = ["ready", "message", "reset", "presence", "typing", "joined", "left", "read", "retry"];
const SESSION_ENDED = new Set(["logged_out", "kicked", "banned", "session_expired", "password_changed",
  "account_gone"]);

export function onStreamEvent(type, data, lastEventId) {
  if (lastEventId) state.cursor = lastEventId;
  if (!state.me) return;
  let payload = {};
  try { payload = data ? JSON.parse(data) : {}; } catch (_) { return; }
  switch (type) {
    case "ready": {
      if (Array.isArray(payload.rooms)) syncJoined(payload.rooms);
      // A join that failed earlier (a private room or DM is joined by being added, never by us).
      if (state.room && !state.joined.has(state.room) && roomKind(state.room) === "public") joinRoom(state.room);
      loadPresence().catch(() => {}); // joins and leaves missed while away are not replayed
      loadMembers().catch(() => {}); // nor are member changes, if the stream started afresh
      refreshOpenRoom(); // a stream that started afresh may have missed what came before it
      state.readyCount += 1;
      if (state.readyCount > 1) refreshUnreadSoon(); // reconnected: reads elsewhere may be missed
      break;
    }
    case "read": // this user read a room (here, in another tab, on another device)
      if (typeof payload.room === "string" && VALID_ID.test(payload.id || "") && onRead(payload)) renderRooms();
      break;
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
      if (reason === "removed" && payload.room) roomGone(payload.room); // then reconnects, without it
      if (SESSION_ENDED.has(reason)) {
        endSession(reason === "kicked" || reason === "banned" ? "You were signed out by an admin."
          : "Your session ended; sign in again.");
      } else if (holdsStream()) {
        setConn("reconnecting", "reconnecting…");
      }
      break;
    }
    default: break;
  }
}
