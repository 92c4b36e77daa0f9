// Comparing jobs from the list: a checkbox per row, "Compare" overlays the checked jobs' test
// metric by epoch (from each job's /metrics evaluations) on one chart.

import { api } from "../api.js";
import { observeChart } from "../chart.js";
import { $, h } from "../dom.js";
import { drawMetricChart, lineColor } from "../metric-chart.js";

/** A job's legend entry: "j-… · sync · 4 × 2". */
const label = (job) => `${job.id} · ${job.spec.norm} · ${job.spec.workers} × ${job.spec.batch_size_per_worker}`;

/** Wire the Compare button and panel under `root`; returns {checkbox(job)} for each row. */
export function setupCompare(root) {
  const selected = new Map();  // job id -> job
  const button = $("#jobs-compare", root);
  const panel = $("#compare", root);
  const chart = $("#compare-chart", root);
  observeChart(chart);

  const sync = () => {
    button.disabled = selected.size === 0;
    button.textContent = selected.size ? `Compare (${selected.size})` : "Compare";
  };

  button.addEventListener("click", async () => {
    const jobs = [...selected.values()];
    panel.hidden = false;
    const metrics = await Promise.all(jobs.map((job) =>
      api(`jobs/${encodeURIComponent(job.id)}/metrics`).catch(() => ({ evaluations: [] }))));
    const seg = metrics.some((m) => m.evaluations.some((e) => e.test_miou !== null && e.test_miou !== undefined));
    const metric = seg ? "test_miou" : "test_accuracy";
    drawMetricChart(chart, jobs.map((job, i) => ({
      key: job.id, label: label(job), color: lineColor(i),
      points: metrics[i].evaluations.map((e) => ({ epoch: e.epoch, y: e[metric] })),
    })), metric);
    panel.scrollIntoView({ block: "nearest" });
  });
  $("#compare-close", root).addEventListener("click", () => { panel.hidden = true; });

  return {
    /** The row's checkbox for `job` (checked when selected). */
    checkbox(job) {
      const box = h("input", { type: "checkbox", "data-testid": "job-select",
        "aria-label": `Compare ${job.id}`, checked: selected.has(job.id) });
      box.addEventListener("change", () => {
        if (box.checked) selected.set(job.id, job); else selected.delete(job.id);
        sync();
      });
      return box;
    },
  };
}
