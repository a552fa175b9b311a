// A notice over the conversation about something done to you (removed from a room): it
// stays until dismissed, since the room it is about is gone from the list.
import { $ } from "./dom.js";

export function showNotice(text) {
  $("notice-text").textContent = text;
  $("notice").hidden = false;
}

export function hideNotice() {
  $("notice").hidden = true;
  $("notice-text").textContent = "";
}
