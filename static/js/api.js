// ---- the JSON API ----
import { state } from "./state.js";

export async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && state.csrf) headers["X-CSRFToken"] = state.csrf;
  const response = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await response.json(); } catch (_) { /* empty or non-JSON body */ }
  return { status: response.status, data, headers: response.headers };
}

// An error answer's code and message. Read through here: the error may be
// {"error": code, "message"} or {"error": {code, message}}.
export function errorOf(r) {
  const data = (r && r.data) || {};
  const error = data.error && typeof data.error === "object" ? data.error : { code: data.error };
  return { code: error.code || "", message: error.message || data.message || "" };
}

// A write (POST unless told), retried once with a fresh CSRF token if the one we hold went stale.
export async function write(path, body, method = "POST") {
  let r = await api(method, path, body);
  if (r.status === 403 && errorOf(r).code === "csrf_failed") {
    await refreshCsrf();
    r = await api(method, path, body);
  }
  return r;
}

export async function refreshCsrf() {
  const r = await api("GET", "/api/auth/csrf");
  if (r.status === 200) state.csrf = r.data.csrf_token;
}
