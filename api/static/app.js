// WebSCADA Stream dashboard: session, REST helpers, the live Socket.IO stream and the
// wiring of the device list (devices.js), the device view (detail.js) and the alarms
// (alarms.js). Plain ES modules served as they are (no build step), same origin only;
// the vendored socket.io-client and uPlot (static/vendor/) are the only libraries.

import { createDevices } from "./devices.js";
import { createDetail } from "./detail.js";
import { createAlarms } from "./alarms.js";
import { createRules } from "./rules.js";
import {
  BROWSER_ZONE, formatTime, knownZones, onZoneChange, setZone, zone, zoneChoice, zoneLabel,
} from "./timezone.js";

const SESSION_KEY = "webscada.session";
const $ = (selector) => document.querySelector(selector);

class AuthError extends Error {
  name = "AuthError";
}

const ctx = {
  $,
  session: JSON.parse(sessionStorage.getItem(SESSION_KEY) || "null"),
  me: null,
  socket: null,
  rooms: new Set(),
  refreshTimer: null,
  api,
  getJson,
  subscribeRooms,
};

// ---- session -----------------------------------------------------------------

function saveSession(answer) {
  ctx.session = {
    access: answer.access_token,
    refresh: answer.refresh_token,
    expiresAt: Date.now() + answer.expires_in * 1000,
  };
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(ctx.session));
  scheduleRefresh();
}

function scheduleRefresh() {
  clearTimeout(ctx.refreshTimer);
  if (!ctx.session) return;
  const inMs = Math.max(5000, ctx.session.expiresAt - Date.now() - 60000);
  ctx.refreshTimer = setTimeout(refreshSession, inMs);
}

let refreshing = null;
function refreshSession() {
  // one refresh at a time: a refresh token works once
  refreshing ??= (async () => {
    if (!ctx.session) return false;
    const response = await fetch("/api/auth/refresh", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ refresh_token: ctx.session.refresh }),
    }).catch(() => null);
    if (!response) return false; // network down: keep the session, try again later
    if (!response.ok) {
      showLogin("Your session ended; log in again.");
      return false;
    }
    saveSession(await response.json());
    return true;
  })().finally(() => { refreshing = null; });
  return refreshing;
}

function showLogin(message) {
  stopLive();
  clearTimeout(ctx.refreshTimer);
  ctx.session = null;
  sessionStorage.removeItem(SESSION_KEY);
  $("#board").hidden = true;
  $("#logout").hidden = true;
  $("#alarm-banner").hidden = true;
  $("#connection").hidden = true;
  document.title = "WebSCADA Stream";
  $("#who").textContent = "";
  $("#login").hidden = false;
  $("#login-error").textContent = message || "";
  $("#password").value = "";
  $("#username").focus();
  setStatus("off", "signed out");
}

$("#login").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("#login-error").textContent = "";
  let response;
  try {
    response = await fetch("/api/auth/token", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ username: $("#username").value.trim(), password: $("#password").value }),
    });
  } catch {
    $("#login-error").textContent = "The server cannot be reached; try again.";
    return;
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const wait = response.headers.get("Retry-After");
    $("#login-error").textContent = response.status === 429
      ? `Too many failed attempts; try again in ${wait} s.`
      : (typeof body.detail === "string" ? body.detail : body.error || "Login failed.");
    return;
  }
  saveSession(body);
  start();
});

$("#logout").addEventListener("click", () => showLogin(""));

// ---- REST --------------------------------------------------------------------

async function api(path, options = {}, retried = false) {
  const response = await fetch(path, {
    ...options,
    headers: {
      Authorization: `Bearer ${ctx.session ? ctx.session.access : ""}`,
      Accept: "application/json",
      ...(options.body ? { "Content-Type": "application/json" } : {}),
      ...(options.headers || {}),
    },
  });
  if (response.status === 401) {
    if (!retried && await refreshSession()) return api(path, options, true);
    throw new AuthError("token refused");
  }
  return response;
}

// The JSON answer, null for 404; otherwise an Error naming the status and the API's error.
async function getJson(path) {
  const response = await api(path);
  if (response.status === 404) return null;
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(`${response.status} ${body.error || response.statusText}`);
  }
  return response.json();
}

// ---- live stream (socket.io-client) ----------------------------------------------

function setStatus(kind, text) {
  const badge = $("#status");
  badge.className = `status status-${kind}`;
  badge.textContent = text;
}

function setConnectionNotice(text) {
  $("#connection").textContent = text || "";
  $("#connection").hidden = !text;
}

function stopLive() {
  if (ctx.socket) {
    ctx.socket.removeAllListeners();
    ctx.socket.disconnect();
    ctx.socket = null;
  }
  ctx.rooms.clear();
}

