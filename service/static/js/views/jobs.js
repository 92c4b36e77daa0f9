// The jobs page: the list (polled, paged, filtered by state, checked rows compared) and the
// submit form.

import { api } from "../api.js";
import { LIST_POLL_MS, PAGE_SIZE } from "../config.js";
import { $, badge, h, timeEl } from "../dom.js";
import { isNum, pct } from "../format.js";
import { setupJobForm } from "../jobform.js";
import { isAuthBlocked } from "../token.js";
import { setupCompare } from "./compare.js";

/** One table row per job, refreshed in place: <tr data-job-id data-testid="job-row">. */
function row(job, compare) {
  const tr = h("tr", { "data-job-id": job.id, "data-testid": "job-row" });
  tr.append(...Array.from({ length: 10 }, () => h("td")));
  tr.cells[0].append(compare.checkbox(job), " ", h("a", { href: `#/jobs/${encodeURIComponent(job.id)}`, "data-testid": "job-link" },
    h("code", {}, job.id)));
  tr.cells[3].dataset.testid = "job-model";
  tr.cells[7].className = "num";
  tr.cells[7].dataset.testid = "job-accuracy";
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
  cells[3].replaceChildren(modelCell(spec));
  cells[4].textContent = `${spec.workers} × ${spec.batch_size_per_worker}`;
  cells[5].textContent = spec.norm + (spec.sync_group_size ? ` (groups of ${spec.sync_group_size})` : "");
  const frac = isNum(progress.fraction) ? progress.fraction : 0;
  cells[6].replaceChildren(h("div", { class: "mini-progress" },
    h("progress", { max: 1, value: frac, "aria-label": `${job.id} progress` }),
    h("span", {}, `${Math.round(frac * 100)} %`,
      progress.epochs ? h("small", {}, ` · epoch ${progress.epoch}/${progress.epochs}`) : null)));
  metricCell(cells[7], job.result);
  cells[8].replaceChildren(timeEl(job.created_at));
  cells[9].replaceChildren(timeEl(job.finished_at));
}

/** The jobs view: {root, title, enter(), leave()}; made once and kept across routes. */
export function jobsView() {
  const root = $("#tpl-jobs").content.firstElementChild.cloneNode(true);
  const state = { offset: 0, filter: "", rows: new Map(), timer: null, loading: false, again: false };
  const body = $("#jobs-body", root);

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
    enter() {
      load();
      jobForm.load();
      clearInterval(state.timer);
      state.timer = setInterval(() => { if (!document.hidden) load(); }, LIST_POLL_MS);
    },
    leave() { clearInterval(state.timer); },
  };
}
