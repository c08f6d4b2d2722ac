// The signed-in session: kept in sessionStorage, so it lives as long as the tab and no longer.
// The role only decides what the page offers; the API checks every request itself.

const KEY = "dtq.session";
const body = document.body;
export const root = body.dataset.root || "";
const permissions = JSON.parse(body.dataset.permissions || "{}");

export function loginUrl(next) {
  const url = new URL(`${root}/ui/login`, location.origin);
  if (next) url.searchParams.set("next", next);
  return url.pathname + url.search;
}

export function getSession() {
  let session = null;
  try {
    session = JSON.parse(sessionStorage.getItem(KEY) || "null");
  } catch {
    session = null;
  }
  if (!session || typeof session.token !== "string") return null;
  if (session.expires_at && Date.now() >= session.expires_at) {
    sessionStorage.removeItem(KEY);
    return null;
  }
  return session;
}

export function saveSession({ token, username, role, expires_in }) {
  const session = { token, username, role, expires_at: Date.now() + (expires_in || 3600) * 1000 };
  sessionStorage.setItem(KEY, JSON.stringify(session));
  return session;
}

/** The session; without one, off to the sign-in page (which brings the user back here). */
export function requireSession() {
  const session = getSession();
  if (!session) location.replace(loginUrl(location.pathname + location.search));
  return session;
}

export function signOut(reason) {
  sessionStorage.removeItem(KEY);
  const next = reason === "expired" ? location.pathname + location.search : "";
  location.replace(loginUrl(next));
}

/** Whether the signed-in role has `permission` (the server's table, rendered into the page). */
export function can(permission) {
  const session = getSession();
  if (!session) return false;
  return (permissions[session.role] || []).includes(permission);
}

/** The header: who is signed in, and the sign-out button. */
export function setupChrome(session) {
  const who = document.getElementById("whoami");
  const box = document.getElementById("session");
  if (!who || !box) return;
  who.textContent = `${session.username} (${session.role})`;
  box.hidden = false;
  document.getElementById("signout").addEventListener("click", () => signOut());
}
