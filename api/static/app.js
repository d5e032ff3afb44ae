// WebSCADA Stream dashboard: devices from /api/devices, live values from
// /ws/topics/telemetry.valid. Plain JS, same origin only, no build step.
(() => {
  "use strict";

  const TOKEN_KEY = "webscada.token";
  const META_FIELDS = new Set(["ts", "protocol", "signal_strength", "battery_level", "snr",
    "application_id", "status", "gateway_id"]);
  const MAX_LATEST_FETCHES = 200;

  const $ = (selector) => document.querySelector(selector);
  const state = {
    token: localStorage.getItem(TOKEN_KEY) || "",
    devices: new Map(), // id -> {row, cells, lastTs}
    socket: null,
    retryMs: 1000,
    retryTimer: null,
  };

  class AuthError extends Error {}

  // ---- token -------------------------------------------------------------

  function showLogin(message) {
    stopStream();
    $("#board").hidden = true;
    $("#change-token").hidden = true;
    $("#login").hidden = false;
    $("#login-error").textContent = message || "";
    $("#token").value = "";
    $("#token").focus();
    setStatus("off", "signed out");
  }

  $("#login").addEventListener("submit", (event) => {
    event.preventDefault();
    state.token = $("#token").value.trim();
    localStorage.setItem(TOKEN_KEY, state.token);
    start();
  });

  $("#change-token").addEventListener("click", () => {
    localStorage.removeItem(TOKEN_KEY);
    state.token = "";
    showLogin("");
  });

  // ---- REST --------------------------------------------------------------

  async function getJson(path) {
    const response = await fetch(path, {
      headers: { Authorization: `Bearer ${state.token}`, Accept: "application/json" },
    });
    if (response.status === 401) throw new AuthError("token refused");
    if (response.status === 404) return null;
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(`${path}: ${response.status} ${body.error || response.statusText}`);
    }
    return response.json();
  }

  // ---- table -------------------------------------------------------------

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
    const cells = {
      id: cell(row), protocol: cell(row), application: cell(row), age: cell(row),
      signal: cell(row), battery: cell(row), values: cell(row),
    };
    cells.id.textContent = id;
    entry = { row, cells, lastTs: null, lastSeen: null };
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

  function showValues(entry, metrics) {
    const target = entry.cells.values;
    target.replaceChildren();
    for (const name of Object.keys(metrics).sort()) {
      const span = document.createElement("span");
      span.className = "metric";
      const label = document.createElement("b");
      label.textContent = `${name} `;
      span.append(label, formatNumber(metrics[name]));
      target.appendChild(span);
    }
  }

  function showReading(id, reading) {
    const entry = deviceEntry(id);
    const ts = Date.parse(reading.ts);
    if (entry.lastTs !== null && ts < entry.lastTs) return; // an older reading arrived late
    entry.lastTs = ts;
    if (reading.protocol) entry.cells.protocol.textContent = reading.protocol;
    if (reading.application_id) entry.cells.application.textContent = reading.application_id;
    entry.cells.signal.textContent = formatNumber(reading.signal_strength, "dBm");
    entry.cells.battery.textContent = formatNumber(reading.battery_level, "%");
    showValues(entry, reading.metrics);
    updateAge(entry);
    entry.row.classList.remove("flash");
    void entry.row.offsetWidth; // restart the highlight animation
    entry.row.classList.add("flash");
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

  // Readings as the Redis latest hash gives them: flat, metrics beside ts/protocol/...
  function fromLatest(latest) {
    const metrics = {};
    for (const [name, value] of Object.entries(latest)) {
      if (!META_FIELDS.has(name) && typeof value === "number") metrics[name] = value;
    }
    return {
      ts: latest.ts, protocol: latest.protocol, metrics,
      signal_strength: latest.signal_strength, battery_level: latest.battery_level,
    };
  }

  // Readings as /ws/topics streams them: Telemetry.to_json().
  function fromTelemetry(value) {
    const meta = value.metadata || {};
    return {
      ts: value.ts, protocol: value.protocol, application_id: value.application_id,
      metrics: value.metrics || {},
      signal_strength: meta.signal_strength, battery_level: meta.battery_level,
    };
  }

  async function loadDevices() {
    const devices = await getJson("/api/devices");
    for (const device of devices) {
      const entry = deviceEntry(device.id);
      if (device.name && device.name !== device.id) entry.cells.id.title = device.name;
      entry.cells.protocol.textContent = device.protocol || "";
      entry.cells.application.textContent = device.application_id || "";
      if (device.last_seen) entry.lastSeen = Date.parse(device.last_seen);
      updateAge(entry);
    }
    $("#empty").hidden = state.devices.size > 0;
    await Promise.all(devices.slice(0, MAX_LATEST_FETCHES).map(async (device) => {
      const latest = await getJson(`/api/devices/${encodeURIComponent(device.id)}/latest`);
      if (latest) showReading(device.id, fromLatest(latest));
    }));
  }

  // ---- live stream -------------------------------------------------------

  function setStatus(kind, text) {
    const badge = $("#status");
    badge.className = `status status-${kind}`;
    badge.textContent = text;
  }

  function stopStream() {
    clearTimeout(state.retryTimer);
    if (state.socket) {
      state.socket.onclose = null;
      state.socket.close();
      state.socket = null;
    }
  }

  function connectStream() {
    stopStream();
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const url = `${scheme}//${location.host}/ws/topics/telemetry.valid?from=latest`
      + `&token=${encodeURIComponent(state.token)}`;
    const socket = new WebSocket(url);
    state.socket = socket;
    setStatus("wait", "connecting");
    socket.onopen = () => {
      state.retryMs = 1000;
      setStatus("on", "live");
    };
    socket.onmessage = (event) => {
      const frame = JSON.parse(event.data);
      if (frame.schema === "io.webscada.Telemetry" && frame.value) {
        showReading(frame.value.device_id, fromTelemetry(frame.value));
      }
    };
    socket.onclose = (event) => {
      state.socket = null;
      if (event.code === 4401) {
        showLogin("The token was refused.");
        return;
      }
      setStatus("off", `offline, retrying in ${Math.round(state.retryMs / 1000)} s`);
      state.retryTimer = setTimeout(connectStream, state.retryMs);
      state.retryMs = Math.min(state.retryMs * 2, 30000);
    };
  }

  // ---- start -------------------------------------------------------------

  async function start() {
    if (!state.token) {
      showLogin("");
      return;
    }
    $("#login").hidden = true;
    $("#board").hidden = false;
    $("#change-token").hidden = false;
    $("#board-error").textContent = "";
    connectStream();
    try {
      await loadDevices();
    } catch (error) {
      if (error instanceof AuthError) showLogin("The token was refused.");
      else $("#board-error").textContent = `Could not load devices: ${error.message}`;
    }
  }

  setInterval(() => state.devices.forEach(updateAge), 1000);
  start();
})();
