// The device list: every visible device loaded through the API's paging
// (GET /api/devices?limit=&offset=), searched, filtered and sorted in the browser,
// shown a page at a time; live values update the rows on screen.

export const PAGE_SIZE = 50;
const API_PAGE = 1000;
const MAX_API_PAGES = 100; // 100,000 devices
const MAX_ROOMS = 200;
const LIVE_S = 60;

export function formatNumber(value, unit) {
  if (typeof value !== "number" || !Number.isFinite(value)) return "–";
  const text = Math.abs(value) >= 100 ? value.toFixed(0) : String(Number(value.toFixed(2)));
  return unit ? `${text} ${unit}` : text;
}

export function formatAge(when, now = Date.now()) {
  if (when === null || when === undefined) return "never";
  const seconds = Math.max(0, Math.round((now - when) / 1000));
  if (seconds < 120) return `${seconds} s ago`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 172800) return `${Math.round(seconds / 3600)} h ago`;
  return `${Math.round(seconds / 86400)} d ago`;
}

// A time as the API sends it (ISO-8601, or µs / ms since 1970) in ms; null when absent.
export function toMs(value) {
  if (value === null || value === undefined || value === "") return null;
  if (typeof value === "number") return value > 1e14 ? value / 1000 : value;
  const ms = Date.parse(value);
  return Number.isFinite(ms) ? ms : null;
}

// Timestamps in the chosen time zone (timezone.js); kept importable from here.
export { formatShort, formatTime } from "./timezone.js";
import { formatTime } from "./timezone.js";

// Telemetry as Socket.IO sends it: metrics plus metadata (signal, battery).
export function readingOf(data) {
  const meta = data.metadata || {};
  return {
    ts: Date.parse(data.ts), protocol: data.protocol, application_id: data.application_id,
    metrics: data.metrics || {}, signal: meta.signal_strength, battery: meta.battery_level,
  };
}

