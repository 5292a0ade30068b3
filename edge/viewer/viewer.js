// Rideshare live map: a canvas with no tiles and no CDN. An admin token opens the viewer
// WebSocket (/v1/ws/viewer: a snapshot of the drivers in the box, then deltas; frames in
// edge/wire.py) and polls the live trips; a rider token opens the rider WebSocket and shows its
// own trip and its driver. Markers glide to new positions and fade when their position gets
// stale. Dragging pans and the wheel zooms; the feed then follows the box on screen. State for
// tests is mirrored into the DOM: body[data-state|data-drivers|data-trips|data-snapshots] and
// #driver-list li[data-driver-id|data-lat|data-lng|data-x|data-y] (x, y: where it is drawn).
"use strict";

const COLOURS = { available: "#3fb950", offered: "#f0b429", on_trip: "#58a6ff", unknown: "#8b949e" };
const FRESH_MS = 5000, STALE_MS = 30000, POLL_MS = 1000;
const params = new URLSearchParams(location.search);
const hash = new URLSearchParams(location.hash.slice(1));
let token = hash.get("token") || params.get("token") || sessionStorage.getItem("rideshare-token");
const bbox = params.get("bbox") || "-85,-180,85,180";

const canvas = document.getElementById("map");
const ctx2d = canvas.getContext("2d");
const statusEl = document.getElementById("status");
const drivers = new Map();   // id -> {lat, lng, x, y (drawn), availability, ts}
let trips = [];              // [{id, state, pickup, dropoff, driver_id}]
let view = null;             // {minLat, maxLat, minLng, maxLng}
let manual = false;          // the user moved the map: stop fitting it to the drivers
let viewerWs = null;
let snapshots = 0;

function claims(jwt) {
  try {
    const part = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part));
  } catch (e) { return null; }
}

function setStatus(text, state) {
  statusEl.textContent = text;
  if (state) document.body.dataset.state = state;
}

function upsertDriver(id, lat, lng, availability, ts) {
  const d = drivers.get(id);
  if (d) { d.lat = lat; d.lng = lng; d.availability = availability || d.availability; d.ts = ts; }
  else drivers.set(id, { lat, lng, x: lng, y: lat, availability: availability || "unknown", ts });
}

function mirrorDom() {
  document.body.dataset.drivers = String(drivers.size);
  document.body.dataset.trips = String(trips.length);
  document.body.dataset.snapshots = String(snapshots);
  const list = document.getElementById("driver-list");
  list.replaceChildren(...[...drivers.entries()].map(([id, d]) => {
    const li = document.createElement("li");
    li.dataset.driverId = id; li.dataset.availability = d.availability;
    li.dataset.lat = String(d.lat); li.dataset.lng = String(d.lng);
    if (view) { const [x, y] = project(d.lat, d.lng); li.dataset.x = x.toFixed(1); li.dataset.y = y.toFixed(1); }
    li.textContent = id;
    return li;
  }));
  const tl = document.getElementById("trip-list");
  tl.replaceChildren(...trips.map(t => {
    const li = document.createElement("li");
    li.dataset.tripId = t.id; li.dataset.state = t.state; li.textContent = t.id;
    return li;
  }));
}

function fitView() {
  if (manual) return;
  const pts = [];
  for (const d of drivers.values()) pts.push([d.lat, d.lng]);
  for (const t of trips) { pts.push([t.pickup.lat, t.pickup.lng], [t.dropoff.lat, t.dropoff.lng]); }
  if (!pts.length) return;
  let minLat = Infinity, maxLat = -Infinity, minLng = Infinity, maxLng = -Infinity;
  for (const [la, ln] of pts) {
    minLat = Math.min(minLat, la); maxLat = Math.max(maxLat, la);
    minLng = Math.min(minLng, ln); maxLng = Math.max(maxLng, ln);
  }
  const padLat = Math.max((maxLat - minLat) * 0.15, 0.005), padLng = Math.max((maxLng - minLng) * 0.15, 0.005);
  const target = { minLat: minLat - padLat, maxLat: maxLat + padLat, minLng: minLng - padLng, maxLng: maxLng + padLng };
  if (!view) { view = target; return; }
  for (const k of Object.keys(target)) view[k] += (target[k] - view[k]) * 0.1;  // ease the camera
}

function project(lat, lng) {
  const w = canvas.width, h = canvas.height;
  const midLat = (view.minLat + view.maxLat) / 2;
  const kx = Math.cos(midLat * Math.PI / 180);
  const spanX = (view.maxLng - view.minLng) * kx, spanY = view.maxLat - view.minLat;
  const scale = Math.min(w / spanX, h / spanY);
  const cx = (view.minLng + view.maxLng) / 2, cy = midLat;
  return [w / 2 + (lng - cx) * kx * scale, h / 2 - (lat - cy) * scale];
}

