// The device view: live value tiles, the history of several metrics at once (uPlot),
// drawn as soon as the device opens, extended live by incoming readings; range
// presets and a custom range; min/max/mean of what is shown; CSV export; commands.

import { formatNumber, formatTime, readingOf, toMs } from "./devices.js";
import { onZoneChange, parseWallTime, zone, zoneLabel } from "./timezone.js";

const COLORS = ["#1d4ed8", "#b45309", "#15803d", "#9333ea", "#be123c", "#0e7490", "#4d7c0f", "#c2410c"];
const DEFAULT_PICKS = 3;
const CHART_HEIGHT = 260;

export function createDetail(ctx, { onClose }) {
  const { $ } = ctx;
  const uPlot = window.uPlot;
  const view = {
    device: null,
    metrics: [], // [{name, unit}]
    picked: [], // metric names, in the order of `metrics`
    range: { live: true, span: 3600 }, // or {live: false, start: ms, stop: ms}
    series: new Map(), // metric -> {xs: [s], ys: [value]}
    token: 0,
    chart: null,
    drawTimer: null,
  };
  const commands = new Map(); // command id -> {item, name, history}

  // ---- opening -------------------------------------------------------------------

  async function open(device) {
    view.token += 1;
    destroyChart();
    view.series.clear();
    commands.clear();
    $("#commands").replaceChildren();
    $("#command-info").textContent = "";
    view.device = device;
    $("#detail").hidden = !device;
    if (!device) return;
    const token = view.token;
    $("#detail-id").textContent = device.id;
    $("#detail-name").textContent = device.name ? `— ${device.name}` : "";
    showMeta(device);
    showTiles(device.metrics);
    $("#history-info").classList.remove("state-error");
    $("#history-info").textContent = "Loading metrics…";
    $("#history-metrics").replaceChildren(legend());
    $("#history-stats tbody").replaceChildren();
    loadCommands(device.id);
    let metrics = null;
    try {
      const answer = await ctx.getJson(`/api/devices/${encodeURIComponent(device.id)}/metrics`);
      if (answer) metrics = answer.metrics;
    } catch (error) {
      if (error.name === "AuthError") throw error;
      if (token === view.token) showInfo(`Metric list unavailable (${error.message}); showing live metrics.`, true);
    }
    if (token !== view.token) return;
    if (!metrics) metrics = Object.keys(device.metrics).sort().map((name) => ({ name, unit: null }));
    const keep = view.picked.filter((name) => metrics.some((m) => m.name === name));
    view.metrics = metrics;
    // by default the first metrics the device reports live (not metadata such as battery_level)
    const live = metrics.map((m) => m.name).filter((name) => name in device.metrics);
    view.picked = keep.length ? keep : (live.length ? live : metrics.map((m) => m.name)).slice(0, DEFAULT_PICKS);
    renderPicks();
    await loadHistory();
  }

  function legend() {
    const element = document.createElement("legend");
    element.textContent = "Metrics";
    return element;
  }

  function showMeta(device) {
    const parts = [
      `protocol ${device.protocol || "–"}`,
      `application ${device.application || "–"}`,
      `last reading ${formatTime(device.lastTs ?? device.lastSeen) || "never"}`,
    ];
    if (typeof device.signal === "number") parts.push(`signal ${formatNumber(device.signal, "dBm")}`);
    if (typeof device.battery === "number") parts.push(`battery ${formatNumber(device.battery, "%")}`);
    $("#detail-meta").textContent = parts.join(" · ");
  }

  function unitOf(name) {
    const metric = view.metrics.find((m) => m.name === name);
    return metric ? metric.unit : null;
  }

  function showTiles(metrics) {
    $("#detail-values").replaceChildren(...Object.keys(metrics).sort().map((name) => {
      const tile = document.createElement("div");
      tile.className = "tile metric";
      tile.dataset.metric = name;
      const label = document.createElement("span");
      label.className = "name";
      label.textContent = name;
      const value = document.createElement("span");
      value.className = "metric-value";
      value.textContent = formatNumber(metrics[name], unitOf(name));
      tile.append(label, value);
      return tile;
    }));
  }

  function renderPicks() {
    const boxes = view.metrics.map((metric) => {
      const label = document.createElement("label");
      const box = document.createElement("input");
      box.type = "checkbox";
      box.value = metric.name;
      box.checked = view.picked.includes(metric.name);
      box.addEventListener("change", () => {
        view.picked = view.metrics.map((m) => m.name)
          .filter((name) => name === metric.name ? box.checked : view.picked.includes(name));
        loadHistory();
      });
      label.append(box, document.createTextNode(metric.unit ? `${metric.name} (${metric.unit})` : metric.name));
      return label;
    });
    $("#history-metrics").replaceChildren(legend(), ...boxes);
    if (!boxes.length) {
      const none = document.createElement("span");
      none.className = "hint";
      none.textContent = "No readings stored for this device in the last 30 days.";
      $("#history-metrics").appendChild(none);
    }
  }

  // ---- history -------------------------------------------------------------------

  function bounds() {
    if (view.range.live) {
      const stop = Date.now();
      return { start: stop - view.range.span * 1000, stop };
    }
    return { start: view.range.start, stop: view.range.stop };
  }

  function showInfo(text, error = false) {
    $("#history-info").textContent = text;
    $("#history-info").classList.toggle("state-error", error);
  }

  async function loadHistory() {
    const device = view.device;
    if (!device) return;
    view.token += 1;
    const token = view.token;
    if (!view.picked.length) {
      view.series.clear();
      draw();
      showInfo(view.metrics.length ? "Pick a metric to draw." : "No history to draw.");
      return;
    }
    showInfo("Loading history…");
    const { start, stop } = bounds();
    const params = view.range.live
      ? { start: `-${view.range.span}s`, stop: "now" }
      : { start: new Date(start).toISOString(), stop: new Date(stop).toISOString() };
    const agg = $("#history-agg").value;
    const answers = await Promise.all(view.picked.map(async (metric) => {
      const query = new URLSearchParams({ metric, agg, ...params });
      try {
        const response = await ctx.api(`/api/devices/${encodeURIComponent(device.id)}/history?${query}`);
        const body = await response.json().catch(() => ({}));
        if (!response.ok) return { metric, error: `${response.status} ${body.error || ""}`.trim() };
        return { metric, body };
      } catch (error) {
        if (error.name === "AuthError") throw error;
        return { metric, error: error.message };
      }
    }));
    if (token !== view.token) return; // another device or range was chosen meanwhile
    view.series.clear();
    const failed = [];
    let every = null;
    for (const answer of answers) {
      if (answer.error) { failed.push(`${answer.metric}: ${answer.error}`); continue; }
      every = answer.body.every_s;
      const points = answer.body.points.filter((p) => p.value !== null);
      view.series.set(answer.metric, {
        xs: points.map((p) => Date.parse(p.time) / 1000),
        ys: points.map((p) => p.value),
      });
    }
    draw();
    const total = [...view.series.values()].reduce((sum, s) => sum + s.xs.length, 0);
    if (failed.length) showInfo(`History unavailable for ${failed.join("; ")}`, true);
    else if (total === 0) showInfo("No readings of these metrics in this range.");
    else showInfo(`${total} points, ${agg} per ${every} s${view.range.live ? ", extending live" : ""};`
      + ` times in ${zoneLabel()}.`);
  }

  function destroyChart() {
    if (view.chart) {
      view.chart.destroy();
      view.chart = null;
    }
    $("#chart").dataset.points = "0";
  }

  function joined() {
    const names = view.picked.filter((name) => view.series.has(name));
    const tables = names.map((name) => [view.series.get(name).xs, view.series.get(name).ys]);
    if (!tables.length) return { names, data: [[]] };
    return { names, data: tables.length === 1 ? tables[0] : uPlot.join(tables) };
  }

  function draw() {
    destroyChart();
    const { names, data } = joined();
    if (!names.length) {
      renderStats([], data);
      return;
    }
    const element = $("#chart");
    const axis = { stroke: "#404654", grid: { stroke: "#eef0f3" }, ticks: { stroke: "#dfe3e8" } };
    const options = {
      width: Math.max(280, element.clientWidth),
      height: CHART_HEIGHT,
      scales: { x: { time: true, range: () => { const b = bounds(); return [b.start / 1000, b.stop / 1000]; } } },
      series: [
        { label: "time", value: (u, v) => (v === null ? "–" : formatTime(v * 1000)) },
        ...names.map((name, i) => ({
          label: unitOf(name) ? `${name} (${unitOf(name)})` : name,
          scale: name,
          stroke: COLORS[i % COLORS.length],
          width: 1.5,
          spanGaps: true,
          value: (u, v) => formatNumber(v, unitOf(name)),
        })),
      ],
      axes: [
        { ...axis, space: 70 },
        ...names.slice(0, 2).map((name, i) => ({
          ...axis,
          scale: name,
          side: i === 0 ? 3 : 1,
          stroke: COLORS[i],
          grid: { show: i === 0, stroke: "#eef0f3" },
          size: 56,
          values: (u, ticks) => ticks.map((t) => formatNumber(t)),
        })),
      ],
      legend: { live: true },
      tzDate: (seconds) => uPlot.tzDate(new Date(seconds * 1000), zone()),
    };
    view.chart = new uPlot(options, data, element);
    element.dataset.points = String(names.reduce((sum, name) => sum + view.series.get(name).xs.length, 0));
    renderStats(names, data);
  }

  function renderStats(names, data) {
    const { start, stop } = bounds();
    const rows = names.map((name, i) => {
      const ys = data[i + 1] || [];
      const values = [];
      for (let j = 0; j < ys.length; j += 1) {
        const t = data[0][j] * 1000;
        if (typeof ys[j] === "number" && t >= start && t <= stop) values.push(ys[j]);
      }
      const unit = unitOf(name);
      const mean = values.length ? values.reduce((a, b) => a + b, 0) / values.length : null;
      const tr = document.createElement("tr");
      tr.dataset.metric = name;
      const cells = [unit ? `${name} (${unit})` : name,
        formatNumber(values.length ? Math.min(...values) : null, unit),
        formatNumber(values.length ? Math.max(...values) : null, unit),
        formatNumber(mean, unit), String(values.length)];
      tr.replaceChildren(...cells.map((text, k) => {
        const td = document.createElement(k === 0 ? "th" : "td");
        if (k === 0) td.scope = "row";
        td.textContent = text;
        td.title = text;
        return td;
      }));
      return tr;
    });
    $("#history-stats tbody").replaceChildren(...rows);
    $("#history-stats").hidden = rows.length === 0;
  }

  // Live: append the reading's values of the drawn metrics and slide the window.
  function onReading(data) {
    const device = view.device;
    if (!device || data.device_id !== device.id) return;
    const reading = readingOf(data);
    const current = ctx.devices.get(device.id) || device;
    showTiles(current.metrics);
    showMeta(current);
    if (!view.range.live) return;
    const x = reading.ts / 1000;
    let added = false;
    for (const [name, value] of Object.entries(reading.metrics)) {
      if (!view.metrics.some((m) => m.name === name)) {
        view.metrics.push({ name, unit: null });
        renderPicks();
      }
      const series = view.series.get(name);
      if (!series || typeof value !== "number") continue;
      if (series.xs.length && x <= series.xs[series.xs.length - 1]) continue; // late or repeated
      series.xs.push(x);
      series.ys.push(value);
      added = true;
    }
    if (added && !view.drawTimer) {
      view.drawTimer = setTimeout(() => {
        view.drawTimer = null;
        if (!view.chart) { draw(); return; }
        const { names, data: joinedData } = joined();
        view.chart.setData(joinedData);
        $("#chart").dataset.points = String(names.reduce((s, n) => s + view.series.get(n).xs.length, 0));
        renderStats(names, joinedData);
      }, 300);
    }
  }

  function exportCsv() {
    const device = view.device;
    const { names, data } = joined();
    if (!device || !names.length) return;
    const { start, stop } = bounds();
    const quote = (text) => (/[",\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text);
    const lines = [["time", ...names.map((n) => (unitOf(n) ? `${n} (${unitOf(n)})` : n))].map(quote).join(",")];
    for (let j = 0; j < data[0].length; j += 1) {
      const t = data[0][j] * 1000;
      if (t < start || t > stop) continue;
      lines.push([new Date(t).toISOString(),
        ...names.map((_, i) => (typeof data[i + 1][j] === "number" ? String(data[i + 1][j]) : ""))].join(","));
    }
    const blob = new Blob([`${lines.join("\n")}\n`], { type: "text/csv" });
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    const stamp = (ms) => new Date(ms).toISOString().replace(/[:.]/g, "-");
    link.download = `${device.id}_${stamp(start)}_${stamp(stop)}.csv`;
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  }

  // ---- controls ------------------------------------------------------------------

  for (const button of document.querySelectorAll("#history-presets button")) {
    button.addEventListener("click", () => {
      view.range = { live: true, span: Number(button.dataset.range) };
      for (const other of document.querySelectorAll("#history-presets button")) {
        other.classList.toggle("active", other === button);
        other.setAttribute("aria-pressed", String(other === button));
      }
      loadHistory();
    });
  }
  $("#history-custom").addEventListener("submit", (event) => {
    event.preventDefault();
    const start = parseWallTime($("#history-from").value);
    const stop = parseWallTime($("#history-to").value);
    if (!Number.isFinite(start) || !Number.isFinite(stop) || start >= stop) {
      showInfo("Give a start before the end.", true);
      return;
    }
    view.range = { live: false, start, stop };
    for (const other of document.querySelectorAll("#history-presets button")) {
      other.classList.remove("active");
      other.setAttribute("aria-pressed", "false");
    }
    loadHistory();
  });
  $("#history-agg").addEventListener("change", () => loadHistory());
  $("#history-export").addEventListener("click", exportCsv);
  $("#detail-close").addEventListener("click", () => onClose());
  onZoneChange(() => {
    if (!view.device) return;
    showMeta(view.device);
    for (const known of commands.values()) renderCommand(known);
    if (view.series.size) loadHistory();
  });
  new ResizeObserver(() => {
    if (view.chart) view.chart.setSize({ width: Math.max(280, $("#chart").clientWidth), height: CHART_HEIGHT });
  }).observe($("#chart"));

  // ---- commands ------------------------------------------------------------------

  function commandItem(id, name) {
    let known = commands.get(id);
    if (known) return known;
    const item = document.createElement("li");
    item.dataset.command = id;
    known = { item, name, history: [] };
    commands.set(id, known);
    $("#commands").prepend(item);
    return known;
  }

  function renderCommand(known) {
    const last = known.history[known.history.length - 1];
    const steps = known.history.map((h) => (toMs(h.at) ? `${h.status} (${formatTime(toMs(h.at))})` : h.status));
    known.item.textContent = `${known.name}: ${steps.join(" → ")}`;
    known.item.title = known.item.textContent;
    known.item.className = `command command-${last ? last.status : "unknown"}`;
  }

  async function loadCommands(id) {
    let response;
    try {
      response = await ctx.api(`/api/devices/${encodeURIComponent(id)}/commands`);
    } catch (error) {
      if (error.name === "AuthError") throw error;
      $("#command-info").textContent = `Command history unavailable: ${error.message}`;
      return;
    }
    if (!view.device || view.device.id !== id) return;
    if (response.status === 404 || response.status === 405) {
      $("#command-info").textContent = "Commands are not available on this server yet.";
      return;
    }
    if (!response.ok) {
      $("#command-info").textContent = `Command history unavailable: ${response.status}`;
      return;
    }
    const list = await response.json();
    for (const command of list.slice(0, 10).reverse()) {
      const known = commandItem(command.id, command.name);
      known.history = command.history || [{ status: command.status }];
      renderCommand(known);
    }
  }

  $("#command-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const id = view.device && view.device.id;
    if (!id) return;
    let params;
    try {
      params = JSON.parse($("#command-params").value || "{}");
    } catch {
      $("#command-info").textContent = "Params must be a JSON object.";
      return;
    }
    const name = $("#command-name").value.trim();
    const response = await ctx.api(`/api/devices/${encodeURIComponent(id)}/commands`, {
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
      if (!known.history.some((h) => h.status === first)) known.history.unshift({ status: first, at: body.created_at });
      renderCommand(known);
      $("#command-info").textContent = "";
    }
  });

  function onCommandStatus(status) {
    if (!view.device || status.device_id !== view.device.id) return;
    const known = commandItem(status.command_id, "command");
    if (!known.history.some((h) => h.status === status.status)) known.history.push(status);
    renderCommand(known);
  }

  return { open, onReading, onCommandStatus };
}
