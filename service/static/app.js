// syncbn service dashboard: vanilla JS, no build step, no third-party code.
//
// Routes (hash): "#/" jobs list + submit form, "#/jobs/<id>" one job.
// Talks to the REST API under "v1/" (relative to the page), sends the API token from
// localStorage as "Authorization: Bearer", and asks for it when a call answers 401.
// The job page follows "v1/jobs/<id>/events" with fetch() and a streaming body reader
// (EventSource cannot send headers) and falls back to polling while the stream is down.

const API = new URL("v1/", document.baseURI);
const TOKEN_KEY = "syncbn.apiToken";
const FINAL = new Set(["succeeded", "failed", "cancelled"]);
const BUILTIN_DATASETS = [
  { id: "digits", label: "digits — 8×8 handwritten digits" },
  { id: "synthetic", label: "synthetic — Gaussian classes, 16 features (fast)" },
];
const LIST_POLL_MS = 2000;
const LOGS_POLL_MS = 5000;
const PAGE_SIZE = 50;
const RANK_COLORS = ["#2563eb", "#ea580c", "#16a34a", "#9333ea", "#dc2626", "#0891b2",
  "#ca8a04", "#db2777", "#4b5563", "#65a30d"];

// ---------------------------------------------------------------- small helpers

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Create an element: h("td", {class: "num", title: "x"}, "text", childNode, ...). */
function h(tag, attrs = {}, ...children) {
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
function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value !== null && value !== undefined) el.setAttribute(key, String(value));
  }
  el.append(...children);
  return el;
}

const isNum = (x) => typeof x === "number" && Number.isFinite(x);
const dash = "—";
function fixed(x, digits) { return isNum(x) ? x.toFixed(digits) : dash; }
function pct(x, digits = 1) { return isNum(x) ? `${(x * 100).toFixed(digits)} %` : dash; }
function rate(x) { return isNum(x) ? (x >= 100 ? x.toFixed(0) : x.toFixed(1)) : dash; }
function ms(seconds) { return isNum(seconds) ? `${(seconds * 1000).toFixed(seconds < 0.01 ? 2 : 1)} ms` : dash; }

function parseTime(value) {
  if (value === null || value === undefined) return null;
  // Timestamps are UTC; a string without a zone designator must not be read as local time.
  const text = typeof value === "string" && !/(?:[zZ]|[+-]\d\d:?\d\d)$/.test(value) ? `${value}Z` : value;
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(text);
  return Number.isNaN(date.getTime()) ? null : date;
}

/** <time> element: time of day for today, date and time otherwise; full ISO in the title. */
function timeEl(value) {
  const date = parseTime(value);
  if (!date) return document.createTextNode(dash);
  const today = new Date().toDateString() === date.toDateString();
  const text = today
    ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" })
    : date.toLocaleString([], { year: "numeric", month: "short", day: "numeric",
      hour: "2-digit", minute: "2-digit" });
  return h("time", { datetime: date.toISOString(), title: date.toISOString() }, text);
}

function duration(seconds) {
  if (!isNum(seconds) || seconds < 0) return "";
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
}

/** A reason's first line (at most 240 characters) and the rest (a failed job's log tail). */
function splitReason(text) {
  if (!text) return { head: "", rest: "" };
  const nl = text.indexOf("\n");
  let head = nl < 0 ? text : text.slice(0, nl);
  if (head.length > 240) head = `${head.slice(0, 240)}…`;
  return { head, rest: head === text ? "" : text.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, "") };
}

function badge(state) {
  return h("span", { class: `badge state-${state}`, "data-state": state }, state);
}

function setHidden(el, hidden) { if (el) el.hidden = hidden; }

// ---------------------------------------------------------------- token and API

const memoryStore = {};
function getToken() {
  try { return localStorage.getItem(TOKEN_KEY) || ""; } catch { return memoryStore.token || ""; }
}
function setToken(token) {
  try {
    if (token) localStorage.setItem(TOKEN_KEY, token); else localStorage.removeItem(TOKEN_KEY);
  } catch { memoryStore.token = token; }
}

class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : ApiError.describe(detail, status));
    this.status = status;
    this.detail = detail;
  }

  static describe(detail, status) {
    if (Array.isArray(detail)) {
      return detail.map((d) => `${(d.loc || []).filter((p) => p !== "body").join(".")}: ${d.msg}`)
        .join("; ");
    }
    return `HTTP ${status}`;
  }
}

/** Raised when the user closes the token dialog without a token. */
class AuthCancelled extends Error {
  constructor() { super("An API token is needed: use the “API token” button."); }
}

let tokenRequest = null;   // one open dialog serves every concurrent 401
let authBlocked = false;   // the user declined: pollers wait until a token is saved

/** Show the token dialog; resolves when a token is saved, rejects on cancel. */
function requestToken(message) {
  if (authBlocked) return Promise.reject(new AuthCancelled());
  if (tokenRequest) return tokenRequest;
  tokenRequest = new Promise((resolve, reject) => {
    openTokenDialog(message, (saved) => {
      tokenRequest = null;
      if (saved) resolve(); else { authBlocked = true; reject(new AuthCancelled()); }
    });
  });
  return tokenRequest;
}

async function readBody(res) {
  const text = await res.text();
  try { return JSON.parse(text); } catch { return text; }
}

/** fetch() with the token; retries after the user enters a token on 401. */
async function apiFetch(path, init = {}) {
  for (;;) {
    const headers = new Headers(init.headers || {});
    const token = getToken();
    if (token) headers.set("Authorization", `Bearer ${token}`);
    const res = await fetch(new URL(path, API), { cache: "no-store", ...init, headers });
    if (res.status !== 401) return res;
    const body = await readBody(res);
    const detail = body && typeof body === "object" ? body.detail : body;
    await requestToken(token
      ? `The server rejected the stored token (${detail || "401"}). Enter the current one.`
      : null);
  }
}

/** JSON API call: returns the parsed body, throws ApiError on a non-2xx answer. */
async function api(path, { method = "GET", json, form, signal } = {}) {
  const init = { method, signal, headers: { Accept: "application/json" } };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form !== undefined) {
    init.body = form;
  }
  const res = await apiFetch(path, init);
  const body = await readBody(res);
  if (!res.ok) throw new ApiError(res.status, body && typeof body === "object" ? body.detail : body);
  return body;
}

