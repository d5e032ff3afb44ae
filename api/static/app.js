// WebSCADA Stream dashboard: log in, devices from /api/devices, live values over
// Socket.IO (sio.js), history from /api/devices/{id}/history (chart.js), alarms
// with acknowledge, commands. Plain JS, same origin only, no build step.
(() => {
  "use strict";

  const SESSION_KEY = "webscada.session";
  const META_FIELDS = new Set(["ts", "protocol", "signal_strength", "battery_level", "snr",
    "application_id", "status", "gateway_id"]);
  const MAX_ROOMS = 200;
  const RANGES = { "15m": 900, "1h": 3600, "6h": 21600, "24h": 86400, "7d": 604800 };

  const $ = (selector) => document.querySelector(selector);
  const state = {
    session: JSON.parse(sessionStorage.getItem(SESSION_KEY) || "null"),
    me: null,
    devices: new Map(), // id -> {row, cells, lastTs, lastSeen, metrics}
    selected: null,
    socket: null,
    rooms: new Set(),
    retryMs: 1000,
    retryTimer: null,
    refreshTimer: null,
    commands: new Map(), // command id -> {item, history}
  };

  class AuthError extends Error {}

  // ---- session -----------------------------------------------------------

  function saveSession(answer) {
    state.session = {
      access: answer.access_token,
      refresh: answer.refresh_token,
      expiresAt: Date.now() + answer.expires_in * 1000,
    };
    sessionStorage.setItem(SESSION_KEY, JSON.stringify(state.session));
    scheduleRefresh();
  }

  function scheduleRefresh() {
    clearTimeout(state.refreshTimer);
    if (!state.session) return;
    const inMs = Math.max(5000, state.session.expiresAt - Date.now() - 60000);
    state.refreshTimer = setTimeout(refreshSession, inMs);
  }

  async function refreshSession() {
    if (!state.session) return false;
    const response = await fetch("/api/auth/refresh", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ refresh_token: state.session.refresh }),
    });
    if (!response.ok) {
      showLogin("Your session ended; log in again.");
      return false;
    }
    saveSession(await response.json());
    return true;
  }

  function showLogin(message) {
    stopLive();
    clearTimeout(state.refreshTimer);
    state.session = null;
    sessionStorage.removeItem(SESSION_KEY);
    $("#board").hidden = true;
    $("#logout").hidden = true;
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
    const response = await fetch("/api/auth/token", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ username: $("#username").value.trim(), password: $("#password").value }),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      const wait = response.headers.get("Retry-After");
      $("#login-error").textContent = response.status === 429
        ? `Too many failed attempts; try again in ${wait} s.`
        : (body.detail && typeof body.detail === "string" ? body.detail : body.error || "Login failed.");
      return;
    }
    saveSession(body);
    start();
  });

  $("#logout").addEventListener("click", () => showLogin(""));

  // ---- REST --------------------------------------------------------------

  async function api(path, options = {}, retried = false) {
    const response = await fetch(path, {
      ...options,
      headers: {
        Authorization: `Bearer ${state.session ? state.session.access : ""}`,
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

  async function getJson(path) {
    const response = await api(path);
    if (response.status === 404) return null;
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(`${path}: ${response.status} ${body.error || response.statusText}`);
    }
    return response.json();
  }

  // ---- devices table -----------------------------------------------------

  function cell(row, className) {
    const td = document.createElement("td");
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  function deviceEntry(id) {
    let entry = state.devices.get(id);
    if (entry) return entry;
    const row = document.createElement("tr");
    row.dataset.device = id;
    row.tabIndex = 0;
    const cells = {
      id: cell(row, "device-id"), protocol: cell(row), application: cell(row), age: cell(row),
      signal: cell(row), battery: cell(row), values: cell(row, "values"),
    };
    cells.id.textContent = id;
    entry = { row, cells, lastTs: null, lastSeen: null, metrics: {} };
    row.addEventListener("click", () => selectDevice(id));
    row.addEventListener("keydown", (event) => { if (event.key === "Enter") selectDevice(id); });
    state.devices.set(id, entry);
    insertSorted(id, row);
    $("#empty").hidden = true;
    return entry;
  }

  function insertSorted(id, row) {
    const body = $("#devices tbody");
    const after = [...state.devices.keys()].filter((other) => other > id).sort()[0];
    body.insertBefore(row, after ? state.devices.get(after).row : null);
  }

  function formatNumber(value, unit) {
    if (typeof value !== "number" || !Number.isFinite(value)) return "–";
    const text = Math.abs(value) >= 100 ? value.toFixed(0) : String(Number(value.toFixed(2)));
    return unit ? `${text} ${unit}` : text;
  }

  function renderValues(target, metrics) {
    target.replaceChildren();
    for (const name of Object.keys(metrics).sort()) {
      const span = document.createElement("span");
      span.className = "metric";
      span.dataset.metric = name;
      const label = document.createElement("b");
      label.textContent = `${name} `;
      const value = document.createElement("span");
      value.className = "metric-value";
      value.textContent = formatNumber(metrics[name]);
      span.append(label, value);
      target.appendChild(span);
    }
  }

  function showReading(id, reading) {
    const entry = deviceEntry(id);
    const ts = Date.parse(reading.ts);
    if (entry.lastTs !== null && ts < entry.lastTs) return; // an older reading arrived late
    entry.lastTs = ts;
    entry.metrics = { ...entry.metrics, ...reading.metrics };
    if (reading.protocol) entry.cells.protocol.textContent = reading.protocol;
    if (reading.application_id) entry.cells.application.textContent = reading.application_id;
    if (reading.signal_strength !== undefined) {
      entry.cells.signal.textContent = formatNumber(reading.signal_strength, "dBm");
    }
    if (reading.battery_level !== undefined) {
      entry.cells.battery.textContent = formatNumber(reading.battery_level, "%");
    }
    renderValues(entry.cells.values, entry.metrics);
    updateAge(entry);
    entry.row.classList.remove("flash");
    void entry.row.offsetWidth; // restart the highlight animation
    entry.row.classList.add("flash");
    if (state.selected === id) showDetailValues(entry);
  }

  function updateAge(entry) {
    const td = entry.cells.age;
    const when = entry.lastTs ?? entry.lastSeen; // a live reading, else the registry's last_seen
    if (when === null) {
      td.textContent = "–";
      td.className = "age-old";
      return;
    }
    const seconds = Math.max(0, Math.round((Date.now() - when) / 1000));
    td.textContent = seconds < 120 ? `${seconds} s ago`
      : seconds < 7200 ? `${Math.round(seconds / 60)} min ago`
        : new Date(when).toLocaleString();
    td.className = seconds < 60 ? "age-fresh" : seconds < 300 ? "age-stale" : "age-old";
  }

  // A reading as Socket.IO sends it (Telemetry JSON, or a snapshot from Redis).
  function fromTelemetry(value) {
    const meta = value.metadata || {};
    return {
      ts: value.ts, protocol: value.protocol, application_id: value.application_id,
      metrics: value.metrics || {},
      signal_strength: meta.signal_strength, battery_level: meta.battery_level,
    };
  }

  async function loadDevices() {
    const devices = await getJson("/api/devices") || [];
    for (const device of devices) {
      const entry = deviceEntry(device.id);
      if (device.name && device.name !== device.id) entry.cells.id.title = device.name;
      entry.cells.protocol.textContent = device.protocol || "";
      entry.cells.application.textContent = device.application_id || "";
      if (device.last_seen) entry.lastSeen = Date.parse(device.last_seen);
      updateAge(entry);
    }
    $("#empty").hidden = state.devices.size > 0;
    await subscribeAll();
  }

  // ---- device detail: values, history, commands ---------------------------

  function showDetailValues(entry) {
    renderValues($("#detail-values"), entry.metrics);
    const select = $("#history-metric");
    const names = Object.keys(entry.metrics).sort();
    const current = select.value;
    if ([...select.options].map((o) => o.value).join() !== names.join()) {
      select.replaceChildren(...names.map((name) => new Option(name, name)));
      if (names.includes(current)) select.value = current;
    }
  }

  function selectDevice(id) {
    state.selected = id;
    for (const [other, entry] of state.devices) entry.row.classList.toggle("selected", other === id);
    $("#detail").hidden = false;
    $("#detail-id").textContent = id;
    $("#history-info").textContent = "";
    $("#command-info").textContent = "";
    $("#commands").replaceChildren();
    state.commands.clear();
    showDetailValues(state.devices.get(id));
    subscribeAll(); // the selected device's room comes first
    drawChart($("#chart"), [], { start: Date.now() - 3600000, stop: Date.now() }, "–");
    loadCommands(id);
  }

  $("#history-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const id = state.selected;
    const metric = $("#history-metric").value;
    if (!id || !metric) return;
    const seconds = RANGES[$("#history-range").value];
    const params = new URLSearchParams({
      metric, start: `-${seconds}s`, stop: "now", agg: $("#history-agg").value,
    });
    const response = await api(`/api/devices/${encodeURIComponent(id)}/history?${params}`);
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      $("#history-info").textContent = `History unavailable: ${body.error || response.status}`;
      return;
    }
    const points = body.points.map((p) => ({ t: Date.parse(p.time), v: p.value }));
    drawChart($("#chart"), points, { start: Date.parse(body.start), stop: Date.parse(body.stop) }, metric);
    $("#history-info").textContent =
      `${points.length} points, ${body.agg} per ${body.every_s} s, ${metric}`;
    $("#chart").dataset.points = String(points.length);
  });

  const actions = createActions({ $, api, state, formatNumber });
  const { loadCommands, onCommandStatus, loadAlarms, onAlarm } = actions;

  // ---- live stream ---------------------------------------------------------

  function setStatus(kind, text) {
    const badge = $("#status");
    badge.className = `status status-${kind}`;
    badge.textContent = text;
  }

  function stopLive() {
    clearTimeout(state.retryTimer);
    if (state.socket) {
      state.socket.onState = () => {};
      state.socket.close();
      state.socket = null;
    }
  }

  async function subscribeAll() {
    const socket = state.socket;
    if (!socket || !socket.connected) return;
    // Admins see every application: one room per device, the selected one and the most
    // recently heard first (a room count that stays bounded for large fleets).
    const recent = [...state.devices.entries()]
      .sort(([, a], [, b]) => (b.lastTs ?? b.lastSeen ?? 0) - (a.lastTs ?? a.lastSeen ?? 0))
      .map(([id]) => id);
    const devices = [state.selected, ...recent].filter(Boolean).slice(0, MAX_ROOMS);
    const wanted = state.me && state.me.all_applications
      ? ["alarms", ...devices.map((id) => `device:${id}`)]
      : (state.me ? state.me.applications.map((app) => `application:${app}`) : []);
    for (const room of wanted) {
      if (state.rooms.has(room)) continue;
      const ack = await socket.call("subscribe", { room });
      if (ack && ack.ok) state.rooms.add(room);
    }
  }

  function connectLive() {
    stopLive();
    state.rooms.clear();
    const socket = new LiveSocket(state.session.access, {
      onEvent: (name, data) => {
        if (name === "telemetry" && data && data.device_id) showReading(data.device_id, fromTelemetry(data));
        else if (name === "alarm" && data) onAlarm(data);
        else if (name === "command_status" && data) onCommandStatus(data);
      },
      onState: (kind, detail) => {
        if (kind === "live") {
          state.retryMs = 1000;
          setStatus("on", "live");
          subscribeAll();
        } else if (kind === "connecting") {
          setStatus("wait", "connecting");
        } else {
          state.socket = null;
          if (kind === "refused") {
            refreshSession().then((ok) => { if (ok) connectLive(); });
            return;
          }
          setStatus("off", `offline, retrying in ${Math.round(state.retryMs / 1000)} s`);
          state.retryTimer = setTimeout(connectLive, state.retryMs);
          state.retryMs = Math.min(state.retryMs * 2, 30000);
          if (detail) console.info("live stream:", detail);
        }
      },
    });
    state.socket = socket;
    socket.open();
  }

  // ---- start ---------------------------------------------------------------

  async function start() {
    if (!state.session) {
      showLogin("");
      return;
    }
    scheduleRefresh();
    $("#login").hidden = true;
    $("#board").hidden = false;
    $("#logout").hidden = false;
    $("#board-error").textContent = "";
    try {
      state.me = await getJson("/api/auth/me");
      $("#who").textContent = `${state.me.username} (${state.me.role})`;
      $("#command-form").hidden = state.me.role === "viewer";
      connectLive();
      await loadDevices();
      await loadAlarms();
    } catch (error) {
      if (error instanceof AuthError) showLogin("Your session ended; log in again.");
      else $("#board-error").textContent = `Could not load: ${error.message}`;
    }
  }

  setInterval(() => state.devices.forEach(updateAge), 1000);
  setInterval(() => { if (state.session && !$("#board").hidden) loadDevices().catch(() => {}); }, 30000);
  start();
})();
