// Live updates over the server's WebSockets. The token goes in the subprotocol list
// (["bearer", token]), never in the URL. Messages are unpacked (the server sends
// {"event": "batch", "events": [...]} under load) and handed over once per animation frame
// (once a second in a hidden tab), so thousands of events a second cost one render each frame.
import { getSession, root } from "./session.js";

const MAX_BACKOFF_MS = 10000;
const POLICY_VIOLATION = 1008; // the server closed: these credentials no longer hold

function setState(text) {
  const el = document.getElementById("live-state");
  if (!el) return;
  el.hidden = !text;
  el.textContent = text || "";
  el.className = `live-state ${text === "live" ? "on" : "off"}`;
}

/**
 * Opens `path` (e.g. "/ws/tasks") with `params`; calls `onEvents(events)` with the events
 * gathered since the last frame. Reconnects with backoff; `onReconnect` runs after a
 * reconnection (events may have been missed: reload what is shown). Returns {close()}.
 */
export function live(path, params, onEvents, { onReconnect, onLagged } = {}) {
  let socket = null;
  let pending = [];
  let scheduled = false;
  let closed = false;
  let backoff = 500;
  let opened = false;

  const flush = () => {
    scheduled = false;
    const events = pending;
    pending = [];
    if (events.length) onEvents(events);
  };
  const schedule = () => {
    if (scheduled) return;
    scheduled = true;
    if (document.hidden) setTimeout(flush, 1000);
    else requestAnimationFrame(flush);
  };

  const take = (message) => {
    if (message.event === "batch") {
      for (const e of message.events) take(e);
    } else if (message.event === "lagged") {
      if (onLagged) onLagged(message.missed);
    } else if (message.event !== "ping") {
      pending.push(message);
    }
  };

  const connect = () => {
    const session = getSession();
    if (!session || closed) return;
    const u = new URL(`${root}${path}`, location.href);
    u.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    for (const [k, v] of Object.entries(params || {})) {
      if (v !== undefined && v !== null && v !== "") u.searchParams.set(k, String(v));
    }
    socket = new WebSocket(u, ["bearer", session.token]);
    socket.addEventListener("open", () => {
      setState("live");
      backoff = 500;
      if (opened && onReconnect) onReconnect();
      opened = true;
    });
    socket.addEventListener("message", (msg) => {
      let data;
      try {
        data = JSON.parse(msg.data);
      } catch {
        return;
      }
      take(data);
      if (pending.length) schedule();
    });
    socket.addEventListener("close", (event) => {
      socket = null;
      if (closed) return;
      if (event.code === POLICY_VIOLATION) {
        // the server found the session's credentials no longer valid: retrying cannot help
        setState("signed out: sign in again");
        return;
      }
      setState("reconnecting…");
      setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
    });
  };

  // Leave cleanly when the page goes away (no "connection closed" noise).
  addEventListener("pagehide", () => {
    closed = true;
    if (socket) socket.close(1000);
  });
  connect();
  return {
    close() {
      closed = true;
      if (socket) socket.close(1000);
    },
  };
}