// ---------------------------------------------------------------- token dialog

let tokenDone = null;
function openTokenDialog(message, done) {
  const dialog = $("#token-dialog");
  tokenDone = done;
  $("#token-message").textContent = message
    || "This service needs an API token (the value of SYNCBN_API_TOKEN). "
    + "It is kept in this browser's storage.";
  $("#token-error").textContent = "";
  const input = $("#token-input");
  input.value = getToken();
  input.removeAttribute("aria-invalid");
  if (!dialog.open) dialog.showModal();
  input.focus();
  input.select();
}

function closeTokenDialog(saved) {
  const dialog = $("#token-dialog");
  if (dialog.open) dialog.close();
  const done = tokenDone;
  tokenDone = null;
  if (done) done(saved);
  if (saved && authBlocked) {
    authBlocked = false;
    router();  // the views stopped while no token was given: reload the current one
  }
}

function initTokenDialog() {
  const dialog = $("#token-dialog");
  $("#token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("#token-input").value.trim();
    if (!token) {
      $("#token-error").textContent = "Enter the token.";
      $("#token-input").setAttribute("aria-invalid", "true");
      $("#token-input").focus();
      return;
    }
    setToken(token);
    closeTokenDialog(true);
  });
  $("#token-cancel").addEventListener("click", () => closeTokenDialog(false));
  $("#token-forget").addEventListener("click", () => {
    setToken("");
    $("#token-input").value = "";
    $("#token-error").textContent = "Token removed from this browser.";
    $("#token-input").focus();
  });
  dialog.addEventListener("cancel", (event) => { event.preventDefault(); closeTokenDialog(false); });
  $("#token-button").addEventListener("click", () => {
    if (!dialog.open) openTokenDialog(null, () => {});
  });
}

// ---------------------------------------------------------------- SSE over fetch

/**
 * Follow a text/event-stream with fetch (so the Authorization header goes along).
 * Calls onEvent({event, data, id}) per event; resolves when the server closes the stream or
 * onEvent returns false.
 */
async function readEventStream(path, { signal, lastEventId, onOpen, onEvent }) {
  const headers = { Accept: "text/event-stream" };
  if (lastEventId) headers["Last-Event-ID"] = lastEventId;
  const res = await apiFetch(path, { headers, signal });
  if (!res.ok || !res.body) throw new ApiError(res.status, (await readBody(res))?.detail);
  onOpen?.();
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = { event: "", data: [], id: null };
  const dispatch = () => {
    let result;
    if (event.data.length) {
      result = onEvent({ event: event.event || "message", data: event.data.join("\n"), id: event.id });
    }
    event = { event: "", data: [], id: event.id };
    return result;
  };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let nl;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        let line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        if (line.endsWith("\r")) line = line.slice(0, -1);
        if (line === "") {
          if (dispatch() === false) { await reader.cancel().catch(() => {}); return; }
          continue;
        }
        if (line.startsWith(":")) continue;  // comment / keep-alive ping
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let data = colon < 0 ? "" : line.slice(colon + 1);
        if (data.startsWith(" ")) data = data.slice(1);
        if (field === "event") event.event = data;
        else if (field === "data") event.data.push(data);
        else if (field === "id") event.id = data;
      }
    }
  } finally {
    reader.releaseLock?.();
  }
}

// ---------------------------------------------------------------- charts (SVG)

function niceStep(span, count) {
  const raw = span / Math.max(1, count);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const norm = raw / mag;
  return (norm >= 5 ? 10 : norm >= 2 ? 5 : norm >= 1 ? 2 : 1) * mag;
}

function ticks(lo, hi, count) {
  const step = niceStep(hi - lo, count);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
    out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  }
  return out;
}

function tickLabel(v, step) {
  if (Math.abs(v) >= 1e4) return v.toExponential(0);
  const digits = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
  return v.toFixed(Math.min(digits, 4));
}

/**
 * Line chart into `box`: spec = {series: [{key, label, color, points: [{x, y, title}],
 * dashed, markers, band: [{x, lo, hi}]}], xLabel, yLabel, yMin, yMax, yFormat, empty}.
 * Every series becomes <path class="series" data-series=key data-points=n>.
 */
