// syncbn service dashboard: native ES modules, no build step, no third-party code.
//
// Routes (hash): "#/" jobs list + submit form, "#/jobs/<id>" one job, "#/studies" the studies,
// "#/studies/<id>" one study.
// Talks to the REST API under "v1/" (relative to the page), sends the API token from
// sessionStorage as "Authorization: Bearer", and asks for it when a call answers 401.
// The job page follows "v1/jobs/<id>/events" with fetch() and a streaming body reader
// (EventSource cannot send headers) and falls back to polling while the stream is down.
//
// Modules: config.js (constants), dom.js (queries, h(), svg, the <time> and state badge
// elements), format.js (numbers, sizes, durations, timestamps and log text as text; no DOM),
// token.js (token storage and dialog), me.js (who is signed in, what they may change, the
// lists' "mine" filters), api.js (fetch wrapper, errors, OpenAPI, event stream),
// chart.js (SVG line chart), schema.js + jobform.js (the submit form, built from JobSpec in
// /openapi.json), uploads.js (the dataset and code bundle upload forms, their option labels),
// views/jobs.js (the jobs page), views/job/*.js (one job's page), views/compare.js (jobs'
// curves overlaid), views/studies.js and views/study.js (studies), metric-chart.js (the test
// metric by epoch of several runs).

import { $, $$ } from "./dom.js";
import { initWhoAmI } from "./me.js";
import { AuthCancelled, adoptTokenFromLink, initTokenDialog } from "./token.js";
import { jobView } from "./views/job/index.js";
import { jobsView } from "./views/jobs.js";
import { studiesView } from "./views/studies.js";
import { studyView } from "./views/study.js";

let jobs = null;      // the jobs view is kept (its form and list survive a visit to a job)
let current = null;
let started = false;

/** Show the view of the current hash route (leaving the previous one). */
function router() {
  const hash = location.hash || "#/";
  if (!hash.startsWith("#/")) return;  // in-page anchors
  const match = hash.match(/^#\/(jobs|studies)\/([^/?#]+)/);
  const studies = hash.startsWith("#/studies");
  current?.leave();
  let view;
  if (match) {
    const id = decodeURIComponent(match[2]);
    view = match[1] === "jobs" ? jobView(id) : studyView(id);
    document.title = `${view.title} · syncbn`;
  } else if (studies) {
    view = studiesView();
    document.title = "Studies · syncbn";
  } else {
    jobs ||= jobsView();
    view = jobs;
    document.title = "Jobs · syncbn";
  }
  current = view;
  $("#main").replaceChildren(view.root);
  const tab = match ? null : studies ? "nav-studies" : "nav-jobs";
  $$("nav a").forEach((a) => a.setAttribute("aria-current", a.dataset.testid === tab ? "page" : "false"));
  view.enter();
  const heading = $("h1", view.root);
  if (started && heading && !$("#token-dialog").open) heading.focus({ preventScroll: false });
  started = true;
}

function init() {
  adoptTokenFromLink();
  initTokenDialog(router);
  initWhoAmI();
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