function drawGrid() {
  const steps = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20];
  const span = view.maxLat - view.minLat;
  const step = steps.find(s => span / s < 12) || 30;
  ctx2d.strokeStyle = "#1f2630"; ctx2d.fillStyle = "#4b5563"; ctx2d.lineWidth = 1;
  ctx2d.font = "10px system-ui";
  for (let la = Math.ceil(view.minLat / step) * step; la <= view.maxLat; la += step) {
    const [, y] = project(la, view.minLng);
    ctx2d.beginPath(); ctx2d.moveTo(0, y); ctx2d.lineTo(canvas.width, y); ctx2d.stroke();
    ctx2d.fillText(la.toFixed(3), 4, y - 2);
  }
  const lngSpan = view.maxLng - view.minLng;
  const lstep = steps.find(s => lngSpan / s < 12) || 30;
  for (let ln = Math.ceil(view.minLng / lstep) * lstep; ln <= view.maxLng; ln += lstep) {
    const [x] = project(view.minLat, ln);
    ctx2d.beginPath(); ctx2d.moveTo(x, 0); ctx2d.lineTo(x, canvas.height); ctx2d.stroke();
    ctx2d.fillText(ln.toFixed(3), x + 2, canvas.height - 4);
  }
}

function frame() {
  if (canvas.width !== innerWidth || canvas.height !== innerHeight) {
    canvas.width = innerWidth; canvas.height = innerHeight;
  }
  ctx2d.fillStyle = "#10141a"; ctx2d.fillRect(0, 0, canvas.width, canvas.height);
  fitView();
  if (view) {
    drawGrid();
    for (const t of trips) {
      const [px, py] = project(t.pickup.lat, t.pickup.lng), [dx, dy] = project(t.dropoff.lat, t.dropoff.lng);
      ctx2d.strokeStyle = "#a371f7"; ctx2d.setLineDash([6, 4]); ctx2d.lineWidth = 2;
      ctx2d.beginPath(); ctx2d.moveTo(px, py); ctx2d.lineTo(dx, dy); ctx2d.stroke(); ctx2d.setLineDash([]);
      ctx2d.fillStyle = "#a371f7"; ctx2d.fillRect(px - 4, py - 4, 8, 8);
      ctx2d.strokeRect(dx - 4, dy - 4, 8, 8);
    }
    const now = Date.now();
    for (const d of drivers.values()) {
      d.x += (d.lng - d.x) * 0.2; d.y += (d.lat - d.y) * 0.2;   // glide, don't jump
      const age = now - d.ts;
      ctx2d.globalAlpha = age < FRESH_MS ? 1 : Math.max(0.15, 1 - (age - FRESH_MS) / (STALE_MS - FRESH_MS));
      const [x, y] = project(d.y, d.x);
      ctx2d.fillStyle = COLOURS[d.availability] || COLOURS.unknown;
      ctx2d.beginPath(); ctx2d.arc(x, y, 5, 0, 2 * Math.PI); ctx2d.fill();
      ctx2d.globalAlpha = 1;
    }
  }
  requestAnimationFrame(frame);
}

async function api(path) {
  const r = await fetch(path, { headers: { Authorization: "Bearer " + token } });
  if (!r.ok) throw new Error(path + " -> " + r.status);
  return r.json();
}

// The drivers come from the viewer WebSocket; the live trips are still read over REST.
async function pollTrips() {
  try {
    const live = await api("/v1/admin/trips?state=live&page_size=100");
    trips = live.trips.map(t => ({ id: t.id, state: t.state, pickup: t.pickup, dropoff: t.dropoff, driver_id: t.driver_id }));
    mirrorDom();
  } catch (e) {
    setStatus("error: " + e.message, "error");
  }
  setTimeout(pollTrips, POLL_MS);
}

function shownBox() {
  const [x0, y0] = [0, canvas.height], [x1, y1] = [canvas.width, 0];
  const sw = unproject(x0, y0), ne = unproject(x1, y1);
  const clampLat = v => Math.max(-85.05, Math.min(85.05, v)), clampLng = v => Math.max(-180, Math.min(180, v));
  return [clampLat(sw[0]), clampLng(sw[1]), clampLat(ne[0]), clampLng(ne[1])].map(v => v.toFixed(6)).join(",");
}

