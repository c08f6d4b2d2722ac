// Tasks: filters, sort, pagination and the total, from GET /api/v1/tasks; rows kept live from
// /ws/tasks (batched per frame), new tasks shown at the top without a reload.
import { TASK_ID, get } from "../lib/api.js";
import { $, count, showError } from "../lib/dom.js";
import { live } from "../lib/live.js";
import { readQuery, startPage, writeQuery } from "../lib/page.js";
import { TASK_EVENTS, matches, taskRow, taskUrl } from "../lib/tasks.js";

await startPage();

const DEFAULTS = {
  status: "", priority: "", queue: "", name: "", tag: "", worker_id: "",
  created_after: "", created_before: "", sort: "created_at", order: "desc", limit: 50, skip: 0,
};
const FILTERS = ["status", "priority", "queue", "name", "tag", "worker_id", "created_after", "created_before"];
const state = readQuery(DEFAULTS);
if (![25, 50, 100].includes(state.limit)) state.limit = 50;
const form = $("filters");
const body = $("tasks-body");
const errorBox = $("tasks-error");
const rows = new Map(); // task id -> <tr>
let total = 0;
let unseen = 0; // new matching tasks not shown (not on the live first page)
let reloadTimer = null;

// datetime-local inputs are local time; the API wants RFC 3339.
const toIso = (local) => (local ? new Date(local).toISOString() : "");
const toLocal = (iso) => {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
};

function fillForm() {
  for (const key of [...FILTERS, "sort", "order", "limit"]) {
    const input = form.elements[key];
    if (!input) continue;
    input.value = key.startsWith("created_") ? toLocal(state[key]) : String(state[key]);
  }
}

function readForm() {
  for (const key of [...FILTERS, "sort", "order"]) {
    const value = form.elements[key].value.trim();
    state[key] = key.startsWith("created_") ? toIso(value) : value;
  }
  state.limit = Number(form.elements.limit.value) || 50;
  state.skip = 0;
}

/** The first page of the newest (or latest-updated) tasks takes new ones at the top. */
const liveTop = () => state.skip === 0 && state.order === "desc" && state.sort !== "duration";

const updatePager = (() => {
  const prev = $("prev");
  const next = $("next");
  prev.addEventListener("click", () => {
    state.skip = Math.max(0, state.skip - state.limit);
    load();
  });
  next.addEventListener("click", () => {
    state.skip += state.limit;
    load();
  });
  return () => {
    const pages = Math.max(1, Math.ceil(total / state.limit));
    const page = Math.floor(state.skip / state.limit) + 1;
    $("page-info").textContent = `Page ${Math.min(page, pages)} of ${count(pages)}`;
    prev.disabled = state.skip <= 0;
    next.disabled = state.skip + state.limit >= total;
  };
})();

function summarize() {
  const shown = rows.size;
  $("tasks-summary").textContent = shown
    ? `Showing ${count(state.skip + 1)}–${count(state.skip + shown)} of ${count(total)} tasks`
    : total
      ? `No tasks on this page (${count(total)} in all)`
      : "No tasks match";
  const button = $("new-tasks");
  button.hidden = unseen === 0;
  button.textContent = `${count(unseen)} new — show`;
  updatePager();
}

let loading = 0;
async function load() {
  const mine = ++loading;
  writeQuery(state, DEFAULTS);
  const query = { skip: state.skip, limit: state.limit, sort: state.sort, order: state.order };
  for (const key of FILTERS) query[key] = state[key];
  try {
    const reply = await get("/tasks", query);
    if (mine !== loading) return; // a newer request has been made since
    showError(errorBox, null);
    total = reply.pagination.total;
    unseen = 0;
    rows.clear();
    const trs = reply.data.map((t) => {
      const tr = taskRow(t);
      rows.set(t.id, tr);
      return tr;
    });
    body.replaceChildren(...trs);
  } catch (err) {
    if (mine !== loading) return;
    showError(errorBox, err);
    rows.clear();
    body.replaceChildren();
    total = 0;
  }
  summarize();
}

function reloadSoon() {
  if (reloadTimer) return;
  reloadTimer = setTimeout(() => {
    reloadTimer = null;
    load();
  }, 3000); // counts under a status filter: at most one reload per 3 s, however busy
}

function apply(events) {
  // The latest state of each task in this batch, in order of arrival.
  const latest = new Map();
  for (const e of events) {
    if (!e.task) continue;
    latest.delete(e.task.id);
    latest.set(e.task.id, e);
  }
  let countMayDrift = false;
  const top = []; // tasks that go to the top of the list, oldest first
  for (const e of latest.values()) {
    const t = e.task;
    const tr = rows.get(t.id);
    const deleted = e.event === "task.deleted";
    const fits = !deleted && matches(t, state);
    if (tr) {
      if (!fits) {
        tr.remove();
        rows.delete(t.id);
        total = Math.max(0, total - 1);
      } else if (liveTop() && state.sort === "updated_at") {
        tr.remove();
        rows.delete(t.id);
        top.push(t);
      } else {
        const fresh = taskRow(t);
        rows.set(t.id, fresh);
        tr.replaceWith(fresh);
      }
      continue;
    }
    if (e.event === "task.created") {
      if (!fits) continue;
      total += 1;
      if (liveTop()) top.push(t);
      else unseen += 1;
    } else if (state.status || state.worker_id) {
      countMayDrift = true; // a task not shown may have entered or left the filter
    } else if (deleted && matches(t, state)) {
      total = Math.max(0, total - 1);
    } else if (fits && liveTop() && state.sort === "updated_at") {
      top.push(t);
    }
  }
  if (top.length) {
    // Only the newest `limit` can be on the page: under load, most never get a row at all.
    const fresh = top.slice(-state.limit).reverse().map(taskRow);
    for (const tr of fresh) rows.set(tr.dataset.id, tr);
    body.prepend(...fresh);
    while (rows.size > state.limit) {
      const last = body.lastElementChild;
      rows.delete(last.dataset.id);
      last.remove();
    }
  }
  if (countMayDrift) reloadSoon();
  summarize();
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  readForm();
  load();
});
form.addEventListener("reset", (event) => {
  event.preventDefault();
  Object.assign(state, DEFAULTS);
  fillForm();
  load();
});
for (const key of ["status", "priority", "sort", "order", "limit"]) {
  form.elements[key].addEventListener("change", () => {
    readForm();
    load();
  });
}
$("new-tasks").addEventListener("click", () => {
  state.skip = 0;
  state.order = "desc";
  if (state.sort === "duration") state.sort = "created_at";
  fillForm();
  load();
});
$("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("search").value.trim();
  if (TASK_ID.test(text)) {
    location.assign(taskUrl(text.toLowerCase()));
    return;
  }
  state.name = text;
  state.skip = 0;
  fillForm();
  load();
});

fillForm();
await load();
live("/ws/tasks", { events: TASK_EVENTS }, apply, { onReconnect: load, onLagged: reloadSoon });
