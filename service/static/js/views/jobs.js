// The jobs page: the list (polled, paged, filtered by state and to the caller's own, checked
// rows compared) and the submit form (disabled for a viewer).

import { api } from "../api.js";
import { LIST_POLL_MS, PAGE_SIZE } from "../config.js";
import { $, badge, h, timeEl } from "../dom.js";
import { isNum, pct } from "../format.js";
import { setupJobForm } from "../jobform.js";
import { mayCreate, mineRemembered, onMe, rememberMine, whoAmI } from "../me.js";
import { isAuthBlocked } from "../token.js";
import { setupCompare } from "./compare.js";

/** One table row per job, refreshed in place: <tr data-job-id data-testid="job-row">. */
function row(job, compare) {
  const tr = h("tr", { "data-job-id": job.id, "data-testid": "job-row" });
  tr.append(...Array.from({ length: 11 }, () => h("td")));
  tr.cells[0].append(compare.checkbox(job), " ", h("a", { href: `#/jobs/${encodeURIComponent(job.id)}`, "data-testid": "job-link" },
    h("code", {}, job.id)));
  tr.cells[1].dataset.testid = "job-owner";
  tr.cells[4].dataset.testid = "job-model";
  tr.cells[8].className = "num";
  tr.cells[8].dataset.testid = "job-accuracy";
  tr.addEventListener("click", (event) => {
    if (!event.target.closest("a, input") && !getSelection().toString()) location.hash = `#/jobs/${job.id}`;
  });
  return tr;
}

/** The model: a built-in name, or a bundle's builder (<code>, the bundle in the title). */
function modelCell(spec) {
  if (!spec.code) return document.createTextNode(spec.model ?? "auto");
  return h("code", { title: `builder in code bundle ${spec.code}` }, spec.model);
}

/** The test metric: mean IoU for segmentation (pixel accuracy in the title), else accuracy. */
function metricCell(td, result) {
  const miou = result?.test_miou;
  if (isNum(miou)) {
    td.textContent = `mIoU ${pct(miou)}`;
    td.title = `mean IoU over classes; pixel accuracy ${pct(result.test_accuracy)}`;
    td.dataset.metric = "miou";
  } else {
    td.textContent = pct(result?.test_accuracy);
    td.removeAttribute("title");
    td.dataset.metric = "accuracy";
  }
}

function fill(tr, job) {
  const sig = JSON.stringify([job.owner, job.state, job.reason, job.progress, job.result, job.finished_at]);
  if (tr._sig === sig) return;
  tr._sig = sig;
  const { spec, progress = {} } = job;
  const cells = tr.cells;
  cells[1].textContent = job.owner ?? "";  // a user's name: text only
  const stateBadge = badge(job.state);
  stateBadge.dataset.testid = "job-state";
  if (job.reason) stateBadge.title = job.reason;
  cells[2].replaceChildren(stateBadge);
  cells[3].textContent = spec.dataset;
  cells[4].replaceChildren(modelCell(spec));
  cells[5].textContent = `${spec.workers} × ${spec.batch_size_per_worker}`;
  cells[6].textContent = spec.norm + (spec.sync_group_size ? ` (groups of ${spec.sync_group_size})` : "");
  const frac = isNum(progress.fraction) ? progress.fraction : 0;
  cells[7].replaceChildren(h("div", { class: "mini-progress" },
    h("progress", { max: 1, value: frac, "aria-label": `${job.id} progress` }),
    h("span", {}, `${Math.round(frac * 100)} %`,
      progress.epochs ? h("small", {}, ` · epoch ${progress.epoch}/${progress.epochs}`) : null)));
  metricCell(cells[8], job.result);
  cells[9].replaceChildren(timeEl(job.created_at));
  cells[10].replaceChildren(timeEl(job.finished_at));
}

/** The jobs view: {root, title, enter(), leave()}; made once and kept across routes. */
export function jobsView() {
  const root = $("#tpl-jobs").content.firstElementChild.cloneNode(true);
  const state = { offset: 0, filter: "", mine: mineRemembered("jobs"), rows: new Map(), timer: null,
    loading: false, again: false, shown: false };
  const body = $("#jobs-body", root);
  const mineBox = $("#jobs-mine", root);
  mineBox.checked = state.mine;

  const compare = setupCompare(root);
  const jobForm = setupJobForm(root, {
    onSubmitted: async () => { state.offset = 0; await load(); },
  });

  /** Refresh the list; a call while one is in flight makes that one run again. */
  async function load() {
    if (isAuthBlocked()) return;
    if (state.loading) { state.again = true; return; }
    state.loading = true;
    try {
      do {
        state.again = false;
        await loadOnce();
      } while (state.again && !isAuthBlocked());
    } finally {
      state.loading = false;
    }
  }

  async function loadOnce() {
    const params = new URLSearchParams({ limit: PAGE_SIZE, offset: state.offset });
    if (state.filter) params.set("state", state.filter);
    try {
      if (state.mine) {
        const me = await whoAmI();
        if (!me) throw new Error("could not tell who is signed in (GET /v1/me failed)");
        params.set("owner", me.name);
      }
      const data = await api(`jobs?${params}`);
      $("#jobs-error", root).hidden = true;
      const seen = new Set();
      data.jobs.forEach((job, i) => {
        seen.add(job.id);
        let tr = state.rows.get(job.id);
        if (!tr) { tr = row(job, compare); state.rows.set(job.id, tr); }
        fill(tr, job);
        if (body.children[i] !== tr) body.insertBefore(tr, body.children[i] || null);
      });
      for (const [id, tr] of state.rows) {
        if (!seen.has(id)) { tr.remove(); state.rows.delete(id); }
      }
      const { total, offset } = data;
      $("#jobs-empty", root).hidden = total > 0;
      const whose = state.mine ? " of yours" : "";
      $("#jobs-empty", root).textContent = state.filter ? `No ${state.filter} jobs${whose}.`
        : state.mine ? "You have no jobs yet." : "No jobs yet. Submit one with the form.";
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

  $("#state-filter", root).addEventListener("change", (event) => {
    state.filter = event.target.value;
    state.offset = 0;
    load();
  });
  mineBox.addEventListener("change", () => {
    state.mine = mineBox.checked;
    rememberMine("jobs", state.mine);
    state.offset = 0;
    load();
  });
  $("#jobs-refresh", root).addEventListener("click", () => load());

  /** A viewer's forms are disabled (one fieldset holds them all), with a note saying why. */
  function applyRole() {
    const writable = mayCreate();
    $("#writes", root).disabled = !writable;
    $("#viewer-note", root).hidden = writable;
  }
  applyRole();
  // Another token may be someone else: their forms, and their own jobs when "mine" is on.
  onMe(() => {
    applyRole();
    if (state.mine && state.shown) { state.offset = 0; load(); }
  });
  $("#jobs-prev", root).addEventListener("click", () => {
    state.offset = Math.max(0, state.offset - PAGE_SIZE);
    load();
  });
  $("#jobs-next", root).addEventListener("click", () => { state.offset += PAGE_SIZE; load(); });

  return {
    root,
    title: "Jobs",
    enter() {
      state.shown = true;
      load();
      jobForm.load();
      clearInterval(state.timer);
      state.timer = setInterval(() => { if (!document.hidden) load(); }, LIST_POLL_MS);
    },
    leave() { state.shown = false; clearInterval(state.timer); },
  };
}