// Join these rooms (the server forgets them on every reconnect: `connect` clears ctx.rooms).
async function subscribeRooms(wanted) {
  const socket = ctx.socket;
  if (!socket || !socket.connected) return;
  for (const room of wanted) {
    if (ctx.rooms.has(room)) continue;
    ctx.rooms.add(room);
    try {
      const ack = await socket.timeout(10000).emitWithAck("subscribe", { room });
      if (!ack || !ack.ok) ctx.rooms.delete(room);
    } catch {
      ctx.rooms.delete(room); // no answer in time
    }
  }
}

function connectLive() {
  stopLive();
  // auth as a function: every (re)connection sends the access token current at that moment
  const socket = window.io({
    transports: ["websocket"],
    auth: (send) => send({ token: ctx.session ? ctx.session.access : "" }),
    reconnectionDelay: 1000,
    reconnectionDelayMax: 15000,
  });
  ctx.socket = socket;
  setStatus("wait", "connecting");
  socket.on("connect", () => {
    ctx.rooms.clear();
    setStatus("on", "live");
    setConnectionNotice("");
    devices.subscribe();
    alarms.subscribe();
  });
  socket.on("disconnect", (reason) => {
    if (reason === "io client disconnect") return;
    setStatus("wait", "reconnecting");
    setConnectionNotice("Connection lost — reconnecting. Values shown may be out of date.");
  });
  socket.on("connect_error", async (error) => {
    setStatus("wait", "reconnecting");
    if (!socket.active) {
      // refused by the server (expired token): renew the session, then connect again
      setConnectionNotice("Live stream refused — renewing the session.");
      if (await refreshSession()) socket.connect();
    } else {
      setConnectionNotice(`Connection lost — reconnecting (${error.message}). Values shown may be out of date.`);
    }
  });
  socket.on("telemetry", (data) => {
    if (!data || !data.device_id) return;
    devices.onReading(data);
    detail.onReading(data);
  });
  socket.on("alarm", (data) => { if (data) alarms.onEvent(data); });
  socket.on("command_status", (data) => { if (data) detail.onCommandStatus(data); });
}

// ---- modules ---------------------------------------------------------------------

const devices = createDevices(ctx, { onSelect: (device) => select(device) });
const detail = createDetail(ctx, { onClose: () => select(null) });
const alarms = createAlarms(ctx, {
  onCounts: (byDevice) => devices.setAlarmDevices(byDevice),
});
const rules = createRules(ctx);
ctx.devices = devices;

// ---- time zone: browser / UTC / a named zone, remembered per browser --------------------

function showZone() {
  const name = $("#tz-name");
  const short = formatTime(Date.now()).split(" ").pop();
  name.textContent = zone() === short ? zone() : `${zone()} (${short})`;
  name.title = `Every time is shown in ${zoneLabel()}`;
  document.documentElement.dataset.timeZone = zone();
}

function fillZones() {
  const select = $("#tz-choice");
  const named = document.createElement("optgroup");
  named.label = "Named zones";
  named.append(...knownZones().filter((name) => name !== "UTC").map((name) => new Option(name, name)));
  select.replaceChildren(new Option(`Browser (${BROWSER_ZONE})`, "browser"), new Option("UTC", "UTC"), named);
  const current = zoneChoice();
  if (![...select.options].some((o) => o.value === current)) select.append(new Option(current, current));
  select.value = current;
  select.addEventListener("change", () => {
    if (!setZone(select.value)) select.value = zoneChoice();
  });
  showZone();
}

onZoneChange(() => {
  showZone();
  devices.render();
});
fillZones();

function select(device) {
  $("#board").classList.toggle("has-detail", Boolean(device));
  devices.markSelected(device ? device.id : null);
  detail.open(device);
  devices.subscribe();
}

// ---- start -----------------------------------------------------------------------

async function start() {
  if (!ctx.session) {
    showLogin("");
    return;
  }
  scheduleRefresh();
  $("#login").hidden = true;
  $("#board").hidden = false;
  $("#logout").hidden = false;
  try {
    ctx.me = await getJson("/api/auth/me");
  } catch (error) {
    if (error instanceof AuthError) showLogin("Your session ended; log in again.");
    else devices.showError(`Could not load your account: ${error.message}`);
    return;
  }
  $("#who").textContent = `${ctx.me.username} (${ctx.me.role})`;
  $("#command-form").hidden = ctx.me.role === "viewer";
  connectLive();
  await Promise.all([devices.load(), alarms.load(), rules.load()]).catch((error) => {
    if (error instanceof AuthError) showLogin("Your session ended; log in again.");
  });
}

window.addEventListener("unhandledrejection", (event) => {
  if (event.reason instanceof AuthError) {
    event.preventDefault();
    showLogin("Your session ended; log in again.");
  }
});

start();
