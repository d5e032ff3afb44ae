// Alarm rules: listed for everyone (GET /api/alarm-rules; notification targets masked for
// non-admins), created, edited, enabled and disabled by those the API lets write rules
// (POST / PATCH need the admin role: others see them read-only). A 422 names the bad
// field in detail.field; its message is shown next to that field.

import { formatNumber, formatTime, toMs } from "./devices.js";
import { onZoneChange } from "./timezone.js";

const WRITE_ROLE = "admin"; // api/alarms.py: create_rule / patch_rule require admin
const NUMBER_FIELDS = [
  ["threshold", "#rule-threshold"], ["deadband", "#rule-deadband"], ["for_seconds", "#rule-for"],
  ["off_delay_seconds", "#rule-off-delay"],
];

export function createRules(ctx) {
  const { $ } = ctx;
  const rules = new Map(); // id -> rule
  let editing = null; // rule id, or null for a new rule

  const canWrite = () => Boolean(ctx.me && ctx.me.role === WRITE_ROLE);

  // ---- the list ----------------------------------------------------------------------

  function scopeText(rule) {
    if (rule.device_id) return `device ${rule.device_id}`;
    if (rule.application_id) return `application ${rule.application_id}`;
    return "every device";
  }

  function conditionText(rule) {
    if (rule.operator === "stale") return `no reading for ${formatNumber(rule.for_seconds)} s`;
    const parts = [`${rule.metric} ${rule.operator} ${formatNumber(rule.threshold)}`];
    if (rule.deadband) parts.push(`deadband ${formatNumber(rule.deadband)}`);
    if (rule.for_seconds) parts.push(`for ${formatNumber(rule.for_seconds)} s`);
    if (rule.off_delay_seconds) parts.push(`off delay ${formatNumber(rule.off_delay_seconds)} s`);
    return parts.join(", ");
  }

  function notifyText(rule) {
    const notify = rule.notify || {};
    const targets = [...(notify.emails || []), ...(notify.webhooks || []), ...(notify.sms || [])];
    return targets.length ? targets.join(", ") : "–";
  }

  function td(text, label, className) {
    const cell = document.createElement("td");
    if (className) cell.className = className;
    if (label) cell.dataset.label = label;
    cell.textContent = text ?? "";
    cell.title = text ?? "";
    return cell;
  }

  function row(rule) {
    const tr = document.createElement("tr");
    tr.dataset.rule = rule.id;
    tr.className = `rule severity-${rule.severity}${rule.enabled ? "" : " rule-disabled"}`;
    const name = td(rule.name, "Name", "rule-name-cell");
    name.title = `${rule.name} — created ${formatTime(toMs(rule.created_at))}, `
      + `changed ${formatTime(toMs(rule.updated_at))}`;
    const enabled = td("", "Enabled", "rule-enabled");
    const actions = td("", "Actions", "actions");
    if (canWrite()) {
      const toggle = document.createElement("input");
      toggle.type = "checkbox";
      toggle.checked = rule.enabled;
      toggle.setAttribute("aria-label", `Rule ${rule.name} enabled`);
      toggle.addEventListener("change", () => setEnabled(rule, toggle));
      const text = document.createElement("span");
      text.textContent = rule.enabled ? " on" : " off";
      enabled.append(toggle, text);
      const edit = document.createElement("button");
      edit.type = "button";
      edit.textContent = "Edit";
      edit.setAttribute("aria-label", `Edit rule ${rule.name}`);
      edit.addEventListener("click", () => openForm(rule));
      actions.appendChild(edit);
    } else {
      enabled.textContent = rule.enabled ? "on" : "off";
      actions.textContent = "read-only";
      actions.classList.add("muted");
    }
    tr.append(
      name,
      td(scopeText(rule), "Applies to"),
      td(conditionText(rule), "Condition"),
      td(rule.severity, "Severity", "sev-badge-cell"),
      td(notifyText(rule), "Notify", "opt"),
      enabled,
      actions,
    );
    return tr;
  }

  function render() {
    const list = [...rules.values()].sort((a, b) => a.name.localeCompare(b.name));
    $("#rules tbody").replaceChildren(...list.map(row));
    $("#rule-count").textContent = `(${list.length})`;
    const info = $("#rules-info");
    if (!info.classList.contains("state-error")) info.textContent = list.length ? "" : "No alarm rules yet.";
  }

  async function load() {
    const writable = canWrite();
    $("#rule-new").hidden = !writable;
    $("#rules-readonly").hidden = writable || !ctx.me;
    if (!writable) $("#rule-form").hidden = true;
    const info = $("#rules-info");
    if (!rules.size) info.textContent = "Loading alarm rules…";
    let list;
    try {
      const response = await ctx.api("/api/alarm-rules");
      if (response.status === 404 || response.status === 405) {
        info.textContent = "Alarm rules are not available on this server.";
        return;
      }
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        throw new Error(`${response.status} ${body.error || ""}`.trim());
      }
      list = await response.json();
    } catch (error) {
      if (error.name === "AuthError") throw error;
      info.classList.add("state-error");
      info.textContent = `Could not load the alarm rules (${error.message}).`;
      return;
    }
    info.classList.remove("state-error");
    rules.clear();
    for (const rule of list) rules.set(rule.id, rule);
    render();
  }

  async function setEnabled(rule, toggle) {
    toggle.disabled = true;
    const answer = await send(`/api/alarm-rules/${encodeURIComponent(rule.id)}`, "PATCH",
      { enabled: toggle.checked });
    if (answer.ok) {
      rules.set(answer.rule.id, answer.rule);
      render();
    } else {
      toggle.checked = !toggle.checked;
      toggle.disabled = false;
      $("#rules-info").classList.add("state-error");
      $("#rules-info").textContent = `Could not change rule ${rule.name}: ${answer.message}`;
    }
  }

  // ---- the form ----------------------------------------------------------------------

  function fieldOf(name) {
    return $(`#rule-form .field[data-field="${name}"]`);
  }

  function clearErrors() {
    for (const span of document.querySelectorAll("#rule-form .field-error")) span.textContent = "";
    for (const field of document.querySelectorAll("#rule-form .field")) field.classList.remove("invalid");
    for (const input of document.querySelectorAll("#rule-form input, #rule-form select")) {
      input.removeAttribute("aria-invalid");
    }
    $("#rule-form-error").textContent = "";
  }

  function showFieldError(name, message) {
    let field = fieldOf(name);
    if (!field && name.startsWith("notify_")) field = fieldOf(`notify.${name.slice(7)}`);
    if (!field || field.hidden) {
      $("#rule-form-error").textContent = `${name}: ${message}`;
      return;
    }
    field.classList.add("invalid");
    field.querySelector(".field-error").textContent = message;
    const input = field.querySelector("input, select");
    if (input) {
      input.setAttribute("aria-invalid", "true");
      input.focus();
    }
  }

  function showScope() {
    const scope = $("#rule-scope").value;
    fieldOf("device_id").hidden = scope !== "device";
    fieldOf("application_id").hidden = scope !== "application";
    const stale = $("#rule-operator").value === "stale";
    fieldOf("threshold").hidden = stale;
    fieldOf("deadband").hidden = stale;
  }

  function openForm(rule) {
    if (!canWrite()) return;
    editing = rule ? rule.id : null;
    clearErrors();
    $("#rule-form-title").textContent = rule ? `Edit rule ${rule.name}` : "New rule";
    const given = rule || {};
    const notify = given.notify || {};
    $("#rule-name").value = given.name || "";
    $("#rule-scope").value = given.device_id ? "device" : given.application_id ? "application" : "all";
    $("#rule-device").value = given.device_id || "";
    $("#rule-application").value = given.application_id || "";
    $("#rule-operator").value = given.operator || ">";
    $("#rule-metric").value = given.metric || "";
    $("#rule-threshold").value = given.threshold ?? "";
    $("#rule-deadband").value = given.deadband ?? 0;
    $("#rule-for").value = given.for_seconds ?? 0;
    $("#rule-off-delay").value = given.off_delay_seconds ?? 0;
    $("#rule-severity").value = given.severity || "warning";
    $("#rule-enabled").checked = given.enabled ?? true;
    $("#rule-emails").value = (notify.emails || []).join(", ");
    $("#rule-webhooks").value = (notify.webhooks || []).join(", ");
    $("#rule-sms").value = (notify.sms || []).join(", ");
    $("#rule-throttle").value = notify.throttle_seconds ?? 300;
    const apps = [...document.querySelectorAll("#filter-application option")].map((o) => o.value).filter(Boolean);
    $("#rule-applications").replaceChildren(...apps.map((app) => new Option(app, app)));
    showScope();
    $("#rule-form").hidden = false;
    $("#rule-name").focus();
  }

  function list(selector) {
    return $(selector).value.split(/[\s,;]+/).map((s) => s.trim()).filter(Boolean);
  }

  // The body, or null after showing the field a number could not be read from.
  function body() {
    const scope = $("#rule-scope").value;
    const operator = $("#rule-operator").value;
    const out = {
      name: $("#rule-name").value.trim(),
      device_id: scope === "device" ? $("#rule-device").value.trim() : null,
      application_id: scope === "application" ? $("#rule-application").value.trim() : null,
      metric: $("#rule-metric").value.trim() || null,
      operator,
      severity: $("#rule-severity").value,
      enabled: $("#rule-enabled").checked,
      notify: {
        emails: list("#rule-emails"), webhooks: list("#rule-webhooks"), sms: list("#rule-sms"),
      },
    };
    for (const [name, selector] of NUMBER_FIELDS) {
      const raw = $(selector).value.trim();
      if (operator === "stale" && (name === "threshold" || name === "deadband")) {
        out[name] = name === "threshold" ? null : 0;
        continue;
      }
      if (raw === "") {
        out[name] = name === "threshold" ? null : 0;
        continue;
      }
      const number = Number(raw);
      if (!Number.isFinite(number)) {
        showFieldError(name, "must be a number");
        return null;
      }
      out[name] = number;
    }
    const throttle = $("#rule-throttle").value.trim();
    const seconds = throttle === "" ? 300 : Number(throttle);
    if (!Number.isFinite(seconds)) {
      showFieldError("notify.throttle_seconds", "must be a number");
      return null;
    }
    out.notify.throttle_seconds = seconds;
    return out;
  }

  async function send(path, method, payload) {
    let response;
    try {
      response = await ctx.api(path, { method, body: JSON.stringify(payload) });
    } catch (error) {
      if (error.name === "AuthError") throw error;
      return { ok: false, message: `the server cannot be reached (${error.message})` };
    }
    const answer = await response.json().catch(() => null);
    if (response.ok && answer) return { ok: true, rule: answer };
    const detail = answer && answer.detail;
    if (response.status === 422 && detail && typeof detail === "object" && detail.field) {
      return { ok: false, field: detail.field, message: detail.message || "is not valid" };
    }
    if (response.status === 403) return { ok: false, message: "your role may not change alarm rules" };
    const text = detail && typeof detail === "string" ? detail : (answer && answer.error) || response.statusText;
    return { ok: false, message: `${response.status} ${text}` };
  }

  $("#rule-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors();
    const payload = body();
    if (!payload) return;
    const save = $("#rule-save");
    save.disabled = true;
    const answer = editing
      ? await send(`/api/alarm-rules/${encodeURIComponent(editing)}`, "PATCH", payload)
      : await send("/api/alarm-rules", "POST", payload);
    save.disabled = false;
    if (!answer.ok) {
      if (answer.field) showFieldError(answer.field, answer.message);
      else $("#rule-form-error").textContent = `Not saved: ${answer.message}`;
      return;
    }
    rules.set(answer.rule.id, answer.rule);
    editing = null;
    $("#rule-form").hidden = true;
    $("#rules-info").classList.remove("state-error");
    render();
    $("#rules-info").textContent = `Saved rule ${answer.rule.name}; it applies within seconds.`;
  });
  $("#rule-cancel").addEventListener("click", () => {
    editing = null;
    clearErrors();
    $("#rule-form").hidden = true;
  });
  $("#rule-new").addEventListener("click", () => openForm(null));
  $("#rule-scope").addEventListener("change", showScope);
  $("#rule-operator").addEventListener("change", showScope);
  onZoneChange(() => { if (rules.size) render(); });

  return { load };
}