function drawChart(box, spec) {
  box.replaceChildren();
  box._spec = spec;
  const width = Math.max(260, Math.round(box.clientWidth || 560));
  const height = width < 420 ? 190 : 220;
  const m = { l: 50, r: 14, t: 10, b: 36 };
  const all = spec.series.flatMap((ser) => [
    ...ser.points.filter((p) => isNum(p.x) && isNum(p.y)),
    ...(ser.band || []).flatMap((b) => [{ x: b.x, y: b.lo }, { x: b.x, y: b.hi }]),
  ]);
  const label = `${spec.yLabel} by ${spec.xLabel}`;
  const svg = s("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": label });
  svg.append(s("title", {}, label));
  if (!all.length) {
    svg.append(s("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "empty" },
      spec.empty || "No data yet"));
    box.append(svg);
    return;
  }
  let [x0, x1] = [Math.min(...all.map((p) => p.x)), Math.max(...all.map((p) => p.x))];
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  let y0 = spec.yMin ?? Math.min(...all.map((p) => p.y));
  let y1 = spec.yMax ?? Math.max(...all.map((p) => p.y));
  if (spec.yMin === undefined || spec.yMax === undefined) {
    const pad = (y1 - y0) * 0.08 || Math.abs(y1) * 0.1 || 1;
    if (spec.yMin === undefined) y0 = Math.max(spec.yFloor ?? -Infinity, y0 - pad);
    if (spec.yMax === undefined) y1 += pad;
  }
  const X = (x) => m.l + ((x - x0) / (x1 - x0)) * (width - m.l - m.r);
  const Y = (y) => height - m.b - ((y - y0) / (y1 - y0)) * (height - m.t - m.b);

  const grid = s("g", { class: "grid" });
  const yt = ticks(y0, y1, height < 200 ? 4 : 5);
  const yStep = yt.length > 1 ? yt[1] - yt[0] : 1;
  for (const v of yt) {
    grid.append(s("line", { x1: m.l, x2: width - m.r, y1: Y(v), y2: Y(v) }));
    grid.append(s("text", { x: m.l - 6, y: Y(v), dy: "0.32em", "text-anchor": "end" },
      spec.yFormat ? spec.yFormat(v) : tickLabel(v, yStep)));
  }
  const xt = ticks(x0, x1, Math.max(2, Math.floor((width - m.l) / 80)));
  const xStep = xt.length > 1 ? xt[1] - xt[0] : 1;
  for (const v of xt) {
    if (spec.xInteger && !Number.isInteger(v)) continue;
    grid.append(s("line", { class: "xtick", x1: X(v), x2: X(v), y1: height - m.b, y2: height - m.b + 4 }));
    grid.append(s("text", { x: X(v), y: height - m.b + 16, "text-anchor": "middle" },
      tickLabel(v, xStep)));
  }
  grid.append(s("line", { class: "axis", x1: m.l, x2: width - m.r, y1: height - m.b, y2: height - m.b }));
  grid.append(s("text", { class: "axis-label", x: width - m.r, y: height - 4, "text-anchor": "end" },
    spec.xLabel));
  svg.append(grid);

  for (const ser of spec.series) {
    const g = s("g", { class: "serie" });
    if (ser.band?.length > 1) {
      const top = ser.band.map((b) => `${X(b.x).toFixed(1)},${Y(b.hi).toFixed(1)}`);
      const bottom = ser.band.slice().reverse().map((b) => `${X(b.x).toFixed(1)},${Y(b.lo).toFixed(1)}`);
      g.append(s("path", { class: "band", d: `M${top.join("L")}L${bottom.join("L")}Z`,
        style: `fill:${ser.color}` }));
    }
    const pts = ser.points.filter((p) => isNum(p.x) && isNum(p.y));
    const d = pts.map((p, i) => `${i ? "L" : "M"}${X(p.x).toFixed(1)},${Y(p.y).toFixed(1)}`).join("");
    g.append(s("path", { class: "series", d: d || "M0,0", style: `stroke:${ser.color}`,
      "stroke-dasharray": ser.dashed ? "5 4" : null, "stroke-width": ser.width || 2,
      "data-series": ser.key, "data-points": pts.length }));
    if (ser.markers || pts.length === 1) {
      for (const p of pts) {
        g.append(s("circle", { cx: X(p.x).toFixed(1), cy: Y(p.y).toFixed(1), r: 3.5,
          style: `fill:${ser.color}`, class: "point", "data-series": ser.key },
        s("title", {}, p.title || `${ser.label}: ${p.y}`)));
      }
    }
    svg.append(g);
  }
  box.append(svg);
  const legend = h("ul", { class: "legend" }, spec.series.filter((ser) => !ser.hideLegend).map((ser) =>
    h("li", {}, h("span", { class: `swatch${ser.dashed ? " dashed" : ""}`,
      style: `--c:${ser.color}` }), ser.label)));
  box.append(legend);
}

const chartObserver = new ResizeObserver((entries) => {
  for (const entry of entries) {
    const box = entry.target;
    const width = Math.round(entry.contentRect.width);
    if (box._spec && width && Math.abs(width - (box._width || 0)) > 8) {
      box._width = width;
      requestAnimationFrame(() => box._spec && drawChart(box, box._spec));
    }
  }
});

// ---------------------------------------------------------------- jobs page

const FIELDS = [
  { name: "dataset", label: "Dataset", type: "select", options: BUILTIN_DATASETS.map((d) => [d.id, d.label]),
    hint: "built-in, or an uploaded .npz" },
  { name: "model", label: "Model", type: "select", value: "auto",
    options: [["auto", "auto (by input shape)"], ["mlp", "mlp"], ["cnn1d", "cnn1d"], ["resnet", "resnet"]] },
  { name: "norm", label: "Normalization", type: "select", value: "sync",
    options: [["sync", "sync — statistics of the global batch"], ["local", "local — each worker's own batch"]] },
  { name: "workers", label: "Workers", type: "int", value: 2, min: 1, max: 256,
    hint: "Ray Train processes" },
  { name: "batch_size_per_worker", label: "Batch per worker", type: "int", value: 16, min: 1 },
  { name: "epochs", label: "Epochs", type: "int", value: 3, min: 1 },
  { name: "sync_group_size", label: "Sync group size", type: "int", min: 1, optional: true,
    placeholder: "all workers", hint: "must divide workers; sync only" },
  { name: "lr", label: "Learning rate", type: "float", value: 0.05, advanced: true },
  { name: "momentum", label: "Momentum", type: "float", value: 0.9, advanced: true },
  { name: "weight_decay", label: "Weight decay", type: "float", value: 0.0005, advanced: true },
  { name: "seed", label: "Seed", type: "int", value: 0, min: 0, advanced: true },
  { name: "report_every_steps", label: "Report every k steps", type: "int", value: 0, min: 0,
    advanced: true, hint: "0: once per epoch" },
  { name: "max_failures", label: "Max worker failures", type: "int", value: 1, min: 0, advanced: true },
  { name: "cpus_per_worker", label: "CPUs per worker", type: "float", value: 1, advanced: true },
  { name: "use_gpu", label: "Use a GPU per worker", type: "bool", value: false, advanced: true },
];
const FIELD_NAMES = new Set(FIELDS.map((f) => f.name));

function fieldEl(f) {
  const id = `f-${f.name}`;
  const described = [f.hint ? `h-${f.name}` : null, `e-${f.name}`].filter(Boolean).join(" ");
  let control;
  if (f.type === "select") {
    control = h("select", { id, name: f.name, "aria-describedby": described },
      f.options.map(([value, text]) => h("option", { value, selected: value === f.value }, text)));
  } else if (f.type === "bool") {
    control = h("input", { id, name: f.name, type: "checkbox", checked: f.value,
      "aria-describedby": described });
  } else {
    control = h("input", { id, name: f.name, type: "number", value: f.value ?? null,
      step: f.type === "int" ? 1 : "any", min: f.min ?? null, max: f.max ?? null,
      inputmode: f.type === "int" ? "numeric" : "decimal", placeholder: f.placeholder ?? null,
      "aria-describedby": described });
  }
  return h("div", { class: `field${f.type === "bool" ? " check" : ""}`, "data-field": f.name },
    h("label", { for: id }, f.label),
    control,
    f.hint ? h("small", { class: "hint", id: `h-${f.name}` }, f.hint) : null,
    h("p", { class: "field-error", id: `e-${f.name}`, "data-testid": `error-${f.name}` }));
}

