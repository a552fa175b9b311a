// ---- editing and deleting messages: a message's Edit and Delete controls, the PATCH and DELETE,
// and the room log's "edit" and "delete" entries applied to the open room (live, in history, in
// any order: the newest change of a message wins, a deletion is final) ----
import { errorOf, write } from "./api.js";
import { humanError } from "./errors.js";
import { cmpId } from "./ids.js";
import { isMe, messageElement } from "./message.js";
import { sessionEnded } from "./session.js";
import { state } from "./state.js";

const EDIT_WINDOW_MS = 24 * 3600 * 1000; // the server's default edit window; the server decides
const MODERATORS = new Set(["owner", "moderator"]); // may delete anyone's message in their room
const CONFIRM_MS = 4000; // "Delete?" waits this long for the second click

export const isChange = (entry) => entry.kind === "edit" || entry.kind === "delete";

// ``message`` with its newest change applied (the text of its latest edit, or deleted).
function current(message) {
  const change = state.changes.get(message.id);
  if (!change) return message;
  if (change.kind === "delete") return { ...message, deleted: true };
  const at = change.edited || change.ts;
  if (message.edited && at < message.edited) return message; // history has a newer edit already
  return { ...message, text: change.text, edited: at };
}

// The element of a message of the open room, with the controls this user may use.
export function renderMessage(message) {
  const shown = current(message);
  const element = messageElement(shown);
  if (!shown.kind && !shown.deleted && shown.id) addControls(element, shown);
  return element;
}

function redraw(id) {
  const message = state.messages.get(id);
  const old = document.querySelector(`#messages li[data-id="${id}"]`);
  if (message && old) old.replaceWith(renderMessage(message));
}

// An "edit" or "delete" entry (the stream, history, or our own request's answer). Remembered for
// its target even when the target isn't shown (yet: an older page, a history answer still on
// its way), so that it applies when the target comes.
export function applyChange(entry) {
  if (entry.room !== state.room || typeof entry.target !== "string") return;
  const known = state.changes.get(entry.target);
  if (known && (known.kind === "delete" || (entry.kind === "edit" && cmpId(entry.id, known.id) <= 0))) return;
  state.changes.set(entry.target, entry);
  redraw(entry.target);
}

function mayDelete(message) {
  if (isMe(message.user) || state.admin) return true;
  return MODERATORS.has((state.info.get(message.room) || {}).role);
}

function control(label, className, onClick) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = `link ${className}`;
  button.textContent = label;
  button.addEventListener("click", onClick);
  return button;
}

function addControls(element, message) {
  const actions = document.createElement("span");
  actions.className = "actions";
  if (isMe(message.user) && Date.now() - message.ts < EDIT_WINDOW_MS) {
    actions.append(control("Edit", "edit", () => startEdit(element, message)));
  }
  if (mayDelete(message)) {
    let armed = null;
    const remove = control("Delete", "delete", () => {
      if (!armed) { // the first click asks; a second one within CONFIRM_MS deletes
        remove.textContent = "Delete?";
        remove.classList.add("armed");
        armed = setTimeout(() => { armed = null; remove.textContent = "Delete"; remove.classList.remove("armed"); },
          CONFIRM_MS);
        return;
      }
      clearTimeout(armed);
      deleteMessage(element, message);
    });
    actions.append(remove);
  }
  if (actions.childElementCount) element.querySelector(".meta").append(actions);
}

function sayError(element, text) {
  let error = element.querySelector(".change-error");
  if (!error) {
    error = document.createElement("p");
    error.className = "change-error error";
    error.setAttribute("role", "alert");
    element.append(error);
  }
  error.textContent = text;
}

const WHY = {
  edit_window_passed: "It's too late to edit this message.",
  not_author: "You can edit only your own messages.",
  not_allowed: "You may not delete this message.",
  unknown_message: "This message is gone.",
};

function refused(r) {
  if (r && r.status === 401) { sessionEnded(); return null; }
  return WHY[errorOf(r).code] || humanError(r);
}

function startEdit(element, message) {
  const form = document.createElement("form");
  form.className = "edit-form";
  const box = document.createElement("textarea");
  box.value = message.text;
  box.maxLength = 4000;
  box.rows = Math.min(8, message.text.split("\n").length + 1);
  box.setAttribute("aria-label", "Edit the message");
  const save = document.createElement("button");
  save.type = "submit";
  save.className = "small";
  save.textContent = "Save";
  const cancel = control("Cancel", "cancel", () => redraw(message.id));
  const row = document.createElement("div");
  row.className = "row";
  row.append(save, cancel);
  form.append(box, row);
  box.addEventListener("keydown", (event) => {
    if (event.key === "Escape") redraw(message.id);
    else if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = box.value;
    if (!text.trim()) return;
    if (text === message.text) { redraw(message.id); return; }
    save.disabled = true;
    const r = await write(`/api/rooms/${message.room}/messages/${message.id}`, { text }, "PATCH").catch(() => null);
    save.disabled = false;
    if (r && r.status === 200 && r.data) { applyChange(r.data); return; }
    const why = refused(r);
    if (why) sayError(element, why);
  });
  element.querySelector(".text").replaceWith(form);
  box.focus();
}

async function deleteMessage(element, message) {
  const r = await write(`/api/rooms/${message.room}/messages/${message.id}`, undefined, "DELETE")
    .catch(() => null);
  if (r && r.status === 200 && r.data) { applyChange(r.data); return; }
  const why = refused(r);
  if (why) sayError(element, why);
}
