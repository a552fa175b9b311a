// The conversation's scroll box (#log): kept at the newest message while the reader is there.
import { $ } from "./dom.js";

export const log = () => $("log");
export const atBottom = () => log().scrollHeight - log().scrollTop - log().clientHeight < 40;
export const scrollToBottom = () => { log().scrollTop = log().scrollHeight; };