/** Read the form into a JobSpec; client-side only checks that numbers parse. */
function readSpec(form) {
  const spec = {};
  const problems = {};
  for (const f of FIELDS) {
    const el = form.elements[f.name];
    if (f.type === "bool") { spec[f.name] = el.checked; continue; }
    if (f.type === "select") { spec[f.name] = el.value; continue; }
    if (el.validity.badInput) { problems[f.name] = "Enter a number."; continue; }
    if (el.value.trim() === "") {
      if (f.optional) spec[f.name] = null;
      continue;  // the server's default
    }
    spec[f.name] = Number(el.value);
  }
  return { spec, problems };
}

function clearErrors(form) {
  for (const el of $$(".field-error", form)) el.textContent = "";
  for (const el of $$("[aria-invalid]", form)) el.removeAttribute("aria-invalid");
  setHidden($("#form-error", form), true);
}

/** Put every error next to its field (the last element of `loc`); the rest above the button. */
function showErrors(form, errors, general) {
  const byField = {};
  const other = general ? [general] : [];
  for (const { field, msg } of errors) {
    if (field && FIELD_NAMES.has(field)) (byField[field] ||= []).push(msg);
    else other.push(field ? `${field}: ${msg}` : msg);
  }
  let first = null;
  for (const [name, msgs] of Object.entries(byField)) {
    $(`#e-${name}`, form).textContent = msgs.join("; ");
    const control = form.elements[name];
    control.setAttribute("aria-invalid", "true");
    first ||= control;
    if (control.closest("details")) control.closest("details").open = true;
  }
  const box = $("#form-error", form);
  const count = Object.keys(byField).length;
  const summary = count ? [`${count === 1 ? "One field needs" : `${count} fields need`} attention.`] : [];
  box.textContent = [...summary, ...other].join(" ");
  setHidden(box, !box.textContent);
  first?.focus();
}

function errorsFromDetail(detail) {
  if (!Array.isArray(detail)) return [];
  return detail.map((d) => {
    const loc = Array.isArray(d.loc) ? d.loc : [];
    const field = loc.length >= 2 && loc[0] === "body" ? String(loc[loc.length - 1]) : null;
    return { field, msg: d.msg || JSON.stringify(d) };
  });
}

function jobsView() {
  const root = $("#tpl-jobs").content.firstElementChild.cloneNode(true);
  const state = { offset: 0, filter: "", rows: new Map(), timer: null, active: false, loading: false,
    again: false };
  const body = $("#jobs-body", root);
  const form = $("#job-form", root);

  for (const f of FIELDS) {
    $(f.advanced ? "#job-fields-advanced" : "#job-fields", root).append(fieldEl(f));
  }

  function row(job) {
    const tr = h("tr", { "data-job-id": job.id, "data-testid": "job-row" });
    tr.append(...Array.from({ length: 9 }, () => h("td")));
    tr.cells[0].append(h("a", { href: `#/jobs/${encodeURIComponent(job.id)}`, "data-testid": "job-link" },
      h("code", {}, job.id)));
    tr.cells[6].className = "num";
    tr.cells[6].dataset.testid = "job-accuracy";
    tr.addEventListener("click", (event) => {
      if (!event.target.closest("a") && !getSelection().toString()) location.hash = `#/jobs/${job.id}`;
    });
    return tr;
  }

  function fill(tr, job) {
    const sig = JSON.stringify([job.state, job.reason, job.progress, job.result, job.finished_at]);
    if (tr._sig === sig) return;
    tr._sig = sig;
    const { spec, progress = {} } = job;
    const cells = tr.cells;
    const stateBadge = badge(job.state);
    stateBadge.dataset.testid = "job-state";
    if (job.reason) stateBadge.title = job.reason;
    cells[1].replaceChildren(stateBadge);
    cells[2].textContent = spec.dataset;
    cells[3].textContent = `${spec.workers} × ${spec.batch_size_per_worker}`;
    cells[4].textContent = spec.norm + (spec.sync_group_size ? ` (groups of ${spec.sync_group_size})` : "");
    const frac = isNum(progress.fraction) ? progress.fraction : 0;
    cells[5].replaceChildren(h("div", { class: "mini-progress" },
      h("progress", { max: 1, value: frac, "aria-label": `${job.id} progress` }),
      h("span", {}, `${Math.round(frac * 100)} %`,
        progress.epochs ? h("small", {}, ` · epoch ${progress.epoch}/${progress.epochs}`) : null)));
    cells[6].textContent = pct(job.result?.test_accuracy);
    cells[7].replaceChildren(timeEl(job.created_at));
    cells[8].replaceChildren(timeEl(job.finished_at));
  }

  /** Refresh the list; a call while one is in flight makes that one run again. */
  async function load() {
    if (authBlocked) return;
    if (state.loading) { state.again = true; return; }
    state.loading = true;
    try {
      do {
        state.again = false;
        await loadOnce();
      } while (state.again && !authBlocked);
    } finally {
      state.loading = false;
    }
  }

  async function loadOnce() {
    const params = new URLSearchParams({ limit: PAGE_SIZE, offset: state.offset });
    if (state.filter) params.set("state", state.filter);
    try {
      const data = await api(`jobs?${params}`);
      $("#jobs-error", root).hidden = true;
      const seen = new Set();
      data.jobs.forEach((job, i) => {
        seen.add(job.id);
        let tr = state.rows.get(job.id);
        if (!tr) { tr = row(job); state.rows.set(job.id, tr); }
        fill(tr, job);
        if (body.children[i] !== tr) body.insertBefore(tr, body.children[i] || null);
      });
      for (const [id, tr] of state.rows) {
        if (!seen.has(id)) { tr.remove(); state.rows.delete(id); }
      }
      const { total, offset } = data;
      $("#jobs-empty", root).hidden = total > 0;
      $("#jobs-empty", root).textContent = state.filter
        ? `No ${state.filter} jobs.` : "No jobs yet. Submit one with the form.";
      $("#jobs-count", root).textContent = total
        ? `${offset + 1}–${offset + data.jobs.length} of ${total}` : "";
      $("#jobs-prev", root).disabled = offset <= 0;
      $("#jobs-next", root).disabled = offset + data.jobs.length >= total;
    } catch (err) {
      const box = $("#jobs-error", root);
      box.textContent = `Could not load the jobs: ${err.message}`;
      box.hidden = false;
    }
  }

  async function loadDatasets() {
    try {
      const { datasets } = await api("datasets");
      const select = form.elements.dataset;
      const have = new Set([...select.options].map((o) => o.value));
      for (const d of datasets) {
        if (have.has(d.id)) continue;
        const shape = Array.isArray(d.input_shape) ? d.input_shape.join("×") : "";
        select.append(h("option", { value: d.id },
          `${d.name || d.id} (${d.id}) — ${d.n_train} train, ${shape}, ${d.num_classes} classes`));
      }
    } catch (err) {
      if (!(err instanceof AuthCancelled)) console.warn("datasets:", err);
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    const status = $("#submit-status", root);
    status.textContent = "";
    const { spec, problems } = readSpec(form);
    if (Object.keys(problems).length) {
      showErrors(form, Object.entries(problems).map(([field, msg]) => ({ field, msg })));
      return;
    }
    const button = $("#submit-job", root);
    button.disabled = true;
    status.textContent = "Submitting…";
    try {
      const job = await api("jobs", { method: "POST", json: spec });
      status.replaceChildren("Submitted ",
        h("a", { href: `#/jobs/${encodeURIComponent(job.id)}`, "data-testid": "submitted-link",
          "data-job-id": job.id }, h("code", {}, job.id)),
        ` (${job.state}${job.reason ? `: ${job.reason}` : ""}).`);
      state.offset = 0;
      await load();
    } catch (err) {
      status.textContent = "";
      if (err instanceof ApiError && Array.isArray(err.detail)) {
        showErrors(form, errorsFromDetail(err.detail));
      } else {
        showErrors(form, [], `Not submitted: ${err.message}`);
      }
    } finally {
      button.disabled = false;
    }
  });
  form.addEventListener("reset", () => {
    clearErrors(form);
    $("#submit-status", root).textContent = "";
  });

  $("#upload-form", root).addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = $("#upload-file", root);
    const status = $("#upload-status", root);
    if (!input.files.length) { status.textContent = "Choose an .npz file first."; return; }
    const data = new FormData();
    data.append("file", input.files[0]);
    status.textContent = "Uploading…";
    try {
      const dataset = await api("datasets", { method: "POST", form: data });
      status.textContent = `Uploaded as ${dataset.id}.`;
      await loadDatasets();
      form.elements.dataset.value = dataset.id;
    } catch (err) {
      status.textContent = `Upload failed: ${err.message}`;
    }
  });

  $("#state-filter", root).addEventListener("change", (event) => {
    state.filter = event.target.value;
    state.offset = 0;
    load();
  });
  $("#jobs-refresh", root).addEventListener("click", () => load());
  $("#jobs-prev", root).addEventListener("click", () => {
    state.offset = Math.max(0, state.offset - PAGE_SIZE);
    load();
  });
  $("#jobs-next", root).addEventListener("click", () => { state.offset += PAGE_SIZE; load(); });

  return {
    root,
    title: "Jobs",
    datasetsLoaded: false,
    enter() {
      state.active = true;
      load();
      if (!this.datasetsLoaded) { this.datasetsLoaded = true; loadDatasets(); }
      clearInterval(state.timer);
      state.timer = setInterval(() => { if (!document.hidden) load(); }, LIST_POLL_MS);
    },
    leave() { state.active = false; clearInterval(state.timer); },
  };
}

