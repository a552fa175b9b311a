// Waiting before trying again (the live transport, the outbox, the start-up), and saying how long.
export const MAX_BACKOFF_MS = 15000;
export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// The wait before try number ``failures + 1`` (1 s, 2 s, 4 s … up to MAX_BACKOFF_MS), spread by
// ±20 % so that the pages a restart dropped don't all come back in the same instant.
export function retryDelay(failures) {
  const base = Math.min(1000 * 2 ** Math.max(0, failures - 1), MAX_BACKOFF_MS);
  return Math.round(base * (0.8 + 0.4 * Math.random()));
}

// "38 minutes", "1 hour", "5 seconds": a wait in words.
export function inWords(seconds) {
  const plural = (n, unit) => `${n} ${unit}${n === 1 ? "" : "s"}`;
  const secs = Math.max(1, Math.ceil(seconds));
  if (secs < 60) return plural(secs, "second");
  if (secs < 90 * 60) return plural(Math.max(1, Math.round(secs / 60)), "minute");
  return plural(Math.round(secs / 3600), "hour");
}
