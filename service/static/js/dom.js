// DOM and formatting helpers: h() for HTML, s() for SVG, number/time formatting.

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
    if (value !== null && value !== undefined) el.setAttribute(key, String(value));
  }
  el.append(...children);
  return el;
}

/** True for a finite number. */
export const isNum = (x) => typeof x === "number" && Number.isFinite(x);
/** What a missing value shows. */
export const dash = "—";
/** `x` with `digits` decimals, or a dash. */
export function fixed(x, digits) { return isNum(x) ? x.toFixed(digits) : dash; }
/** A fraction as a percentage ("12.5 %"), or a dash. */
export function pct(x, digits = 1) { return isNum(x) ? `${(x * 100).toFixed(digits)} %` : dash; }
/** A rate: no decimals from 100 up, one below. */
export function rate(x) { return isNum(x) ? (x >= 100 ? x.toFixed(0) : x.toFixed(1)) : dash; }
/** Seconds as milliseconds ("12.3 ms"), or a dash. */
export function ms(seconds) { return isNum(seconds) ? `${(seconds * 1000).toFixed(seconds < 0.01 ? 2 : 1)} ms` : dash; }

/** A byte count in decimal units ("45 kB", "1.2 MB"), or a dash. */
export function bytes(n) {
  if (!isNum(n)) return dash;
  const [unit, div] = n < 1e3 ? ["B", 1] : n < 999.5e3 ? ["kB", 1e3] : n < 999.5e6 ? ["MB", 1e6] : ["GB", 1e9];
  return unit === "B" ? `${n} B` : `${(n / div).toFixed(n / div < 10 ? 1 : 0)} ${unit}`;
}

/** A Date from an API timestamp (ISO string, UTC when without a zone, or epoch seconds). */
export function parseTime(value) {
  if (value === null || value === undefined) return null;
  // Timestamps are UTC; a string without a zone designator must not be read as local time.
  const text = typeof value === "string" && !/(?:[zZ]|[+-]\d\d:?\d\d)$/.test(value) ? `${value}Z` : value;
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(text);
  return Number.isNaN(date.getTime()) ? null : date;
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

/** A duration in seconds as "4.2 s", "3 min 12 s" or "1 h 5 min"; "" when unknown. */
export function duration(seconds) {
  if (!isNum(seconds) || seconds < 0) return "";
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
}

/** Text without ANSI escape sequences (colours in Ray's logs). */
export function stripAnsi(text) { return text.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, ""); }

/** A reason's first line (at most 240 characters) and the rest (a failed job's log tail). */
export function splitReason(text) {
  if (!text) return { head: "", rest: "" };
  const nl = text.indexOf("\n");
  let head = nl < 0 ? text : text.slice(0, nl);
  if (head.length > 240) head = `${head.slice(0, 240)}…`;
  return { head, rest: head === text ? "" : stripAnsi(text) };
}

/** A job state badge (<span class="badge state-…" data-state=…>). */
export function badge(state) {
  return h("span", { class: `badge state-${state}`, "data-state": state }, state);
}

/** Hide or show `el` (no-op when it is missing). */
export function setHidden(el, hidden) { if (el) el.hidden = hidden; }
