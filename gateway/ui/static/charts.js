// Small hand-drawn SVG line charts of a per-minute series (null: no calls that minute).
import { h, rate, s } from "./dom.js";

const W = 120;
const H = 32;

function segments(values, max) {
  const step = values.length > 1 ? W / (values.length - 1) : 0;
  const out = [];
  let cur = [];
  const end = () => {
    // A lone point is drawn as a short flat line so it can be seen.
    if (cur.length === 1) cur = [[Math.max(0, cur[0][0] - 2), cur[0][1]], [Math.min(W, cur[0][0] + 2), cur[0][1]]];
    if (cur.length) out.push(cur.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`));
    cur = [];
  };
  values.forEach((v, i) => {
    if (v === null || v === undefined) return end();
    cur.push([i * step, H - 2 - (max > 0 ? (v / max) * (H - 4) : 0)]);
  });
  end();
  return out;
}

// series: [[values...], ...] (up to two lines); label: caption; shown: the figure at the right.
export function sparkline(label, series, shown, name) {
  const max = Math.max(0, ...series.flat().filter((v) => v !== null && v !== undefined));
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img",
    "aria-label": `${label}: ${shown}` });
  series.forEach((values, i) => {
    for (const pts of segments(values, max)) svg.append(s("polyline", { class: `s${i}`, points: pts.join(" ") }));
  });
  return h("figure", { class: "spark", "data-chart": name },
    h("figcaption", {}, h("span", {}, label), h("b", {}, shown)), svg);
}

// The four charts of a function's STATS (see GET /v1/stats).
export function statCharts(stats, step) {
  const pts = stats.series;
  const t = stats.total;
  return [
    sparkline("req/s", [pts.map((p) => p.count / step)], rate(t.rps), "rps"),
    sparkline("p50 / p99", [pts.map((p) => p.p50_ms), pts.map((p) => p.p99_ms)],
      t.p50_ms === null ? "–" : `${Math.round(t.p50_ms)} / ${Math.round(t.p99_ms)} ms`, "latency"),
    sparkline("errors", [pts.map((p) => p.errors)], String(t.errors), "errors"),
    sparkline("cold starts", [pts.map((p) => p.cold)], String(t.cold), "cold"),
  ];
}
