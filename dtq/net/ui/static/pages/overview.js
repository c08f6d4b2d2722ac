// Overview: the dashboard figures live from /ws/metrics, daily trend charts, the busiest queues.
import { ApiError, get, request } from "../lib/api.js";
import { drawChart } from "../lib/chart.js";
import { $, age, badge, count, duration, h, showError } from "../lib/dom.js";
import { live } from "../lib/live.js";
import { startPage } from "../lib/page.js";
import { root } from "../lib/session.js";

await startPage();
const errorBox = $("overview-error");
const percent = (v) => `${(v * 100).toFixed(v > 0 && v < 0.1 ? 1 : 0)}%`;

function showFigures(d) {
  const set = (key, text) => {
    const el = document.querySelector(`[data-metric="${key}"]`);
    if (el && el.textContent !== text) el.textContent = text;
  };
  for (const key of ["total_tasks", "pending_tasks", "running_tasks", "completed_tasks", "failed_tasks", "cancelled_tasks"]) {
    set(key, count(d[key]));
  }
  set("completion_rate", percent(d.completion_rate || 0));
  set("average_duration", duration(d.average_duration));
  set("workers", `${count(d.workers_active)} / ${count(d.workers_total)}`);
}

async function loadFigures() {
  try {
    showFigures((await get("/analytics/dashboard")).data);
    return true;
  } catch (err) {
    showError(errorBox, err);
    return false;
  }
}

// --- charts -------------------------------------------------------------------------------

let days = Number(new URLSearchParams(location.search).get("days")) || 7;
if (![7, 30, 365].includes(days)) days = 7;
$("days").value = String(days);

// From /analytics/trends: a point per day of the tasks finished (completed + failed), completion
// rate, error rate and average duration.
// A day with no task finished has both rates 0 (they sum to 1 otherwise): it is a gap, not 0.
async function loadCharts() {
  try {
    const series = (await get("/analytics/trends", { days })).data.series;
    const label = (p) => p.date.slice(5);
    const finished = (p) => p.completion_rate + p.error_rate > 0;
    const points = (field) => series.map((p) => ({ label: label(p), value: finished(p) ? p[field] : null }));
    drawChart($("chart-throughput"), series.map((p) => ({ label: label(p), value: p.completed + p.failed })), {
      kind: "bar",
      label: "Tasks finished per day",
      format: count,
      floor: 0,
    });
    drawChart($("chart-completion"), points("completion_rate"), {
      kind: "line",
      max: 1,
      label: "Completion rate per day",
      format: percent,
    });
    drawChart($("chart-errors"), points("error_rate"), { kind: "line", max: 1, label: "Error rate per day", format: percent });
    drawChart($("chart-duration"), points("avg_duration"), {
      kind: "bar",
      label: "Average duration per day",
      format: duration,
      floor: 0,
    });
  } catch (err) {
    showError(errorBox, err);
  }
}

$("days").addEventListener("change", () => {
  days = Number($("days").value);
  const u = new URL(location.href);
  u.searchParams.set("days", String(days));
  history.replaceState(null, "", u);
  loadCharts();
});

async function download(kind) {
  try {
    const response = await request("GET", "/analytics/export", { query: { days, format: kind } });
    const blob = await response.blob();
    const link = h("a", { href: URL.createObjectURL(blob), download: `dtq-analytics-${days}d.${kind}` });
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  } catch (err) {
    showError(errorBox, err);
  }
}
$("export-json").addEventListener("click", () => download("json"));
$("export-csv").addEventListener("click", () => download("csv"));

// --- queues (the first page of them; the Queues page has the rest) -----------------------------

function limits(q) {
  const parts = [];
  if (q.concurrency_limit != null) parts.push(`${q.concurrency_limit} at once`);
  if (q.concurrency_limit_per_key != null) parts.push(`${q.concurrency_limit_per_key} per key`);
  if (q.rate_limit_per_second != null) parts.push(`${q.rate_limit_per_second}/s`);
  return parts.length ? parts.join(", ") : "none";
}

async function loadQueues() {
  try {
    const reply = await get("/queues", { limit: 10 });
    const rows = reply.data.map((q) =>
      h(
        "tr",
        {},
        h("th", { scope: "row" }, h("a", { href: `${root}/ui/tasks?queue=${encodeURIComponent(q.name)}`, text: q.name })),
        h("td", { class: "num", text: count(q.pending) }),
        h("td", { class: "num", text: count(q.running) }),
        h("td", { class: "num", text: count(q.scheduled) }),
        h("td", { class: "num", text: count(q.failed) }),
        h("td", { text: age(q.oldest_pending_age_s) }),
        h("td", {}, badge(q.paused ? "paused" : "active")),
        h("td", { text: limits(q) }),
      ),
    );
    $("queues-body").replaceChildren(...rows);
    $("queues-section").hidden = false;
  } catch (err) {
    if (!(err instanceof ApiError && (err.missingRoute || err.status === 403))) showError(errorBox, err);
  }
}

let queuesTimer = null;
function refreshQueuesSoon() {
  if (queuesTimer || $("queues-section").hidden) return;
  queuesTimer = setTimeout(() => {
    queuesTimer = null;
    loadQueues();
  }, 5000); // at most one queue reload per 5 s, however busy the server is
}

if (await loadFigures()) {
  loadCharts();
  loadQueues();
  live("/ws/metrics", { interval: 2 }, (messages) => {
    showFigures(messages[messages.length - 1]);
    refreshQueuesSoon();
  }, { onReconnect: loadCharts });
}
