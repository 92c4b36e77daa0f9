// The API token: taken from the login link the service prints (`/#token=...`), kept in
// sessionStorage (this tab only, gone when it closes: never on disk for the next user of the
// browser), asked for with the token dialog when a call gets 401.

import { TOKEN_KEY } from "./config.js";
import { $ } from "./dom.js";

const memoryStore = {};

/** The stored token ("" when none). */
export function getToken() {
  try { return sessionStorage.getItem(TOKEN_KEY) || ""; } catch { return memoryStore.token || ""; }
}

const tokenListeners = new Set();

/** Call `fn(token)` after the stored token changes (a new one may sign in someone else). */
export function onTokenChange(fn) { tokenListeners.add(fn); }

/** Store the token ("" forgets it). */
export function setToken(token) {
  const before = getToken();
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token); else sessionStorage.removeItem(TOKEN_KEY);
  } catch { memoryStore.token = token; }
  if ((token || "") !== before) for (const fn of tokenListeners) fn(token || "");
}

/**
 * Take the token from a login link (`#token=...`: a fragment never reaches a server, so never
 * a log), keep it, and drop it from the address bar and the history: `replaceState` rewrites
 * the current entry, so the fragment leaves no entry behind. True if there was one.
 */
export function adoptTokenFromLink() {
  const match = /^#token=([^&]+)/.exec(location.hash);
  if (!match) return false;
  setToken(decodeURIComponent(match[1]));
  history.replaceState(null, "", `${location.pathname}${location.search}#/`);
  return true;
}

/** Raised when the user closes the token dialog without a token. */
export class AuthCancelled extends Error {
  constructor() { super("An API token is needed: use the “API token” button."); }
}

let tokenRequest = null;   // one open dialog serves every concurrent 401
let authBlocked = false;   // the user declined: pollers wait until a token is saved
let tokenDone = null;      // callback of the open dialog
let onUnblocked = () => {};

/** True while the user declined to give a token (pollers then stay quiet). */
export function isAuthBlocked() { return authBlocked; }

/** Show the token dialog; resolves when a token is saved, rejects on cancel. */
export function requestToken(message) {
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

function openTokenDialog(message, done) {
  const dialog = $("#token-dialog");
  tokenDone = done;
  $("#token-message").textContent = message
    || "This service needs its API token. Open the login link it printed at start, or paste "
    + "the token: SYNCBN_API_TOKEN, or the content of $SYNCBN_HOME/api-token (.syncbn/api-token "
    + "for make run). It is kept for this tab only (sessionStorage).";
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
    onUnblocked();  // the views stopped while no token was given: reload the current one
  }
}

/** Wire the dialog and the "API token" button; `unblocked` runs when a token ends a refusal. */
export function initTokenDialog(unblocked) {
  onUnblocked = unblocked;
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
