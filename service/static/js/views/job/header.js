// The job page's header (state, pinned, reason, progress), its summary and its timeline.

import { FINAL } from "../../config.js";
import { $, badge, h, timeEl } from "../../dom.js";
import { dash, duration, fixed, isNum, parseTime, pct, splitReason, stripAnsi } from "../../format.js";
import { syncCancel } from "./cancel.js";
import { syncPin } from "./pin.js";

function renderState(ctx, job) {
  document.title = `${job.id} · ${job.state} · syncbn`;
  const stateEl = ctx.bind("state");
  stateEl.textContent = job.state;
  stateEl.className = `badge state-${job.state}`;
  stateEl.dataset.state = job.state;
  // A <pre> (wrapping, scrolling when long): a failure's reason may hold the user's traceback
  // or Ray's log tail. The first line (what happened) in bold, the rest as it came.
  const reason = ctx.bind("reason");
  const text = stripAnsi(job.reason || "").replace(/\s+$/, "");
  if (reason._text !== text) {
    reason._text = text;
    const nl = text.indexOf("\n");
    reason.replaceChildren(h("strong", {}, nl < 0 ? text : text.slice(0, nl)),
      nl < 0 ? "" : text.slice(nl));
    reason.scrollTop = 0;
  }
  const multiline = text.includes("\n");
  reason.className = `banner reason-box${multiline ? " multiline" : ""}${job.state === "failed" ? " error" : ""}`;
  reason.hidden = !text;
  renderHeadline(ctx, job);
}

/** The test result next to the state: mean IoU for segmentation, else accuracy. */
function renderHeadline(ctx, job) {
  const el = ctx.bind("headline");
  const r = job.result;
  if (isNum(r?.test_miou)) {
    el.replaceChildren("test mIoU ", h("strong", { "data-testid": "headline-miou",
      "data-value": r.test_miou }, pct(r.test_miou, 2)),
    h("span", { class: "muted" }, ` · pixel accuracy ${pct(r.test_accuracy, 2)}`));
  } else if (isNum(r?.test_accuracy)) {
    el.replaceChildren("test accuracy ", h("strong", {}, pct(r.test_accuracy, 2)));
  }
  el.hidden = !(isNum(r?.test_miou) || isNum(r?.test_accuracy));
}

function renderProgress(ctx, job) {
  const { v } = ctx;
  // The job's progress follows the reports; the stream may be a report ahead of it.
  const p = { ...(job.progress || {}) };
  if (v.latest && !FINAL.has(job.state) && v.latest.step > (p.step ?? 0)) {
    const total = (p.steps_per_epoch || 0) * (p.epochs || job.spec.epochs);
    p.step = v.latest.step;
    p.epoch = v.latest.kind === "epoch" ? v.latest.epoch : Math.max(0, v.latest.epoch - 1);
    if (total) p.fraction = Math.min(1, p.step / total);
  }
  const progress = $('[data-testid="job-progress"]', ctx.root);
  progress.value = isNum(p.fraction) ? p.fraction : 0;
  ctx.bind("progress-text").textContent = `${Math.round((p.fraction || 0) * 100)} % · epoch ${p.epoch ?? 0}/${
    p.epochs ?? job.spec.epochs} · step ${p.step ?? 0}${p.steps_per_epoch ? ` (${p.steps_per_epoch}/epoch)` : ""}`;
}

function renderSummary(ctx, job) {
  const spec = job.spec;
  const rows = [
    ["Owner", h("span", { "data-testid": "job-owner" }, job.owner ?? dash)],
    ["Dataset", spec.dataset],
    ["Model", spec.code ? h("span", {}, h("code", { "data-testid": "job-model" }, spec.model),
      " from code bundle ", h("code", {}, spec.code)) : spec.model],
    ["Workers × batch", `${spec.workers} × ${spec.batch_size_per_worker} = ${spec.workers * spec.batch_size_per_worker} per step`],
    ["Normalization", spec.norm + (spec.sync_group_size ? `, groups of ${spec.sync_group_size}` : "")],
    ["Epochs", spec.epochs],
    ["Optimizer", `SGD lr ${spec.lr}, momentum ${spec.momentum}, weight decay ${spec.weight_decay}`],
    ["Seed", spec.seed],
    ["Resources", `${spec.cpus_per_worker} CPU${spec.use_gpu ? " + 1 GPU" : ""} per worker, ${spec.max_failures} failure(s) tolerated`],
    ...(isNum(job.result?.test_miou) ? [["Test mIoU", h("strong", { "data-testid": "result-miou",
      "data-value": job.result.test_miou }, pct(job.result.test_miou, 2))]] : []),
    [isNum(job.result?.test_miou) ? "Test pixel accuracy" : "Test accuracy",
      h("strong", { "data-testid": "result-accuracy",
        "data-value": job.result?.test_accuracy ?? null }, pct(job.result?.test_accuracy, 2))],
    ["Test loss", fixed(job.result?.test_loss, 4)],
    ["Created", timeEl(job.created_at)], ["Started", timeEl(job.started_at)],
    ["Finished", timeEl(job.finished_at)],
  ];
  if (job.result?.wall_time_s) rows.push(["Wall time", duration(job.result.wall_time_s)]);
  ctx.bind("summary").replaceChildren(...rows.flatMap(([k, val]) =>
    [h("dt", {}, k), h("dd", {}, val instanceof Node ? val : String(val ?? dash))]));
}

function renderTimeline(ctx, job) {
  const transitions = job.transitions?.length ? job.transitions
    : [{ state: job.state, reason: job.reason, at: job.updated_at }];
  ctx.bind("timeline").replaceChildren(...transitions.map((t, i) => {
    const at = parseTime(t.at);
    const next = parseTime(transitions[i + 1]?.at) || (FINAL.has(t.state) ? null : new Date());
    const took = at && next && i < transitions.length - 1 ? duration((next - at) / 1000) : "";
    return h("li", { "data-state": t.state },
      badge(t.state), " ", timeEl(t.at),
      took ? h("small", { class: "muted" }, ` · ${took}`) : null,
      t.reason ? h("div", { class: "reason" }, splitReason(t.reason).head) : null);
  }));
}

/** Redraw everything that comes from the job record itself (not from its reports). */
export function renderJob(ctx) {
  const job = ctx.v.job;
  if (!job) return;
  renderState(ctx, job);
  syncCancel(ctx);
  syncPin(ctx);
  renderProgress(ctx, job);
  renderSummary(ctx, job);
  renderTimeline(ctx, job);
}
