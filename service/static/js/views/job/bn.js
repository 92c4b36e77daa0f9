// The BatchNorm heatmap: per BN layer (rows) and worker rank (columns), how far each worker's
// batch statistics are from the global batch's.

import { h } from "../../dom.js";
import { dash, fixed, isNum } from "../../format.js";

/** Draw the heatmap of the latest report for the metric chosen in the "Show" select. */
export function renderBN(ctx) {
  const { v, bind } = ctx;
  const metric = bind("bn-metric").value;
  const box = bind("bn");
  const norm = v.job?.spec?.norm;
  const help = bind("bn-help");
  help.textContent = metric === "mean_shift"
    ? "Per BN layer and worker: mean over channels of |μ_local − μ_global| / σ_global, "
      + "how far this worker's batch mean is from the global batch mean, in global standard deviations. "
      + (norm === "local"
        ? "With norm=local each worker normalizes with its own batch, so this error goes straight into its activations."
        : "With norm=sync every worker normalizes with the global statistics: this is the noise SyncBN removes.")
    : "Per BN layer and worker: mean over channels of var_local / var_global (1 = same spread as the global batch).";
  const r = v.latest;
  const workers = r?.workers ? [...r.workers].sort((a, b) => a.rank - b.rank) : [];
  const layers = [];
  for (const w of workers) for (const name of Object.keys(w.bn || {})) if (!layers.includes(name)) layers.push(name);
  if (!layers.length) {
    box.replaceChildren(h("p", { class: "muted empty", "data-testid": "bn-none" }, norm === "group"
      ? "No BatchNorm statistics: with norm=group every BatchNorm layer is a GroupNorm, which "
        + "normalizes each sample on its own (nothing to compare between workers)."
      : workers.length ? "This model reports no BatchNorm layers." : "No report yet."));
    return;
  }
  // Colour: mean_shift 0 → 1σ (clamped); var_ratio by |log2(ratio)| 0 → 1 (×2 or ÷2).
  const intensity = (x) => {
    if (!isNum(x)) return null;
    if (metric === "mean_shift") return Math.min(1, Math.max(0, x));
    return x > 0 ? Math.min(1, Math.abs(Math.log2(x))) : 1;
  };
  const dense = workers.length > 12;
  const table = h("table", { class: `heatmap${dense ? " dense" : ""}`, "data-testid": "bn-heatmap",
    "data-metric": metric },
  h("caption", { class: "sr-only" }, `${metric} per BatchNorm layer (rows) and worker rank (columns)`),
  h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "layer"),
    h("th", { scope: "col", class: "num", title: "local / global sample count" }, "n local / global"),
    workers.map((w) => h("th", { scope: "col", class: "num" }, `rank ${w.rank}`)))),
  h("tbody", {}, layers.map((name) => {
    const any = workers.find((w) => w.bn?.[name])?.bn[name] || {};
    return h("tr", { "data-layer": name },
      h("th", { scope: "row" }, h("code", {}, name)),
      h("td", { class: "num muted" }, `${any.local_count ?? dash} / ${any.global_count ?? dash}`),
      workers.map((w) => {
        const cell = w.bn?.[name] || {};
        const value = cell[metric];
        const t = intensity(value);
        const text = metric === "mean_shift" ? fixed(value, 3) : fixed(value, 2);
        return h("td", {
          class: `heat${t !== null && t > 0.55 ? " strong" : ""}`,
          style: t === null ? null : `--t:${t.toFixed(3)}`,
          "data-rank": w.rank,
          "data-value": isNum(value) ? value : null,
          title: `rank ${w.rank}, ${name}: mean shift ${fixed(cell.mean_shift, 4)} σ, `
            + `variance ratio ${fixed(cell.var_ratio, 3)}, n ${cell.local_count ?? "?"} of ${cell.global_count ?? "?"}`,
        }, dense ? "" : text);
      }));
  })));
  const legend = h("div", { class: "heat-legend", "aria-hidden": "true" },
    h("span", {}, metric === "mean_shift" ? "0" : "×1"),
    h("span", { class: "ramp" }),
    h("span", {}, metric === "mean_shift" ? "≥ 1 σ" : "×2 or ÷2"));
  box.replaceChildren(table, legend);
}

/** Redraw when the metric select changes. */
export function setupBN(ctx) {
  ctx.bind("bn-metric").addEventListener("change", () => renderBN(ctx));
}
