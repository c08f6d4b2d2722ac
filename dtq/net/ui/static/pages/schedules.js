// Schedules: next and last run, pause / resume, trigger now, delete (confirmed).
import { ApiError, del, get, post, put } from "../lib/api.js";
import { $, badge, confirmDialog, count, h, pager, showError, timeEl, toast } from "../lib/dom.js";
import { startPage } from "../lib/page.js";
import { can } from "../lib/session.js";
import { taskUrl } from "../lib/tasks.js";

await startPage();
const state = { skip: 0, limit: 50 };
const errorBox = $("schedules-error");
const mayChange = () => can("schedules:write") || can("tasks:write");
const path = (name) => `/schedules/${encodeURIComponent(name)}`;

async function run(what, done) {
  try {
    await what();
    toast(done);
    await load();
  } catch (err) {
    showError(errorBox, err);
  }
}

async function setPaused(s, paused) {
  await run(() => put(path(s.name), { paused }), `Schedule ${s.name} ${paused ? "paused" : "resumed"}`);
}

async function remove(s) {
  const answer = await confirmDialog({
    title: `Delete schedule ${s.name}?`,
    message: "It stops firing. Tasks it already created stay.",
    confirm: "Delete schedule",
    danger: true,
  });
  if (answer) await run(() => del(path(s.name)), `Schedule ${s.name} deleted`);
}

function actions(s) {
  if (!mayChange()) return [];
  return [
    h("button", { type: "button", class: "small", dataset: { action: "trigger" }, text: "Run now", on: { click: () => run(() => post(`${path(s.name)}/trigger`), `Schedule ${s.name} triggered`) } }),
    s.paused
      ? h("button", { type: "button", class: "small secondary", dataset: { action: "resume" }, text: "Resume", on: { click: () => setPaused(s, false) } })
      : h("button", { type: "button", class: "small secondary", dataset: { action: "pause" }, text: "Pause", on: { click: () => setPaused(s, true) } }),
    h("button", { type: "button", class: "small danger", dataset: { action: "delete" }, text: "Delete…", on: { click: () => remove(s) } }),
  ];
}

function row(s) {
  const taskName = s.task && s.task.name ? s.task.name : "–";
  return h(
    "tr",
    { dataset: { schedule: s.name } },
    h("th", { scope: "row", text: s.name }),
    h("td", { class: "mono", text: `${s.cron}${s.timezone && s.timezone !== "UTC" ? ` (${s.timezone})` : ""}` }),
    h("td", { text: taskName }),
    h("td", {}, badge(s.paused ? "paused" : "active")),
    h("td", {}, s.paused ? h("span", { class: "muted", text: "paused" }) : timeEl(s.next_run_at)),
    h("td", {}, timeEl(s.last_run_at), s.last_task_id ? [" ", h("a", { href: taskUrl(s.last_task_id), text: "task" })] : null),
    h("td", { class: "actions" }, ...actions(s)),
  );
}

const showPage = pager(state, () => load());

async function load() {
  try {
    const reply = await get("/schedules", state);
    showError(errorBox, null);
    $("schedules-body").replaceChildren(...reply.data.map(row));
    const total = reply.pagination ? reply.pagination.total : reply.data.length;
    $("schedules-summary").textContent = total ? `${count(total)} schedules` : "No schedules yet (create them with POST /api/v1/schedules or `dtq schedules create`)";
    showPage(reply.pagination || { total });
  } catch (err) {
    $("schedules-summary").textContent = "";
    showError(errorBox, err instanceof ApiError && err.missingRoute ? new Error("This server has no schedules API yet.") : err);
  }
}

await load();
// Next/last run times move with the clock: refresh every 30 s while the page is open.
setInterval(() => {
  if (!document.hidden) load();
}, 30000);
