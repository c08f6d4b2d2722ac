// Failed work: the latest failed (or cancelled) tasks grouped by name and error type, with
// bulk retry and bulk purge by filter (POST /api/v1/tasks/retry and /purge).
import { get, post } from "../lib/api.js";
import { $, confirmDialog, count, h, showError, timeEl, toast } from "../lib/dom.js";
import { readQuery, startPage, writeQuery } from "../lib/page.js";
import { can, root } from "../lib/session.js";

await startPage();
const SAMPLE = 100; // the newest tasks grouped: never an unbounded list
const DEFAULTS = { status: "failed", queue: "", name: "" };
const state = readQuery(DEFAULTS);
if (!["failed", "cancelled"].includes(state.status)) state.status = "failed";
const form = $("filters");
const errorBox = $("failed-error");

function filterBody(extra = {}) {
  const body = { status: state.status };
  if (state.queue) body.queue = state.queue;
  if (state.name) body.name = state.name;
  return { ...body, ...extra };
}

function describe(filter) {
  const parts = [`${filter.status} tasks`];
  if (filter.name) parts.push(`named “${filter.name}”`);
  if (filter.queue) parts.push(`in queue “${filter.queue}”`);
  return parts.join(" ");
}

async function bulk(kind, filter) {
  const retry = kind === "retry";
  const answer = await confirmDialog({
    title: retry ? "Retry tasks?" : "Purge tasks?",
    message: retry
      ? `Every ${describe(filter)} goes back to pending now.`
      : `Every ${describe(filter)} is deleted with its history. This cannot be undone.`,
    confirm: retry ? "Retry all" : "Purge all",
    danger: !retry,
  });
  if (!answer) return;
  try {
    const reply = await post(retry ? "/tasks/retry" : "/tasks/purge", filter);
    const d = reply.data || {};
    toast(`${count(d.affected)} of ${count(d.matched)} matching tasks ${retry ? "retried" : "purged"}`);
    await load();
  } catch (err) {
    showError(errorBox, err);
  }
}

function bulkButtons(filter, small) {
  if (!can("tasks:write")) return [];
  const cls = small ? "small " : "";
  return [
    h("button", { type: "button", class: `${cls}`, dataset: { action: "retry" }, text: small ? "Retry" : "Retry all", on: { click: () => bulk("retry", filter) } }),
    h("button", { type: "button", class: `${cls}danger`, dataset: { action: "purge" }, text: small ? "Purge" : "Purge all", on: { click: () => bulk("purge", filter) } }),
  ];
}

function groups(tasks) {
  const byKey = new Map();
  for (const t of tasks) {
    const type = t.error ? t.error.type || "error" : state.status === "cancelled" ? "cancelled" : "–";
    const key = JSON.stringify([t.name, type]);
    let g = byKey.get(key);
    if (!g) {
      g = { name: t.name, type, tasks: [], latest: t };
      byKey.set(key, g);
    }
    g.tasks.push(t);
  }
  return [...byKey.values()].sort((a, b) => b.tasks.length - a.tasks.length);
}

function row(g) {
  const href = `${root}/ui/tasks?status=${state.status}&name=${encodeURIComponent(g.name)}${state.queue ? `&queue=${encodeURIComponent(state.queue)}` : ""}`;
  const message = g.latest.error ? g.latest.error.message : "";
  return h(
    "tr",
    {},
    h("th", { scope: "row" }, h("a", { href, text: g.name })),
    h("td", { class: "mono", text: g.type }),
    h("td", { class: "num", text: count(g.tasks.length) }),
    h("td", { class: "clip", title: message, text: message || "–" }),
    h("td", {}, timeEl(g.latest.updated_at)),
    // A group's buttons act on its name (the bulk filter has no error type).
    h("td", { class: "actions" }, ...bulkButtons(filterBody({ name: g.name }), true)),
  );
}

async function load() {
  writeQuery(state, DEFAULTS);
  try {
    const reply = await get("/tasks", { ...filterBody(), limit: SAMPLE });
    showError(errorBox, null);
    const total = reply.pagination.total;
    const list = groups(reply.data);
    $("groups-body").replaceChildren(...list.map(row));
    $("failed-summary").textContent = total
      ? `${count(total)} ${describe(filterBody())}${total > reply.data.length ? `; the newest ${reply.data.length} grouped below` : ""}`
      : `No ${describe(filterBody())}`;
    $("bulk-actions").replaceChildren(...(total ? bulkButtons(filterBody(), false) : []));
  } catch (err) {
    showError(errorBox, err);
  }
}

for (const key of Object.keys(DEFAULTS)) form.elements[key].value = state[key];
form.addEventListener("submit", (event) => {
  event.preventDefault();
  for (const key of Object.keys(DEFAULTS)) state[key] = form.elements[key].value.trim();
  load();
});
form.elements.status.addEventListener("change", () => form.requestSubmit());
load();
