// Small SVG charts drawn with DOM calls (no library, no inline styles: colours come from CSS
// classes). Each bar/point has a <title>, so hovering shows its exact value.
import { h } from "./dom.js";

const NS = "http://www.w3.org/2000/svg";
const W = 640;
const H = 180;
const PAD = { left: 54, right: 8, top: 10, bottom: 22 };

function svg(tag, attrs, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const c of children) el.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
  return el;
}

function niceMax(max) {
  if (max <= 0) return 1;
  const pow = 10 ** Math.floor(Math.log10(max));
  for (const m of [1, 2, 2.5, 5, 10]) if (max <= m * pow) return m * pow;
  return 10 * pow;
}

/**
 * Draws into `container`. `points`: [{label, value}], oldest first. `kind`: "bar" | "line".
 * `format(value)` writes axis and hover labels; `max` fixes the scale (e.g. 1 for rates);
 * otherwise it fits the values, and is at least `floor` (4 for counts; 0 for seconds).
 */
export function drawChart(container, points, { kind = "bar", format = String, max, label, floor = 4 }) {
  const top = max ?? niceMax(Math.max(floor, ...points.map((p) => p.value || 0)));
  const plotW = W - PAD.left - PAD.right;
  const plotH = H - PAD.top - PAD.bottom;
  const x = (i) => PAD.left + (points.length <= 1 ? plotW / 2 : (i * plotW) / (points.length - 1));
  const y = (v) => PAD.top + plotH - (Math.min(v, top) / top) * plotH;
  const total = points.reduce((s, p) => s + (p.value || 0), 0);
  const root = svg("svg", {
    viewBox: `0 0 ${W} ${H}`,
    class: `chart-svg chart-${kind}`,
    role: "img",
    "aria-label": `${label}: ${points.length} days${kind === "bar" ? `, ${total} in all` : ""}`,
  });
  for (const frac of [0, 0.5, 1]) {
    const yy = y(top * frac);
    root.appendChild(svg("line", { x1: PAD.left, x2: W - PAD.right, y1: yy, y2: yy, class: "grid" }));
    root.appendChild(svg("text", { x: PAD.left - 6, y: yy + 4, class: "axis end" }, format(top * frac)));
  }
  if (points.length) {
    root.appendChild(svg("text", { x: PAD.left, y: H - 4, class: "axis" }, points[0].label));
    root.appendChild(
      svg("text", { x: W - PAD.right, y: H - 4, class: "axis end" }, points[points.length - 1].label),
    );
  }
  if (kind === "bar") {
    const slot = plotW / Math.max(points.length, 1);
    const bw = Math.max(1, slot * 0.7);
    points.forEach((p, i) => {
      const v = p.value || 0;
      const bx = PAD.left + i * slot + (slot - bw) / 2;
      root.appendChild(
        svg("rect", { x: bx, y: y(v), width: bw, height: Math.max(0, PAD.top + plotH - y(v)), class: "bar" },
          svg("title", {}, `${p.label}: ${format(v)}`)),
      );
    });
  } else {
    const known = points.map((p, i) => [p, i]).filter(([p]) => p.value !== null && p.value !== undefined);
    if (known.length > 1) {
      const d = known.map(([p, i], n) => `${n ? "L" : "M"}${x(i).toFixed(1)},${y(p.value).toFixed(1)}`).join("");
      root.appendChild(svg("path", { d, class: "line" }));
    }
    for (const [p, i] of known) {
      root.appendChild(
        svg("circle", { cx: x(i), cy: y(p.value), r: points.length > 60 ? 1.5 : 3, class: "dot" },
          svg("title", {}, `${p.label}: ${format(p.value)}`)),
      );
    }
  }
  container.replaceChildren(root);
  if (!points.length) container.appendChild(h("p", { class: "muted", text: "No data" }));
}
