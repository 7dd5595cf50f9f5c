// The management page: polls the JSON API, starts its rate chart from the broker's own
// history (`/api/rates`) and adds to it, and draws everything with the DOM, inline SVG and
// a canvas. The forms' actions are in actions.js, the plugin table's in plugins.js. No framework, no build step.
"use strict";

const POLL_MS = 1500;
const HISTORY_MS = 10 * 60 * 1000;
const SPARK_POINTS = 40;
const DLQ_PEEK = 20;

const state = {
  prev: null,            // queue name -> counters at the previous poll
  prevAt: 0,
  history: [],           // [{t, publish, deliver, ack}] totals across queues
  spark: new Map(),      // queue name -> recent publish rates
  rates: new Map(),      // queue name -> {publish, deliver, ack}
  peek: null,            // queue shown in the peek panel
  timer: null,
  polling: false,        // a poll is in flight
  again: false,          // poll once more when it ends (an action changed something)
  onPlugins: [],         // called with each poll's plugin list (actions.js's type list)
};

// ---- small helpers -------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";
function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const child of children.flat()) if (child) node.append(child);
  return node;
}

const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;
// The vhost the page shows (`?vhost=` in its own URL); every API call names it.
const VHOST = new URLSearchParams(window.location.search).get("vhost") || "/";
const inVhost = (path) => `${path}${path.includes("?") ? "&" : "?"}vhost=${enc(VHOST)}`;
const fmt = (n) => (n === undefined || n === null ? "–" : Number(n).toLocaleString("en-US"));
function fmtRate(r) {
  if (!r) return "0";
  return r < 10 ? r.toFixed(1) : Math.round(r).toLocaleString("en-US");
}
function ago(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

async function api(path, options) {
  const response = await fetch(inVhost(path), options);
  // The session ended (expired, or logged out elsewhere): back to the login form.
  if (response.status === 401) window.location.assign("/login");
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const e = body.error || {};
    throw new Error(e.code ? `${e.code}: ${e.message}` : `HTTP ${response.status}`);
  }
  return body;
}

function toast(text, bad) {
  const t = $("toast");
  t.textContent = text;
  t.className = bad ? "toast bad" : "toast";
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (t.hidden = true), 3500);
}

function bodyText(message) {
  if (typeof message.body === "string") return message.body;
  if (message.body_base64) return `base64: ${message.body_base64}`;
  return "";
}

// ---- polling -------------------------------------------------------------------------

async function poll() {
  if (state.polling) {
    state.again = true;
    return;
  }
  state.polling = true;
  clearTimeout(state.timer);
  try {
    const [queues, exchanges, bindings, plugins, connections, ready] = await Promise.all([
      api("/api/queues"),
      api("/api/exchanges"),
      api("/api/bindings"),
      api("/api/plugins"),
      api("/api/connections"),
      fetch("/readyz").then((r) => r.json()).catch(() => null),
    ]);
    const dlqs = queues.queues.filter((q) => q.queue.endsWith(".dlq"));
    const dlqMessages = await Promise.all(
      dlqs.map((q) =>
        api(`/api/queues/${enc(q.queue)}/messages?limit=${DLQ_PEEK}`)
          .then((r) => r.messages)
          .catch(() => []),
      ),
    );
    let peeked = null;
    if (state.peek) {
      peeked = await api(`/api/queues/${enc(state.peek)}/messages?limit=50`).catch((e) => e);
    }
    updateRates(queues.queues);
    renderStatus(ready);
    renderTiles(queues.queues, connections.connections);
    renderChart();
    renderQueues(queues.queues);
    renderDlqs(dlqs, dlqMessages);
    renderGraph(exchanges.exchanges, bindings.bindings, exchanges.unrestored || []);
    renderPlugins(plugins.plugins);
    renderConnections(connections.connections);
    renderPeek(peeked);
  } catch (e) {
    renderStatus(null, `unreachable (${e.message})`);
  }
  state.polling = false;
  if (state.again) {
    state.again = false;
    poll();
  } else {
    state.timer = setTimeout(poll, POLL_MS);
  }
}

