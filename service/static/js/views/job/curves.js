// The loss and accuracy curves (SVG line charts) from every report and evaluation seen; for
// segmentation also the test mean IoU.

import { drawChart } from "../../chart.js";
import { RANK_COLORS } from "../../config.js";
import { fixed, isNum, pct } from "../../format.js";

/** Redraw both charts. */
export function renderCharts(ctx) {
  const { v, charts } = ctx;
  const reports = [...v.reports.values()].sort((a, b) => a.step - b.step || (a.kind === "epoch") - (b.kind === "epoch"));
  const ranks = new Set();
  for (const r of reports) for (const w of r.workers) ranks.add(w.rank);
  const rankList = [...ranks].sort((a, b) => a - b);
  const evals = [...v.evaluations.values()].sort((a, b) => a.step - b.step || a.epoch - b.epoch);
  const lossSeries = [];
  if (rankList.length <= 8) {
    for (const rank of rankList) {
      lossSeries.push({
        key: `rank-${rank}`, label: `train loss, rank ${rank}`, color: RANK_COLORS[rank % 10], width: 1.5,
        points: reports.map((r) => {
          const w = r.workers.find((x) => x.rank === rank);
          return w && isNum(w.loss) ? { x: r.step, y: w.loss, title: `rank ${rank}, step ${r.step}: ${fixed(w.loss, 4)}` } : null;
        }).filter(Boolean),
        markers: reports.length <= 3,
      });
    }
  } else {
    const rows = reports.map((r) => {
      const ls = r.workers.map((w) => w.loss).filter(isNum);
      return ls.length ? { x: r.step, mean: ls.reduce((a, b) => a + b, 0) / ls.length,
        lo: Math.min(...ls), hi: Math.max(...ls) } : null;
    }).filter(Boolean);
    lossSeries.push({ key: "train-mean", label: `train loss, mean of ${rankList.length} ranks (band: min–max)`,
      color: RANK_COLORS[0], points: rows.map((p) => ({ x: p.x, y: p.mean })), band: rows });
  }
  lossSeries.push({ key: "test-loss", label: "test loss", color: "var(--fg)", dashed: true, markers: true,
    points: evals.map((e) => ({ x: e.step, y: e.test_loss, title: `epoch ${e.epoch}: test loss ${fixed(e.test_loss, 4)}` })) });
  drawChart(charts.loss, { series: lossSeries, xLabel: "step", yLabel: "loss", yFloor: 0, xInteger: true,
    empty: "No report yet" });

  const trainAcc = reports.map((r) => {
    const acc = r.workers.map((w) => w.train_accuracy).filter(isNum);
    return acc.length ? { x: r.step, y: acc.reduce((a, b) => a + b, 0) / acc.length,
      title: `step ${r.step}: train accuracy ${pct(acc.reduce((a, b) => a + b, 0) / acc.length)}` } : null;
  }).filter(Boolean);
  // Segmentation: the evaluations also carry the mean IoU (accuracies are per pixel).
  const miou = evals.filter((e) => isNum(e.test_miou));
  const seg = miou.length > 0;
  const acc = seg ? "pixel accuracy" : "accuracy";
  const series = [
    { key: "test", label: `test ${acc} (whole test set)`, color: "var(--good)", markers: true, width: 2.5,
      points: evals.map((e) => ({ x: e.step, y: e.test_accuracy,
        title: `epoch ${e.epoch} (step ${e.step}): test ${acc} ${pct(e.test_accuracy, 2)}` })) },
    { key: "train", label: `train ${acc}, mean over ranks`, color: RANK_COLORS[0], width: 1.5,
      points: trainAcc, markers: trainAcc.length <= 3 },
  ];
  if (seg) {
    series.unshift({ key: "test-miou", testid: "miou-curve", label: "test mIoU (mean IoU over classes)",
      color: RANK_COLORS[3], markers: true, width: 2.5,
      points: miou.map((e) => ({ x: e.step, y: e.test_miou,
        title: `epoch ${e.epoch} (step ${e.step}): test mIoU ${pct(e.test_miou, 2)}` })) });
  }
  const title = ctx.bind("acc-title");
  if (title) title.textContent = seg ? "Mean IoU and pixel accuracy" : "Accuracy";
  drawChart(charts.acc, {
    series,
    xLabel: "step", yLabel: seg ? "mIoU and accuracy" : "accuracy", yMin: 0, yMax: 1, xInteger: true,
    yFormat: (x) => `${Math.round(x * 100)} %`, empty: "No evaluation yet",
  });
}
