// The workers table: one row per rank of the latest report.

import { RANK_COLORS } from "../../config.js";
import { h, timeEl } from "../../dom.js";
import { bytes, dash, fixed, isNum, ms, pct, rate } from "../../format.js";

/** Fill the workers table from the latest report (or show that there is none yet). */
export function renderWorkers(ctx) {
  const r = ctx.v.latest;
  const tbody = ctx.bind("workers");
  ctx.bind("workers-empty").hidden = Boolean(r?.workers?.length);
  if (!r?.workers?.length) { tbody.replaceChildren(); ctx.bind("report-info").textContent = ""; return; }
  ctx.bind("report-info").replaceChildren(
    `${r.kind === "epoch" ? "end of epoch" : "step report"} · epoch ${r.epoch} · step ${r.step} · `,
    timeEl(r.time));
  const workers = [...r.workers].sort((a, b) => a.rank - b.rank);
  tbody.replaceChildren(...workers.map((w) => {
    const share = isNum(w.sync_time_s) && isNum(w.step_time_s) && w.step_time_s > 0
      ? Math.min(1, w.sync_time_s / w.step_time_s) : null;
    return h("tr", { "data-rank": w.rank, "data-testid": "worker-row" },
      h("th", { scope: "row" }, h("span", { class: "swatch", style: `--c:${RANK_COLORS[w.rank % 10]}` }),
        String(w.rank)),
      h("td", { title: w.node_id || "" }, w.node_id ? h("code", {}, String(w.node_id).slice(0, 8)) : dash),
      h("td", { class: "num" }, String(w.batch_size ?? dash)),
      h("td", { class: "num" }, rate(w.samples_per_s)),
      h("td", { class: "num" }, ms(w.step_time_s)),
      h("td", { class: "share" }, share === null ? dash : h("span", { class: "bar-cell" },
        h("span", { class: "bar", style: `--v:${(share * 100).toFixed(1)}%` }),
        h("span", {}, pct(share)))),
      h("td", { class: "num", "data-testid": "worker-bytes" }, bytes(w.allreduce_bytes_per_step)),
      h("td", { class: "num" }, fixed(w.loss, 4)),
      h("td", { class: "num" }, pct(w.train_accuracy)));
  }));
}
