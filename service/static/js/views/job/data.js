// The job page's data: the job, every report seen (history and stream), the evaluations.

import { api } from "../../api.js";
import { isNum } from "../../format.js";

function reportKey(r) { return `${r.kind}:${r.epoch}:${r.step}`; }

/** Fresh view state for one job page. */
export function newState() {
  return {
    job: null,
    reports: new Map(),      // reportKey -> report, every report seen (history + stream)
    evaluations: new Map(),  // epoch -> {epoch, step, test_accuracy, test_loss, test_miou}
    latest: null,            // the report the workers table shows
    lastEventId: null,
    logsTimer: null,
    renderQueued: false,
    jobRefresh: null,
    modelsRefresh: null,
    cancelling: false,
    pinning: false,
    ended: false,
  };
}

/**
 * Record a report. Streamed reports arrive in order (also after a restart from a checkpoint,
 * when the step goes back); the history is ordered by step.
 */
export function addReport(v, r, streamed = false) {
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
        test_accuracy: w.test_accuracy, test_loss: w.test_loss, test_miou: w.test_miou ?? null });
    }
  }
}

const jobPath = (ctx, rest = "") => `jobs/${encodeURIComponent(ctx.jobId)}${rest}`;

/** Reload the job itself and redraw its header. */
export async function loadJob(ctx) {
  ctx.v.job = await api(jobPath(ctx), { signal: ctx.signal });
  ctx.showError(null);
  ctx.renderJob();
}

/** Reload the job, its metrics, its latest worker report and its model files; redraw all. */
export async function loadAll(ctx) {
  const { v, signal } = ctx;
  const [job, metrics, workers] = await Promise.all([
    api(jobPath(ctx), { signal }),
    api(jobPath(ctx, "/metrics"), { signal }).catch(() => null),
    api(jobPath(ctx, "/workers"), { signal }).catch(() => null),
  ]);
  v.job = job;
  for (const r of metrics?.reports || []) addReport(v, r);
  for (const e of metrics?.evaluations || []) v.evaluations.set(e.epoch, e);
  if (workers?.workers?.length && (!v.latest || (workers.step ?? -1) > v.latest.step)) {
    const first = workers.workers[0];
    v.latest = { kind: first.kind || "step", epoch: workers.epoch ?? first.epoch,
      step: workers.step ?? first.step, time: first.time, workers: workers.workers };
  }
  ctx.showError(null);
  ctx.renderJob();
  ctx.renderData();
  ctx.loadModels();
}

/** Reload the job soon (once for a burst of events). */
export function scheduleJobRefresh(ctx) {
  const { v } = ctx;
  if (v.jobRefresh) return;
  v.jobRefresh = setTimeout(async () => {
    v.jobRefresh = null;
    try { await loadJob(ctx); } catch (err) { if (!ctx.signal.aborted) ctx.showError(err); }
  }, 700);
}