export function createDevices(ctx, { onSelect }) {
  const { $ } = ctx;
  const all = new Map(); // id -> device record
  const view = { search: "", protocol: "", application: "", freshness: "", alarm: "",
    sort: "id", dir: 1, page: 0, selected: null };
  let rows = new Map(); // id -> {tr, cells} of the page on screen
  let shown = []; // ids of the current page
  let alarmDevices = new Set();
  let loaded = false;

  function record(id) {
    let device = all.get(id);
    if (!device) {
      device = { id, name: null, protocol: "", application: "", lastSeen: null, lastTs: null,
        metrics: {}, signal: undefined, battery: undefined };
      all.set(id, device);
    }
    return device;
  }

  function when(device) { return device.lastTs ?? device.lastSeen; }

  function freshness(device, now = Date.now()) {
    const at = when(device);
    if (at === null) return "never";
    return now - at < LIVE_S * 1000 ? "live" : "stale";
  }

  // ---- filtering, sorting, paging ------------------------------------------------

  function matches(device, now) {
    if (view.search) {
      const needle = view.search.toLowerCase();
      if (!device.id.toLowerCase().includes(needle)
        && !(device.name || "").toLowerCase().includes(needle)) return false;
    }
    if (view.protocol && device.protocol !== view.protocol) return false;
    if (view.application && device.application !== view.application) return false;
    if (view.freshness && freshness(device, now) !== view.freshness) return false;
    if (view.alarm === "alarm" && !alarmDevices.has(device.id)) return false;
    if (view.alarm === "none" && alarmDevices.has(device.id)) return false;
    return true;
  }

  const KEYS = {
    id: (d) => d.id,
    protocol: (d) => d.protocol || "",
    application: (d) => d.application || "",
    age: (d) => -(when(d) ?? -Infinity), // newest first when ascending
    signal: (d) => (typeof d.signal === "number" ? d.signal : -Infinity),
    battery: (d) => (typeof d.battery === "number" ? d.battery : -Infinity),
  };

  function ordered() {
    const now = Date.now();
    const key = KEYS[view.sort];
    const list = [...all.values()].filter((d) => matches(d, now));
    list.sort((a, b) => {
      const x = key(a);
      const y = key(b);
      const c = x < y ? -1 : x > y ? 1 : (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
      return c * view.dir;
    });
    return list;
  }

  // ---- rendering ---------------------------------------------------------------

  function cell(tr, className) {
    const td = document.createElement("td");
    if (className) td.className = className;
    tr.appendChild(td);
    return td;
  }

  function setText(td, text, title) {
    td.textContent = text;
    td.title = title ?? text;
  }

  function fillRow(entry, device) {
    const { cells } = entry;
    cells.id.replaceChildren(document.createTextNode(device.id));
    cells.id.title = device.name ? `${device.id} — ${device.name}` : device.id;
    if (device.name && device.name !== device.id) {
      const name = document.createElement("span");
      name.className = "device-name";
      name.textContent = device.name;
      cells.id.appendChild(name);
    }
    setText(cells.protocol, device.protocol || "–");
    setText(cells.application, device.application || "–");
    setText(cells.signal, formatNumber(device.signal, "dBm"));
    setText(cells.battery, formatNumber(device.battery, "%"));
    renderValues(cells.values, device.metrics);
    updateAge(entry, device);
  }

  function renderValues(td, metrics) {
    const names = Object.keys(metrics).sort();
    td.replaceChildren(...names.map((name) => {
      const span = document.createElement("span");
      span.className = "metric";
      span.dataset.metric = name;
      const label = document.createElement("b");
      label.textContent = `${name} `;
      const value = document.createElement("span");
      value.className = "metric-value";
      value.textContent = formatNumber(metrics[name]);
      span.append(label, value);
      return span;
    }));
    td.title = names.map((name) => `${name}: ${formatNumber(metrics[name])}`).join("\n");
  }

  function updateAge(entry, device, now = Date.now()) {
    const at = when(device);
    const td = entry.cells.age;
    td.textContent = formatAge(at, now);
    td.title = at === null ? "no reading yet" : formatTime(at);
    const seconds = at === null ? Infinity : (now - at) / 1000;
    td.className = seconds < LIVE_S ? "age-fresh" : seconds < 300 ? "age-stale" : "age-old";
  }

  function makeRow(device) {
    const tr = document.createElement("tr");
    tr.dataset.device = device.id;
    tr.tabIndex = 0;
    const cells = {
      id: cell(tr, "device-id"), protocol: cell(tr, "opt"), application: cell(tr, "opt"),
      age: cell(tr), signal: cell(tr, "opt"), battery: cell(tr, "opt"), values: cell(tr, "values"),
    };
    tr.classList.toggle("selected", view.selected === device.id);
    tr.addEventListener("click", () => onSelect(device));
    tr.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") { event.preventDefault(); onSelect(device); }
      else if (event.key === "ArrowDown") { event.preventDefault(); tr.nextElementSibling?.focus(); }
      else if (event.key === "ArrowUp") { event.preventDefault(); tr.previousElementSibling?.focus(); }
    });
    const entry = { tr, cells };
    fillRow(entry, device);
    return entry;
  }

  function render() {
    const started = performance.now();
    const list = ordered();
    const pages = Math.max(1, Math.ceil(list.length / PAGE_SIZE));
    view.page = Math.min(view.page, pages - 1);
    const page = list.slice(view.page * PAGE_SIZE, (view.page + 1) * PAGE_SIZE);
    rows = new Map();
    shown = page.map((d) => d.id);
    const fragment = document.createDocumentFragment();
    for (const device of page) {
      const entry = makeRow(device);
      rows.set(device.id, entry);
      fragment.appendChild(entry.tr);
    }
    $("#devices tbody").replaceChildren(fragment);
    $("#device-count").textContent = list.length === all.size
      ? `(${all.size})` : `(${list.length} of ${all.size})`;
    $("#page-info").textContent = list.length
      ? `${view.page * PAGE_SIZE + 1}–${view.page * PAGE_SIZE + page.length} of ${list.length}` : "";
    $("#page-prev").disabled = view.page === 0;
    $("#page-next").disabled = view.page >= pages - 1;
    $("#pager").hidden = list.length <= PAGE_SIZE;
    for (const th of document.querySelectorAll("#devices th[data-sort]")) {
      if (th.dataset.sort === view.sort) th.setAttribute("aria-sort", view.dir > 0 ? "ascending" : "descending");
      else th.removeAttribute("aria-sort");
    }
    if (loaded) showState(list.length);
    document.body.dataset.renderMs = String(Math.round(performance.now() - started));
    subscribe();
  }

  function showState(count) {
    const state = $("#devices-state");
    state.classList.remove("state-error");
    const me = ctx.me;
    if (all.size === 0 && me && !me.all_applications && me.applications.length === 0) {
      state.textContent = "You have no access to any application — ask an admin to grant you one"
        + " (webscada user grant NAME APPLICATION).";
    } else if (all.size === 0) {
      state.textContent = "No devices registered yet. Devices appear here once they are registered or send"
        + " their first reading.";
    } else if (count === 0) {
      state.textContent = "No device matches the search and filters.";
    } else {
      state.textContent = "";
    }
  }

  function showError(message) {
    const state = $("#devices-state");
    state.classList.add("state-error");
    state.textContent = message;
  }

  function fillOptions(select, values, label) {
    const current = select.value;
    select.replaceChildren(new Option(label, ""), ...[...values].sort().map((v) => new Option(v, v)));
    select.value = values.has(current) ? current : "";
  }

  // ---- loading -------------------------------------------------------------------

  async function load() {
    if (!loaded) {
      $("#devices-state").classList.remove("state-error");
      $("#devices-state").textContent = "Loading devices…";
    }
    const seen = new Set();
    try {
      for (let page = 0; page < MAX_API_PAGES; page += 1) {
        const batch = await ctx.getJson(`/api/devices?limit=${API_PAGE}&offset=${page * API_PAGE}`) || [];
        for (const item of batch) {
          const device = record(item.id);
          seen.add(item.id);
          device.name = item.name && item.name !== item.id ? item.name : null;
          device.protocol = item.protocol || device.protocol;
          device.application = item.application_id || device.application;
          if (item.last_seen) device.lastSeen = Date.parse(item.last_seen);
        }
        if (batch.length < API_PAGE) break;
      }
    } catch (error) {
      if (error.name === "AuthError") throw error;
      showError(`Could not load the devices (${error.message}); retrying in 30 s.`);
      return;
    }
    for (const id of [...all.keys()]) if (!seen.has(id)) all.delete(id); // deleted or no longer granted
    loaded = true;
    const devices = [...all.values()];
    fillOptions($("#filter-protocol"), new Set(devices.map((d) => d.protocol).filter(Boolean)), "All protocols");
    fillOptions($("#filter-application"), new Set(devices.map((d) => d.application).filter(Boolean)),
      "All applications");
    render();
  }

  // ---- live ----------------------------------------------------------------------

  function onReading(data) {
    const reading = readingOf(data);
    const device = all.get(data.device_id);
    if (!device) return; // not registered (yet): the 30 s reload brings it
    if (device.lastTs !== null && reading.ts < device.lastTs) return; // late, older reading
    device.lastTs = reading.ts;
    device.metrics = { ...device.metrics, ...reading.metrics };
    if (reading.protocol) device.protocol = reading.protocol;
    if (reading.signal !== undefined) device.signal = reading.signal;
    if (reading.battery !== undefined) device.battery = reading.battery;
    const entry = rows.get(device.id);
    if (!entry) return;
    fillRow(entry, device);
    entry.tr.classList.remove("flash");
    void entry.tr.offsetWidth; // restart the highlight
    entry.tr.classList.add("flash");
  }

  // Admins: one room per device on screen (and the selected one); others: their applications.
  function subscribe() {
    const me = ctx.me;
    if (!me) return;
    const wanted = me.all_applications
      ? [view.selected, ...shown].filter(Boolean).slice(0, MAX_ROOMS).map((id) => `device:${id}`)
      : me.applications.map((app) => `application:${app}`);
    ctx.subscribeRooms(wanted);
  }

  // ---- controls ------------------------------------------------------------------

  let searchTimer = null;
  $("#device-search").addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => {
      view.search = $("#device-search").value.trim();
      view.page = 0;
      render();
    }, 120);
  });
  $("#device-filters").addEventListener("submit", (event) => event.preventDefault());
  for (const [selector, key] of [["#filter-protocol", "protocol"], ["#filter-application", "application"],
    ["#filter-freshness", "freshness"], ["#filter-alarm", "alarm"]]) {
    $(selector).addEventListener("change", () => {
      view[key] = $(selector).value;
      view.page = 0;
      render();
    });
  }
  for (const th of document.querySelectorAll("#devices th[data-sort]")) {
    th.querySelector("button").addEventListener("click", () => {
      if (view.sort === th.dataset.sort) view.dir = -view.dir;
      else { view.sort = th.dataset.sort; view.dir = 1; }
      render();
    });
  }
  $("#page-prev").addEventListener("click", () => { view.page -= 1; render(); });
  $("#page-next").addEventListener("click", () => { view.page += 1; render(); });

  setInterval(() => {
    const now = Date.now();
    for (const [id, entry] of rows) updateAge(entry, all.get(id), now);
  }, 1000);
  setInterval(() => { if (ctx.session && !$("#board").hidden) load().catch(() => {}); }, 30000);

  return {
    load,
    render,
    onReading,
    subscribe,
    showError,
    get: (id) => all.get(id),
    markSelected(id) {
      view.selected = id;
      for (const [other, entry] of rows) entry.tr.classList.toggle("selected", other === id);
    },
    setAlarmDevices(devices) {
      alarmDevices = devices;
      if (view.alarm) render();
    },
  };
}
