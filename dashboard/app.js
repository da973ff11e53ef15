// The sluice demo dashboard: one EventSource on /devices (a wildcard route with a JSON envelope and a
// replay buffer). Every value is written with textContent, never as HTML, so a device cannot inject
// markup or script. The browser reconnects by itself and resumes with Last-Event-ID.
"use strict";

const STREAM = "/devices";
const HISTORY = 40; // points per chart

const devicesEl = document.getElementById("devices");
const connectionEl = document.getElementById("connection");
const countEl = document.getElementById("count");
const template = document.getElementById("device-card");
const cards = new Map();
let events = 0;

function setState(state) {
  connectionEl.textContent = state;
  connectionEl.dataset.state = state;
  connectionEl.className = "state " + state;
}

function card(device) {
  let entry = cards.get(device);
  if (entry) return entry;
  const node = template.content.firstElementChild.cloneNode(true);
  node.dataset.device = device;
  node.querySelector(".name").textContent = device;
  entry = { node, series: { temperature: [], humidity: [] } };
  cards.set(device, entry);
  const sorted = [...cards.keys()].sort();
  const next = cards.get(sorted[sorted.indexOf(device) + 1]);
  devicesEl.insertBefore(node, next ? next.node : null);
  return entry;
}

function draw(svg, values) {
  const min = Math.min(...values), max = Math.max(...values);
  const span = max - min || 1;
  const points = values.map((v, i) => {
    const x = values.length === 1 ? 100 : (i / (values.length - 1)) * 100;
    const y = 28 - ((v - min) / span) * 26;
    return x.toFixed(1) + "," + y.toFixed(1);
  });
  svg.querySelector("polyline").setAttribute("points", points.join(" "));
}

function show(topic, text) {
  // devices/<id>/<metric>
  const [, device, metric] = topic.split("/");
  if (!device || !metric) return;
  const entry = card(device);
  if (metric === "status") {
    const status = entry.node.querySelector(".status");
    status.textContent = text;
    status.dataset.status = text;
    return;
  }
  const el = entry.node.querySelector("." + metric);
  if (!el) return;
  el.querySelector(".value").textContent = text;
  const value = Number.parseFloat(text);
  if (Number.isFinite(value)) {
    const series = entry.series[metric];
    series.push(value);
    if (series.length > HISTORY) series.shift();
    draw(el.querySelector(".chart"), series);
  }
}

function connect() {
  const source = new EventSource(STREAM);
  source.onopen = () => setState("live");
  source.onerror = () => setState(source.readyState === EventSource.CLOSED ? "closed" : "reconnecting");
  source.onmessage = (e) => {
    let envelope;
    try {
      envelope = JSON.parse(e.data);
    } catch {
      return;
    }
    if (typeof envelope.topic !== "string") return;
    events += 1;
    countEl.textContent = events + " events";
    show(envelope.topic, String(envelope.data ?? ""));
  };
  source.addEventListener("gap", (e) => {
    const gap = JSON.parse(e.data);
    countEl.textContent = events + " events (missed " + (gap.lost ?? "some") + ")";
  });
  // EventSource gives up only on a fatal answer (e.g. 503 with the wrong type): try again later.
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) setTimeout(connect, 5000);
  });
}

connect();
