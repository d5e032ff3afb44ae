// The time zone every timestamp is shown in: the browser's, UTC or a named IANA zone,
// chosen in the header and remembered in localStorage. Formatting goes through
// Intl.DateTimeFormat with that zone; the zone's name is shown beside the choice and in
// every full timestamp. Relative ages ("3 s ago") do not depend on it.

const KEY = "webscada.timezone";
export const BROWSER_ZONE = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
const listeners = [];
const formatters = new Map();

function validZone(name) {
  try {
    new Intl.DateTimeFormat("en-US", { timeZone: name });
    return true;
  } catch {
    return false;
  }
}

function stored() {
  try {
    return localStorage.getItem(KEY);
  } catch {
    return null; // storage refused (private mode): the browser's zone
  }
}

let choice = stored() || "browser";
if (choice !== "browser" && !validZone(choice)) choice = "browser";

// "browser", "UTC" or an IANA name.
export function zoneChoice() { return choice; }

// The IANA name of the zone in use.
export function zone() { return choice === "browser" ? BROWSER_ZONE : choice; }

export function zoneLabel() {
  return choice === "browser" ? `${BROWSER_ZONE} (browser)` : zone();
}

// Choose a zone; false (and nothing changed) for a name Intl does not know.
export function setZone(value) {
  const next = value || "browser";
  if (next !== "browser" && !validZone(next)) return false;
  choice = next;
  try {
    if (next === "browser") localStorage.removeItem(KEY);
    else localStorage.setItem(KEY, next);
  } catch { /* not remembered, still applied */ }
  for (const listener of listeners) listener(zone());
  return true;
}

export function onZoneChange(listener) { listeners.push(listener); }

// The named zones this browser knows (UTC first), for the choice.
export function knownZones() {
  const names = typeof Intl.supportedValuesOf === "function" ? Intl.supportedValuesOf("timeZone") : [];
  return ["UTC", ...names.filter((name) => name !== "UTC" && name !== "Etc/UTC")];
}

function formatter(kind) {
  const key = `${kind}|${zone()}`;
  let found = formatters.get(key);
  if (!found) {
    const base = { timeZone: zone(), hourCycle: "h23" };
    const options = {
      full: { ...base, year: "numeric", month: "short", day: "numeric", hour: "2-digit",
        minute: "2-digit", second: "2-digit", timeZoneName: "short" },
      time: { ...base, hour: "2-digit", minute: "2-digit", second: "2-digit" },
      day: { ...base, month: "short", day: "numeric" },
      ymd: { ...base, year: "numeric", month: "2-digit", day: "2-digit" },
      parts: { ...base, year: "numeric", month: "numeric", day: "numeric", hour: "numeric",
        minute: "numeric", second: "numeric" },
    }[kind];
    found = new Intl.DateTimeFormat(kind === "ymd" || kind === "parts" ? "en-US" : undefined, options);
    formatters.set(key, found);
  }
  return found;
}

// Date, time and the zone's short name.
export function formatTime(ms) {
  return ms === null || ms === undefined ? "" : formatter("full").format(new Date(ms));
}

// Today's times (in the chosen zone) as HH:MM:SS, others with their date.
export function formatShort(ms) {
  if (ms === null || ms === undefined) return "";
  const when = new Date(ms);
  const time = formatter("time").format(when);
  const sameDay = formatter("ymd").format(when) === formatter("ymd").format(new Date());
  return sameDay ? time : `${formatter("day").format(when)} ${time}`;
}

// The zone's offset from UTC at that instant, in ms.
function offsetAt(ms) {
  const parts = Object.fromEntries(formatter("parts").formatToParts(new Date(ms))
    .filter((p) => p.type !== "literal").map((p) => [p.type, Number(p.value)]));
  const asUtc = Date.UTC(parts.year, parts.month - 1, parts.day, parts.hour % 24, parts.minute, parts.second);
  return asUtc - Math.floor(ms / 1000) * 1000;
}

// A datetime-local value ("2026-12-07T10:30:00") read as a wall time in the chosen zone; NaN if bad.
export function parseWallTime(value) {
  const match = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2}))?/.exec(value || "");
  if (!match) return NaN;
  const [, y, mo, d, h, mi, s] = match.map(Number);
  const wall = Date.UTC(y, mo - 1, d, h, mi, s || 0);
  let ms = wall - offsetAt(wall);
  ms = wall - offsetAt(ms); // once more, for a wall time near an offset change
  return ms;
}
