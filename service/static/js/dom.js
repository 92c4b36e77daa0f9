// DOM helpers: $() and $$() to query, h() for HTML, s() for SVG, and the small elements built
// from formatted values (timeEl, badge); the formatting itself is in format.js.
// h() and s() set a `style` through the CSSOM (`el.style.cssText`), never as an attribute: the
// page's Content-Security-Policy (style-src 'self') blocks style attributes set as markup.

import { dash, parseTime } from "./format.js";

/** First element matching `sel` under `root`. */
export const $ = (sel, root = document) => root.querySelector(sel);
/** Every element matching `sel` under `root`, as an array. */
export const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];
/** A promise resolved after `ms` milliseconds. */
export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Create an element: h("td", {class: "num", title: "x"}, "text", childNode, ...). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "style") el.style.cssText = String(value);  // CSSOM: see above
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

const SVG_NS = "http://www.w3.org/2000/svg";

/** Create an SVG element: s("path", {d: "M0,0"}, ...children); null attributes are skipped. */
export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined) continue;
    if (key === "style") el.style.cssText = String(value);  // CSSOM: see above
    else el.setAttribute(key, String(value));
  }
  el.append(...children);
  return el;
}

/** <time> element: time of day for today, date and time otherwise; full ISO in the title. */
export function timeEl(value) {
  const date = parseTime(value);
  if (!date) return document.createTextNode(dash);
  const today = new Date().toDateString() === date.toDateString();
  const text = today
    ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" })
    : date.toLocaleString([], { year: "numeric", month: "short", day: "numeric",
      hour: "2-digit", minute: "2-digit" });
  return h("time", { datetime: date.toISOString(), title: date.toISOString() }, text);
}

/** A job state badge (<span class="badge state-…" data-state=…>). */
export function badge(state) {
  return h("span", { class: `badge state-${state}`, "data-state": state }, state);
}

/** Hide or show `el` (no-op when it is missing). */
export function setHidden(el, hidden) { if (el) el.hidden = hidden; }