// ---------------------------------------------------------------- job page

function reportKey(r) { return `${r.kind}:${r.epoch}:${r.step}`; }

function jobView(jobId) {
  const root = $("#tpl-job").content.firstElementChild.cloneNode(true);
  const bind = (name) => $(`[data-bind="${name}"]`, root);
  const abort = new AbortController();
  const v = {
    job: null,
    reports: new Map(),      // reportKey -> report, every report seen (history + stream)
    evaluations: new Map(),  // epoch -> {epoch, step, test_accuracy, test_loss}
    latest: null,            // the report the workers table shows
    lastEventId: null,
    logsTimer: null,
    renderQueued: false,
    jobRefresh: null,
  };
  const charts = { loss: $('[data-chart="loss"]', root), acc: $('[data-chart="acc"]', root) };
  $('[data-bind="id"]', root).textContent = jobId;

  function showError(err) {
    const box = bind("error");
    if (!err) { box.hidden = true; return; }
    box.textContent = err instanceof ApiError && err.status === 404
      ? `Job ${jobId} not found.` : `Could not load the job: ${err.message}`;
    box.hidden = false;
  }

  function setLive(text, cls) {
    const el = $('[data-testid="live-status"]', root);
    el.textContent = text;
    el.className = `live ${cls || ""}`;
  }

  // -- data intake
  // Streamed reports arrive in order (also after a restart from a checkpoint, when the step
  // goes back); the history is ordered by step.
  function addReport(r, streamed = false) {
    if (!r || !Array.isArray(r.workers)) return;
    v.reports.set(reportKey(r), r);
    if (streamed || !v.latest || r.step > v.latest.step
      || (r.step === v.latest.step && r.kind === "epoch")) {
      v.latest = r;
    }
    if (r.kind === "epoch") {
      const w = r.workers.find((x) => isNum(x.test_accuracy));
      if (w) {
        v.evaluations.set(r.epoch, { epoch: r.epoch, step: r.step,
          test_accuracy: w.test_accuracy, test_loss: w.test_loss });
      }
    }
  }

  async function loadJob() {
    v.job = await api(`jobs/${encodeURIComponent(jobId)}`, { signal: abort.signal });
    showError(null);
    renderJob();
  }

  async function loadAll() {
    const [job, metrics, workers] = await Promise.all([
      api(`jobs/${encodeURIComponent(jobId)}`, { signal: abort.signal }),
      api(`jobs/${encodeURIComponent(jobId)}/metrics`, { signal: abort.signal }).catch(() => null),
      api(`jobs/${encodeURIComponent(jobId)}/workers`, { signal: abort.signal }).catch(() => null),
    ]);
    v.job = job;
    for (const r of metrics?.reports || []) addReport(r);
    for (const e of metrics?.evaluations || []) v.evaluations.set(e.epoch, e);
    if (workers?.workers?.length && (!v.latest || (workers.step ?? -1) > v.latest.step)) {
      const first = workers.workers[0];
      v.latest = { kind: first.kind || "step", epoch: workers.epoch ?? first.epoch,
        step: workers.step ?? first.step, time: first.time, workers: workers.workers };
    }
    showError(null);
    renderJob();
    renderData();
  }

  function scheduleJobRefresh() {
    if (v.jobRefresh) return;
    v.jobRefresh = setTimeout(async () => {
      v.jobRefresh = null;
      try { await loadJob(); } catch (err) { if (!abort.signal.aborted) showError(err); }
    }, 700);
  }

  function onEvent({ event, data, id }) {
    if (id) v.lastEventId = id;
    let payload;
    try { payload = JSON.parse(data); } catch { return; }
    if (event === "report") {
      addReport(payload, true);
      queueRender();
      renderJob();
      scheduleJobRefresh();
    } else if (event === "exception") {
      const errors = Object.entries(payload.errors || {}).map(([rank, msg]) => `rank ${rank}: ${msg}`);
      const box = bind("exception");
      box.textContent = `Worker failure${errors.length > 1 ? "s" : ""} (Ray Train restarts from the last `
        + `checkpoint up to max_failures times): ${errors.join("; ")}`;
      box.hidden = !errors.length;
    } else if (event === "state") {
      if (v.job && payload.state) {
        v.job.state = payload.state;
        v.job.reason = payload.reason ?? v.job.reason;
        renderJob();
      }
      scheduleJobRefresh();
    } else if (event === "end") {
      v.ended = true;
      return false;  // the job is final: stop reading
    }
    return true;
  }

  async function follow() {
    let delay = 1000;
    while (!abort.signal.aborted && v.job && !FINAL.has(v.job.state)) {
      v.ended = false;
      try {
        setLive("connecting…", "wait");
        await readEventStream(`jobs/${encodeURIComponent(jobId)}/events`, {
          signal: abort.signal,
          lastEventId: v.lastEventId,
          onOpen: () => { setLive("live", "on"); delay = 1000; },
          onEvent,
        });
      } catch (err) {
        if (abort.signal.aborted) return;
        if (err instanceof AuthCancelled) { setLive("", ""); showError(err); return; }
        setLive("reconnecting…", "wait");
      }
      if (abort.signal.aborted) return;
      // The stream ended (job final, server restart or network): catch up from REST.
      try { await loadAll(); } catch (err) { if (!abort.signal.aborted) showError(err); }
      if (v.ended || (v.job && FINAL.has(v.job.state))) break;
      await sleep(delay);
      delay = Math.min(delay * 2, 5000);
    }
    if (!abort.signal.aborted) {
      setLive("", "");
      loadLogs();
    }
  }

  async function loadLogs() {
    const pre = bind("logs");
    try {
      const { logs } = await api(`jobs/${encodeURIComponent(jobId)}/logs?tail=200`,
        { signal: abort.signal });
      const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.textContent = (logs || "").replace(/\x1b\[[0-9;?]*[A-Za-z]/g, "") || "(no output yet)";
      if (atBottom) pre.scrollTop = pre.scrollHeight;
    } catch (err) {
      if (!abort.signal.aborted) pre.textContent = `Could not load the logs: ${err.message}`;
    }
  }

  // -- rendering
  function renderJob() {
    const job = v.job;
    if (!job) return;
    document.title = `${job.id} · ${job.state} · syncbn`;
    const stateEl = bind("state");
    stateEl.textContent = job.state;
    stateEl.className = `badge state-${job.state}`;
    stateEl.dataset.state = job.state;
    const reason = bind("reason");
    const { head, rest } = splitReason(job.reason);
    reason.replaceChildren(head, rest ? h("details", { class: "reason-more" },
      h("summary", {}, "full message"), h("pre", { tabindex: 0 }, rest)) : null);
    reason.className = `banner${job.state === "failed" ? " error" : ""}`;
    reason.hidden = !job.reason;

    const final = FINAL.has(job.state);
    const cancel = $('[data-act="cancel"]', root);
    const confirmBox = $(".confirm", root);
    cancel.disabled = final || v.cancelling;
    if (final) { cancel.hidden = true; confirmBox.hidden = true; } else if (confirmBox.hidden) cancel.hidden = false;

    // The job's progress follows the reports; the stream may be a report ahead of it.
    const p = { ...(job.progress || {}) };
    if (v.latest && !FINAL.has(job.state) && v.latest.step > (p.step ?? 0)) {
      const total = (p.steps_per_epoch || 0) * (p.epochs || job.spec.epochs);
      p.step = v.latest.step;
      p.epoch = v.latest.kind === "epoch" ? v.latest.epoch : Math.max(0, v.latest.epoch - 1);
      if (total) p.fraction = Math.min(1, p.step / total);
    }
    const progress = $('[data-testid="job-progress"]', root);
    progress.value = isNum(p.fraction) ? p.fraction : 0;
    bind("progress-text").textContent = `${Math.round((p.fraction || 0) * 100)} % · epoch ${p.epoch ?? 0}/${
      p.epochs ?? job.spec.epochs} · step ${p.step ?? 0}${p.steps_per_epoch ? ` (${p.steps_per_epoch}/epoch)` : ""}`;

    const spec = job.spec;
    const rows = [
      ["Dataset", spec.dataset], ["Model", spec.model],
      ["Workers × batch", `${spec.workers} × ${spec.batch_size_per_worker} = ${spec.workers * spec.batch_size_per_worker} per step`],
      ["Normalization", spec.norm + (spec.sync_group_size ? `, groups of ${spec.sync_group_size}` : "")],
      ["Epochs", spec.epochs],
      ["Optimizer", `SGD lr ${spec.lr}, momentum ${spec.momentum}, weight decay ${spec.weight_decay}`],
      ["Seed", spec.seed],
      ["Resources", `${spec.cpus_per_worker} CPU${spec.use_gpu ? " + 1 GPU" : ""} per worker, ${spec.max_failures} failure(s) tolerated`],
      ["Test accuracy", h("strong", { "data-testid": "result-accuracy",
        "data-value": job.result?.test_accuracy ?? null }, pct(job.result?.test_accuracy, 2))],
      ["Test loss", fixed(job.result?.test_loss, 4)],
      ["Created", timeEl(job.created_at)], ["Started", timeEl(job.started_at)],
      ["Finished", timeEl(job.finished_at)],
    ];
    if (job.result?.wall_time_s) rows.push(["Wall time", duration(job.result.wall_time_s)]);
    bind("summary").replaceChildren(...rows.flatMap(([k, val]) =>
      [h("dt", {}, k), h("dd", {}, val instanceof Node ? val : String(val ?? dash))]));

    const transitions = job.transitions?.length ? job.transitions
      : [{ state: job.state, reason: job.reason, at: job.updated_at }];
    bind("timeline").replaceChildren(...transitions.map((t, i) => {
      const at = parseTime(t.at);
      const next = parseTime(transitions[i + 1]?.at) || (FINAL.has(t.state) ? null : new Date());
      const took = at && next && i < transitions.length - 1 ? duration((next - at) / 1000) : "";
      return h("li", { "data-state": t.state },
        badge(t.state), " ", timeEl(t.at),
        took ? h("small", { class: "muted" }, ` · ${took}`) : null,
        t.reason ? h("div", { class: "reason" }, splitReason(t.reason).head) : null);
    }));
  }

  function queueRender() {
    if (v.renderQueued) return;
    v.renderQueued = true;
    requestAnimationFrame(() => { v.renderQueued = false; renderData(); });
  }

  function renderData() {
    renderWorkers();
    renderBN();
    renderCharts();
  }

  function renderWorkers() {
    const r = v.latest;
    const tbody = bind("workers");
    bind("workers-empty").hidden = Boolean(r?.workers?.length);
    if (!r?.workers?.length) { tbody.replaceChildren(); bind("report-info").textContent = ""; return; }
    bind("report-info").replaceChildren(
      `${r.kind === "epoch" ? "end of epoch" : "step report"} · epoch ${r.epoch} · step ${r.step} · `,
      timeEl(r.time));
    const workers = [...r.workers].sort((a, b) => a.rank - b.rank);
    tbody.replaceChildren(...workers.map((w) => {
      const share = isNum(w.sync_time_s) && isNum(w.step_time_s) && w.step_time_s > 0
        ? Math.min(1, w.sync_time_s / w.step_time_s) : null;
      return h("tr", { "data-rank": w.rank, "data-testid": "worker-row" },
        h("th", { scope: "row" }, h("span", { class: "swatch", style: `--c:${RANK_COLORS[w.rank % 10]}` }),
          String(w.rank)),
        h("td", { title: w.node_id || "" }, w.node_id ? h("code", {}, String(w.node_id).slice(0, 8)) : dash),
        h("td", { class: "num" }, String(w.batch_size ?? dash)),
        h("td", { class: "num" }, rate(w.samples_per_s)),
        h("td", { class: "num" }, ms(w.step_time_s)),
        h("td", { class: "share" }, share === null ? dash : h("span", { class: "bar-cell" },
          h("span", { class: "bar", style: `--v:${(share * 100).toFixed(1)}%` }),
          h("span", {}, pct(share)))),
        h("td", { class: "num" }, fixed(w.loss, 4)),
        h("td", { class: "num" }, pct(w.train_accuracy)));
    }));
  }

  function renderBN() {
    const metric = bind("bn-metric").value;
    const box = bind("bn");
    const norm = v.job?.spec?.norm;
    const help = bind("bn-help");
    help.textContent = metric === "mean_shift"
      ? "Per BN layer and worker: mean over channels of |μ_local − μ_global| / σ_global, "
        + "how far this worker's batch mean is from the global batch mean, in global standard deviations. "
        + (norm === "local"
          ? "With norm=local each worker normalizes with its own batch, so this error goes straight into its activations."
          : "With norm=sync every worker normalizes with the global statistics: this is the noise SyncBN removes.")
      : "Per BN layer and worker: mean over channels of var_local / var_global (1 = same spread as the global batch).";
    const r = v.latest;
    const workers = r?.workers ? [...r.workers].sort((a, b) => a.rank - b.rank) : [];
    const layers = [];
    for (const w of workers) for (const name of Object.keys(w.bn || {})) if (!layers.includes(name)) layers.push(name);
    if (!layers.length) {
      box.replaceChildren(h("p", { class: "muted empty" }, workers.length
        ? "This model reports no BatchNorm layers." : "No report yet."));
      return;
    }
    // Colour: mean_shift 0 → 1σ (clamped); var_ratio by |log2(ratio)| 0 → 1 (×2 or ÷2).
    const intensity = (x) => {
      if (!isNum(x)) return null;
      if (metric === "mean_shift") return Math.min(1, Math.max(0, x));
      return x > 0 ? Math.min(1, Math.abs(Math.log2(x))) : 1;
    };
    const dense = workers.length > 12;
    const table = h("table", { class: `heatmap${dense ? " dense" : ""}`, "data-testid": "bn-heatmap",
      "data-metric": metric },
    h("caption", { class: "sr-only" }, `${metric} per BatchNorm layer (rows) and worker rank (columns)`),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "layer"),
      h("th", { scope: "col", class: "num", title: "local / global sample count" }, "n local / global"),
      workers.map((w) => h("th", { scope: "col", class: "num" }, `rank ${w.rank}`)))),
    h("tbody", {}, layers.map((name) => {
      const any = workers.find((w) => w.bn?.[name])?.bn[name] || {};
      return h("tr", { "data-layer": name },
        h("th", { scope: "row" }, h("code", {}, name)),
        h("td", { class: "num muted" }, `${any.local_count ?? dash} / ${any.global_count ?? dash}`),
        workers.map((w) => {
          const cell = w.bn?.[name] || {};
          const value = cell[metric];
          const t = intensity(value);
          const text = metric === "mean_shift" ? fixed(value, 3) : fixed(value, 2);
          return h("td", {
            class: `heat${t !== null && t > 0.55 ? " strong" : ""}`,
            style: t === null ? null : `--t:${t.toFixed(3)}`,
            "data-rank": w.rank,
            "data-value": isNum(value) ? value : null,
            title: `rank ${w.rank}, ${name}: mean shift ${fixed(cell.mean_shift, 4)} σ, `
              + `variance ratio ${fixed(cell.var_ratio, 3)}, n ${cell.local_count ?? "?"} of ${cell.global_count ?? "?"}`,
          }, dense ? "" : text);
        }));
    })));
    const legend = h("div", { class: "heat-legend", "aria-hidden": "true" },
      h("span", {}, metric === "mean_shift" ? "0" : "×1"),
      h("span", { class: "ramp" }),
      h("span", {}, metric === "mean_shift" ? "≥ 1 σ" : "×2 or ÷2"));
    box.replaceChildren(table, legend);
  }

  function renderCharts() {
    const reports = [...v.reports.values()].sort((a, b) => a.step - b.step || (a.kind === "epoch") - (b.kind === "epoch"));
    const ranks = new Set();
    for (const r of reports) for (const w of r.workers) ranks.add(w.rank);
    const rankList = [...ranks].sort((a, b) => a - b);
    const evals = [...v.evaluations.values()].sort((a, b) => a.step - b.step || a.epoch - b.epoch);
    const lossSeries = [];
    if (rankList.length <= 8) {
      for (const rank of rankList) {
        lossSeries.push({
          key: `rank-${rank}`, label: `train loss, rank ${rank}`, color: RANK_COLORS[rank % 10], width: 1.5,
          points: reports.map((r) => {
            const w = r.workers.find((x) => x.rank === rank);
            return w && isNum(w.loss) ? { x: r.step, y: w.loss, title: `rank ${rank}, step ${r.step}: ${fixed(w.loss, 4)}` } : null;
          }).filter(Boolean),
          markers: reports.length <= 3,
        });
      }
    } else {
      const rows = reports.map((r) => {
        const ls = r.workers.map((w) => w.loss).filter(isNum);
        return ls.length ? { x: r.step, mean: ls.reduce((a, b) => a + b, 0) / ls.length,
          lo: Math.min(...ls), hi: Math.max(...ls) } : null;
      }).filter(Boolean);
      lossSeries.push({ key: "train-mean", label: `train loss, mean of ${rankList.length} ranks (band: min–max)`,
        color: RANK_COLORS[0], points: rows.map((p) => ({ x: p.x, y: p.mean })), band: rows });
    }
    lossSeries.push({ key: "test-loss", label: "test loss", color: "var(--fg)", dashed: true, markers: true,
      points: evals.map((e) => ({ x: e.step, y: e.test_loss, title: `epoch ${e.epoch}: test loss ${fixed(e.test_loss, 4)}` })) });
    drawChart(charts.loss, { series: lossSeries, xLabel: "step", yLabel: "loss", yFloor: 0, xInteger: true,
      empty: "No report yet" });

    const trainAcc = reports.map((r) => {
      const acc = r.workers.map((w) => w.train_accuracy).filter(isNum);
      return acc.length ? { x: r.step, y: acc.reduce((a, b) => a + b, 0) / acc.length,
        title: `step ${r.step}: train accuracy ${pct(acc.reduce((a, b) => a + b, 0) / acc.length)}` } : null;
    }).filter(Boolean);
    drawChart(charts.acc, {
      series: [
        { key: "test", label: "test accuracy (whole test set)", color: "var(--good)", markers: true, width: 2.5,
          points: evals.map((e) => ({ x: e.step, y: e.test_accuracy,
            title: `epoch ${e.epoch} (step ${e.step}): test accuracy ${pct(e.test_accuracy, 2)}` })) },
        { key: "train", label: "train accuracy, mean over ranks", color: RANK_COLORS[0], width: 1.5,
          points: trainAcc, markers: trainAcc.length <= 3 },
      ],
      xLabel: "step", yLabel: "accuracy", yMin: 0, yMax: 1, xInteger: true,
      yFormat: (x) => `${Math.round(x * 100)} %`, empty: "No evaluation yet",
    });
  }

  // -- actions
  root.addEventListener("click", async (event) => {
    const act = event.target.closest("[data-act]")?.dataset.act;
    if (!act) return;
    const confirmBox = $(".confirm", root);
    const cancelButton = $('[data-act="cancel"]', root);
    if (act === "cancel") {
      cancelButton.hidden = true;
      confirmBox.hidden = false;
      $('[data-act="cancel-yes"]', root).focus();
    } else if (act === "cancel-no") {
      confirmBox.hidden = true;
      cancelButton.hidden = false;
      cancelButton.focus();
    } else if (act === "cancel-yes") {
      confirmBox.hidden = true;
      cancelButton.hidden = false;
      cancelButton.disabled = true;
      v.cancelling = true;
      try {
        v.job = await api(`jobs/${encodeURIComponent(jobId)}/cancel`, { method: "POST" });
        showError(null);
      } catch (err) {
        showError(err);
      } finally {
        v.cancelling = false;
        renderJob();
        loadLogs();
      }
    } else if (act === "logs") {
      loadLogs();
    }
  });
  bind("bn-metric").addEventListener("change", renderBN);

  return {
    root,
    title: `Job ${jobId}`,
    async enter() {
      try {
        await loadAll();
      } catch (err) {
        if (!abort.signal.aborted) showError(err);
        return;
      }
      loadLogs();
      v.logsTimer = setInterval(() => {
        if (!document.hidden && v.job && !FINAL.has(v.job.state)) loadLogs();
      }, LOGS_POLL_MS);
      for (const box of Object.values(charts)) chartObserver.observe(box);
      follow();
    },
    leave() {
      abort.abort();
      clearInterval(v.logsTimer);
      clearTimeout(v.jobRefresh);
      for (const box of Object.values(charts)) chartObserver.unobserve(box);
    },
  };
}

// ---------------------------------------------------------------- router

let jobs = null;
let current = null;

function router() {
  const hash = location.hash || "#/";
  if (!hash.startsWith("#/")) return;  // in-page anchors
  const match = hash.match(/^#\/jobs\/([^/?#]+)/);
  current?.leave();
  let view;
  if (match) {
    view = jobView(decodeURIComponent(match[1]));
  } else {
    jobs ||= jobsView();
    view = jobs;
    document.title = "Jobs · syncbn";
  }
  current = view;
  const main = $("#main");
  main.replaceChildren(view.root);
  $$('nav a', document).forEach((a) => a.setAttribute("aria-current", match ? "false" : "page"));
  view.enter();
  const heading = $("h1", view.root);
  if (router.started && heading && !$("#token-dialog").open) heading.focus({ preventScroll: false });
  router.started = true;
}

function init() {
  initTokenDialog();
  $("[data-skip]").addEventListener("click", (event) => {
    event.preventDefault();
    const target = $("#main h1") || $("#main");
    target.focus();
  });
  window.addEventListener("hashchange", router);
  window.addEventListener("unhandledrejection", (event) => {
    if (event.reason instanceof AuthCancelled || event.reason?.name === "AbortError") event.preventDefault();
  });
  router();
}

init();
