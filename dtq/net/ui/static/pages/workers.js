// Workers: status, load / capacity, last heartbeat and the tasks each is running, kept live
// from worker heartbeats and task events on /ws/tasks.
import { get } from "../lib/api.js";
import { $, badge, count, h, pager, showError, timeEl } from "../lib/dom.js";
import { live } from "../lib/live.js";
import { readQuery, startPage, writeQuery } from "../lib/page.js";
import { root } from "../lib/session.js";
import { taskUrl } from "../lib/tasks.js";

await startPage();
const RUNNING_SAMPLE = 100; // running tasks fetched to show against their workers
const DEFAULTS = { status: "", skip: 0, limit: 50 };
const state = readQuery(DEFAULTS);
const errorBox = $("workers-error");
const form = $("filters");
const workers = new Map(); // worker id -> worker
const running = new Map(); // task id -> task (running)
let total = 0;

function runningCell(workerId) {
  const mine = [...running.values()].filter((t) => t.worker_id === workerId);
  if (!mine.length) return h("td", { class: "muted", text: "–" });
  const shown = mine.slice(0, 5).map((t) => h("li", {}, h("a", { href: taskUrl(t.id), text: t.name })));
  if (mine.length > 5) shown.push(h("li", { class: "muted", text: `+${mine.length - 5} more` }));
  return h("td", {}, h("ul", { class: "plain" }, ...shown));
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
    const [ws, rs] = await Promise.all([
      get("/workers", { status: state.status, skip: state.skip, limit: state.limit }),
      get("/tasks", { status: "running", limit: RUNNING_SAMPLE }),
    ]);
    showError(errorBox, null);
    workers.clear();
    for (const w of ws.data) workers.set(w.worker_id, w);
    running.clear();
    for (const t of rs.data) running.set(t.id, t);
    total = ws.pagination.total;
  } catch (err) {
    showError(errorBox, err);
  }
  render();
}

function apply(events) {
  for (const e of events) {
    if (e.worker) {
      if (workers.has(e.worker.worker_id) || (!state.status || state.status === e.worker.status)) {
        if (workers.has(e.worker.worker_id) || workers.size < state.limit) workers.set(e.worker.worker_id, e.worker);
      }
    } else if (e.task) {
      if (e.task.status === "running") running.set(e.task.id, e.task);
      else running.delete(e.task.id);
    }
  }
  render();
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
