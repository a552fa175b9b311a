// "New message in #room" (or "from bob" in a DM): a bar over the conversation that opens the room.
import { $ } from "./dom.js";
import { roomKind, roomLabel } from "./names.js";
import { atBottom, scrollToBottom } from "./scroll.js";
import { state } from "./state.js";

const CUE_SHOWN_MS = 8000; // "New message in #room" stays this long

export function showCue(message) {
  const pinned = atBottom(); // the bar takes room from the list: stay at the newest message
  const cue = $("cue");
  cue.dataset.room = message.room;
  $("cue-room").textContent = roomKind(message.room) === "dm" ? `New message from ${message.user}`
    : `New message in ${roomLabel(message.room)}`;
  $("cue-text").textContent = `${message.user}: ${message.text}`;
  cue.hidden = false;
  if (pinned) scrollToBottom();
  clearTimeout(state.cueTimer);
  state.cueTimer = setTimeout(hideCue, CUE_SHOWN_MS);
}

export function hideCue() {
  clearTimeout(state.cueTimer);
  $("cue").hidden = true;
}
