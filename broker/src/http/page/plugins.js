// The management page's plugins: their table, deploying a version from a file (made
// active, or on trial as a shadow or a canary), rolling back, and for a version on trial
// promoting it, dropping it and the shadow report (`GET /api/plugins/{name}/shadow`).
// Each action is one call to the HTTP API (docs/http.md). Uses app.js's helpers (el, api,
// toast, poll, state) and actions.js's onSubmit.
"use strict";

// The plugin whose shadow report is open (refreshed at every poll), if any.
let shadowShown = null;

function renderPlugins(plugins) {
  const body = document.querySelector("#plugins tbody");
  body.replaceChildren(...plugins.map(pluginRow));
  for (const listener of state.onPlugins) listener(plugins);
  refreshShadow(plugins);
}

function pluginRow(p) {
  const s = p.stats || {};
  // An upper bound: the top of the histogram bucket holding the 99th percentile.
  const us = p.p99_call_us;
  const p99 = us == null ? "–" : `${us < 10 ? us.toFixed(1) : Math.round(us)} µs`;
  // Messages per version since the broker started, e.g. "v1 10 · v2 5".
  const byVersion = (p.versions || [])
    .filter((v) => v.version > 0)
    .map((v) => `v${v.version} ${fmt(v.messages)}`)
    .join(" · ");
  const version = p.active_version
    ? el("span", {}, `v${p.active_version}`, p.hash ? el("span", { class: "tag mono", text: p.hash.slice(0, 8) }) : null,
      byVersion ? el("div", { class: "small muted", text: byVersion }) : null)
    : el("span", { class: "tag", text: p.bundled ? "bundled" : "from file" });
  return el("tr", { "data-plugin": p.name },
    el("td", { class: "name" }, p.name, p.kind === "handler" ? el("span", { class: "tag", text: "handler" }) : null),
    el("td", {}, version, p.trial ? trialTag(p.trial) : null),
    el("td", { class: "num", text: fmt(s.calls) }),
    el("td", { class: "num" }, s.errors ? el("span", { class: "tag bad", text: fmt(s.errors) }) : "0"),
    el("td", { class: "num", text: fmt(s.traps) }),
    el("td", { class: "num", text: fmt(s.timeouts) }),
    el("td", { class: "num", text: p99 }),
    el("td", { class: "plugin-actions" }, pluginActions(p)));
}

const trialText = (t) => (t.mode === "canary" ? `canary ${t.percent}%` : "shadow");

// The version on trial next to the active one, e.g. "v3 canary 10%".
function trialTag(trial) {
  return el("div", {
    class: "trial",
    "data-trial-version": trial.version,
    "data-trial-mode": trial.mode,
    "data-trial-percent": trial.percent,
  }, el("span", { class: "tag warn", text: `v${trial.version} ${trialText(trial)}` }));
}

// With a trial: promote it, drop it, see its report (a rollback would drop it too, so
// Roll back is not offered then). Without: roll back when there is an earlier version
// (bundled types have no versions; a pruned history refuses, saying so).
function pluginActions(p) {
  if (p.trial) {
    return [
      el("button", { class: "btn primary", "data-promote": p.name, onclick: () => promote(p.name, p.trial) }, "Promote"),
      el("button", { class: "btn danger", "data-drop": p.name, onclick: () => dropTrial(p.name, p.trial) }, "Drop"),
      el("button", { class: "btn", "data-shadow-report": p.name, onclick: () => openShadow(p.name) }, "Report"),
    ];
  }
  if (p.active_version > 1) {
    return el("button", { class: "btn", "data-rollback": p.name, onclick: () => rollBack(p.name) }, "Roll back");
  }
  return null;
}

// Runs one plugin action after the operator confirms it; an error becomes a red toast.
async function pluginAction(question, action) {
  if (!window.confirm(question)) return;
  try {
    await action();
  } catch (e) {
    toast(e.message, true);
  }
  poll();
}

const post = (path) => api(path, { method: "POST", headers: JSON_BODY, body: "{}" });

const rollBack = (name) =>
  pluginAction(`Roll ${name} back to its previous version?`, async () => {
    const r = await post(`/api/plugins/${enc(name)}/rollback`);
    toast(`${name}: version ${r.version} active again`);
  });

const promote = (name, trial) =>
  pluginAction(`Make ${name} version ${trial.version} (${trialText(trial)}) the active version?`, async () => {
    const r = await post(`/api/plugins/${enc(name)}/promote`);
    toast(`${name}: version ${r.version} promoted, now active`);
  });

// `rollback` without a version drops the trial; the active version stays.
const dropTrial = (name, trial) =>
  pluginAction(`Drop ${name} version ${trial.version} (${trialText(trial)})?`, async () => {
    const r = await post(`/api/plugins/${enc(name)}/rollback`);
    toast(`${name}: dropped version ${r.dropped}; version ${r.version} stays active`);
  });

