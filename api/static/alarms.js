// Alarms: a banner with the unacknowledged alarms by severity, their count in the page
// title, a table with rule name and message, filters (state, severity), acknowledge,
// shelve and unshelve; a row opened (click, Enter) shows that alarm's event history.
// Live events (room "alarms", admins) update it; everyone also
// re-reads it every 30 s (non-admins get alarm events only in device rooms).

import { formatNumber, formatShort, formatTime, toMs } from "./devices.js";
import { onZoneChange } from "./timezone.js";

const SEVERITIES = ["critical", "major", "minor", "warning", "info"];
const UNACKED = new Set(["active_unacked", "cleared_unacked"]);
const SHELVE_MINUTES = [[15, "15 min"], [60, "1 h"], [480, "8 h"], [1440, "24 h"]];
const BASE_TITLE = "WebSCADA Stream";

export function createAlarms(ctx, { onCounts }) {
  const { $ } = ctx;
  const unacked = new Map(); // alarm id -> {severity, device_id}
  const rows = new Map(); // alarm id -> tr
  const shown = new Map(); // alarm id -> the alarm as last shown
  let opened = null; // the alarm id whose history is shown
  let available = true;

  // ---- counts: banner, title, devices with alarms ------------------------------------

  function renderCounts() {
    const counts = Object.fromEntries(SEVERITIES.map((s) => [s, 0]));
    for (const alarm of unacked.values()) counts[alarm.severity] = (counts[alarm.severity] || 0) + 1;
    const total = unacked.size;
    document.title = total ? `(${total}) ${BASE_TITLE}` : BASE_TITLE;
    const banner = $("#alarm-banner");
    banner.hidden = !available || !ctx.me;
    banner.classList.toggle("calm", total === 0);
    banner.dataset.count = String(total);
    if (total === 0) {
      banner.textContent = "No unacknowledged alarms";
    } else {
      const label = document.createElement("span");
      label.textContent = `${total} unacknowledged`;
      const parts = SEVERITIES.filter((s) => counts[s]).map((s) => {
        const badge = document.createElement("span");
        badge.className = `sev sev-${s}`;
        badge.dataset.severity = s;
        badge.textContent = `${counts[s]} ${s}`;
        return badge;
      });
      banner.replaceChildren(label, ...parts);
    }
    onCounts(new Set([...unacked.values()].map((a) => a.device_id)));
  }

  function track(alarm) {
    const id = alarm.id ?? alarm.alarm_id;
    if (UNACKED.has(alarm.state)) unacked.set(id, { severity: alarm.severity, device_id: alarm.device_id });
    else unacked.delete(id);
  }

  // ---- the table -------------------------------------------------------------------

  function filterQuery() {
    const query = new URLSearchParams({ limit: "200" });
    if ($("#alarm-state").value) query.set("state", $("#alarm-state").value);
    if ($("#alarm-severity").value) query.set("severity", $("#alarm-severity").value);
    return query;
  }

  function matchesFilter(alarm) {
    const wanted = $("#alarm-state").value;
    const states = {
      active: ["active_unacked", "active_acked"], unacked: ["active_unacked", "cleared_unacked"],
      cleared: ["cleared_unacked", "cleared_acked"],
    }[wanted] || (wanted ? wanted.split(",") : null);
    if (states && !states.includes(alarm.state)) return false;
    const severity = $("#alarm-severity").value;
    return !severity || alarm.severity === severity;
  }

  function td(text, label, className) {
    const cell = document.createElement("td");
    if (className) cell.className = className;
    if (label) cell.dataset.label = label;
    cell.textContent = text ?? "";
    cell.title = text ?? "";
    return cell;
  }

  function showRow(alarm) {
    const id = alarm.id;
    let tr = rows.get(id);
    if (!matchesFilter(alarm)) {
      if (tr) { tr.remove(); rows.delete(id); shown.delete(id); }
      updateEmpty();
      return;
    }
    if (!tr) {
      tr = document.createElement("tr");
      tr.dataset.alarm = id;
      tr.tabIndex = 0;
      tr.addEventListener("click", (event) => {
        if (event.target.closest("button, select")) return;
        openHistory(id);
      });
      tr.addEventListener("keydown", (event) => {
        if (event.target !== tr) return;
        if (event.key === "Enter" || event.key === " ") { event.preventDefault(); openHistory(id); }
      });
      rows.set(id, tr);
      $("#alarms tbody").prepend(tr);
    }
    shown.set(id, alarm);
    tr.className = `alarm severity-${alarm.severity} state-${alarm.state}${opened === id ? " opened" : ""}`;
    tr.setAttribute("aria-expanded", String(opened === id));
    tr.dataset.device = alarm.device_id;
    const severity = td("", "Severity");
    const badge = document.createElement("span");
    badge.className = "sev-badge";
    badge.textContent = alarm.severity;
    severity.appendChild(badge);
    const rule = td("", "Rule");
    const name = document.createElement("span");
    name.className = "rule-name";
    name.textContent = alarm.rule_name || "(rule deleted)";
    const message = document.createElement("span");
    message.className = "alarm-message";
    message.textContent = alarm.message || "";
    rule.append(name, message);
    rule.title = [alarm.rule_name, alarm.message].filter(Boolean).join(" — ");
    const shelvedUntil = toMs(alarm.shelved_until);
    const shelved = shelvedUntil !== null && shelvedUntil > Date.now();
    const stateText = shelved ? `${alarm.state} · shelved until ${formatTime(shelvedUntil)}` : alarm.state;
    tr.replaceChildren(
      severity,
      td(alarm.device_id, "Device", "alarm-device"),
      rule,
      td(stateText, "State", "alarm-state"),
      td(formatNumber(alarm.value), "Value", "opt"),
      raisedCell(toMs(alarm.raised_at)),
      actions(alarm, shelved),
    );
    updateEmpty();
  }

  function raisedCell(ms) {
    const cell = td(formatShort(ms), "Raised");
    cell.title = formatTime(ms);
    return cell;
  }

  function actions(alarm, shelved) {
    const cell = document.createElement("td");
    cell.className = "actions";
    if (!ctx.me || ctx.me.role === "viewer") return cell;
    if (UNACKED.has(alarm.state)) {
      const ack = document.createElement("button");
      ack.type = "button";
      ack.textContent = "Acknowledge";
      ack.addEventListener("click", () => act(alarm.id, "ack", ack));
      cell.appendChild(ack);
    }
    if (shelved) {
      const unshelve = document.createElement("button");
      unshelve.type = "button";
      unshelve.textContent = "Unshelve";
      unshelve.addEventListener("click", () => act(alarm.id, "shelve", unshelve, { minutes: 0 }));
      cell.appendChild(unshelve);
    } else {
      const shelve = document.createElement("select");
      shelve.setAttribute("aria-label", `Shelve alarms of ${alarm.rule_name || "this rule"} on ${alarm.device_id}`);
      shelve.append(new Option("Shelve…", ""), ...SHELVE_MINUTES.map(([m, text]) => new Option(`for ${text}`, String(m))));
      shelve.addEventListener("change", () => {
        if (shelve.value) act(alarm.id, "shelve", shelve, { minutes: Number(shelve.value) });
      });
      cell.appendChild(shelve);
    }
    return cell;
  }

  async function act(id, action, control, body) {
    control.disabled = true;
    const response = await ctx.api(`/api/alarms/${encodeURIComponent(id)}/${action}`, {
      method: "POST", ...(body ? { body: JSON.stringify(body) } : {}),
    });
    const answer = await response.json().catch(() => null);
    if (response.ok && answer && typeof answer === "object") {
      track(answer);
      renderCounts();
      showRow(answer);
      if (opened === answer.id && answer.history) renderHistory(answer);
      $("#alarms-info").classList.remove("state-error");
    } else {
      control.disabled = false;
      $("#alarms-info").classList.add("state-error");
      $("#alarms-info").textContent = `${action === "ack" ? "Acknowledge" : "Shelve"} failed: `
        + `${(answer && (answer.detail || answer.error)) || response.status}`;
    }
  }

  // ---- one alarm's history ---------------------------------------------------------

  function renderHistory(alarm) {
    const history = alarm.history || [];
    $("#alarm-history-title").textContent = `History: ${alarm.rule_name || "(rule deleted)"} on ${alarm.device_id}`;
    $("#alarm-events tbody").replaceChildren(...history.map((event) => {
      const tr = document.createElement("tr");
      tr.className = `alarm-event event-${event.event}`;
      const at = toMs(event.at);
      const time = td(formatTime(at), "Time", "event-time");
      tr.append(time, td(event.event, "Event"), td(event.state, "State"),
        td(formatNumber(event.value), "Value"), td(event.by || "", "By"), td(event.message || "", "Message"));
      return tr;
    }));
    $("#alarm-history-info").classList.remove("state-error");
    $("#alarm-history-info").textContent = history.length ? "" : "No events recorded.";
  }

  async function loadHistory(id) {
    const response = await ctx.api(`/api/alarms/${encodeURIComponent(id)}`).catch((error) => {
      if (error.name === "AuthError") throw error;
      return null;
    });
    if (opened !== id) return;
    if (!response || !response.ok) {
      $("#alarm-history-info").classList.add("state-error");
      $("#alarm-history-info").textContent = `History unavailable (${response ? response.status : "no answer"}).`;
      return;
    }
    const alarm = await response.json();
    if (opened === id) renderHistory(alarm);
  }

  function openHistory(id) {
    if (opened === id) {
      closeHistory();
      return;
    }
    opened = id;
    for (const [other, tr] of rows) {
      tr.classList.toggle("opened", other === id);
      tr.setAttribute("aria-expanded", String(other === id));
    }
    $("#alarm-history").hidden = false;
    $("#alarm-events tbody").replaceChildren();
    $("#alarm-history-info").classList.remove("state-error");
    $("#alarm-history-info").textContent = "Loading the history…";
    loadHistory(id).catch(() => {});
  }

  function closeHistory() {
    opened = null;
    $("#alarm-history").hidden = true;
    for (const tr of rows.values()) {
      tr.classList.remove("opened");
      tr.setAttribute("aria-expanded", "false");
    }
  }

  function updateEmpty() {
    const info = $("#alarms-info");
    if (info.classList.contains("state-error")) return;
    info.textContent = rows.size ? "" : "No alarms match these filters.";
  }

  // ---- loading and live events ---------------------------------------------------------

  async function load() {
    const info = $("#alarms-info");
    if (!rows.size) info.textContent = "Loading alarms…";
    let list;
    let open;
    try {
      const [listResponse, openResponse] = await Promise.all([
        ctx.api(`/api/alarms?${filterQuery()}`), ctx.api("/api/alarms?state=unacked&limit=1000")]);
      if (listResponse.status === 404 || listResponse.status === 405) {
        available = false;
        info.textContent = "Alarms are not available on this server.";
        return;
      }
      if (!listResponse.ok || !openResponse.ok) {
        const bad = listResponse.ok ? openResponse : listResponse;
        const body = await bad.json().catch(() => ({}));
        throw new Error(`${bad.status} ${body.error || ""}`.trim());
      }
      [list, open] = await Promise.all([listResponse.json(), openResponse.json()]);
    } catch (error) {
      if (error.name === "AuthError") throw error;
      info.classList.add("state-error");
      info.textContent = `Could not load the alarms (${error.message}); retrying in 30 s.`;
      return;
    }
    info.classList.remove("state-error");
    unacked.clear();
    for (const alarm of open) track(alarm);
    renderCounts();
    rows.clear();
    shown.clear();
    $("#alarms tbody").replaceChildren();
    for (const alarm of list.reverse()) showRow(alarm); // newest ends on top
    updateEmpty();
  }

  async function onEvent(event) {
    const id = event.alarm_id;
    track({ ...event, id });
    renderCounts();
    const response = await ctx.api(`/api/alarms/${encodeURIComponent(id)}`).catch(() => null);
    if (response && response.ok) {
      const alarm = await response.json();
      track(alarm);
      renderCounts();
      showRow(alarm);
      if (opened === alarm.id) renderHistory(alarm);
    }
  }

  function subscribe() {
    if (ctx.me && ctx.me.all_applications) ctx.subscribeRooms(["alarms"]);
  }

  for (const selector of ["#alarm-state", "#alarm-severity"]) {
    $(selector).addEventListener("change", () => load().catch(() => {}));
  }
  $("#alarm-filters").addEventListener("submit", (event) => event.preventDefault());
  $("#alarm-history-close").addEventListener("click", closeHistory);
  onZoneChange(() => {
    for (const alarm of [...shown.values()]) showRow(alarm);
    if (opened) loadHistory(opened).catch(() => {});
  });
  $("#alarm-banner").addEventListener("click", () => {
    $("#alarm-state").value = "unacked";
    $("#alarm-severity").value = "";
    load().catch(() => {});
    $("#alarms-panel").scrollIntoView({ behavior: "smooth", block: "start" });
  });
  setInterval(() => { if (ctx.session && ctx.me && !$("#board").hidden) load().catch(() => {}); }, 30000);

  return { load, onEvent, subscribe };
}
