// Dashboard actions: alarms (list, live updates, acknowledge) and commands (send,
// live status). Loaded before app.js, which passes in what these need.
"use strict";

function createActions({ $, api, state, formatNumber }) {
  function commandItem(id, name) {
    let known = state.commands.get(id);
    if (known) return known;
    const item = document.createElement("li");
    item.dataset.command = id;
    known = { item, name, history: [] };
    state.commands.set(id, known);
    $("#commands").prepend(item);
    return known;
  }

  function renderCommand(known) {
    const last = known.history[known.history.length - 1];
    known.item.textContent = `${known.name}: ${known.history.map((h) => h.status).join(" → ")}`;
    known.item.className = `command command-${last ? last.status : "unknown"}`;
  }

  async function loadCommands(id) {
    const response = await api(`/api/devices/${encodeURIComponent(id)}/commands`);
    if (response.status === 404 || response.status === 405) {
      $("#command-info").textContent = "Commands are not available on this server yet.";
      return;
    }
    if (!response.ok) return;
    const commands = await response.json();
    for (const command of commands.slice(0, 10).reverse()) {
      const known = commandItem(command.id, command.name);
      known.history = command.history || [{ status: command.status }];
      renderCommand(known);
    }
  }

  $("#command-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const id = state.selected;
    if (!id) return;
    let params;
    try {
      params = JSON.parse($("#command-params").value || "{}");
    } catch {
      $("#command-info").textContent = "Params must be a JSON object.";
      return;
    }
    const name = $("#command-name").value.trim();
    const response = await api(`/api/devices/${encodeURIComponent(id)}/commands`, {
      method: "POST",
      body: JSON.stringify({ name, params, ttl_s: Number($("#command-ttl").value) || 60 }),
    });
    const body = await response.json().catch(() => ({}));
    if (response.status === 404 || response.status === 405) {
      $("#command-info").textContent = "Commands are not available on this server yet.";
    } else if (response.status === 403) {
      $("#command-info").textContent = "Your role may not send commands.";
    } else if (!response.ok) {
      $("#command-info").textContent = `Command refused: ${body.error || response.status}`;
    } else {
      const known = commandItem(body.id, name);
      known.name = name; // a live status may have arrived before this answer
      const first = body.status || "queued";
      if (!known.history.some((h) => h.status === first)) known.history.unshift({ status: first });
      renderCommand(known);
      $("#command-info").textContent = "";
    }
  });

  function onCommandStatus(status) {
    if (status.device_id !== state.selected) return;
    const known = commandItem(status.command_id, "command");
    if (!known.history.some((h) => h.status === status.status)) known.history.push(status);
    renderCommand(known);
  }

  // ---- alarms ------------------------------------------------------------

  const alarmRows = new Map();

  function showAlarm(alarm) {
    const id = alarm.id ?? alarm.alarm_id;
    let row = alarmRows.get(id);
    if (!row) {
      row = document.createElement("tr");
      row.dataset.alarm = id;
      alarmRows.set(id, row);
      $("#alarms tbody").prepend(row);
    }
    const cells = [alarm.severity, alarm.device_id, alarm.state,
      formatNumber(alarm.value), alarm.raised_at ? new Date(alarm.raised_at).toLocaleString() : ""];
    row.replaceChildren(...cells.map((text) => {
      const td = document.createElement("td");
      td.textContent = text ?? "";
      return td;
    }));
    row.className = `alarm severity-${alarm.severity} state-${alarm.state}`;
    const action = document.createElement("td");
    if (String(alarm.state).endsWith("_unacked") && state.me && state.me.role !== "viewer") {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = "Acknowledge";
      button.addEventListener("click", () => acknowledge(id, button));
      action.appendChild(button);
    }
    row.appendChild(action);
  }

  async function acknowledge(id, button) {
    button.disabled = true;
    const response = await api(`/api/alarms/${encodeURIComponent(id)}/ack`, { method: "POST" });
    const body = await response.json().catch(() => null);
    if (response.ok && body && typeof body === "object") showAlarm(body);
    else if (!response.ok) {
      button.disabled = false;
      $("#alarms-info").textContent = `Acknowledge failed: ${(body && body.error) || response.status}`;
    }
  }

  async function loadAlarms() {
    const response = await api("/api/alarms?state=active_unacked");
    if (response.status === 404 || response.status === 405) {
      $("#alarms-info").textContent = "Alarms are not available on this server yet.";
      return;
    }
    if (!response.ok) return;
    const alarms = await response.json();
    for (const alarm of alarms) showAlarm(alarm);
    $("#alarms-info").textContent = alarms.length ? "" : "No active unacknowledged alarms.";
  }

  function onAlarm(event) {
    showAlarm({ ...event, id: event.alarm_id, raised_at: event.event === "raised" ? event.at : undefined });
    $("#alarms-info").textContent = "";
  }

  return { loadCommands, onCommandStatus, loadAlarms, onAlarm };
}

window.createActions = createActions;
