// Who is signed in (GET /v1/me: name and role), read once per token, shown in the top bar, and
// what that caller may change: an admin anything, a member what they own, a viewer nothing.
// The page only hides the controls a caller could not use: the server decides (a refused write
// is a 403 whose message the views show).

import { api } from "./api.js";
import { $, h } from "./dom.js";
import { onTokenChange } from "./token.js";

export const VIEWER_NOTE = "Viewers can read everything but change nothing.";
const ROLES = new Set(["admin", "member", "viewer"]);

let me = null;            // the /v1/me answer
let status = "loading";   // "loading" | "known" | "unknown" (the call failed: every control shows)
let request = null;       // the call under way (or done) for the current token
let generation = 0;       // bumped by a token change: an older call's answer is dropped
const listeners = new Set();

function settle(mine, answer, state) {
  if (mine !== generation) return;
  me = answer;
  status = state;
  for (const fn of listeners) fn(me);
}

/**
 * The signed-in caller ({name, role, quotas, usage}), read once per token; null when unknown
 * (no token given, or the call failed: a failed call is tried again at the next one).
 */
export function whoAmI() {
  if (!request) {
    const mine = generation;
    request = api("me").then(
      (answer) => { settle(mine, answer, "known"); return answer; },
      () => {
        if (mine === generation) request = null;
        settle(mine, null, "unknown");
        return null;
      });
  }
  return request;
}

/** The caller as known now (null: not yet, or unknown). */
export const currentUser = () => me;

/** Call `fn(me)` whenever who is signed in changes (or becomes known); returns an unsubscribe. */
export function onMe(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

/**
 * Whether the caller may cancel or delete what `owner` made: an admin anything, a member their
 * own, a viewer nothing. False until /v1/me has answered (no button flashes up and away); true
 * when it could not be read (the server still decides).
 */
export function mayChange(owner) {
  if (status === "unknown") return true;
  if (!me) return false;
  return me.role === "admin" || (me.role === "member" && owner === me.name);
}

/** Whether the caller may submit, upload or start a study: all but a (known) viewer. */
export const mayCreate = () => me?.role !== "viewer";

/** The top bar's "signed in as <name> <role>" (`el`), kept up to date. */
export function showWhoAmI(el) {
  const render = () => {
    if (!me) { el.hidden = true; el.replaceChildren(); return; }
    const role = ROLES.has(me.role) ? me.role : "other";
    el.replaceChildren(h("span", { class: "whoami-label" }, "Signed in as "),
      h("strong", { "data-testid": "me-name" }, me.name), " ",
      h("span", { class: `badge role role-${role}`, "data-testid": "me-role" }, me.role));
    el.title = me.role === "viewer" ? VIEWER_NOTE
      : me.role === "member" ? "Members change only what they made." : "Admins may change anything.";
    el.hidden = false;
  };
  onMe(render);
  render();
}

// A new token may sign in someone else: read /v1/me again (none without a token).
onTokenChange((token) => {
  generation += 1;
  request = null;
  settle(generation, null, "loading");
  if (token) whoAmI();
});

/** Read /v1/me now and show it in the top bar. */
export function initWhoAmI() {
  showWhoAmI($("#whoami"));
  whoAmI();
}

const MINE_KEY = "syncbn.mine.";
const memoryMine = {};

/** Whether the `list` ("jobs", "studies") shows only the caller's own, as last set in this tab. */
export function mineRemembered(list) {
  try { return sessionStorage.getItem(MINE_KEY + list) === "1"; } catch { return Boolean(memoryMine[list]); }
}

/** Remember the `list`'s "mine" filter for this tab (sessionStorage, like the token). */
export function rememberMine(list, on) {
  try {
    if (on) sessionStorage.setItem(MINE_KEY + list, "1"); else sessionStorage.removeItem(MINE_KEY + list);
  } catch { memoryMine[list] = on; }
}
