// Queues: state, depth and limits of each queue; pause / resume, limits, purge (confirmed).
import { ApiError, get, post, put } from "../lib/api.js";
import { $, age, badge, confirmDialog, count, h, pager, showError, toast } from "../lib/dom.js";
import { live } from "../lib/live.js";
import { startPage } from "../lib/page.js";
import { can, root } from "../lib/session.js";

await startPage();
const state = { skip: 0, limit: 50 };
const errorBox = $("queues-error");
const mayChange = () => can("queues:write");
const path = (name) => `/queues/${encodeURIComponent(name)}`;

function limits(q) {
  const parts = [];
  if (q.concurrency_limit != null) parts.push(`${q.concurrency_limit} at once`);
  if (q.concurrency_limit_per_key != null) parts.push(`${q.concurrency_limit_per_key} per key`);
  if (q.rate_limit_per_second != null) parts.push(`${q.rate_limit_per_second}/s`);
  return parts.length ? parts.join(", ") : "none";
}

async function run(what, done) {
  try {
    const reply = await what();
    toast(done(reply));
    await load();
  } catch (err) {
    showError(errorBox, err);
  }
}

async function editLimits(q) {
  const number = (v) => (v === null || v === undefined ? "" : String(v));
  const answer = await confirmDialog({
    title: `Limits of ${q.name}`,
    message: "Leave a field empty to remove that limit.",
    confirm: "Save limits",
    fields: [
      { name: "concurrency_limit", label: "Running at once (all workers)", type: "number", min: 1, step: 1, value: number(q.concurrency_limit) },
      { name: "concurrency_limit_per_key", label: "Running at once per concurrency key", type: "number", min: 1, step: 1, value: number(q.concurrency_limit_per_key) },
      { name: "rate_limit_per_second", label: "Leases started per second", type: "number", min: 0, step: "any", value: number(q.rate_limit_per_second) },
    ],
  });
  if (!answer) return;
  const body = {};
  for (const [k, v] of Object.entries(answer.values)) body[k] = v.trim() === "" ? null : Number(v);
  await run(() => put(path(q.name), body), () => `Limits of ${q.name} saved`);
}

async function purge(q) {
  const answer = await confirmDialog({
    title: `Purge ${q.name}?`,
    message: `Removes the ${count(q.pending)} pending tasks of queue ${q.name}. Running tasks finish. This cannot be undone.`,
    confirm: "Purge pending tasks",
    danger: true,
  });
  if (!answer) return;
  await run(() => post(`${path(q.name)}/purge`), (r) => {
    const d = (r && r.data) || {};
    const n = d.purged ?? d.affected ?? d.removed ?? d.count;
    return n === undefined ? `Queue ${q.name} purged` : `${count(n)} tasks purged from ${q.name}`;
  });
}

function actions(q) {
  if (!mayChange()) return [];
  return [
    q.paused
      ? h("button", { type: "button", class: "small", dataset: { action: "resume" }, text: "Resume", on: { click: () => run(() => post(`${path(q.name)}/resume`), () => `Queue ${q.name} resumed`) } })
      : h("button", { type: "button", class: "small secondary", dataset: { action: "pause" }, text: "Pause", on: { click: () => run(() => post(`${path(q.name)}/pause`), () => `Queue ${q.name} paused`) } }),
    h("button", { type: "button", class: "small secondary", dataset: { action: "limits" }, text: "Limits…", on: { click: () => editLimits(q) } }),
    h("button", { type: "button", class: "small danger", dataset: { action: "purge" }, text: "Purge…", on: { click: () => purge(q) } }),
  ];
}

function row(q) {
  return h(
    "tr",
    { dataset: { queue: q.name } },
    h("th", { scope: "row" }, h("a", { href: `${root}/ui/tasks?queue=${encodeURIComponent(q.name)}`, text: q.name })),
    h("td", {}, badge(q.paused ? "paused" : "active")),
    h("td", { class: "num", text: count(q.pending) }),
    h("td", { class: "num", text: count(q.running) }),
    h("td", { class: "num", text: count(q.scheduled) }),
    h("td", { class: "num", text: count(q.failed) }),
    h("td", { text: age(q.oldest_pending_age_s) }),
    h("td", { class: "num", text: count(q.workers_polling) }),
    h("td", { text: limits(q) }),
    h("td", { class: "actions" }, ...actions(q)),
  );
}

const showPage = pager(state, () => load());

async function load() {
  try {
    const reply = await get("/queues", state);
    showError(errorBox, null);
    $("queues-body").replaceChildren(...reply.data.map(row));
    const total = reply.pagination ? reply.pagination.total : reply.data.length;
    $("queues-summary").textContent = `${count(total)} queues`;
    showPage(reply.pagination || { total });
  } catch (err) {
    $("queues-summary").textContent = "";
    showError(errorBox, err instanceof ApiError && err.missingRoute ? new Error("This server has no queues API yet.") : err);
  }
}

let timer = null;
await load();
// Depths change with every task event: reload at most every 2 s while tasks move.
live("/ws/tasks", { events: "task.created,task.leased,task.completed,task.failed,task.cancelled,task.deleted,task.retried,queue.paused,queue.resumed,queue.updated" }, () => {
  if (timer) return;
  timer = setTimeout(() => {
    timer = null;
    load();
  }, 2000);
});
