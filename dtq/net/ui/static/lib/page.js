// What every signed-in page does first.
import { startClock } from "./dom.js";
import { requireSession, setupChrome } from "./session.js";

/** The session; when there is none, the page is left for sign-in and this never resolves, so
 * nothing after `await startPage()` runs. */
export async function startPage() {
  const session = requireSession();
  if (!session) await new Promise(() => {});
  setupChrome(session);
  startClock();
  return session;
}

/** Reads and writes a page's filters in its URL (so a reload, a link or Back keeps them). */
export function readQuery(defaults) {
  const params = new URLSearchParams(location.search);
  const out = { ...defaults };
  for (const key of Object.keys(defaults)) {
    if (params.has(key)) {
      out[key] = typeof defaults[key] === "number" ? Number(params.get(key)) || defaults[key] : params.get(key);
    }
  }
  return out;
}

export function writeQuery(state, defaults) {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(state)) {
    if (v !== "" && v !== null && v !== undefined && v !== defaults[k]) params.set(k, String(v));
  }
  const search = params.toString();
  history.replaceState(null, "", search ? `?${search}` : location.pathname);
}
