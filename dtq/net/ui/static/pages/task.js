// One task: every field, payload / result / error, its history and why it is not running, and
// the actions its state allows. Kept live from /ws/tasks?task_id=...
import { ApiError, del, get, post, put } from "../lib/api.js";
import { $, badge, confirmDialog, duration, h, jsonBlock, showError, timeEl, toast } from "../lib/dom.js";
import { live } from "../lib/live.js";
import { startPage } from "../lib/page.js";
import { root } from "../lib/session.js";
import { allowedActions } from "../lib/tasks.js";

await startPage();
const id = document.body.dataset.taskId;
const errorBox = $("task-error");
let current = null;
let eventsSupported = true;
let explainSupported = true;

const text = (v) => (v === null || v === undefined || v === "" ? "–" : String(v));
const mono = (v) => h("span", { class: "mono", text: text(v) });

function fields(t) {
  const rows = [
    ["ID", mono(t.id)],
    ["Name", text(t.name)],
    ["Description", text(t.description)],
    ["Status", badge(t.status)],
    ["Priority", t.priority],
    ["Queue", h("a", { href: `${root}/ui/tasks?queue=${encodeURIComponent(t.queue)}`, text: t.queue })],
    ["Tags", t.tags && t.tags.length ? t.tags.map((tag) => h("span", { class: "tag", text: tag })) : "–"],
    ["Attempts", `${t.attempts} (retries allowed: ${t.retry_count})`],
    ["Deliveries", String(t.deliveries ?? 0)],
    ["Timeout", duration(t.timeout)],
    ["Worker", t.worker_id ? h("a", { href: `${root}/ui/workers`, class: "mono", text: t.worker_id }) : "–"],
    ["Lease expires", t.lease ? timeEl(t.lease.expires_at) : "–"],
    ["Idempotency key", mono(t.idempotency_key)],
    ["Run at", timeEl(t.run_at)],
    ["Created", timeEl(t.created_at)],
    ["Updated", timeEl(t.updated_at)],
    ["Started", timeEl(t.started_at)],
    ["Finished", timeEl(t.completed_at)],
    ["Duration", duration(t.duration)],
  ];
  for (const [k, v] of Object.entries(t)) {
    // Fields a newer server adds are shown too ("every field").
    if (!KNOWN.has(k)) rows.push([k, typeof v === "object" && v !== null ? JSON.stringify(v) : text(v)]);
  }
  return rows.flatMap(([label, value]) => [h("dt", { text: label }), h("dd", {}, value)]);
}
const KNOWN = new Set([
  "id", "name", "description", "status", "priority", "queue", "payload", "result", "error",
  "retry_count", "attempts", "timeout", "worker_id", "lease", "tags", "idempotency_key", "run_at",
  "created_at", "updated_at", "started_at", "completed_at", "duration", "deliveries",
]);

function dataBlocks(t) {
  const blocks = [jsonBlock("Payload", t.payload)];
  if (t.result !== null && t.result !== undefined) blocks.push(jsonBlock("Result", t.result));
  if (t.error) {
    blocks.push(jsonBlock("Error", { type: t.error.type, message: t.error.message }));
    if (t.error.traceback) blocks.push(jsonBlock("Traceback", t.error.traceback, { text: true }));
  }
  return blocks;
}

async function act(action) {
  const t = current;
  const labels = {
    cancel: ["Cancel this task?", "A pending task will not run; a running one is told to stop and its result is refused.", "Cancel task"],
    retry: ["Retry this task?", "It goes back to pending now, keeping its attempts, with one more retry allowed.", "Retry task"],
    delete: ["Delete this task?", "The task and its history are removed for good.", "Delete task"],
  };
  const [title, message, confirm] = labels[action];
  const answer = await confirmDialog({ title, message: `${t.name}: ${message}`, confirm, danger: action !== "retry" });
  if (!answer) return;
  try {
    if (action === "cancel") await put(`/tasks/${id}`, { status: "cancelled" });
    if (action === "retry") await post(`/tasks/${id}/retry`);
    if (action === "delete") {
      await del(`/tasks/${id}`);
      toast("Task deleted");
      location.assign(`${root}/ui/tasks`);
      return;
    }
    toast(action === "cancel" ? "Task cancelled" : "Task sent back to pending");
    await load();
  } catch (err) {
    showError(errorBox, err);
  }
}

function actions(t) {
  const names = { cancel: "Cancel", retry: "Retry", delete: "Delete" };
  return allowedActions(t).map((a) =>
    h("button", { type: "button", class: a === "retry" ? "" : "danger", dataset: { action: a }, text: names[a], on: { click: () => act(a) } }),
  );
}

function render(t) {
  current = t;
  document.title = `${t.name} · dtq`;
  $("task-title").replaceChildren(h("span", { text: t.name }), " ", badge(t.status));
  $("task-actions").replaceChildren(...actions(t));
  $("task-fields").replaceChildren(...fields(t));
  $("task-data").replaceChildren(...dataBlocks(t));
}

// --- history and explain (issue 12's endpoints; hidden on a server without them) ----------------