function connectViewer() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = viewerWs = new WebSocket(`${proto}//${location.host}/v1/ws/viewer?bbox=${encodeURIComponent(manual ? shownBox() : bbox)}&token=${encodeURIComponent(token)}`);
  let lastHeard = Date.now();
  const watchdog = setInterval(() => { if (Date.now() - lastHeard > 7000) ws.close(); }, 1000);
  const put = p => upsertDriver(p.driver_id, p.lat, p.lng, p.availability, p.server_ts_ms || Date.now());
  ws.onmessage = (ev) => {
    lastHeard = Date.now();
    const m = JSON.parse(ev.data);
    if (m.type === "viewer_snapshot") {
      drivers.clear();
      m.drivers.forEach(put);
      snapshots += 1;
    } else if (m.type === "viewer_delta") {
      m.appeared.forEach(put); m.moved.forEach(put);
      for (const id of m.left) drivers.delete(id);
    } else if (m.type === "error") {
      setStatus("error: " + m.message, "error");
      return;
    } else return;
    mirrorDom();
    setStatus(`${drivers.size} drivers, ${trips.length} live trips`, "ready");
  };
  ws.onclose = (ev) => {
    clearInterval(watchdog);
    if (ev.code === 4401 || ev.code === 4403 || ev.code === 4400) { setStatus("viewer refused: " + ev.code, "error"); return; }
    setStatus("reconnecting…", "reconnecting"); setTimeout(connectViewer, 1000);
  };
}

let boxTimer = null;
function followBox() {  // debounced: one bbox message when the map stops moving
  clearTimeout(boxTimer);
  boxTimer = setTimeout(() => {
    if (viewerWs && viewerWs.readyState === WebSocket.OPEN) viewerWs.send(JSON.stringify({ type: "bbox", bbox: shownBox() }));
  }, 300);
}

function unproject(x, y) {
  const w = canvas.width, h = canvas.height;
  const midLat = (view.minLat + view.maxLat) / 2;
  const kx = Math.cos(midLat * Math.PI / 180);
  const spanX = (view.maxLng - view.minLng) * kx, spanY = view.maxLat - view.minLat;
  const scale = Math.min(w / spanX, h / spanY);
  const cx = (view.minLng + view.maxLng) / 2;
  return [midLat - (y - h / 2) / scale, cx + (x - w / 2) / (kx * scale)];
}

function enablePanZoom() {
  let drag = null;
  canvas.addEventListener("mousedown", e => { if (view) drag = [e.clientX, e.clientY]; });
  addEventListener("mouseup", () => { drag = null; });
  addEventListener("mousemove", e => {
    if (!drag || !view) return;
    const [a, b] = [unproject(drag[0], drag[1]), unproject(e.clientX, e.clientY)];
    const dLat = a[0] - b[0], dLng = a[1] - b[1];
    view.minLat += dLat; view.maxLat += dLat; view.minLng += dLng; view.maxLng += dLng;
    drag = [e.clientX, e.clientY]; manual = true; followBox();
  });
  canvas.addEventListener("wheel", e => {
    if (!view) return;
    e.preventDefault();
    const k = e.deltaY > 0 ? 1.2 : 1 / 1.2;
    const [la, ln] = unproject(e.clientX, e.clientY);
    view.minLat = la + (view.minLat - la) * k; view.maxLat = la + (view.maxLat - la) * k;
    view.minLng = ln + (view.minLng - ln) * k; view.maxLng = ln + (view.maxLng - ln) * k;
    manual = true; followBox();
  }, { passive: false });
}

function connectRider() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${proto}//${location.host}/v1/ws/rider?token=${encodeURIComponent(token)}`);
  let lastHeard = Date.now();
  const watchdog = setInterval(() => { if (Date.now() - lastHeard > 7000) ws.close(); }, 1000);
  ws.onopen = () => setStatus("connected; waiting for your trip", "ready");
  ws.onmessage = (ev) => {
    lastHeard = Date.now();
    const m = JSON.parse(ev.data);
    if (m.type === "trip") {
      const t = m.trip;
      trips = ["completed", "cancelled", "no_drivers"].includes(t.state) ? [] :
        [{ id: t.id, state: t.state, pickup: t.pickup, dropoff: t.dropoff, driver_id: t.driver_id }];
      if (!trips.length || !t.driver_id) drivers.clear();
      setStatus(`trip ${t.state}`, "ready");
    } else if (m.type === "driver_position") {
      upsertDriver(m.driver_id, m.lat, m.lng, "on_trip", m.ts_ms);
    } else if (m.type === "error") {
      setStatus("error: " + m.message, "error");
    }
    mirrorDom();
  };
  ws.onclose = () => { clearInterval(watchdog); setStatus("reconnecting…", "reconnecting"); setTimeout(connectRider, 1000); };
}

function start() {
  const c = token && claims(token);
  if (!c) {
    setStatus("no token: open /viewer#token=<jwt>", "no-token");
    const form = document.getElementById("token-form");
    form.hidden = false;
    form.onsubmit = (e) => { e.preventDefault(); location.hash = "token=" + document.getElementById("token-input").value.trim(); location.reload(); };
    return;
  }
  sessionStorage.setItem("rideshare-token", token);
  document.body.dataset.role = c.role;
  if (c.role === "admin") { connectViewer(); pollTrips(); enablePanZoom(); }
  else if (c.role === "rider") connectRider();
  else setStatus("the viewer is for admin and rider tokens", "error");
  requestAnimationFrame(frame);
}

start();
