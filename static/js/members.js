// ---- the open private room's (or DM's) members: invite by name, remove ----
import { api, errorOf, write } from "./api.js";
import { $ } from "./dom.js";
import { humanError } from "./errors.js";
import { isMe } from "./message.js";
import { roomKind } from "./names.js";
import { roomGone } from "./rooms.js";
import { sessionEnded } from "./session.js";
import { state } from "./state.js";

const MANAGERS = new Set(["owner", "moderator"]); // may invite and remove (the server decides)
const RANK = { owner: 0, moderator: 1, member: 2 };

const hasMembers = (room) => roomKind(room) !== "public";

// A room was opened: no members are known until loadMembers answers.
export function clearMembers() {
  state.members = [];
  state.membersAsked += 1;
  $("member-list").replaceChildren();
  $("invite-error").textContent = "";
  $("members").hidden = !hasMembers(state.room);
  $("invite").hidden = true;
}

// The open room's members (again whenever its log says they changed). A public room has
// no member list: anyone may join it.
export async function loadMembers() {
  const room = state.room;
  if (!room || !hasMembers(room)) { $("members").hidden = true; return; }
  const asked = ++state.membersAsked;
  const r = await api("GET", `/api/rooms/${room}/members`);
  if (asked !== state.membersAsked || room !== state.room) return; // a newer answer wins
  if (r.status === 401) return sessionEnded();
  if (r.status === 404 && errorOf(r).code === "unknown_room") return roomGone(room);
  if (r.status !== 200) return;
  state.members = r.data.members;
  const mine = state.members.find((member) => isMe(member.user));
  const info = state.info.get(room);
  if (mine && info) info.role = mine.role; // a role given or taken since the room was listed
  renderMembers();
}

function myRole() {
  return (state.info.get(state.room) || {}).role || "member";
}

function renderMembers() {
  const manage = roomKind(state.room) === "private" && MANAGERS.has(myRole());
  const sorted = [...state.members].sort((a, b) => ((RANK[a.role] ?? 3) - (RANK[b.role] ?? 3))
    || (a.user < b.user ? -1 : a.user > b.user ? 1 : 0));
  $("member-list").replaceChildren(...sorted.map((member) => memberItem(member, manage)));
  $("members").hidden = false;
  $("invite").hidden = !manage;
}

function memberItem({ user, role }, manage) {
  const item = document.createElement("li");
  item.dataset.user = user;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = user;
  item.append(who);
  if (role && role !== "member") {
    const tag = document.createElement("span");
    tag.className = "role";
    tag.textContent = role;
    item.append(tag);
  }
  if (manage && role !== "owner" && !isMe(user)) {
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "icon small remove";
    remove.textContent = "×";
    remove.title = `Remove ${user}`;
    remove.setAttribute("aria-label", `Remove ${user}`);
    remove.addEventListener("click", () => removeMember(user));
    item.append(remove);
  }
  return item;
}

// "Invite by name": the user becomes a member at once (the server adds them; their page
// hears it on its stream).
export async function onInvite(event) {
  event.preventDefault();
  const room = state.room;
  const user = $("invite-name").value.trim();
  if (!user) return;
  const r = await write(`/api/rooms/${room}/members`, { user }).catch(() => null);
  if (r && r.status === 401) return sessionEnded();
  if (r && (r.status === 200 || r.status === 201)) {
    $("invite-name").value = "";
    $("invite-error").textContent = "";
  } else {
    $("invite-error").textContent = humanError(r);
  }
  if (room === state.room) loadMembers();
}

async function removeMember(user) {
  const room = state.room;
  const r = await write(`/api/rooms/${room}/members/${encodeURIComponent(user)}`, undefined, "DELETE")
    .catch(() => null);
  if (r && r.status === 401) return sessionEnded();
  $("invite-error").textContent = r && r.status === 200 ? "" : humanError(r);
  if (room === state.room) loadMembers();
}
