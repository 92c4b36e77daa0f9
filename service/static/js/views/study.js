// One study's page: the verdict and the recommendation, the arms table (metric over seeds, step
// time, sync share, BatchNorm bytes per step, the jobs), each arm's test-metric curve with its
// ± std band, the arms' metric against step time, skipped arms, failures, Cancel (for a caller
// who may: me.js). Polled every LIST_POLL_MS while the study runs.

import { api, ApiError } from "../api.js";
import { observeChart, unobserveChart } from "../chart.js";
import { LIST_POLL_MS } from "../config.js";
import { $, badge, h } from "../dom.js";
import { bytes, dash, fixed, isNum, ms, pct } from "../format.js";
import { mayChange, onMe } from "../me.js";
import { armColor, drawCostChart, drawMetricChart, metricName } from "../metric-chart.js";

/** "4 × 2, sync in groups of 2": workers × batch, the norm, its sync groups or GroupNorm groups. */
export const specSummary = (spec) =>
  `${spec.workers} × ${spec.batch_size_per_worker}, ${spec.norm}` +
  (spec.sync_group_size && spec.sync_group_size < spec.workers ? ` in groups of ${spec.sync_group_size}` : "") +
  (spec.group_norm_groups ? `, ${spec.group_norm_groups} group${spec.group_norm_groups > 1 ? "s" : ""}` : "");

/** "91.23 ± 0.40 %" (percent points), or a dash. */
const spread = (mean, std) => (isNum(mean) ? `${fixed(mean * 100, 2)} ± ${fixed((std ?? 0) * 100, 2)} %` : dash);

const jobLink = (job) => h("a", { href: `#/jobs/${encodeURIComponent(job.id)}`, "data-testid": "study-job-link",
  "data-job-id": job.id }, h("code", {}, job.id));

function armRow(arm) {
  return h("tr", { "data-testid": "arm-row", "data-arm": arm.name },
    h("th", { scope: "row" }, arm.name),
    h("td", {}, specSummary(arm.spec)),
    h("td", { class: "num", "data-testid": "arm-metric" }, spread(arm.metric_mean, arm.metric_std)),
    h("td", { class: "num" }, ms(arm.step_time_s_mean)),
    h("td", { class: "num" }, pct(arm.sync_time_share)),
    h("td", { class: "num", "data-testid": "arm-bytes" },
      isNum(arm.allreduce_bytes_per_step) ? bytes(Math.round(arm.allreduce_bytes_per_step)) : dash),
    h("td", {}, h("span", { class: "arm-jobs" }, arm.jobs.map((job) =>
      h("span", { title: job.reason || null }, `${job.seed}: `, jobLink(job), " ", badge(job.state))))));
}

function render(root, study) {
  const bind = (name) => $(`[data-bind="${name}"]`, root);
  const state = bind("state");
  state.className = `badge state-${study.state}`;
  state.dataset.state = study.state;
  state.textContent = study.state.replace("_", " ");
  const base = study.base;
  bind("what").textContent = `${base.dataset ?? ""} · seeds ${study.seeds.join(" ")}`;
  bind("owner").textContent = study.owner ?? "";
  bind("verdict").textContent = study.verdict || "";  // says "so far" itself while jobs run
  const advice = study.recommendation;
  bind("recommendation").hidden = !advice;
  bind("recommended-arm").textContent = advice ? advice.arm : "";
  bind("recommendation-reason").textContent = advice ? advice.reason : "";  // says "so far" itself
  const metric = study.arms[0]?.metric;
  bind("metric-head").textContent = `Test ${metricName(metric)} (mean ± std)`;
  bind("arms").replaceChildren(...study.arms.map(armRow));
  bind("skipped").replaceChildren(...Object.entries(study.skipped).map(([arm, why]) =>
    h("li", {}, `${arm} skipped: ${why}`)));
  bind("reasons").replaceChildren(...study.reasons.map((line) => h("li", {}, line)));
  bind("cancel").hidden = study.state !== "running" || !mayChange(study.owner);
  bind("curve-title").textContent = `Test ${metricName(metric)} by epoch`;
  drawMetricChart(bind("chart"), study.arms.map((arm, i) => ({
    key: arm.name, label: `${arm.name} (${specSummary(arm.spec)})`,
    color: armColor(arm.name, i),
    points: arm.curve.filter((p) => isNum(p.mean)).map((p) => ({ epoch: p.epoch, y: p.mean,
      lo: p.mean - (p.std ?? 0), hi: p.mean + (p.std ?? 0) })),
  })), metric);
  bind("cost-title").textContent = `Test ${metricName(metric)} against step time`;
  drawCostChart(bind("cost-chart"), study.arms, metric);
}

/** The view of study `studyId`: {root, title, enter(), leave()}. */
export function studyView(studyId) {
  const root = $("#tpl-study").content.firstElementChild.cloneNode(true);
  const abort = new AbortController();
  const path = `studies/${encodeURIComponent(studyId)}`;
  const chart = $('[data-bind="chart"]', root);
  const costChart = $('[data-bind="cost-chart"]', root);
  const errorBox = $('[data-bind="error"]', root);
  const cancel = $('[data-bind="cancel"]', root);
  let timer = null;
  let study = null;
  let unsubscribe = null;
  $('[data-bind="id"]', root).textContent = studyId;

  function show(answer) {
    study = answer;
    errorBox.hidden = true;
    render(root, study);
    clearTimeout(timer);
    if (study.state === "running" && !abort.signal.aborted) timer = setTimeout(load, LIST_POLL_MS);
  }

  function fail(err, what = "load the study") {
    if (abort.signal.aborted) return;
    errorBox.textContent = err instanceof ApiError && err.status === 404
      ? `Study ${studyId} not found.` : `Could not ${what}: ${err.message}`;
    errorBox.hidden = false;
    clearTimeout(timer);
    if (!(err instanceof ApiError && err.status === 404)) timer = setTimeout(load, LIST_POLL_MS);
  }

  async function load() {
    try { show(await api(path, { signal: abort.signal })); } catch (err) { fail(err); }
  }

  cancel.addEventListener("click", async () => {
    if (!cancel.dataset.armed) {  // a second click confirms
      cancel.dataset.armed = "1";
      cancel.textContent = "Yes, cancel its jobs";
      return;
    }
    cancel.disabled = true;
    try {
      show(await api(`${path}/cancel`, { method: "POST", signal: abort.signal }));
    } catch (err) {
      fail(err, "cancel the study");
      cancel.disabled = false;
    }
  });

  return {
    root,
    title: `Study ${studyId}`,
    enter() {
      observeChart(chart);
      observeChart(costChart);
      load();
      // The cancel button follows who is signed in.
      unsubscribe = onMe(() => { if (study) cancel.hidden = study.state !== "running" || !mayChange(study.owner); });
    },
    leave() {
      abort.abort();
      clearTimeout(timer);
      unobserveChart(chart);
      unobserveChart(costChart);
      unsubscribe?.();
    },
  };
}
