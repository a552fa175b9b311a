// ---- notifications: a mention or a DM that arrives while no tab of the chat is shown. Asked for
// only after a click on "Enable notifications" (never on load); one tab of the browser shows them
// (the one holding the stream); none for a muted room. A click opens the room at the message. ----
import { holdsStream } from "./conn.js";
import { $ } from "./dom.js";
import { mentionsMe } from "./message.js";
import { roomKind, roomLabel } from "./names.js";
import { state } from "./state.js";
import { anyTabShown } from "./visibility.js";

const STALE_MS = 10 * 60 * 1000; // older news (a laptop waking up, a long resume) raises none
const BODY_MAX = 200;

const supported = () => "Notification" in window;
const wantedKey = () => `chat.notify.${state.me}`;
const wanted = () => localStorage.getItem(wantedKey()) === "on";

// Opening the room at the message is the conversation's (main.js registers openRoomAt).
let onOpen = null;
export function whenNotificationOpens(open) {
  onOpen = open;
}

export function renderNotifyControl() {
  const button = $("notify-toggle");
  button.hidden = !supported() || !state.me;
  if (button.hidden) return;
  const permission = Notification.permission;
  const on = wanted() && permission === "granted";
  button.disabled = permission === "denied";
  button.setAttribute("aria-pressed", String(on));
  button.textContent = permission === "denied" ? "Notifications are blocked in this browser"
    : on ? "Notifications on" : "Enable notifications";
  button.title = on ? "Click to turn notifications off" : "";
}

// The control's click: the only place the browser is asked for the permission.
export async function onNotifyToggle() {
  if (!supported()) return;
  if (wanted() && Notification.permission === "granted") {
    localStorage.setItem(wantedKey(), "off");
  } else {
    const permission = await Notification.requestPermission(); // answers at once if decided already
    localStorage.setItem(wantedKey(), permission === "granted" ? "on" : "off");
  }
  renderNotifyControl();
}

// A new message that is news (not ours, in a room we are in, not read yet): a notification if
// it is for us, the room isn't muted, and nobody is looking at the chat.
export function notifyOf(message) {
  if (!supported() || !wanted() || Notification.permission !== "granted") return;
  if (!holdsStream() || anyTabShown() || !mentionsMe(message) || state.muted.has(message.room)) return;
  if (message.ts && Date.now() - message.ts > STALE_MS) return;
  const where = roomKind(message.room) === "dm" ? "" : ` in ${roomLabel(message.room)}`;
  const text = message.text.length > BODY_MAX ? `${message.text.slice(0, BODY_MAX)}…` : message.text;
  let notification;
  try {
    // One per room at a time: a newer one replaces it (tag).
    notification = new Notification(`${message.user}${where}`, { body: text, tag: `chat-${message.room}` });
  } catch (_) { return; } // some browsers allow them only from a service worker
  notification.addEventListener("click", () => {
    window.focus();
    notification.close();
    if (onOpen) onOpen(message.room, message.id);
  });
}
