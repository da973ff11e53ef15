// The status page: draws each snapshot that /status/events sends (one a second).
"use strict";

const HISTORY = 60;
const history = new Map(); // route -> events/s of the last HISTORY snapshots

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function sparkline(values) {
  const max = Math.max(1, ...values);
  const step = 160 / (HISTORY - 1);
  const offset = HISTORY - values.length;
  const points = values.map((v, i) => `${((offset + i) * step).toFixed(1)},${(23 - (v / max) * 22).toFixed(1)}`);
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 160 24");
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points.join(" "));
  svg.appendChild(line);
  return svg;
}

function drawRoutes(routes) {
  const body = document.querySelector("#routes tbody");
  body.replaceChildren();
  for (const r of routes) {
    const seen = history.get(r.route) || [];
    seen.push(r.events_per_sec);
    if (seen.length > HISTORY) seen.shift();
    history.set(r.route, seen);
    const row = body.insertRow();
    row.dataset.route = r.route;
    cell(row, r.route);
    cell(row, r.broker);
    cell(row, String(r.streams), "num streams");
    cell(row, r.events_per_sec.toFixed(1), "num");
    cell(row, String(r.dropped), r.dropped > 0 ? "num warn" : "num");
    cell(row, r.lag_p99_ms > 0 ? `${r.lag_p99_ms < 1 ? r.lag_p99_ms.toFixed(2) : Math.round(r.lag_p99_ms)} ms` : "–", "num");
    row.insertCell().appendChild(sparkline(seen));
  }
}

function drawBrokers(brokers) {
  const body = document.querySelector("#brokers tbody");
  body.replaceChildren();
  for (const b of brokers) {
    const row = body.insertRow();
    row.dataset.broker = b.broker;
    cell(row, b.broker);
    cell(row, b.up ? "up" : "down", b.up ? "up" : "down");
    cell(row, String(b.reconnects), "num");
    cell(row, String(b.subscriptions), "num");
    cell(row, String(b.messages), "num");
  }
}

const state = document.getElementById("state");
const source = new EventSource("/status/events");
source.addEventListener("status", (event) => {
  const snapshot = JSON.parse(event.data);
  drawRoutes(snapshot.routes);
  drawBrokers(snapshot.brokers);
  state.textContent = `live · ${new Date().toLocaleTimeString()}`;
});
source.onerror = () => { state.textContent = "reconnecting…"; };
