// ---- sign-in ----
import { api, refreshCsrf } from "./api.js";
import { setRole } from "./conn.js";
import { $ } from "./dom.js";
import { humanError } from "./errors.js";
import { state } from "./state.js";
import { share, stopSharing } from "./tabs.js";
import { stopLive } from "./transport.js";

// The session is the browser's: a tab that finds it ended tells the others.
export function showSignIn(message) {
  if (state.me) share({ kind: "signout", message: message || "" });
  stopSharing();
  stopLive();
  setRole(null);
  state.me = null;
  $("chat").hidden = true;
  $("waiting").hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = message || "";
  $("username").focus();
}

// The form's submit; enterChat (main.js) opens the chat for the user signed in.
export async function onSignIn(event, enterChat) {
  event.preventDefault();
  const action = event.submitter && event.submitter.value === "register" ? "register" : "login";
  const username = $("username").value.trim();
  const password = $("password").value;
  $("signin-error").textContent = "";
  try {
    if (!state.csrf) await refreshCsrf();
    const r = await api("POST", `/api/auth/${action}`, { username, password });
    if (r.status === 200 || r.status === 201) {
      state.csrf = r.data.csrf_token;
      $("password").value = "";
      await enterChat(r.data.user);
    } else {
      $("signin-error").textContent = humanError(r);
    }
  } catch (_) {
    $("signin-error").textContent = "The server can't be reached; check your connection and try again.";
  }
}

export async function logout() {
  try { await api("POST", "/api/auth/logout"); } catch (_) { /* signed out locally anyway */ }
  localStorage.removeItem("chat.user"); // unsent messages stay kept, under the user, for their next sign-in
  state.csrf = null;
  await refreshCsrf().catch(() => {});
  showSignIn();
}
