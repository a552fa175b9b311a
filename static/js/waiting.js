// The page was loaded while the server can't answer (down, restarting, unreachable): a card
// that says so and counts down to the next try, instead of a sign-in form for someone who is
// signed in. main.js keeps trying; the first answer opens the chat or the sign-in form.
import { $ } from "./dom.js";

let ticker = null;
let wake = null;

// The user this browser last signed in as, and how many of their messages wait to be sent
// (kept in localStorage by outbox.js): said on the card, so nobody fears them lost.
function unsentCount() {
  const user = localStorage.getItem("chat.user");
  if (!user) return 0;
  try { return (JSON.parse(localStorage.getItem(`chat.outbox.${user}`)) || []).length; } catch (_) { return 0; }
}

// ``why``: a sentence (errors.js); ``at``: when the next try starts (ms since the epoch).
export function showWaiting(why, at) {
  $("signin").hidden = true;
  $("chat").hidden = true;
  $("waiting").hidden = false;
  $("waiting-why").textContent = why;
  const unsent = unsentCount();
  $("waiting-unsent").textContent = unsent === 0 ? ""
    : `${unsent === 1 ? "1 message you wrote is" : `${unsent} messages you wrote are`} kept and will be sent.`;
  const tick = () => {
    const secs = Math.ceil((at - Date.now()) / 1000);
    $("waiting-next").textContent = secs > 0 ? `Trying again in ${secs} s.` : "Trying again now…";
  };
  tick();
  clearInterval(ticker);
  ticker = setInterval(tick, 250);
}

export function hideWaiting() {
  clearInterval(ticker);
  ticker = null;
  $("waiting").hidden = true;
}

// Waits ``ms``, or less if the browser comes back online or "Try now" is clicked.
export function waitOrWake(ms) {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      window.removeEventListener("online", done);
      wake = null;
      resolve();
    }
    wake = done;
    window.addEventListener("online", done);
  });
}

export function tryNow() {
  if (wake) wake();
}