// The deploy form's mode: made active, or on trial as a shadow or a canary. Automatic
// rollback is for a version made active, the percent for a canary only.
function deployQuery(f) {
  const mode = f.mode.value;
  if (mode === "shadow") return "?shadow=true";
  if (mode === "canary") return `?canary=${enc(f.canary.value.trim())}`;
  return f.auto_rollback.checked ? "?auto_rollback=true" : "";
}

function showDeployMode() {
  const f = $("deploy").elements;
  f.auto_rollback.disabled = f.mode.value !== "normal";
  f.canary.disabled = f.mode.value !== "canary";
}
$("deploy").addEventListener("change", showDeployMode);
showDeployMode();

// Uploads the chosen .wasm as the plugin's next version; the broker validates it and
// keeps the active version (and any trial) when it refuses.
onSubmit("deploy", async (f) => {
  const name = f.name.value.trim();
  const file = f.file.files[0];
  if (!file) throw new Error("choose a .wasm file");
  const r = await api(`/api/plugins/${enc(name)}/versions${deployQuery(f)}`, {
    method: "POST",
    headers: { "content-type": "application/wasm" },
    body: await file.arrayBuffer(),
  });
  if (r.trial) toast(`Deployed ${name} version ${r.version} as ${trialText(r.trial)} next to version ${r.active_version}`);
  else toast(r.unchanged ? `${name}: these bytes are already version ${r.version}` : `Deployed ${name} version ${r.version}`);
});

// ---- the shadow report ---------------------------------------------------------------

function openShadow(name) {
  shadowShown = name;
  poll();
  $("shadow-card").scrollIntoView({ behavior: "smooth", block: "nearest" });
}

$("shadow-close").addEventListener("click", () => {
  shadowShown = null;
  $("shadow-card").hidden = true;
});

async function refreshShadow(plugins) {
  const card = $("shadow-card");
  // Closed, or its plugin gone: nothing to show.
  if (!shadowShown || !plugins.some((p) => p.name === shadowShown)) {
    card.hidden = true;
    return;
  }
  const name = shadowShown;
  const report = await api(`/api/plugins/${enc(name)}/shadow`).catch((e) => e);
  if (shadowShown !== name) return;
  card.hidden = false;
  $("shadow-plugin").textContent = name;
  $("shadow-body").replaceChildren(...shadowReport(report));
}

function shadowReport(r) {
  if (r instanceof Error) return [el("div", { class: "empty", text: r.message })];
  if (!r.trial) {
    return [el("div", { class: "empty", text: `No version on trial (version ${r.active_version} is active).` })];
  }
  const count = (field, label) =>
    el("span", { class: "count" }, `${label} `, el("b", { "data-field": field, text: fmt(r[field]) }));
  const counts = r.trial.mode === "shadow"
    ? [count("compared", "compared"), count("differed", "routed differently"),
      count("shadow_failures", "failures"), count("shadow_skipped", "skipped")]
    : [count("canary_messages", "routed by the canary"), count("canary_errors", "failures")];
  return [
    el("div", { class: "result", "data-trial-version": r.trial.version },
      `version ${r.trial.version} (${trialText(r.trial)}) next to active version ${r.active_version}: `, counts,
      r.failing ? el("span", { class: "tag bad", text: `failing: ${r.failing}` }) : null),
    r.examples.length
      ? el("table", { class: "grid examples" },
        el("thead", {}, el("tr", {}, ["At", "Exchange", "Routing key", "Headers", "Active", "Trial"]
          .map((h) => el("th", { text: h })))),
        el("tbody", {}, r.examples.map(exampleRow)))
      : el("div", { class: "empty", text: "No differences yet." }),
  ];
}

// One message the versions routed differently (or the trial failed on).
function exampleRow(x) {
  const headers = x.headers && Object.keys(x.headers).length ? JSON.stringify(x.headers) : "";
  return el("tr", { "data-example": x.routing_key },
    el("td", { text: new Date(x.at).toISOString().slice(11, 19) }),
    el("td", { class: "name", text: x.exchange }),
    el("td", { class: "mono", text: x.routing_key }),
    el("td", { class: "mono", text: headers }),
    el("td", { "data-outcome": "active", text: outcome(x.active) }),
    el("td", { "data-outcome": "shadow", text: outcome(x.shadow) }));
}

// "a (key a), b (key b)", "none", or the failure.
function outcome(o) {
  if (!o) return "–";
  if (o.error) return `failed: ${o.error}`;
  const queues = (o.bindings || []).map((b) => `${b.queue == null ? "(binding removed)" : b.queue} (${b.key})`);
  return queues.join(", ") || "none";
}
