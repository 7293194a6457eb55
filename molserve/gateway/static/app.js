// molserve web page: plain JavaScript against the public HTTP API (no build step, no CDN).
"use strict";

const $ = (selector) => document.querySelector(selector);
const state = { endpoints: [], results: null, names: [] };
const BATCH = 500;

function escapeHtml(text) {
  return String(text ?? "").replace(/[&<>"']/g, (c) => ({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
  })[c]);
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) {
    throw new Error((body && body.message) || `HTTP ${response.status}`);
  }
  return body;
}

// Tabs ----------------------------------------------------------------------------------
document.querySelectorAll(".tab").forEach((button) => {
  button.addEventListener("click", () => {
    document.querySelectorAll(".tab").forEach((b) => b.classList.toggle("active", b === button));
    document.querySelectorAll(".panel").forEach((p) => p.classList.toggle("active", p.id === button.dataset.tab));
    if (button.dataset.tab === "models") renderModels();
    if (button.dataset.tab === "jobs") refreshJobs();
  });
});

// Endpoints and tier health ------------------------------------------------------------
async function loadEndpoints() {
  const previous = new Set(selectedEndpoints());
  state.endpoints = await api("/v1/endpoints");
  const defaults = previous.size ? previous : new Set(["solubility", "bbb_penetration", "logp_crippen", "tpsa"]);
  const row = (e) => {
    const available = !e.status || e.status === "available";
    const note = available ? (e.kind === "computed" ? "computed" : e.units)
      : `${e.status} ${Math.round((e.progress || 0) * 100)}%`;
    const title = [e.description, e.tdc_dataset ? `TDC ${e.tdc_dataset}` : e.source].filter(Boolean).join(" · ");
    return `<label title="${escapeHtml(title)}" class="${available ? "" : "pending"}">
      <input type="checkbox" value="${escapeHtml(e.name)}" ${available ? "" : "disabled"}
        ${available && defaults.has(e.name) ? "checked" : ""}>
      ${escapeHtml(e.name)} <span class="units">${escapeHtml(note)}</span>
    </label>`;
  };
  const predicted = state.endpoints.filter((e) => e.kind === "predicted");
  const computed = state.endpoints.filter((e) => e.kind === "computed");
  $("#endpoint-list").innerHTML =
    `<div class="group">Predicted (${predicted.length}) <button type="button" class="link" data-select="predicted">all</button>
       <button type="button" class="link" data-select="none">none</button></div>` +
    predicted.map(row).join("") + `<div class="group">Computed (${computed.length})</div>` + computed.map(row).join("");
  document.querySelectorAll("#endpoint-list [data-select]").forEach((button) => {
    button.addEventListener("click", () => {
      const on = button.dataset.select === "predicted";
      document.querySelectorAll("#endpoint-list input:not([disabled])").forEach((box) => {
        if (!on || predicted.some((e) => e.name === box.value)) box.checked = on;
      });
    });
  });
}

// While the start-up bootstrap trains the bundled endpoints, show its progress and add each
// endpoint as it becomes available.
let bootstrapDone = -1;
async function watchBootstrap() {
  let ready;
  try {
    const response = await fetch("/readyz");
    ready = await response.json();
  } catch (error) { return; }
  const b = ready.bootstrap;
  const banner = $("#bootstrap");
  if (!b || b.state !== "running") {
    banner.hidden = true;
    if (bootstrapDone >= 0) { bootstrapDone = -1; loadEndpoints(); }
    return;
  }
  const training = Object.entries(b.training).map(([n, t]) => `${n} ${Math.round(t.progress * 100)}%`).join(", ");
  banner.hidden = false;
  banner.textContent = `Training the bundled endpoints: ${b.done} of ${b.total} ready` +
    (training ? ` · now ${training}` : "") + ` · ${b.queued.length} queued`;
  if (b.done !== bootstrapDone) { bootstrapDone = b.done; loadEndpoints(); }
  setTimeout(watchBootstrap, 3000);
}

async function loadHealth() {
  try {
    const status = await api("/v1/status");
    const worker = (name) => {
      const tier = status[name];
      if (!tier || !tier.configured) return ` · no ${name} tier`;
      const healthy = tier.workers.filter((w) => w.breaker === "closed" && w.reachable).length;
      return ` · ${name}: ${tier.endpoints.length} models, workers healthy ${healthy}/${tier.workers.length}`;
    };
    $("#tier-health").textContent = `fast tier: ${status.fast.models.length} models` +
      worker("transformer") + worker("graph");
  } catch (error) {
    $("#tier-health").textContent = `status unavailable: ${error.message}`;
  }
}

