// Building the page with DOM APIs only: text is always set as text (never parsed as HTML), so
// whatever a task carries (names, payloads, errors) can only ever show as text.

/**
 * h("a", {href, class: "x", on: {click}}, "text", child) -> element. Children that are strings
 * or numbers become text nodes; null/false children are skipped.
 */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "on") {
      for (const [event, fn] of Object.entries(value)) el.addEventListener(event, fn);
    } else if (key === "class") {
      el.className = value;
    } else if (key === "text") {
      el.textContent = String(value);
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else if (value === true) {
      el.setAttribute(key, "");
    } else {
      el.setAttribute(key, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

export const $ = (id) => document.getElementById(id);

export function showError(el, err) {
  if (!el) return;
  if (!err) {
    el.hidden = true;
    el.textContent = "";
    return;
  }
  el.textContent = err.message || String(err);
  el.hidden = false;
}

// --- times -----------------------------------------------------------------------------------

const UNITS = [
  [86400 * 365, "y"],
  [86400 * 30, "mo"],
  [86400, "d"],
  [3600, "h"],
  [60, "min"],
  [1, "s"],
];

export function relative(iso, now = Date.now()) {
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return "";
  const diff = (t - now) / 1000;
  const abs = Math.abs(diff);
  if (abs < 5) return "just now";
  for (const [size, unit] of UNITS) {
    if (abs >= size) {
      const n = Math.floor(abs / size);
      return diff < 0 ? `${n} ${unit} ago` : `in ${n} ${unit}`;
    }
  }
  return "just now";
}

const EXACT = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

export function exact(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? "" : `${EXACT.format(d)} (${d.toISOString()})`;
}

/** <time> showing "3 min ago", the exact time on hover; kept fresh by startClock(). */
export function timeEl(iso) {
  if (!iso) return h("span", { class: "muted", text: "–" });
  return h("time", { datetime: iso, title: exact(iso), class: "rel", text: relative(iso) });
}

let clock = null;
export function startClock() {
  if (clock) return;
  clock = setInterval(() => {
    const now = Date.now();
    for (const el of document.querySelectorAll("time.rel")) {
      el.textContent = relative(el.getAttribute("datetime"), now);
    }
  }, 10000);
}

export function age(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Number(seconds);
  if (s < 1) return "< 1 s";
  for (const [size, unit] of UNITS) if (s >= size) return `${Math.floor(s / size)} ${unit}`;
  return `${Math.round(s)} s`;
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Number(seconds);
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s.toFixed(1)} s`;
  return age(s);
}

export const count = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString());

// --- small widgets -------------------------------------------------------------------------------

const STATUSES = new Set(["pending", "running", "completed", "failed", "cancelled", "active", "inactive", "paused", "scheduled"]);

export function badge(status) {
  const known = STATUSES.has(status) ? status : "other";
  return h("span", { class: `badge badge-${known}`, text: status });
}

export function toast(message, kind = "ok") {
  const box = document.getElementById("toasts");
  if (!box) return;
  const el = h("div", { class: `toast toast-${kind === "error" ? "error" : "ok"}`, text: message });
  box.appendChild(el);
  setTimeout(() => el.remove(), kind === "error" ? 8000 : 4000);
}

/**
 * A modal confirmation (<dialog>: focus stays inside, Escape cancels). Resolves to true when
 * confirmed. `fields` (optional) are extra inputs; their values come back in `.values`.
 */
export function confirmDialog({ title, message, confirm = "Confirm", danger = false, fields = [] }) {
  return new Promise((resolve) => {
    const inputs = fields.map((f) => {
      const id = `dlg-${f.name}`;
      const input = h("input", {
        id,
        name: f.name,
        type: f.type || "text",
        value: f.value ?? "",
        min: f.min,
        step: f.step,
        placeholder: f.placeholder,
      });
      return { f, input, row: h("div", { class: "field" }, h("label", { for: id, text: f.label }), input) };
    });
    const ok = h("button", { type: "submit", class: danger ? "danger" : "", text: confirm, value: "ok" });
    const cancel = h("button", { type: "button", class: "secondary", text: "Cancel" });
    const form = h(
      "form",
      { method: "dialog" },
      h("h2", { text: title }),
      message ? h("p", { text: message }) : null,
      inputs.map((i) => i.row),
      h("div", { class: "dialog-actions" }, cancel, ok),
    );
    const dialog = h("dialog", { class: "dialog", "aria-label": title }, form);
    let confirmed = false;
    cancel.addEventListener("click", () => dialog.close());
    form.addEventListener("submit", () => {
      confirmed = true;
    });
    dialog.addEventListener("close", () => {
      const values = Object.fromEntries(inputs.map((i) => [i.f.name, i.input.value]));
      dialog.remove();
      resolve(confirmed ? { ok: true, values } : null);
    });
    document.body.appendChild(dialog);
    dialog.showModal();
    (inputs[0]?.input || (danger ? cancel : ok)).focus();
  });
}

/** Pretty JSON in a <pre>, with a copy button. */
export function jsonBlock(label, value, { text = false } = {}) {
  const content = text ? String(value ?? "") : JSON.stringify(value, null, 2);
  const pre = h("pre", { class: "json", tabindex: "0", "aria-label": label, text: content });
  const copy = h("button", {
    type: "button",
    class: "secondary small",
    text: "Copy",
    "aria-label": `Copy ${label}`,
    on: {
      click: async () => {
        try {
          await navigator.clipboard.writeText(content);
          toast(`${label} copied`);
        } catch {
          const range = document.createRange();
          range.selectNodeContents(pre);
          const sel = getSelection();
          sel.removeAllRanges();
          sel.addRange(range);
          toast("Selected: press Ctrl+C to copy");
        }
      },
    },
  });
  return h("figure", { class: "block" }, h("figcaption", {}, h("span", { text: label }), copy), pre);
}

/** Wires Previous/Next buttons and "page x of y" to a {skip, limit, total} state. */
export function pager(state, onChange) {
  const prev = document.getElementById("prev");
  const next = document.getElementById("next");
  const info = document.getElementById("page-info");
  prev.addEventListener("click", () => {
    state.skip = Math.max(0, state.skip - state.limit);
    onChange();
  });
  next.addEventListener("click", () => {
    state.skip += state.limit;
    onChange();
  });
  return (pagination) => {
    const total = pagination ? pagination.total : 0;
    const pages = Math.max(1, Math.ceil(total / state.limit));
    const page = Math.floor(state.skip / state.limit) + 1;
    info.textContent = `Page ${Math.min(page, pages)} of ${pages}`;
    prev.disabled = state.skip <= 0;
    next.disabled = state.skip + state.limit >= total;
  };
}
