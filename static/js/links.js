// A message's text as nodes, its http(s) URLs as links: text nodes and <a> elements built one by
// one, never HTML parsed, so nothing but a URL ever becomes markup (message.js uses it).
const URL_IN_TEXT = /\bhttps?:\/\/[^\s<>"'`]+/gi;
const TRAILING = /[.,;:!?'"*)\]}>]+$/; // "see https://x.org/a." ends the sentence, not the URL

// "(see https://en.wikipedia.org/wiki/Foo_(bar))": a closing bracket the URL opened is its own.
function trim(candidate) {
  let url = candidate.replace(TRAILING, "");
  while (url.length < candidate.length) {
    const next = candidate[url.length];
    const opened = { ")": "(", "]": "[", "}": "{" }[next];
    if (!opened || url.split(opened).length <= url.split(next).length) break;
    url += next;
  }
  return url;
}

function link(href, text) {
  const anchor = document.createElement("a");
  anchor.href = href;
  anchor.textContent = text;
  anchor.rel = "noopener noreferrer";
  anchor.target = "_blank";
  return anchor;
}

export function linkedText(text) {
  const nodes = [];
  let last = 0;
  for (const match of text.matchAll(URL_IN_TEXT)) {
    const shown = trim(match[0]);
    let href;
    try {
      const url = new URL(shown);
      if ((url.protocol === "http:" || url.protocol === "https:") && url.hostname) href = url.href;
    } catch (_) { /* not a URL after all: stays text */ }
    if (!href) continue;
    if (match.index > last) nodes.push(document.createTextNode(text.slice(last, match.index)));
    nodes.push(link(href, shown));
    last = match.index + shown.length;
  }
  if (last < text.length) nodes.push(document.createTextNode(text.slice(last)));
  return nodes;
}