// Predict -------------------------------------------------------------------------------
function parseTable(text) {
  const lines = text.split(/\r?\n/).filter((l) => l.trim());
  if (!lines.length) return [];
  const delimiter = lines[0].split("\t").length > lines[0].split(",").length ? "\t" : ",";
  const header = lines[0].split(delimiter).map((h) => h.trim().toLowerCase());
  const column = header.indexOf("smiles");
  if (column < 0) return lines.map((l) => l.trim().split(/\s+/)[0]);
  return lines.slice(1).map((l) => (l.split(delimiter)[column] || "").trim());
}

async function moleculesFromInputs() {
  const file = $("#file").files[0];
  if (file) {
    if (/\.sdf$/i.test(file.name)) return { sdf: file };
    return { smiles: parseTable(await file.text()) };
  }
  return { smiles: $("#smiles").value.split(/\r?\n/).map((s) => s.trim()).filter(Boolean) };
}

function selectedEndpoints() {
  return [...document.querySelectorAll("#endpoint-list input:checked")].map((i) => i.value);
}

async function runPrediction() {
  const endpoints = selectedEndpoints();
  if (!endpoints.length) { $("#status").textContent = "Pick at least one endpoint."; return; }
  const input = await moleculesFromInputs();
  if (input.sdf) { await screenFile(input.sdf, endpoints); return; }
  const molecules = input.smiles;
  if (!molecules.length) { $("#status").textContent = "Paste SMILES or choose a file."; return; }
  $("#run").disabled = true;
  const results = [];
  try {
    for (let start = 0; start < molecules.length; start += BATCH) {
      $("#status").textContent = `Predicting ${Math.min(start + BATCH, molecules.length)} / ${molecules.length}…`;
      const body = await api("/v1/predict", {
        method: "POST", headers: { "content-type": "application/json" },
        body: JSON.stringify({ molecules: molecules.slice(start, start + BATCH), endpoints, tier: $("#tier").value }),
      });
      body.results.forEach((r) => results.push({ ...r, index: r.index + start }));
    }
    state.results = results;
    state.names = endpoints;
    renderResults();
    const invalid = results.filter((r) => r.error).length;
    $("#status").textContent = `${results.length} molecules, ${invalid} could not be read.`;
    $("#download").disabled = false;
  } catch (error) {
    $("#status").innerHTML = `<span class="error">${escapeHtml(error.message)}</span>`;
  } finally {
    $("#run").disabled = false;
  }
}

function answerCell(answer) {
  if (!answer) return "<td></td>";
  if (answer.error) return `<td class="error">${escapeHtml(answer.error)}</td>`;
  const prov = answer.provenance || {};
  let value = answer.value;
  if (Array.isArray(value)) {
    value = value.length ? value.map((a) => escapeHtml(`${a.catalog}: ${a.description}`)).join("<br>") : "none";
  } else if (typeof value === "number") {
    value = escapeHtml(value.toFixed(3));
  } else {
    value = escapeHtml(value);
  }
  const label = answer.label ? ` <span class="badge">${escapeHtml(answer.label)}</span>` : "";
  const interval = answer.uncertainty && answer.uncertainty.interval
    ? `<div class="interval">[${answer.uncertainty.interval.map((v) => v.toFixed(2)).join(", ")}]</div>` : "";
  const domain = answer.applicability_domain;
  const ood = domain && !domain.in_domain
    ? `<span class="badge ood" title="max similarity ${domain.max_similarity} to training; threshold ${domain.threshold}">out of domain</span>` : "";
  const degraded = prov.degraded
    ? `<span class="badge degraded" title="the preferred tier could not answer">degraded: ${escapeHtml(prov.degraded_reason)}</span>` : "";
  const units = answer.kind === "computed" ? "" : `<span class="units"> ${escapeHtml(answer.units)}</span>`;
  return `<td><span class="value">${value}</span>${units}${label}${interval}
    <div><span class="badge tier-${escapeHtml(prov.tier)}" title="${escapeHtml(prov.model_id)} v${escapeHtml(prov.version)}">${escapeHtml(prov.tier)}</span>${degraded}${ood}</div></td>`;
}

