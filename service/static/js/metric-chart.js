// The test metric by epoch (accuracy, or mean IoU for segmentation) for several runs on one
// chart: a study's arms (mean line, ± std band) and the jobs compared from the list.

import { drawChart } from "./chart.js";
import { RANK_COLORS } from "./config.js";
import { pct } from "./format.js";

/** Colour of the i-th line; a study's arms keep theirs: sync blue, local orange, reference green. */
export const lineColor = (i) => RANK_COLORS[i % RANK_COLORS.length];
export const ARM_COLORS = { sync: RANK_COLORS[0], local: RANK_COLORS[1], reference: RANK_COLORS[2] };

/** "accuracy" or "mIoU" for a metric field name. */
export const metricName = (metric) => (metric === "test_miou" ? "mIoU" : "accuracy");

/**
 * Draw `lines` = [{key, label, color, points: [{epoch, y, lo?, hi?}]}] into `box`: the metric by
 * epoch, a band where points carry lo/hi.
 */
export function drawMetricChart(box, lines, metric) {
  const name = metricName(metric);
  drawChart(box, {
    series: lines.map((line) => ({
      key: line.key, label: line.label, color: line.color, markers: true, width: 2.5,
      testid: `curve-${line.key}`,
      points: line.points.map((p) => ({ x: p.epoch, y: p.y,
        title: `${line.label}, epoch ${p.epoch}: ${pct(p.y, 2)}` })),
      band: line.points.some((p) => p.lo !== undefined)
        ? line.points.map((p) => ({ x: p.epoch, lo: p.lo, hi: p.hi })) : undefined,
    })),
    xLabel: "epoch", yLabel: `test ${name}`, xInteger: true, yFloor: 0,
    yFormat: (x) => `${(x * 100).toFixed(1)} %`, empty: "No evaluation yet",
  });
}
