// Formatting: numbers, sizes, durations and API timestamps as text, log text cleaned up.
// Pure functions (no DOM); the elements built from them (timeEl, badge) are in dom.js.

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
