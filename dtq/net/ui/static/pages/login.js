// Sign in: POST /api/v1/auth/login, keep the token for this tab, go where the user was going.
import { ApiError, post } from "../lib/api.js";
import { $, showError } from "../lib/dom.js";
import { getSession, root, saveSession } from "../lib/session.js";

function destination() {
  const next = new URLSearchParams(location.search).get("next") || "";
  // Only a path of this dashboard: never an absolute URL (no open redirect).
  return next.startsWith(`${root}/ui/`) && !next.startsWith("//") ? next : `${root}/ui/`;
}

if (getSession()) location.replace(destination());

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const error = $("login-error");
  const button = $("login-submit");
  const username = $("username").value.trim();
  const password = $("password").value;
  if (!username || !password) {
    showError(error, new Error("Enter your username and password"));
    return;
  }
  button.disabled = true;
  showError(error, null);
  try {
    const reply = await post("/auth/login", { username, password });
    const data = reply.data || {};
    saveSession({ token: reply.token || data.token, username: data.username, role: data.role, expires_in: data.expires_in });
    location.replace(destination());
  } catch (err) {
    const message =
      err instanceof ApiError && err.status === 401
        ? "Wrong username or password"
        : err.message;
    showError(error, new Error(message));
    button.disabled = false;
    $("password").select();
  }
});
