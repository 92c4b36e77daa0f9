// One job's page: wires the pieces of ./ to the #tpl-job template and a shared context.

import { ApiError } from "../../api.js";
import { observeChart, unobserveChart } from "../../chart.js";
import { FINAL, LOGS_POLL_MS } from "../../config.js";
import { $ } from "../../dom.js";
import { onMe } from "../../me.js";
import { renderBN, setupBN } from "./bn.js";
import { setupCancel } from "./cancel.js";
import { renderCharts } from "./curves.js";
import { loadAll, newState } from "./data.js";
import { renderJob } from "./header.js";
import { loadLogs, setupLogs } from "./logs.js";
import { loadModels } from "./model.js";
import { setupPin } from "./pin.js";
import { follow } from "./stream.js";
import { renderWorkers } from "./workers.js";

/** The view of job `jobId`: {root, title, enter(), leave()}; a new one per visit. */
export function jobView(jobId) {
  const root = $("#tpl-job").content.firstElementChild.cloneNode(true);
  const abort = new AbortController();
  $('[data-bind="id"]', root).textContent = jobId;

  // What every piece gets: the DOM, the data, the shared actions.
  const ctx = {
    jobId,
    root,
    signal: abort.signal,
    v: newState(),
    bind: (name) => $(`[data-bind="${name}"]`, root),
    charts: { loss: $('[data-chart="loss"]', root), acc: $('[data-chart="acc"]', root) },
    /** Show `err` (null: hide the box) as "Could not <what>: <the server's message>". */
    showError(err, what = "load the job") {
      const box = ctx.bind("error");
      if (!err) { box.hidden = true; return; }
      box.textContent = err instanceof ApiError && err.status === 404
        ? `Job ${jobId} not found.` : `Could not ${what}: ${err.message}`;
      box.hidden = false;
    },
    setLive(text, cls) {
      const el = $('[data-testid="live-status"]', root);
      el.textContent = text;
      el.className = `live ${cls || ""}`;
    },
    renderJob: () => renderJob(ctx),
    renderData() {
      renderWorkers(ctx);
      renderBN(ctx);
      renderCharts(ctx);
    },
    /** renderData() at the next frame, once for a burst of reports. */
    queueRender() {
      if (ctx.v.renderQueued) return;
      ctx.v.renderQueued = true;
      requestAnimationFrame(() => { ctx.v.renderQueued = false; ctx.renderData(); });
    },
    loadLogs: () => loadLogs(ctx),
    loadModels: () => loadModels(ctx),
  };

  setupCancel(ctx);
  setupPin(ctx);
  setupLogs(ctx);
  setupBN(ctx);
  let unsubscribe = null;

  return {
    root,
    title: `Job ${jobId}`,
    async enter() {
      const { v } = ctx;
      unsubscribe = onMe(() => ctx.renderJob());  // the buttons follow who is signed in
      try {
        await loadAll(ctx);
      } catch (err) {
        if (!abort.signal.aborted) ctx.showError(err);
        return;
      }
      ctx.loadLogs();
      v.logsTimer = setInterval(() => {
        if (!document.hidden && v.job && !FINAL.has(v.job.state)) ctx.loadLogs();
      }, LOGS_POLL_MS);
      for (const box of Object.values(ctx.charts)) observeChart(box);
      follow(ctx);
    },
    leave() {
      abort.abort();
      unsubscribe?.();
      clearInterval(ctx.v.logsTimer);
      clearTimeout(ctx.v.jobRefresh);
      clearTimeout(ctx.v.modelsRefresh);
      for (const box of Object.values(ctx.charts)) unobserveChart(box);
    },
  };
}
