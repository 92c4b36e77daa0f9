// The job's live event stream (reports, worker exceptions, state changes), with reconnects.

import { readEventStream } from "../../api.js";
import { FINAL } from "../../config.js";
import { sleep } from "../../dom.js";
import { AuthCancelled } from "../../token.js";
import { addReport, loadAll, scheduleJobRefresh } from "./data.js";
import { scheduleModels } from "./model.js";

function onEvent(ctx, { event, data, id }) {
  const { v } = ctx;
  if (id) v.lastEventId = id;
  let payload;
  try { payload = JSON.parse(data); } catch { return; }
  if (event === "report") {
    addReport(v, payload, true);
    ctx.queueRender();
    ctx.renderJob();
    scheduleJobRefresh(ctx);
    if (payload.kind === "epoch") scheduleModels(ctx);  // its checkpoint holds a new model file
  } else if (event === "exception") {
    const errors = Object.entries(payload.errors || {}).map(([rank, msg]) => `rank ${rank}: ${msg}`);
    const box = ctx.bind("exception");
    box.textContent = `Worker failure${errors.length > 1 ? "s" : ""} (Ray Train restarts from the last `
      + `checkpoint up to max_failures times): ${errors.join("; ")}`;
    box.hidden = !errors.length;
  } else if (event === "state") {
    if (v.job && payload.state) {
      v.job.state = payload.state;
      v.job.reason = payload.reason ?? v.job.reason;
      ctx.renderJob();
    }
    scheduleJobRefresh(ctx);
  } else if (event === "end") {
    v.ended = true;
    return false;  // the job is final: stop reading
  }
  return true;
}

/** Follow the job's events until it is final; catches up from REST after every disconnect. */
export async function follow(ctx) {
  const { v, signal } = ctx;
  let delay = 1000;
  while (!signal.aborted && v.job && !FINAL.has(v.job.state)) {
    v.ended = false;
    try {
      ctx.setLive("connecting…", "wait");
      await readEventStream(`jobs/${encodeURIComponent(ctx.jobId)}/events`, {
        signal,
        lastEventId: v.lastEventId,
        onOpen: () => { ctx.setLive("live", "on"); delay = 1000; },
        onEvent: (event) => onEvent(ctx, event),
      });
    } catch (err) {
      if (signal.aborted) return;
      if (err instanceof AuthCancelled) { ctx.setLive("", ""); ctx.showError(err); return; }
      ctx.setLive("reconnecting…", "wait");
    }
    if (signal.aborted) return;
    // The stream ended (job final, server restart or network): catch up from REST.
    try { await loadAll(ctx); } catch (err) { if (!signal.aborted) ctx.showError(err); }
    if (v.ended || (v.job && FINAL.has(v.job.state))) break;
    await sleep(delay);
    delay = Math.min(delay * 2, 5000);
  }
  if (!signal.aborted) {
    ctx.setLive("", "");
    ctx.loadLogs();
  }
}
