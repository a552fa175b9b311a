// An error answer in words for people: what went wrong and what to do, never the server's
// sentence for machines ("Rate limit of 10 per 1 hour exceeded; retry in 2291s.").
import { errorOf } from "./api.js";
import { inWords } from "./backoff.js";

export const UNREACHABLE = "The server can't be reached. Check your connection; it is tried again on its own.";

// Seconds to wait, from Retry-After or else the server's "retry in 2291s"; null if neither says.
export function retryAfter(r) {
  const header = r && r.headers && r.headers.get ? Number(r.headers.get("Retry-After")) : NaN;
  if (Number.isFinite(header) && header > 0) return header;
  const said = /retry in (\d+)\s*s/i.exec(errorOf(r).message);
  return said ? Number(said[1]) : null;
}

// ``r``: an answer of api()/write(), or null when the request never got one.
export function humanError(r) {
  if (!r) return UNREACHABLE;
  const { code, message } = errorOf(r);
  const wait = retryAfter(r);
  const later = wait ? `try again in ${inWords(wait)}` : "try again in a while";
  switch (code) {
    case "rate_limited": return `Too many attempts; ${later}.`;
    case "too_many_streams": return `Too many tabs or devices are connected; close some or ${later}.`;
    case "busy": return "The server is busy; try again in a few seconds.";
    case "store_unavailable": case "not_replicated":
      return "The server can't store anything right now; try again in a few seconds.";
    case "storage_full": return `The server is full; ${later}.`;
    case "csrf_failed": return "This page's security token is out of date; reload the page.";
    case "internal": return "Something went wrong on the server; try again.";
    default: break;
  }
  if (r.status === 429) return `Too many attempts; ${later}.`;
  if (r.status >= 500) return "The server can't answer right now; try again in a few seconds.";
  return message || `That didn't work (error ${r.status}).`;
}
