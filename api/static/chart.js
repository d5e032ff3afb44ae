// A line chart on a <canvas>: time on x, value on y, with axis ticks. No dependencies.
"use strict";

function niceStep(span, count) {
  const raw = span / Math.max(1, count);
  const power = 10 ** Math.floor(Math.log10(raw || 1));
  for (const factor of [1, 2, 2.5, 5, 10]) {
    if (raw <= factor * power) return factor * power;
  }
  return 10 * power;
}

function timeLabel(ms, spanMs) {
  const d = new Date(ms);
  const pad = (n) => String(n).padStart(2, "0");
  if (spanMs > 2 * 86400000) return `${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}h`;
  if (spanMs > 3600000) return `${pad(d.getHours())}:${pad(d.getMinutes())}`;
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

// points: [{t: ms, v: number|null}], sorted by t; range: {start: ms, stop: ms}
function drawChart(canvas, points, range, label) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 600;
  const height = canvas.clientHeight || 240;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const styles = getComputedStyle(canvas);
  const ink = styles.color || "#1d2330";
  const line = styles.getPropertyValue("--chart-line").trim() || "#2563eb";
  const grid = styles.getPropertyValue("--chart-grid").trim() || "#e3e6eb";
  ctx.font = "12px system-ui, sans-serif";
  ctx.fillStyle = ink;

  const values = points.map((p) => p.v).filter((v) => typeof v === "number");
  const pad = { left: 56, right: 12, top: 18, bottom: 26 };
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  if (values.length === 0) {
    ctx.fillText(`No data for ${label} in this range.`, pad.left, pad.top + plotH / 2);
    return;
  }
  let low = Math.min(...values);
  let high = Math.max(...values);
  if (low === high) { low -= 1; high += 1; }
  const step = niceStep(high - low, 5);
  low = Math.floor(low / step) * step;
  high = Math.ceil(high / step) * step;
  const x = (t) => pad.left + ((t - range.start) / (range.stop - range.start)) * plotW;
  const y = (v) => pad.top + (1 - (v - low) / (high - low)) * plotH;

  ctx.strokeStyle = grid;
  ctx.lineWidth = 1;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (let v = low; v <= high + step / 2; v += step) {
    ctx.beginPath();
    ctx.moveTo(pad.left, y(v));
    ctx.lineTo(width - pad.right, y(v));
    ctx.stroke();
    ctx.fillText(Number(v.toPrecision(6)).toString(), pad.left - 6, y(v));
  }
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  const span = range.stop - range.start;
  for (let i = 0; i <= 5; i += 1) {
    const t = range.start + (span * i) / 5;
    ctx.fillText(timeLabel(t, span), x(t), height - pad.bottom + 6);
  }

  ctx.strokeStyle = line;
  ctx.lineWidth = 2;
  ctx.beginPath();
  let drawing = false;
  for (const point of points) {
    if (typeof point.v !== "number") { drawing = false; continue; }
    if (drawing) ctx.lineTo(x(point.t), y(point.v));
    else ctx.moveTo(x(point.t), y(point.v));
    drawing = true;
  }
  ctx.stroke();
  if (values.length === 1) {
    const only = points.find((p) => typeof p.v === "number");
    ctx.fillStyle = line;
    ctx.beginPath();
    ctx.arc(x(only.t), y(only.v), 3, 0, 2 * Math.PI);
    ctx.fill();
  }
}

window.drawChart = drawChart;
