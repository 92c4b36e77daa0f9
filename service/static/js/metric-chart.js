// The test metric (accuracy, or mean IoU for segmentation) on charts: by epoch for several runs
// (a study's arms with a ± std band, the jobs compared from the list), and a study's arms
// against their step time (what each costs).

import { drawChart } from "./chart.js";
import { RANK_COLORS } from "./config.js";
import { isNum, pct } from "./format.js";

/** Colour of the i-th line; the preset arms keep theirs: sync blue, local orange, reference
 * green, group purple. */
export const lineColor = (i) => RANK_COLORS[i % RANK_COLORS.length];
export const ARM_COLORS = { sync: RANK_COLORS[0], local: RANK_COLORS[1], reference: RANK_COLORS[2],
  group: RANK_COLORS[3] };
/** An arm's colour: its preset's, else one of the colours no preset uses. */
export const armColor = (name, i) => ARM_COLORS[name] || lineColor(4 + (i % (RANK_COLORS.length - 4)));

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

/**
 * Draw a study's `arms` into `box`: one point per arm with a result, its metric mean against
 * its mean step time, and a vertical bar from its seeds' lowest to highest metric.
 */
export function drawCostChart(box, arms, metric) {
  const series = [];
  arms.forEach((arm, i) => {
    if (!isNum(arm.metric_mean) || !isNum(arm.step_time_s_mean)) return;
    const color = armColor(arm.name, i);
    const x = arm.step_time_s_mean * 1000;
    const seeds = arm.jobs.map((job) => job.metric).filter(isNum);
    series.push({ key: arm.name, label: arm.name, color, markers: true, testid: `cost-${arm.name}`,
      points: [{ x, y: arm.metric_mean, label: arm.name,
        title: `${arm.name}: ${pct(arm.metric_mean, 2)} at ${x.toFixed(1)} ms per step` }] });
    if (seeds.length > 1) {
      series.push({ key: `${arm.name}:range`, label: `${arm.name} seeds`, color, hideLegend: true,
        testid: `cost-range-${arm.name}`, points: [{ x, y: Math.min(...seeds) }, { x, y: Math.max(...seeds) }] });
    }
  });
  drawChart(box, {
    series, xLabel: "step time (ms)", yLabel: `test ${metricName(metric)}`, yFloor: 0, xPad: 0.06,
    yFormat: (y) => `${(y * 100).toFixed(1)} %`, empty: "No arm has a result yet",
  });
}
