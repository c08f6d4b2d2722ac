// The REST API with the session's bearer token. Errors come back as ApiError in the guide's
// format (code, message, details); a 401 means the session is over: back to the sign-in page.
import { getSession, root, signOut } from "./session.js";

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details || {};
  }
  /** True when the server has no such endpoint (an older server): the page hides that part. */
  get missingRoute() {
    return this.status === 404 && this.details.reason === "unknown route";
  }
}

function url(path, query) {
  const u = new URL(`${root}/api/v1${path}`, location.origin);
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null && v !== "") u.searchParams.set(k, String(v));
  }
  return u;
}

export async function request(method, path, { query, body, accept } = {}) {
  const session = getSession();
  const headers = { Accept: accept || "application/json" };
  if (session) headers.Authorization = `Bearer ${session.token}`;
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url(path, query), init);
  } catch (err) {
    throw new ApiError(0, "NETWORK", "The server did not answer (is it running?)", {});
  }
  if (response.status === 401 && session) {
    signOut("expired");
    throw new ApiError(401, "UNAUTHORIZED", "Your session has ended; sign in again", {});
  }
  if (!response.ok) {
    let error = {};
    try {
      error = (await response.json()).error || {};
    } catch {
      error = {};
    }
    throw new ApiError(
      response.status,
      error.code || `HTTP_${response.status}`,
      error.message || response.statusText || "Request failed",
      error.details,
    );
  }
  return response;
}

/** The whole JSON envelope ({data, pagination, ...}); null for 204. */
export async function json(method, path, options) {
  const response = await request(method, path, options);
  if (response.status === 204) return null;
  return response.json();
}

export const get = (path, query) => json("GET", path, { query });
export const post = (path, body) => json("POST", path, { body: body === undefined ? {} : body });
export const put = (path, body) => json("PUT", path, { body });
export const del = (path) => json("DELETE", path);

/** A task id as the API writes it (UUID). */
export const TASK_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
