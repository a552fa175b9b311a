// Waiting before trying again (the live transport, the outbox).
export const MAX_BACKOFF_MS = 15000;
export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