function updateRates(queues) {
  const now = Date.now();
  // An extra poll right after an action: too short an interval for a steady rate.
  if (state.prev && now - state.prevAt < 1000) return;
  const current = new Map(queues.map((q) => [q.queue, q]));
  const dt = (now - state.prevAt) / 1000;
  const total = { t: now, publish: 0, deliver: 0, ack: 0 };
  state.rates = new Map();
  for (const q of queues) {
    const before = state.prev && state.prev.get(q.queue);
    const rate = (field) => {
      if (!before || dt <= 0) return 0;
      const d = q[field] - before[field];
      return d > 0 ? d / dt : 0; // a restart resets the counters
    };
    const r = { publish: rate("published"), deliver: rate("delivered"), ack: rate("acked") };
    state.rates.set(q.queue, r);
    total.publish += r.publish;
    total.deliver += r.deliver;
    total.ack += r.ack;
    const spark = state.spark.get(q.queue) || [];
    if (state.prev) spark.push(r.publish + r.deliver);
    while (spark.length > SPARK_POINTS) spark.shift();
    state.spark.set(q.queue, spark);
  }
  for (const name of [...state.spark.keys()]) if (!current.has(name)) state.spark.delete(name);
  if (state.prev) state.history.push(total);
  while (state.history.length && state.history[0].t < now - HISTORY_MS) state.history.shift();
  state.prev = current;
  state.prevAt = now;
}

// ---- rendering -----------------------------------------------------------------------

function renderStatus(ready, problem) {
  const box = $("status");
  if (problem) {
    box.className = "status bad";
    $("status-text").textContent = problem;
  } else if (ready && ready.ready) {
    box.className = "status ok";
    $("status-text").textContent = "ready";
  } else {
    box.className = "status bad";
    const failing = ready
      ? Object.entries(ready.checks).filter(([, c]) => !c.ok).map(([n, c]) => `${n}: ${c.detail}`)
      : ["readiness unknown"];
    $("status-text").textContent = `not ready — ${failing.join("; ")}`;
  }
}

function renderTiles(queues, connections) {
  const sum = (f) => queues.reduce((n, q) => n + (q[f] || 0), 0);
  const last = state.history[state.history.length - 1] || { publish: 0, deliver: 0 };
  $("t-queues").textContent = fmt(queues.length);
  $("t-ready").textContent = fmt(sum("ready"));
  $("t-unacked").textContent = fmt(sum("unacked"));
  $("t-publish").textContent = fmtRate(last.publish);
  $("t-deliver").textContent = fmtRate(last.deliver);
  $("t-conns").textContent = fmt(connections.length);
  const dead = queues.filter((q) => q.queue.endsWith(".dlq")).reduce((n, q) => n + q.ready, 0);
  $("t-dead").textContent = fmt(dead);
  $("t-dead").classList.toggle("bad", dead > 0);
}

function renderChart() {
  const canvas = $("rates");
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  g.clearRect(0, 0, width, height);
  const pad = { l: 48, r: 10, t: 10, b: 22 };
  const w = width - pad.l - pad.r;
  const h = height - pad.t - pad.b;
  const now = Date.now();
  const series = ["publish", "deliver", "ack"];
  const max = niceMax(Math.max(1, ...state.history.flatMap((p) => series.map((s) => p[s]))));
  const styles = getComputedStyle(document.documentElement);
  g.font = "11px system-ui, sans-serif";
  g.fillStyle = "#6b7487";
  g.strokeStyle = "#e3e7ee";
  g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = pad.t + h - (h * i) / 4;
    g.beginPath();
    g.moveTo(pad.l, Math.round(y) + 0.5);
    g.lineTo(pad.l + w, Math.round(y) + 0.5);
    g.stroke();
    g.textAlign = "right";
    g.textBaseline = "middle";
    g.fillText(fmtRate((max * i) / 4), pad.l - 6, y);
  }
  g.textAlign = "center";
  g.textBaseline = "top";
  for (let m = 0; m <= 10; m += 2) {
    const x = pad.l + w - (w * m) / 10;
    g.fillText(m === 0 ? "now" : `-${m}m`, x, pad.t + h + 6);
  }
  const x = (t) => pad.l + w - (w * (now - t)) / HISTORY_MS;
  const y = (v) => pad.t + h - (h * v) / max;
  for (const s of series) {
    if (state.history.length < 2) break;
    g.strokeStyle = styles.getPropertyValue(`--${s}`).trim();
    g.lineWidth = 2;
    g.lineJoin = "round";
    g.beginPath();
    state.history.forEach((p, i) => (i ? g.lineTo(x(p.t), y(p[s])) : g.moveTo(x(p.t), y(p[s]))));
    g.stroke();
  }
  canvas.dataset.points = state.history.length;
  if (state.history.length < 2) {
    g.textAlign = "center";
    g.textBaseline = "middle";
    g.fillText("collecting…", pad.l + w / 2, pad.t + h / 2);
  }
}

