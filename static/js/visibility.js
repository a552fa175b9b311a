// ---- whether someone can see the chat: this tab shown, or another tab of this browser (each
// tab tells the others through the tab sharing, tabs.js) ----
// Tab id -> when that tab last said it is shown. A shown tab says so again every SHOWN_EVERY_MS
// (main.js), so one that crashed while shown counts no longer after SHOWN_FOR_MS.
const shownElsewhere = new Map();
export const SHOWN_EVERY_MS = 30000;
const SHOWN_FOR_MS = 75000;

export const TAB_ID = Math.random().toString(36).slice(2);

export const shownHere = () => document.visibilityState === "visible";

export function noteTab(tab, shown) {
  if (tab === TAB_ID) return;
  if (shown) shownElsewhere.set(tab, Date.now());
  else shownElsewhere.delete(tab);
}

export function anyTabShown() {
  if (shownHere()) return true;
  const now = Date.now();
  return [...shownElsewhere.values()].some((at) => now - at < SHOWN_FOR_MS);
}