function eventItem(e) {
  const detail = [];
  if (e.worker_id) detail.push(h("span", { class: "mono", text: `worker ${e.worker_id}` }));
  if (e.actor) detail.push(h("span", { text: `by ${e.actor}` }));
  if (e.attempt !== undefined && e.attempt !== null) detail.push(h("span", { text: `attempt ${e.attempt}` }));
  const extra = [];
  if (e.error) extra.push(h("p", { class: "event-error", text: `${e.error.type ? `${e.error.type}: ` : ""}${e.error.message || ""}` }));
  if (e.details && Object.keys(e.details).length) {
    const text = Object.entries(e.details)
      .map(([k, v]) => `${k}: ${typeof v === "object" && v !== null ? JSON.stringify(v) : v}`)
      .join(", ");
    extra.push(h("p", { class: "event-details muted small", text }));
  }
  return h(
    "li",
    { class: `event event-${String(e.event).replace(/[^a-z_]/g, "")}` },
    h("div", { class: "event-head" }, h("strong", { text: e.event }), timeEl(e.at), ...detail),
    ...extra,
  );
}

// The history a page at a time (oldest first), however many events the task has.
const EVENTS_PAGE = 50;
let eventsSkip = 0;

async function loadEvents() {
  if (!eventsSupported) return;
  try {
    const reply = await get(`/tasks/${id}/events`, { skip: eventsSkip, limit: EVENTS_PAGE });
    const total = reply.pagination ? reply.pagination.total : reply.data.length;
    if (eventsSkip > 0 && eventsSkip >= total) {
      eventsSkip = Math.max(0, (Math.ceil(total / EVENTS_PAGE) - 1) * EVENTS_PAGE);
      return loadEvents();
    }
    $("timeline").replaceChildren(...reply.data.map(eventItem));
    $("timeline").start = eventsSkip + 1;
    $("events-pager").hidden = total <= EVENTS_PAGE;
    $("events-info").textContent = `Events ${eventsSkip + 1}–${eventsSkip + reply.data.length} of ${total}`;
    $("events-prev").disabled = eventsSkip <= 0;
    $("events-next").disabled = eventsSkip + EVENTS_PAGE >= total;
    $("timeline-section").hidden = false;
  } catch (err) {
    if (err instanceof ApiError && err.missingRoute) eventsSupported = false;
    else showError(errorBox, err);
  }
}
$("events-prev").addEventListener("click", () => {
  eventsSkip = Math.max(0, eventsSkip - EVENTS_PAGE);
  loadEvents();
});
$("events-next").addEventListener("click", () => {
  eventsSkip += EVENTS_PAGE;
  loadEvents();
});

// A reason's figures: times (ISO strings, or epoch seconds under a time-like key) shown
// relative with the exact time on hover, the rest as text.
const TIME_KEY = /(_at|until)$/;
function reasonFigure(key, value) {
  const label = key.replace(/_/g, " ");
  let iso = null;
  if (typeof value === "string" && TIME_KEY.test(key) && !Number.isNaN(Date.parse(value))) iso = value;
  if (typeof value === "number" && TIME_KEY.test(key)) iso = new Date(value * 1000).toISOString();
  if (iso) return h("span", { class: "figure-part" }, `${label} `, timeEl(iso));
  const text = typeof value === "object" && value !== null ? JSON.stringify(value) : String(value);
  return h("span", { class: "figure-part", text: `${label}: ${text}` });
}

function reasonItem(r) {
  const figures = Object.entries(r)
    .filter(([k, v]) => k !== "code" && k !== "message" && v !== null && v !== undefined)
    .map(([k, v]) => reasonFigure(k, v));
  return h(
    "li",
    { dataset: { code: r.code } },
    h("strong", { text: r.message || r.code }),
    figures.length ? h("span", { class: "muted small reason-figures" }, ...figures) : null,
  );
}

async function loadExplain(t) {
  const section = $("explain-section");
  if (!explainSupported || t.status !== "pending") {
    section.hidden = true;
    return;
  }
  try {
    const x = (await get(`/tasks/${id}/explain`)).data;
    $("explain-list").replaceChildren(...(x.reasons || []).map(reasonItem));
    section.hidden = !(x.reasons || []).length;
  } catch (err) {
    if (err instanceof ApiError && err.missingRoute) explainSupported = false;
    section.hidden = true;
  }
}

async function load() {
  try {
    const t = (await get(`/tasks/${id}`)).data;
    showError(errorBox, null);
    render(t);
    await Promise.all([loadEvents(), loadExplain(t)]);
    return true;
  } catch (err) {
    if (err instanceof ApiError && (err.status === 404 || err.status === 400)) {
      $("task-title").textContent = "Task not found";
      $("task-actions").replaceChildren();
      $("task-fields").replaceChildren();
      $("task-data").replaceChildren();
      $("timeline-section").hidden = true;
      $("explain-section").hidden = true;
      current = null;
    }
    showError(errorBox, err);
    return false;
  }
}

let refresh = null;
if (await load()) {
  live("/ws/tasks", { task_id: id }, (events) => {
    const last = events[events.length - 1];
    if (last.event === "task.deleted") {
      $("task-title").textContent = "This task was deleted";
      $("task-actions").replaceChildren();
      return;
    }
    if (last.task) render(last.task);
    // The history and explain come from their own endpoints: refresh them, at most every 1 s.
    if (!refresh) {
      refresh = setTimeout(async () => {
        refresh = null;
        if (current) await Promise.all([loadEvents(), loadExplain(current)]);
      }, 1000);
    }
  }, { onReconnect: load });
}
