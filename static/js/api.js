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

// A write, retried once with a fresh CSRF token if the one we hold went stale.
export async function write(path, body) {
  let r = await api("POST", path, body);
  if (r.status === 403 && r.data && r.data.error === "csrf_failed") {
    await refreshCsrf();
    r = await api("POST", path, body);
  }
  return r;
}

export async function refreshCsrf() {
  const r = await api("GET", "/api/auth/csrf");
  if (r.status === 200) state.csrf = r.data.csrf_token;
}