function niceMax(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function sparkline(values) {
  const w = 90, h = 22;
  const max = Math.max(1, ...values);
  // Newest point at the right edge, so a young queue's line grows leftwards.
  const step = w / (SPARK_POINTS - 1);
  const points = values
    .map((v, i) => `${w - (values.length - 1 - i) * step},${h - 2 - ((h - 4) * v) / max}`)
    .join(" ");
  return svg("svg", { width: w, height: h, class: "spark", viewBox: `0 0 ${w} ${h}` },
    values.length > 1
      ? svg("polyline", { points, fill: "none", stroke: "#3461d6", "stroke-width": "1.5" })
      : null);
}

function renderQueues(queues) {
  const body = document.querySelector("#queues tbody");
  body.replaceChildren(
    ...queues.map((q) => {
      const r = state.rates.get(q.queue) || {};
      const tags = [
        q.durable ? null : el("span", { class: "tag", text: "transient" }),
        q.exclusive ? el("span", { class: "tag", text: "exclusive" }) : null,
        q.queue.endsWith(".dlq") ? el("span", { class: "tag bad", text: "DLQ" }) : null,
        q.paged_out > 0
          ? el("span", { class: "tag", title: "ready messages whose body is only on disk (past max_in_memory_length)", text: `${fmt(q.paged_out)} on disk` })
          : null,
      ];
      return el("tr", { "data-queue": q.queue },
        el("td", { class: "name" }, q.queue, tags),
        el("td", { class: "num", "data-field": "ready", text: fmt(q.ready) }),
        el("td", { class: "num", text: fmt(q.unacked) }),
        el("td", { class: "num", text: fmt(q.delayed) }),
        el("td", { class: "num", text: fmt(q.consumers) }),
        el("td", { class: "num", text: fmtRate(r.publish) }),
        el("td", { class: "num", text: fmtRate(r.deliver) }),
        el("td", { class: "num", text: fmtRate(r.ack) }),
        el("td", {}, sparkline(state.spark.get(q.queue) || [])),
        el("td", { class: "num", text: fmt(q.dead_lettered) }),
        el("td", { class: "num" },
          el("button", { class: "btn", "data-peek": q.queue, onclick: () => openPeek(q.queue) }, "Peek"),
          el("button", { class: "btn danger", "data-purge": q.queue, onclick: () => purge(q.queue) }, "Purge")),
      );
    }),
  );
  $("queues-empty").hidden = queues.length > 0;
  $("queues-note").textContent = queues.length ? `${queues.length} queue${queues.length > 1 ? "s" : ""}` : "";
}

function deathOf(message) {
  const records = message.headers && message.headers["x-death"];
  return Array.isArray(records) && records.length ? records[0] : null;
}

function renderDlqs(dlqs, messages) {
  const box = $("dlqs");
  const shown = dlqs.filter((q) => q.ready > 0);
  box.replaceChildren(
    ...shown.map((q, i) => {
      const list = messages[i] || [];
      return el("div", { class: "dlq", "data-dlq": q.queue },
        el("div", { class: "dlq-head" },
          el("span", {}, el("span", { class: "name", text: q.queue }),
            el("span", { class: "tag bad", "data-field": "count", text: `${fmt(q.ready)} message${q.ready === 1 ? "" : "s"}` })),
          el("button", {
            class: "btn primary", "data-requeue-all": q.queue,
            onclick: () => requeue(q.queue, null),
          }, "Requeue all")),
        list.map((m) => messageRow(m, q.queue)),
        q.ready > list.length ? el("div", { class: "empty", text: `… and ${fmt(q.ready - list.length)} more` }) : null,
      );
    }),
  );
  $("dlqs-empty").hidden = shown.length > 0;
}

function messageRow(peeked, dlq) {
  const m = peeked.message;
  const id = m.properties && m.properties.message_id;
  const death = deathOf(m);
  return el("div", { class: "msg", "data-message-id": id || "" },
    el("div", { class: "meta" },
      death ? el("span", { class: "reason", text: death.reason }) : null,
      el("div", {}, "from ", el("b", { text: death ? death.queue : m.routing_key })),
      death && death.time ? el("div", { text: ago(death.time) }) : null),
    el("div", { class: "meta" },
      el("div", {}, "id ", el("b", { text: id || "—" })),
      death
        ? el("div", { text: `dead-lettered ${death.count || 1}×` })
        : el("div", { text: `delivered ${peeked.delivery_count}×` })),
    el("div", { class: "body", text: bodyText(m) }),
    dlq && id
      ? el("button", { class: "btn", "data-requeue": id, onclick: () => requeue(dlq, id) }, "Requeue")
      : el("span"),
  );
}

function renderGraph(exchanges, bindings, unrestored) {
  const box = $("graph");
  const named = exchanges.filter((x) => x.exchange !== "");
  const defaultX = exchanges.find((x) => x.exchange === "");
  $("graph-note").textContent = defaultX
    ? `default exchange: ${fmt(defaultX.routed)} routed, ${fmt(defaultX.unroutable)} unroutable`
    : "";
  if (!named.length) {
    box.replaceChildren(el("div", { class: "empty" },
      "Only the default exchange (routing key = queue name). Try ",
      el("code", { text: "broker declare exchange events --type topic" })));
    if (unrestored.length) {
      box.append(el("div", { class: "empty", text: `Waiting for plugin: ${unrestored.join(", ")}` }));
    }
    return;
  }
  const queues = [...new Set(bindings.map((b) => b.queue))].sort();
  const rowH = 46, nodeH = 36, top = 8;
  const rows = Math.max(named.length, queues.length, 1);
  const width = Math.max(520, box.clientWidth || 620);
  const height = top * 2 + rows * rowH;
  const xw = 200, qw = 180;
  const qx = width - qw - 2;
  const yOf = (i, n) => top + ((rows - n) * rowH) / 2 + i * rowH;
  const xPos = new Map(named.map((x, i) => [x.exchange, yOf(i, named.length)]));
  const qPos = new Map(queues.map((q, i) => [q, yOf(i, queues.length)]));
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, height });
  for (const b of bindings) {
    if (!xPos.has(b.exchange)) continue;
    const y1 = xPos.get(b.exchange) + nodeH / 2, y2 = qPos.get(b.queue) + nodeH / 2;
    const x1 = xw + 2, x2 = qx, mid = (x1 + x2) / 2;
    root.append(svg("path", { class: "edge", d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}` }));
    const label = b.key || (Object.keys(b.arguments || {}).length ? JSON.stringify(b.arguments) : "");
    if (label) {
      const lx = mid, ly = (y1 + y2) / 2 - 4;
      root.append(svg("text", { class: "key", x: lx, y: ly, "text-anchor": "middle", text: label }));
    }
  }
  for (const x of named) {
    const y = xPos.get(x.exchange);
    root.append(svg("g", { class: `node exchange${x.quarantined ? " quarantined" : ""}`, "data-exchange": x.exchange },
      svg("rect", { x: 2, y, width: xw, height: nodeH, rx: 7 }),
      svg("text", { x: 12, y: y + 15, text: x.exchange }),
      svg("text", { class: "small", x: 12, y: y + 29,
        text: `${x.type}${x.quarantined ? " · quarantined" : ""} · ${fmt(x.routed)} routed · ${fmt(x.unroutable)} lost` })));
  }
  for (const q of queues) {
    const y = qPos.get(q);
    root.append(svg("g", { class: "node" },
      svg("rect", { x: qx, y, width: qw, height: nodeH, rx: 7 }),
      svg("text", { x: qx + 10, y: y + 22, text: q })));
  }
  box.replaceChildren(root);
  if (unrestored.length) {
    box.append(el("div", { class: "empty", text: `Waiting for plugin: ${unrestored.join(", ")}` }));
  }
}

function renderConnections(connections) {
  const body = document.querySelector("#connections tbody");
  body.replaceChildren(
    ...connections.map((c) =>
      el("tr", {},
        el("td", { text: c.conn }),
        el("td", { class: "name", text: c.protocol === "amqp" ? `${c.peer} (AMQP, ${c.channels} channels)` : c.peer }),
        el("td", { text: ago(c.opened_at) }),
        el("td", {}, c.confirms ? el("span", { class: "tag good", text: "on" }) : el("span", { class: "tag", text: "off" })),
        el("td", { class: "name", text: c.consumers.map((s) => `${s.queue} (${s.consumer_tag})`).join(", ") || "—" }),
        el("td", { class: "num", text: fmt(c.unacked) }))),
  );
  $("connections-empty").hidden = connections.length > 0;
}

function renderPeek(peeked) {
  const card = $("peek-card");
  if (!state.peek) {
    card.hidden = true;
    return;
  }
  card.hidden = false;
  $("peek-queue").textContent = state.peek;
  const body = $("peek-body");
  if (peeked instanceof Error) {
    body.replaceChildren(el("div", { class: "empty", text: peeked.message }));
  } else if (peeked && peeked.messages.length === 0) {
    body.replaceChildren(el("div", { class: "empty", text: "No ready messages." }));
  } else if (peeked) {
    const dlq = state.peek.endsWith(".dlq") ? state.peek : null;
    body.replaceChildren(...peeked.messages.map((m) => messageRow(m, dlq)));
  }
}

// ---- actions -------------------------------------------------------------------------

function openPeek(queue) {
  state.peek = queue;
  poll();
  $("peek-card").scrollIntoView({ behavior: "smooth", block: "nearest" });
}

async function purge(queue) {
  if (!window.confirm(`Remove every ready message from ${queue}?`)) return;
  try {
    const r = await api(`/api/queues/${enc(queue)}/purge`, { method: "POST" });
    toast(`Purged ${fmt(r.messages)} message(s) from ${queue}`);
  } catch (e) {
    toast(e.message, true);
  }
  poll();
}

async function requeue(dlq, messageId) {
  const body = messageId ? JSON.stringify({ message_id: messageId }) : "{}";
  try {
    const r = await api(`/api/queues/${enc(dlq)}/requeue`, {
      method: "POST", headers: { "content-type": "application/json" }, body,
    });
    toast(r.moved ? `Moved ${fmt(r.moved)} message(s) back to their queue` : "Nothing moved (original queue gone?)", !r.moved);
  } catch (e) {
    toast(e.message, true);
  }
  poll();
}

$("peek-close").addEventListener("click", () => {
  state.peek = null;
  $("peek-card").hidden = true;
});
window.addEventListener("resize", renderChart);

// The vhosts to choose from (administrators may list them; others see their own).
async function loadVhosts() {
  const names = await api("/api/vhosts")
    .then((r) => r.vhosts.map((v) => v.vhost))
    .catch(() => []);
  if (!names.includes(VHOST)) names.push(VHOST);
  const select = $("vhost");
  select.replaceChildren(...names.sort().map((name) => {
    const option = document.createElement("option");
    option.value = name;
    option.textContent = name;
    option.selected = name === VHOST;
    return option;
  }));
  select.addEventListener("change", () => {
    window.location.search = `?vhost=${enc(select.value)}`;
  });
}
// The broker keeps the last minutes of rates: the chart starts from them.
async function seedRates() {
  const rates = await api("/api/rates").catch(() => ({ samples: [], interval_ms: 1 }));
  const per = (count) => count / (rates.interval_ms / 1000);
  const seeded = rates.samples.map((r) => ({ t: r.t, publish: per(r.published), deliver: per(r.delivered), ack: per(r.acked) }));
  state.history = seeded.filter((p) => p.t >= Date.now() - HISTORY_MS);
  $("rates").dataset.seeded = state.history.length;
}

// Once every script has run (plugins.js draws the plugin table the first poll fills).
document.addEventListener("DOMContentLoaded", () => {
  loadVhosts();
  seedRates().finally(poll);
});
