// Task helpers shared by the task pages: one row of the list, filters, what a role may do.
import { badge, duration, h, timeEl } from "./dom.js";
import { can, root } from "./session.js";

export const TASK_EVENTS = [
  "task.created", "task.leased", "task.completed", "task.failed", "task.retried",
  "task.released", "task.cancelled", "task.deleted", "task.updated",
].join(",");

export const taskUrl = (id) => `${root}/ui/tasks/${encodeURIComponent(id)}`;

export function taskRow(t) {
  return h(
    "tr",
    { dataset: { id: t.id } },
    h(
      "td",
      { class: "task-cell" },
      h("a", { href: taskUrl(t.id), class: "task-name", text: t.name }),
      h("span", { class: "mono muted id", text: t.id.slice(0, 8), title: t.id }),
    ),
    h("td", {}, badge(t.status)),
    h("td", { text: t.priority }),
    h("td", { text: t.queue }),
    h("td", { class: "num", text: String(t.attempts) }),
    h("td", { class: "mono", text: t.worker_id || "–" }),
    h("td", {}, timeEl(t.created_at)),
    h("td", { class: "num", text: duration(t.duration) }),
  );
}

/** Whether `task` passes the list filters (the same rules the API applies). */
export function matches(task, f) {
  if (f.status && task.status !== f.status) return false;
  if (f.priority && task.priority !== f.priority) return false;
  if (f.queue && task.queue !== f.queue) return false;
  if (f.name && task.name !== f.name) return false;
  if (f.worker_id && task.worker_id !== f.worker_id) return false;
  if (f.tag && !(task.tags || []).includes(f.tag)) return false;
  const created = Date.parse(task.created_at);
  if (f.created_after && !(created >= Date.parse(f.created_after))) return false;
  if (f.created_before && !(created < Date.parse(f.created_before))) return false;
  return true;
}

/** What the signed-in role may do to a task in its current state (the API checks again). */
export function allowedActions(task) {
  if (!can("tasks:write")) return [];
  const out = [];
  if (task.status === "pending" || task.status === "running") out.push("cancel");
  if (task.status === "failed" || task.status === "cancelled") out.push("retry");
  out.push("delete");
  return out;
}
