// The session can end anywhere: an answer of 401, the stream's "retry" with a reason,
// another tab signing out. Whoever notices calls endSession; the sign-in form
// (signin.js, registered by main.js) then stops the stream and shows itself. Through
// here rather than an import, as signin.js imports the tab sharing and transport
// modules that notice.
let onEnd = null;

export function whenSessionEnds(handler) {
  onEnd = handler;
}

export function endSession(message) {
  onEnd(message);
}

export const sessionEnded = () => endSession("Your session ended; sign in again.");
