// The REST API: fetch with the bearer token, JSON calls and errors, file downloads, the OpenAPI
// description, and the job event stream (text/event-stream read with fetch: EventSource cannot
// send headers).

import { API, OPENAPI_URL } from "./config.js";
import { getToken, requestToken } from "./token.js";

/** A non-2xx answer: `status` and FastAPI's `detail` (a string or pydantic's error list). */
export class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : ApiError.describe(detail, status));
    this.status = status;
    this.detail = detail;
  }

  /** A one-line message for a pydantic error list, else "HTTP <status>". */
  static describe(detail, status) {
    if (Array.isArray(detail)) {
      return detail.map((d) => `${(d.loc || []).filter((p) => p !== "body").join(".")}: ${d.msg}`)
        .join("; ");
    }
    return `HTTP ${status}`;
  }
}

async function readBody(res) {
  const text = await res.text();
  try { return JSON.parse(text); } catch { return text; }
}

/** The ApiError of a non-2xx answer (FastAPI's `detail`, or the body's text). */
async function errorOf(res) {
  const body = await readBody(res);
  return new ApiError(res.status, body && typeof body === "object" ? body.detail : body);
}

/** fetch() of `path` (relative to v1/, or a URL) with the token; asks for one and retries on 401. */
export async function apiFetch(path, init = {}) {
  for (;;) {
    const headers = new Headers(init.headers || {});
    const token = getToken();
    if (token) headers.set("Authorization", `Bearer ${token}`);
    const res = await fetch(new URL(path, API), { cache: "no-store", ...init, headers });
    if (res.status !== 401) return res;
    // A token saved while this call was under way: try that one before asking again (else an
    // answer to the old token would reopen the dialog the user just closed).
    if (getToken() !== token) continue;
    const body = await readBody(res);
    if (getToken() !== token) continue;  // saved while the body was read: the same race
    const detail = body && typeof body === "object" ? body.detail : body;
    await requestToken(token
      ? `The server rejected the stored token (${detail || "401"}). Enter the current one.`
      : null);
  }
}

/** JSON API call: returns the parsed body, throws ApiError on a non-2xx answer. */
export async function api(path, { method = "GET", json, form, signal } = {}) {
  const init = { method, signal, headers: { Accept: "application/json" } };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form !== undefined) {
    init.body = form;
  }
  const res = await apiFetch(path, init);
  if (!res.ok) throw await errorOf(res);
  return readBody(res);
}

/**
 * Download `path` with the token as a file named like the server says (Content-Disposition),
 * else `name`: fetch -> blob -> object URL -> a temporary <a download> (a plain link would
 * not send the Authorization header). Throws ApiError on a non-2xx answer.
 */
export async function download(path, name, { signal } = {}) {
  const res = await apiFetch(path, { signal });
  if (!res.ok) throw await errorOf(res);
  const disposition = res.headers.get("Content-Disposition") || "";
  const link = document.createElement("a");
  link.href = URL.createObjectURL(await res.blob());
  link.download = /filename="?([^";]+)"?/i.exec(disposition)?.[1] || name;
  link.hidden = true;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 60_000);  // after the browser has saved it
}

let openapi = null;

/** The service's OpenAPI document (fetched once; a failed fetch is retried on the next call). */
export function openApi() {
  openapi ||= api(OPENAPI_URL).catch((err) => { openapi = null; throw err; });
  return openapi;
}

/**
 * Follow a text/event-stream with fetch (so the Authorization header goes along).
 * Calls onEvent({event, data, id}) per event; resolves when the server closes the stream or
 * onEvent returns false.
 */
export async function readEventStream(path, { signal, lastEventId, onOpen, onEvent }) {
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