function renderResults() {
  const names = state.names;
  $("#results thead").innerHTML = `<tr><th>#</th><th>structure</th><th>SMILES</th>${names.map((n) => `<th>${escapeHtml(n)}</th>`).join("")}</tr>`;
  $("#results tbody").innerHTML = state.results.map((r) => {
    if (r.error) {
      return `<tr class="invalid"><td>${r.index + 1}</td><td></td><td class="smiles">${escapeHtml(r.input)}</td>
        <td colspan="${names.length}" class="error">${escapeHtml(r.error)}</td></tr>`;
    }
    const image = `<img alt="${escapeHtml(r.canonical_smiles)}" loading="lazy" src="/v1/depict?smiles=${encodeURIComponent(r.canonical_smiles)}">`;
    return `<tr><td>${r.index + 1}</td><td class="depiction">${image}</td><td class="smiles">${escapeHtml(r.canonical_smiles)}</td>
      ${names.map((n) => answerCell(r.predictions[n])).join("")}</tr>`;
  }).join("");
}

function csvField(value) {
  let text = value === null || value === undefined ? "" : String(value);
  // Text a spreadsheet would run as a formula is shown as text (numbers keep their sign).
  if (typeof value === "string" && /^[=+\-@\t\r]/.test(text)) text = `'${text}`;
  return /[",\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

function downloadCsv() {
  const names = state.names;
  const header = ["row", "input", "canonical_smiles", "error"];
  names.forEach((n) => header.push(n, `${n}_lower`, `${n}_upper`, `${n}_tier`, `${n}_degraded_reason`, `${n}_in_domain`));
  const lines = [header.join(",")];
  state.results.forEach((r) => {
    const row = [r.index, r.input, r.canonical_smiles, r.error];
    names.forEach((n) => {
      const a = r.predictions[n] || {};
      const interval = (a.uncertainty && a.uncertainty.interval) || [];
      const value = Array.isArray(a.value) ? a.value.map((x) => x.description).join("; ") : a.value;
      const prov = a.provenance || {};
      row.push(value, interval[0], interval[1], prov.tier, prov.degraded_reason,
        a.applicability_domain ? a.applicability_domain.in_domain : "");
    });
    lines.push(row.map(csvField).join(","));
  });
  const blob = new Blob([lines.join("\n") + "\n"], { type: "text/csv" });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = "molserve-predictions.csv";
  document.body.appendChild(link);
  link.click();
  link.remove();
}

// Uploads and jobs belong to the key that made them: the Jobs tab's key goes with every call.
function withKey(headers = {}) {
  const key = $("#train-key").value;
  return key ? { ...headers, "x-api-key": key } : headers;
}

async function uploadFile(file) {
  const form = new FormData();
  form.append("file", file);
  return api("/v1/uploads", { method: "POST", body: form, headers: withKey() });
}

async function downloadResult(url, id) {
  const response = await fetch(url, { headers: withKey() });
  if (!response.ok) return;
  const link = document.createElement("a");
  link.href = URL.createObjectURL(await response.blob());
  link.download = `molserve-${id}.csv`;
  document.body.appendChild(link);
  link.click();
  link.remove();
}

async function screenFile(file, endpoints) {
  $("#status").textContent = `Uploading ${file.name} for a screening job…`;
  const upload = await uploadFile(file);
  const job = await api("/v1/jobs", {
    method: "POST", headers: withKey({ "content-type": "application/json" }),
    body: JSON.stringify({ kind: "screen", upload_id: upload.upload_id, endpoints }),
  });
  $("#status").textContent = `SDF files run as a screening job (${job.id}); follow it on the Jobs tab.`;
  refreshJobs();
}

$("#run").addEventListener("click", runPrediction);
$("#download").addEventListener("click", downloadCsv);

// Models ----------------------------------------------------------------------------------
function scatterSvg(measured, predicted, units) {
  const all = measured.concat(predicted);
  const lo = Math.min(...all), hi = Math.max(...all), pad = (hi - lo) * 0.05 || 1;
  const a = lo - pad, b = hi + pad, size = 260, m = 34;
  const x = (v) => m + ((v - a) / (b - a)) * (size - 2 * m);
  const y = (v) => size - m - ((v - a) / (b - a)) * (size - 2 * m);
  const points = measured.map((v, i) => `<circle cx="${x(v).toFixed(1)}" cy="${y(predicted[i]).toFixed(1)}" r="2.6" fill="#2857c5" fill-opacity=".55"/>`).join("");
  return `<svg class="plot" viewBox="0 0 ${size} ${size}" role="img" aria-label="parity plot">
    <rect x="${m}" y="${m}" width="${size - 2 * m}" height="${size - 2 * m}" fill="none" stroke="#d9dee8"/>
    <line x1="${x(a)}" y1="${y(a)}" x2="${x(b)}" y2="${y(b)}" stroke="#5b6475" stroke-dasharray="4 3"/>
    ${points}
    <text x="${size / 2}" y="${size - 8}" font-size="10" text-anchor="middle">measured (${escapeHtml(units)})</text>
    <text x="10" y="${size / 2}" font-size="10" text-anchor="middle" transform="rotate(-90 10 ${size / 2})">predicted</text>
    <text x="${m}" y="${size - m + 12}" font-size="9">${a.toFixed(1)}</text>
    <text x="${size - m}" y="${size - m + 12}" font-size="9" text-anchor="end">${b.toFixed(1)}</text></svg>`;
}

function rocSvg(roc) {
  const size = 260, m = 34;
  const x = (v) => m + v * (size - 2 * m), y = (v) => size - m - v * (size - 2 * m);
  const path = roc.fpr.map((f, i) => `${i ? "L" : "M"}${x(f).toFixed(1)},${y(roc.tpr[i]).toFixed(1)}`).join(" ");
  return `<svg class="plot" viewBox="0 0 ${size} ${size}" role="img" aria-label="ROC curve">
    <rect x="${m}" y="${m}" width="${size - 2 * m}" height="${size - 2 * m}" fill="none" stroke="#d9dee8"/>
    <line x1="${x(0)}" y1="${y(0)}" x2="${x(1)}" y2="${y(1)}" stroke="#5b6475" stroke-dasharray="4 3"/>
    <path d="${path}" fill="none" stroke="#2857c5" stroke-width="2"/>
    <text x="${size / 2}" y="${size - 8}" font-size="10" text-anchor="middle">false positive rate</text>
    <text x="10" y="${size / 2}" font-size="10" text-anchor="middle" transform="rotate(-90 10 ${size / 2})">true positive rate</text></svg>`;
}

function metricList(metrics) {
  return Object.entries(metrics || {}).filter(([, v]) => typeof v === "number")
    .map(([k, v]) => `<dt>${escapeHtml(k)}</dt><dd>${Number.isInteger(v) ? v : v.toFixed(3)}</dd>`).join("");
}

// Each tier's held-out figure for the endpoint, side by side (every tier is tested on the fast
// model's test split, so the rows compare like with like); the row `auto` picks is marked.
function tierTable(e) {
  const rows = e.models.map((m) => {
    const test = (m.tier === "fast" ? (m.metrics || {}).test : m.metrics) || {};
    const shown = test.rmse !== undefined
      ? `RMSE ${test.rmse.toFixed(3)}` + (test.mae !== undefined ? `, MAE ${test.mae.toFixed(3)}` : "")
      : (test.roc_auc !== undefined ? `ROC AUC ${test.roc_auc.toFixed(3)}` : "");
    const auto = (e.preferred_tier || "fast") === m.tier ? " (auto)" : "";
    return `<tr><td>${escapeHtml(m.tier)}${auto}</td><td>${escapeHtml(shown)}</td></tr>`;
  }).join("");
  return `<table class="tier-metrics"><thead><tr><th>tier</th><th>held-out test</th></tr></thead>` +
    `<tbody>${rows}</tbody></table>`;
}

async function renderModels() {
  const predicted = state.endpoints.filter((e) => e.kind === "predicted" && (!e.status || e.status === "available"));
  const cards = await Promise.all(predicted.map(async (e) => {
    const fast = e.models.find((m) => m.tier === "fast");
    if (!fast) return "";
    const manifest = await api(`/v1/models/${encodeURIComponent(e.name)}/${fast.version}`);
    const plot = manifest.test_predictions.roc ? rocSvg(manifest.test_predictions.roc)
      : scatterSvg(manifest.test_predictions.measured, manifest.test_predictions.predicted, e.units);
    const tiers = e.tiers.map((t) => `<span class="badge tier-${escapeHtml(t)}">${escapeHtml(t)}</span>`).join("");
    return `<div class="card model-card" data-endpoint="${escapeHtml(e.name)}">
      <h2>${escapeHtml(e.name)} <span class="units">${escapeHtml(e.units)}</span></h2>
      <div>${tiers}</div>
      <p class="units">${escapeHtml(e.description)}</p>
      ${tierTable(e)}
      <dl><dt>data</dt><dd>${escapeHtml(manifest.dataset.source)} (${manifest.dataset.rows} rows, ${escapeHtml(manifest.dataset.licence)})</dd>
        ${manifest.dataset.citation ? `<dt>cite</dt><dd class="citation">${escapeHtml(manifest.dataset.citation)}</dd>` : ""}
        ${manifest.metrics.tdc ? `<dt>TDC ${escapeHtml(manifest.metrics.tdc.metric)}</dt><dd>${manifest.metrics.tdc.test.toFixed(3)} (TDC's test set)</dd>` : ""}
        <dt>split</dt><dd>${escapeHtml(manifest.split.method)}: ${manifest.split.sizes.train}/${manifest.split.sizes.valid}/${manifest.split.sizes.test}</dd>
        <dt>model</dt><dd>${escapeHtml(manifest.model_id)} v${manifest.version}</dd>
        ${metricList(manifest.metrics.test)}</dl>
      <div class="units">baseline (${escapeHtml(manifest.metrics.baseline_test.model)}): ${
        manifest.metrics.baseline_test.rmse !== undefined ? `RMSE ${manifest.metrics.baseline_test.rmse.toFixed(3)}`
          : `ROC AUC ${manifest.metrics.baseline_test.roc_auc.toFixed(3)}`}</div>
      ${plot}</div>`;
  }));
  $("#model-cards").innerHTML = cards.join("");
}

// Jobs ------------------------------------------------------------------------------------
let jobTimer = null;

async function refreshJobs() {
  let jobs = [];
  try { jobs = await api("/v1/jobs", { headers: withKey() }); } catch (error) { return; }
  $("#job-table tbody").innerHTML = jobs.map((j) => `
    <tr data-job="${escapeHtml(j.id)}"><td>${escapeHtml(j.id)}</td><td>${escapeHtml(j.kind)}</td>
      <td class="job-state">${escapeHtml(j.state)}</td>
      <td><progress max="1" value="${j.progress}"></progress> ${(j.progress * 100).toFixed(0)}%</td>
      <td>${escapeHtml(j.step || "")}${j.eta_s ? ` (ETA ${Math.round(j.eta_s)} s)` : ""}${j.error ? `<div class="error">${escapeHtml(j.error)}</div>` : ""}</td>
      <td>${j.result_url ? `<a href="${escapeHtml(j.result_url)}" data-result="${escapeHtml(j.id)}">CSV</a>` : ""}${j.result && j.result.endpoint ? `${escapeHtml(j.result.endpoint)} v${j.result.version}` : ""}</td></tr>`).join("");
  const active = jobs.some((j) => j.state === "queued" || j.state === "running");
  clearTimeout(jobTimer);
  if (active) jobTimer = setTimeout(refreshJobs, 1000);
  else if (jobs.some((j) => j.kind === "train" && j.state === "succeeded")) loadEndpoints();
}

$("#job-table").addEventListener("click", (event) => {
  const link = event.target.closest("a[data-result]");
  if (!link) return;
  event.preventDefault();
  downloadResult(link.getAttribute("href"), link.dataset.result);
});

$("#train-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const status = $("#train-status");
  try {
    status.textContent = "Uploading…";
    const upload = await uploadFile($("#train-file").files[0]);
    const job = await api("/v1/jobs", {
      method: "POST",
      headers: withKey({ "content-type": "application/json" }),
      body: JSON.stringify({
        kind: "train", upload_id: upload.upload_id, endpoint: $("#train-endpoint").value,
        label_col: $("#train-label").value, smiles_col: $("#train-smiles").value,
        task: $("#train-task").value, profile: $("#train-profile").value,
      }),
    });
    status.textContent = `Submitted job ${job.id}.`;
    refreshJobs();
  } catch (error) {
    status.innerHTML = `<span class="error">${escapeHtml(error.message)}</span>`;
  }
});

loadEndpoints().catch((error) => { $("#status").textContent = `Could not load endpoints: ${error.message}`; });
watchBootstrap();
loadHealth();
setInterval(loadHealth, 10000);
