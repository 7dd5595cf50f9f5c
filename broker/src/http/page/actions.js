// The management page's actions: the forms that declare, bind, publish, get, delete, and
// show where a message would go (deploying and rolling back plugins: plugins.js). Each
// is one call to the HTTP API (docs/http.md); the page polls again after it. Uses app.js's
// helpers (el, api, toast, poll, state).
"use strict";

const JSON_BODY = { "content-type": "application/json" };

// Runs `action` for the form's submit, with its button disabled meanwhile; a thrown
// error becomes a red toast.
function onSubmit(id, action) {
  const form = $(id);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      await action(form.elements, form);
    } catch (e) {
      toast(e.message, true);
    }
    button.disabled = false;
    poll();
  });
}

// A JSON object typed into a field (empty: none).
function jsonField(input) {
  const text = input.value.trim();
  if (!text) return undefined;
  let value;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new Error(`${input.name}: not JSON (${e.message})`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new Error(`${input.name}: a JSON object, e.g. {"name": "value"}`);
  }
  return value;
}

const send = (method, path, body) =>
  api(path, { method, headers: JSON_BODY, body: body === undefined ? undefined : JSON.stringify(body) });

// The path name of an exchange: the default one is `amq.default`, as in RabbitMQ's API.
const exchangePath = (name) => enc(name.trim() || "amq.default");

onSubmit("declare-queue", async (f) => {
  const name = f.queue.value.trim();
  await send("PUT", `/api/queues/${enc(name)}`, { durable: f.durable.checked });
  toast(`Declared queue ${name}`);
});

onSubmit("declare-exchange", async (f) => {
  const name = f.exchange.value.trim();
  await send("PUT", `/api/exchanges/${enc(name)}`, { type: f.type.value, durable: f.durable.checked });
  toast(`Declared exchange ${name} (${f.type.value})`);
});

onSubmit("bind", async (f) => {
  const binding = { exchange: f.exchange.value.trim(), queue: f.queue.value.trim(), key: f.key.value };
  const args = jsonField(f.arguments);
  if (args) binding.arguments = args;
  await send("POST", "/api/bindings", binding);
  toast(`Bound ${binding.queue} to ${binding.exchange}${binding.key ? ` with ${binding.key}` : ""}`);
});

onSubmit("publish", async (f) => {
  const message = {
    routing_key: f.routing_key.value,
    body: f.body.value,
    properties: { persistent: f.persistent.checked },
  };
  const headers = jsonField(f.headers);
  if (headers) message.headers = headers;
  const r = await send("POST", `/api/exchanges/${exchangePath(f.exchange.value)}/publish`, message);
  const result = $("publish-result");
  result.textContent = r.routed ? "routed and stored" : "not routed: no queue took it";
  result.dataset.routed = r.routed;
  toast(r.routed ? "Published" : "Published, but no queue took it", !r.routed);
});

onSubmit("get", async (f) => {
  const queue = f.queue.value.trim();
  const requeue = f.mode.value === "requeue";
  const r = await send("POST", `/api/queues/${enc(queue)}/get`, { count: Number(f.count.value) || 1, requeue });
  const rows = r.messages.map((d) =>
    el("div", { class: "msg", "data-got": d.delivery_tag },
      el("div", { class: "meta" }, "key ", el("b", { text: d.message.routing_key || "—" }),
        d.redelivered ? el("div", { text: "redelivered" }) : null),
      el("div", { class: "meta" }, "exchange ", el("b", { text: d.message.exchange || "(default)" })),
      el("div", { class: "body", text: bodyText(d.message) })));
  const what = requeue ? "put back" : "acked (removed)";
  $("get-result").replaceChildren(
    el("div", { class: "card-head" },
      el("h2", { text: `Got ${r.messages.length} from ${queue}, ${what}; ${fmt(r.message_count)} ready` }),
      el("button", { class: "btn ghost", onclick: () => $("get-result").replaceChildren() }, "Close")),
    ...(rows.length ? rows : [el("div", { class: "empty", text: "No ready messages." })]));
});

onSubmit("delete", async (f) => {
  const name = f.name.value.trim();
  const kind = f.kind.value === "queues" ? "queue" : "exchange";
  if (!window.confirm(`Delete ${kind} ${name}?`)) return;
  await send("DELETE", `/api/${f.kind.value}/${enc(name)}`);
  toast(`Deleted ${kind} ${name}`);
});

onSubmit("route", async (f) => {
  const message = { routing_key: f.routing_key.value, body: f.body.value };
  const headers = jsonField(f.headers);
  if (headers) message.headers = headers;
  const r = await send("POST", `/api/exchanges/${exchangePath(f.exchange.value)}/route`, message);
  const decider = r.plugin_version == null ? "the broker (default exchange)" : `${r.type} version ${r.plugin_version}`;
  const bindings = r.bindings.map((b) => `${b.key || JSON.stringify(b.arguments)} → ${b.queue}`);
  const result = $("route-result");
  result.dataset.version = r.plugin_version == null ? "" : r.plugin_version;
  result.dataset.queues = r.queues.join(",");
  result.replaceChildren(
    el("div", {}, "routed by ", el("b", { text: decider })),
    el("div", {}, "matching bindings: ", el("b", { text: bindings.join(", ") || "none" })),
    el("div", {}, "queues: ", el("b", { text: r.queues.join(", ") || "none (unroutable)" })));
});

// The exchange types to declare: every deployed or bundled exchange plugin.
state.onPlugins.push((plugins) => {
  const select = $("declare-exchange").elements.type;
  const types = plugins.filter((p) => p.kind !== "handler").map((p) => p.name).sort();
  const shown = [...select.options].map((o) => o.value);
  if (types.join() === shown.join()) return;
  const chosen = select.value || "direct";
  select.replaceChildren(...types.map((t) => el("option", { value: t, selected: t === chosen, text: t })));
});
