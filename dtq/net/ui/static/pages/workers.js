// Workers: status, load / capacity, last heartbeat and the tasks each is running, kept live
// from worker heartbeats and task events on /ws/tasks.
import { get } from "../lib/api.js";
import { $, badge, count, h, pager, showError, timeEl } from "../lib/dom.js";
import { live } from "../lib/live.js";
import { readQuery, startPage, writeQuery } from "../lib/page.js";
import { root } from "../lib/session.js";
import { taskUrl } from "../lib/tasks.js";

await startPage();
const SHOWN = 5; // running tasks listed per worker (the count says how many more)
const REFRESH_MS = 1000; // a worker's running tasks are fetched again at most once a second
const DEFAULTS = { status: "", skip: 0, limit: 50 };
const state = readQuery(DEFAULTS);
const errorBox = $("workers-error");
const form = $("filters");
const workers = new Map(); // worker id -> worker
// worker id -> {tasks: its first running tasks, total: how many it runs}: one bounded list
// request per worker shown (the tasks list's worker_id + status filter), so it is right
// however many tasks run.
const running = new Map();
let total = 0;

function runningCell(workerId) {
  const mine = running.get(workerId);
  if (!mine || !mine.total) return h("td", { class: "muted", text: "–" });
  const shown = mine.tasks.map((t) => h("li", {}, h("a", { href: taskUrl(t.id), text: t.name })));
  const more = mine.total - mine.tasks.length;
  if (more > 0) {
    shown.push(h("li", {}, h("a", { class: "muted", href: `${root}/ui/tasks?status=running&worker_id=${encodeURIComponent(workerId)}`, text: `+${count(more)} more` })));
  }
  return h("td", {}, h("ul", { class: "plain" }, ...shown));
}

async function loadRunning(workerIds) {
  const replies = await Promise.all(
    workerIds.map((id) => get("/tasks", { status: "running", worker_id: id, limit: SHOWN, sort: "updated_at", order: "desc" })),
  );
  workerIds.forEach((id, i) => running.set(id, { tasks: replies[i].data, total: replies[i].pagination.total }));
}

function row(w) {
  return h(
    "tr",
    { dataset: { worker: w.worker_id } },
    h("th", { scope: "row", class: "mono" }, h("a", { href: `${root}/ui/tasks?worker_id=${encodeURIComponent(w.worker_id)}`, text: w.worker_id })),
    h("td", {}, badge(w.status)),
    h("td", { class: "num" }, h("meter", { min: 0, max: Math.max(1, w.max_capacity), value: w.current_load, "aria-label": `load of ${w.worker_id}` }), ` ${w.current_load} / ${w.max_capacity}`),
    h("td", {}, timeEl(w.last_heartbeat)),
    h("td", { text: w.hostname || "–" }),
    h("td", { text: w.queues && w.queues.length ? w.queues.join(", ") : "all" }),
    h("td", { class: "num", text: `${count(w.tasks_completed)} / ${count(w.tasks_failed)}` }),
    runningCell(w.worker_id),
  );
}

function render() {
  $("workers-body").replaceChildren(...[...workers.values()].map(row));
  const active = [...workers.values()].filter((w) => w.status === "active").length;
  $("workers-summary").textContent = total ? `${count(total)} workers (${active} active on this page)` : "No workers have reported yet";
  showPage({ total });
}

const showPage = pager(state, () => load());

async function load() {
  writeQuery(state, DEFAULTS);
  try {
    const ws = await get("/workers", { status: state.status, skip: state.skip, limit: state.limit });
    workers.clear();
    for (const w of ws.data) workers.set(w.worker_id, w);
    running.clear();
    await loadRunning([...workers.keys()]);
    total = ws.pagination.total;
    showError(errorBox, null);
  } catch (err) {
    showError(errorBox, err);
  }
  render();
}

// Task events only say which workers to ask again; asked in one go, at most once a second.
const stale = new Set();
let refreshTimer = null;
function refreshSoon(workerId) {
  if (!workers.has(workerId)) return;
  stale.add(workerId);
  if (refreshTimer) return;
  refreshTimer = setTimeout(async () => {
    refreshTimer = null;
    const ids = [...stale].filter((id) => workers.has(id));
    stale.clear();
    try {
      await loadRunning(ids);
      render();
    } catch (err) {
      showError(errorBox, err);
    }
  }, REFRESH_MS);
}

function apply(events) {
  let changed = false;
  for (const e of events) {
    if (e.worker) {
      if (workers.has(e.worker.worker_id) || (!state.status || state.status === e.worker.status)) {
        if (workers.has(e.worker.worker_id) || workers.size < state.limit) {
          const known = workers.has(e.worker.worker_id);
          workers.set(e.worker.worker_id, e.worker);
          changed = true;
          if (!known) refreshSoon(e.worker.worker_id);
        }
      }
    } else if (e.task && e.task.worker_id) {
      refreshSoon(e.task.worker_id);
    }
  }
  if (changed) render();
}

form.elements.status.value = state.status;
form.addEventListener("submit", (event) => {
  event.preventDefault();
  state.status = form.elements.status.value;
  state.skip = 0;
  load();
});
form.elements.status.addEventListener("change", () => form.requestSubmit());
await load();
live("/ws/tasks", { events: "worker.active,worker.inactive,worker.heartbeat,task.leased,task.completed,task.failed,task.released,task.cancelled,task.deleted,task.retried" }, apply, { onReconnect: load });
