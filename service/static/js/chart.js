// The SVG line chart of the job page (loss and accuracy curves), redrawn when its box resizes.

import { h, s } from "./dom.js";
import { isNum } from "./format.js";

function niceStep(span, count) {
  const raw = span / Math.max(1, count);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const norm = raw / mag;
  return (norm >= 5 ? 10 : norm >= 2 ? 5 : norm >= 1 ? 2 : 1) * mag;
}

function ticks(lo, hi, count) {
  const step = niceStep(hi - lo, count);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
    out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  }
  return out;
}

function tickLabel(v, step) {
  if (Math.abs(v) >= 1e4) return v.toExponential(0);
  const digits = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
  return v.toFixed(Math.min(digits, 4));
}

/**
 * Line chart into `box`: spec = {series: [{key, label, color, points: [{x, y, title, label}],
 * dashed, markers, band: [{x, lo, hi}], testid}], xLabel, yLabel, yMin, yMax, yFormat, empty,
 * xPad (a fraction of the x range left free at each end)}; a point's label is written beside it.
 * Every series becomes <path class="series" data-series=key data-points=n data-testid=testid>.
 */
export function drawChart(box, spec) {
  box.replaceChildren();
  box._spec = spec;
  const width = Math.max(260, Math.round(box.clientWidth || 560));
  const height = width < 420 ? 190 : 220;
  const m = { l: 50, r: 14, t: 10, b: 36 };
  const all = spec.series.flatMap((ser) => [
    ...ser.points.filter((p) => isNum(p.x) && isNum(p.y)),
    ...(ser.band || []).flatMap((b) => [{ x: b.x, y: b.lo }, { x: b.x, y: b.hi }]),
  ]);
  const label = `${spec.yLabel} by ${spec.xLabel}`;
  const svg = s("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": label });
  svg.append(s("title", {}, label));
  if (!all.length) {
    svg.append(s("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "empty" },
      spec.empty || "No data yet"));
    box.append(svg);
    return;
  }
  let [x0, x1] = [Math.min(...all.map((p) => p.x)), Math.max(...all.map((p) => p.x))];
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  if (spec.xPad) [x0, x1] = [x0 - (x1 - x0) * spec.xPad, x1 + (x1 - x0) * spec.xPad];
  let y0 = spec.yMin ?? Math.min(...all.map((p) => p.y));
  let y1 = spec.yMax ?? Math.max(...all.map((p) => p.y));
  if (spec.yMin === undefined || spec.yMax === undefined) {
    const pad = (y1 - y0) * 0.08 || Math.abs(y1) * 0.1 || 1;
    if (spec.yMin === undefined) y0 = Math.max(spec.yFloor ?? -Infinity, y0 - pad);
    if (spec.yMax === undefined) y1 += pad;
  }
  const X = (x) => m.l + ((x - x0) / (x1 - x0)) * (width - m.l - m.r);
  const Y = (y) => height - m.b - ((y - y0) / (y1 - y0)) * (height - m.t - m.b);

  const grid = s("g", { class: "grid" });
  const yt = ticks(y0, y1, height < 200 ? 4 : 5);
  const yStep = yt.length > 1 ? yt[1] - yt[0] : 1;
  for (const v of yt) {
    grid.append(s("line", { x1: m.l, x2: width - m.r, y1: Y(v), y2: Y(v) }));
    grid.append(s("text", { x: m.l - 6, y: Y(v), dy: "0.32em", "text-anchor": "end" },
      spec.yFormat ? spec.yFormat(v) : tickLabel(v, yStep)));
  }
  const xt = ticks(x0, x1, Math.max(2, Math.floor((width - m.l) / 80)));
  const xStep = xt.length > 1 ? xt[1] - xt[0] : 1;
  for (const v of xt) {
    if (spec.xInteger && !Number.isInteger(v)) continue;
    grid.append(s("line", { class: "xtick", x1: X(v), x2: X(v), y1: height - m.b, y2: height - m.b + 4 }));
    grid.append(s("text", { x: X(v), y: height - m.b + 16, "text-anchor": "middle" },
      tickLabel(v, xStep)));
  }
  grid.append(s("line", { class: "axis", x1: m.l, x2: width - m.r, y1: height - m.b, y2: height - m.b }));
  grid.append(s("text", { class: "axis-label", x: width - m.r, y: height - 4, "text-anchor": "end" },
    spec.xLabel));
  svg.append(grid);

  for (const ser of spec.series) {
    const g = s("g", { class: "serie" });
    if (ser.band?.length > 1) {
      const top = ser.band.map((b) => `${X(b.x).toFixed(1)},${Y(b.hi).toFixed(1)}`);
      const bottom = ser.band.slice().reverse().map((b) => `${X(b.x).toFixed(1)},${Y(b.lo).toFixed(1)}`);
      g.append(s("path", { class: "band", d: `M${top.join("L")}L${bottom.join("L")}Z`,
        style: `fill:${ser.color}` }));
    }
    const pts = ser.points.filter((p) => isNum(p.x) && isNum(p.y));
    const d = pts.map((p, i) => `${i ? "L" : "M"}${X(p.x).toFixed(1)},${Y(p.y).toFixed(1)}`).join("");
    g.append(s("path", { class: "series", d: d || "M0,0", style: `stroke:${ser.color}`,
      "stroke-dasharray": ser.dashed ? "5 4" : null, "stroke-width": ser.width || 2,
      "data-series": ser.key, "data-points": pts.length, "data-testid": ser.testid }));
    if (ser.markers || pts.length === 1) {
      for (const p of pts) {
        g.append(s("circle", { cx: X(p.x).toFixed(1), cy: Y(p.y).toFixed(1), r: 3.5,
          style: `fill:${ser.color}`, class: "point", "data-series": ser.key },
        s("title", {}, p.title || `${ser.label}: ${p.y}`)));
        if (p.label) {
          g.append(s("text", { x: (X(p.x) + 7).toFixed(1), y: (Y(p.y) - 7).toFixed(1),
            class: "point-label", style: `fill:${ser.color}` }, p.label));
        }
      }
    }
    svg.append(g);
  }
  box.append(svg);
  const legend = h("ul", { class: "legend" }, spec.series.filter((ser) => !ser.hideLegend).map((ser) =>
    h("li", {}, h("span", { class: `swatch${ser.dashed ? " dashed" : ""}`,
      style: `--c:${ser.color}` }), ser.label)));
  box.append(legend);
}

const chartObserver = new ResizeObserver((entries) => {
  for (const entry of entries) {
    const box = entry.target;
    const width = Math.round(entry.contentRect.width);
    if (box._spec && width && Math.abs(width - (box._width || 0)) > 8) {
      box._width = width;
      requestAnimationFrame(() => box._spec && drawChart(box, box._spec));
    }
  }
});

/** Redraw the chart in `box` (its last spec) whenever the box's width changes. */
export function observeChart(box) { chartObserver.observe(box); }

/** Stop following `box`'s size. */
export function unobserveChart(box) { chartObserver.unobserve(box); }
