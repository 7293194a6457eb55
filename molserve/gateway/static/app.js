// molserve web page: plain JavaScript against the public HTTP API (no build step, no CDN).
"use strict";

const $ = (selector) => document.querySelector(selector);
const state = { endpoints: [], results: null, names: [], selected: null, explained: null, alert: null, reference: null };
const BATCH = 500;
// Attributions add a shaded drawing to every fast-tier answer (about 20 kB a molecule and
// endpoint): asked for small batches only, where a chemist reads them one by one.
const EXPLAIN_MAX = 200;

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
  fillBases();
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

// The Jobs tab's "learn on top of" choices: endpoints with a fast model of the form's task.
function fillBases() {
  const select = $("#train-base");
  const task = $("#train-task").value;
  const chosen = select.value;
  const bases = (state.endpoints || []).filter((e) => e.kind === "predicted" && e.task === task
    && (!e.status || e.status === "available") && (e.tiers || []).includes("fast"));
  select.innerHTML = `<option value="">nothing (your data alone)</option>
    <option value="auto">auto (the bundled endpoints that help)</option>` +
    bases.map((e) => `<option value="${escapeHtml(e.name)}">${escapeHtml(e.name)}${e.units ? ` (${escapeHtml(e.units)})` : ""}</option>`).join("");
  if ([...select.options].some((o) => o.value === chosen)) select.value = chosen;
}
$("#train-task").addEventListener("change", fillBases);

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

// What this server's API offers beyond the basics, read from its OpenAPI document: whether a
// prediction can carry atom attributions (`explain`) or name a reference set (`reference`), and
// whether a depiction can highlight atoms. What is absent is simply not asked for.
const features = { explain: null, reference: false, highlight: null, references: [] };

async function loadFeatures() {
  let spec;
  try { spec = await api("/openapi.json"); } catch (error) { return; }
  const resolve = (schema) => {
    const ref = schema && schema.$ref;
    return ref ? ref.split("/").slice(1).reduce((node, key) => (node || {})[key], spec) : schema;
  };
  const predict = (((spec.paths || {})["/v1/predict"] || {}).post || {}).requestBody;
  const body = resolve((((predict || {}).content || {})["application/json"] || {}).schema) || {};
  const properties = body.properties || {};
  if (properties.explain) {
    const kinds = JSON.stringify(properties.explain);
    features.explain = kinds.includes("boolean") ? "boolean" : (kinds.includes("array") ? "list" : "boolean");
    $("#explain-option").hidden = false;
  }
  features.reference = Boolean(properties.reference);
  const depict = (((spec.paths || {})["/v1/depict"] || {}).get || {}).parameters || [];
  const highlight = depict.find((p) => /highlight/i.test(p.name));
  features.highlight = highlight ? highlight.name : null;
  if (features.reference && (spec.paths || {})["/v1/references"]) {
    try {
      const listed = await api("/v1/references");
      const items = Array.isArray(listed) ? listed : (listed.references || listed.items || []);
      features.references = items.map((item) => (typeof item === "string" ? { name: item } : item))
        .filter((item) => item && item.name);
    } catch (error) { features.references = []; }
    if (features.references.length) {
      $("#reference").innerHTML = features.references.map((item) => {
        const size = item.molecules ?? item.n_molecules ?? item.size;
        const about = [item.description, typeof size === "number" ? `${size} molecules` : ""]
          .filter(Boolean).join(", ");
        return `<option value="${escapeHtml(item.name)}" ${item.default ? "selected" : ""} title="${escapeHtml(about)}">${escapeHtml(item.name)}</option>`;
      }).join("");
      $("#reference-row").hidden = false;
    }
  }
}

// The endpoints a request asks for: the chosen ones, plus, for the profile panels, the exact
// (computed) ones, rules and alerts among them, and the predicted solubility when served.
function requestedEndpoints(chosen) {
  if (!$("#profile").checked) return chosen;
  const available = new Map(state.endpoints.filter((e) => !e.status || e.status === "available").map((e) => [e.name, e]));
  const extra = [...available.values()].filter((e) => e.kind === "computed").map((e) => e.name);
  if (available.has("solubility")) extra.push("solubility");
  return [...new Set([...chosen, ...extra])];
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
  state.reference = null;
  const asked = requestedEndpoints(endpoints);
  const request = { endpoints: asked, tier: $("#tier").value };
  const explainSkipped = features.explain && $("#explain").checked && molecules.length > EXPLAIN_MAX;
  if (features.explain && $("#explain").checked && !explainSkipped) {
    request.explain = features.explain === "list"
      ? endpoints.filter((n) => (state.endpoints.find((e) => e.name === n) || {}).kind === "predicted") : true;
    if (Array.isArray(request.explain) && !request.explain.length) delete request.explain;
  }
  if (features.reference && !$("#reference-row").hidden && $("#reference").value) request.reference = $("#reference").value;
  try {
    for (let start = 0; start < molecules.length; start += BATCH) {
      $("#status").textContent = `Predicting ${Math.min(start + BATCH, molecules.length)} / ${molecules.length}…`;
      const body = await api("/v1/predict", {
        method: "POST", headers: { "content-type": "application/json" },
        body: JSON.stringify({ ...request, molecules: molecules.slice(start, start + BATCH) }),
      });
      body.results.forEach((r) => results.push({ ...r, index: r.index + start }));
      if (body.reference && typeof body.reference === "object") state.reference = body.reference;
    }
    results.forEach((r) => { r.profile = r.error ? null : moleculeProfile(r); });
    state.results = results;
    state.names = endpoints;
    state.selected = (results.find((r) => !r.error) || {}).index ?? null;
    renderResults();
    renderOverview();
    const invalid = results.filter((r) => r.error).length;
    $("#status").textContent = `${results.length} molecules, ${invalid} could not be read.` +
      (explainSkipped ? ` Atom attributions are drawn for batches of up to ${EXPLAIN_MAX} molecules.` : "");
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
  const percentile = typeof answer.reference_percentile === "number"
    ? `<div class="interval" title="percentile within the reference set">p${Math.round(answer.reference_percentile)}</div>` : "";
  const domain = answer.applicability_domain;
  const ood = domain && !domain.in_domain
    ? `<span class="badge ood" title="max similarity ${domain.max_similarity} to training; threshold ${domain.threshold}">out of domain</span>` : "";
  const degraded = prov.degraded
    ? `<span class="badge degraded" title="the preferred tier could not answer">degraded: ${escapeHtml(prov.degraded_reason)}</span>` : "";
  const units = answer.kind === "computed" ? "" : `<span class="units"> ${escapeHtml(answer.units)}</span>`;
  return `<td><span class="value">${value}</span>${units}${label}${interval}${percentile}
    <div><span class="badge tier-${escapeHtml(prov.tier)}" title="${escapeHtml(prov.model_id)} v${escapeHtml(prov.version)}">${escapeHtml(prov.tier)}</span>${degraded}${ood}</div></td>`;
}

// Sorting and filtering ---------------------------------------------------------------------
const view = { sort: "index", descending: false };

// The value a column sorts by: numbers as numbers, a label or text as text, a list by length.
function sortValue(r, key) {
  if (key === "index") return r.index;
  if (key === "smiles") return r.error ? null : r.canonical_smiles;
  if (r.error) return null;
  if (key === "egg") return r.profile.egg ? ["yolk", "white", "grey"].indexOf(r.profile.egg) : null;
  if (key === "rules") return r.profile.rules.length ? r.profile.failedRules.length * 100 + r.profile.violationCount : null;
  if (key === "alerts") return r.profile.alerts.length;
  const answer = r.predictions[key.slice(3)];
  if (!answer || answer.error) return null;
  if (typeof answer.value === "number") return answer.value;
  if (Array.isArray(answer.value)) return answer.value.length;
  return answer.value === null || answer.value === undefined ? null : String(answer.value);
}

function compareRows(a, b) {
  // Unreadable molecules and missing values stay at the bottom whichever way the column sorts.
  const x = sortValue(a, view.sort), y = sortValue(b, view.sort);
  if (x === null || y === null) return (x === null) - (y === null) || a.index - b.index;
  const order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
  return (view.descending ? -order : order) || a.index - b.index;
}

function rowText(r) {
  if (r.error) return `${r.input} ${r.error}`;
  const p = r.profile;
  return [r.input, r.canonical_smiles, p.egg ? EGG_LABELS[p.egg] : "", ...p.alerts.map((a) => `${a.catalog} ${a.description}`),
    ...p.failedRules.map((rule) => rule.name),
    ...state.names.map((n) => { const a = r.predictions[n]; return a && a.label ? a.label : ""; })].join(" ");
}

function visibleRows() {
  const text = $("#filter-text").value.trim().toLowerCase();
  const inDomain = $("#filter-in-domain").checked;
  const noAlerts = $("#filter-hide-alerts").checked;
  const noFailures = $("#filter-hide-failures").checked;
  return state.results.filter((r) => {
    if (text && !rowText(r).toLowerCase().includes(text)) return false;
    if ((inDomain || noAlerts || noFailures) && r.error) return false;
    if (inDomain && r.profile.inDomain === false) return false;
    if (noAlerts && r.profile.alerts.length) return false;
    if (noFailures && r.profile.failedRules.length) return false;
    return true;
  }).sort(compareRows);
}

function hasProfile() {
  return state.results.some((r) => r.profile && (r.profile.egg || r.profile.rules.length || r.profile.alerts.length
    || bioavailabilityAxes(r.profile).length >= 3));
}

// The profile columns this batch has data for: a panel with nothing to show is left out.
function profileColumns() {
  if (!hasProfile()) return [];
  const valid = state.results.filter((r) => r.profile);
  const columns = [[null, "profile"]];
  if (valid.some((r) => r.profile.egg)) columns.push(["egg", "BOILED-Egg"]);
  if (valid.some((r) => r.profile.rules.length)) columns.push(["rules", "rules"]);
  if (valid.some((r) => r.profile.alerts.length || r.predictions.structural_alerts)) columns.push(["alerts", "alerts"]);
  return columns;
}

function profileCells(r, columns) {
  const p = r.profile;
  const axes = Object.keys(p.percentiles).length ? percentileAxes(p, state.names) : [];
  const radar = radarSvg(axes.length >= 3 ? axes : bioavailabilityAxes(p), { size: 84, mini: true, label: "profile radar" });
  const egg = p.egg ? `<span class="badge egg-${p.egg}">${EGG_LABELS[p.egg]}</span>` : "";
  const rules = p.rules.length
    ? (p.failedRules.length
      ? p.failedRules.map((rule) => `<span class="badge fail" title="${escapeHtml(rule.violations.map((v) => `${v.property} ${v.value}`).join("; "))}">${escapeHtml(rule.name)}</span>`).join("")
      : `<span class="badge pass">all ${p.rules.length} pass</span>`)
    : "";
  const catalogs = new Map();
  p.alerts.forEach((a) => catalogs.set(a.catalog, [...(catalogs.get(a.catalog) || []), a.description]));
  const alerts = p.alerts.length
    ? [...catalogs].map(([catalog, found]) => `<span class="badge alert" title="${escapeHtml(found.join("; "))}">${escapeHtml(catalog)}${
      found.length > 1 ? ` ×${found.length}` : ""}</span>`).join("")
    : (r.predictions.structural_alerts || p.rules.length ? `<span class="units">none</span>` : "");
  const cells = { profile: `<td class="mini-radar">${radar}</td>`, "BOILED-Egg": `<td class="egg-cell">${egg}</td>`,
    rules: `<td class="rules-cell">${rules}</td>`, alerts: `<td class="alerts-cell">${alerts}</td>` };
  return columns.map(([, title]) => cells[title]).join("");
}

function renderResults() {
  const names = state.names;
  const extra = profileColumns();
  const columns = [["index", "#"], [null, "structure"], ["smiles", "SMILES"], ...extra];
  names.forEach((n) => columns.push([`ep:${n}`, n]));
  $("#results thead").innerHTML = `<tr>${columns.map(([key, title]) => {
    if (!key) return `<th>${escapeHtml(title)}</th>`;
    const on = view.sort === key;
    const aria = on ? (view.descending ? "descending" : "ascending") : "none";
    return `<th class="sortable${on ? " sorted" : ""}" data-sort="${escapeHtml(key)}" aria-sort="${aria}" tabindex="0"
      title="sort by ${escapeHtml(title)}">${escapeHtml(title)}<span class="arrow">${on ? (view.descending ? "▼" : "▲") : "↕"}</span></th>`;
  }).join("")}</tr>`;
  const rows = visibleRows();
  const span = names.length + extra.length;
  $("#results tbody").innerHTML = rows.map((r) => {
    if (r.error) {
      return `<tr class="invalid" data-index="${r.index}"><td>${r.index + 1}</td><td></td><td class="smiles">${escapeHtml(r.input)}</td>
        <td colspan="${span}" class="error">${escapeHtml(r.error)}</td></tr>`;
    }
    const image = `<img alt="${escapeHtml(r.canonical_smiles)}" loading="lazy" src="/v1/depict?smiles=${encodeURIComponent(r.canonical_smiles)}">`;
    return `<tr data-index="${r.index}" class="${r.index === state.selected ? "selected" : ""}"><td>${r.index + 1}</td><td class="depiction">${image}</td><td class="smiles">${escapeHtml(r.canonical_smiles)}</td>
      ${profileCells(r, extra)}${names.map((n) => answerCell(r.predictions[n])).join("")}</tr>`;
  }).join("");
  $("#filters").hidden = false;
  $("#filter-count").textContent = rows.length === state.results.length
    ? `${rows.length} molecules` : `showing ${rows.length} of ${state.results.length} molecules`;
}

$("#results thead").addEventListener("click", (event) => {
  const th = event.target.closest("th[data-sort]");
  if (!th) return;
  const key = th.dataset.sort;
  view.descending = view.sort === key ? !view.descending : false;
  view.sort = key;
  renderResults();
});
$("#results thead").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && event.target.closest("th[data-sort]")) event.target.click();
});
$("#results tbody").addEventListener("click", (event) => {
  const row = event.target.closest("tr[data-index]");
  if (!row || row.classList.contains("invalid")) return;
  selectMolecule(Number(row.dataset.index));
});
["#filter-in-domain", "#filter-hide-alerts", "#filter-hide-failures"].forEach((selector) => {
  $(selector).addEventListener("input", () => { if (state.results) renderResults(); });
});
// Typing filters once the typing pauses, so a long table is not redrawn at every key.
let filterTimer = null;
$("#filter-text").addEventListener("input", () => {
  clearTimeout(filterTimer);
  filterTimer = setTimeout(() => { if (state.results) renderResults(); }, 120);
});

// Batch overview and molecule detail ------------------------------------------------------
function selectMolecule(index) {
  state.selected = index;
  state.alert = null;
  document.querySelectorAll("#results tbody tr").forEach((tr) => tr.classList.toggle("selected", Number(tr.dataset.index) === index));
  renderOverview();
}

function depictUrl(smiles, atoms) {
  let url = `/v1/depict?smiles=${encodeURIComponent(smiles)}&width=320&height=240`;
  if (atoms && atoms.length && features.highlight) url += `&${features.highlight}=${atoms.join(",")}`;
  return url;
}

let attributionUrl = null;

function attributionHtml(r) {
  const explained = Object.entries(r.profile.explanations);
  if (!explained.length) return "";
  const chosen = explained.find(([n]) => n === state.explained) || explained[0];
  state.explained = chosen[0];
  const [name, e] = chosen;
  if (attributionUrl) URL.revokeObjectURL(attributionUrl);
  attributionUrl = typeof e.svg === "string" && e.svg.includes("<svg")
    ? URL.createObjectURL(new Blob([e.svg], { type: "image/svg+xml" })) : null;
  const picker = explained.length > 1
    ? `<select id="explain-endpoint">${explained.map(([n]) => `<option ${n === name ? "selected" : ""}>${escapeHtml(n)}</option>`).join("")}</select>`
    : `<span class="units">${escapeHtml(name)}</span>`;
  const base = typeof e.base === "number" && typeof e.raw === "number"
    ? `<p class="units">model output ${formatNumber(e.raw, 3)} = average ${formatNumber(e.base, 3)} + contributions${e.space ? ` (${escapeHtml(e.space)})` : ""}</p>` : "";
  return `<div class="detail-block attribution"><h3>Atom attribution ${picker}</h3>
    ${attributionUrl ? `<img class="attribution-svg" alt="atoms coloured by their contribution to ${escapeHtml(name)}" src="${attributionUrl}">
      <div class="legend"><span class="swatch raises"></span> raises <span class="swatch lowers"></span> lowers the model's output</div>` : ""}
    ${base}${descriptorBars(e.descriptors)}</div>`;
}

function renderOverview() {
  const valid = (state.results || []).filter((r) => !r.error);
  const points = valid.filter((r) => r.profile.egg).map((r) => ({ index: r.index, smiles: r.canonical_smiles,
    tpsa: r.profile.tpsa, wlogp: r.profile.wlogp, region: r.profile.egg }));
  const eggCard = $("#egg-card");
  eggCard.hidden = !points.length;
  if (points.length) {
    const counts = { yolk: 0, white: 0, grey: 0 };
    points.forEach((p) => { counts[p.region] += 1; });
    $("#egg").innerHTML = eggSvg(points, state.selected);
    $("#egg-summary").innerHTML = `<span><span class="swatch yolk"></span> yolk, likely brain-penetrant: ${counts.yolk}</span>
      <span><span class="swatch white"></span> white only, likely absorbed: ${counts.white}</span>
      <span><span class="swatch grey"></span> outside: ${counts.grey}</span>`;
  }
  const r = valid.find((x) => x.index === state.selected);
  const detail = $("#molecule-detail");
  detail.hidden = !r;
  $("#overview").hidden = !points.length && !r;
  if (!r) return;
  const p = r.profile;
  // The depiction highlights the atoms of every alert, or of the one alert picked in the list.
  const withAtoms = p.alerts.filter((a) => a.atoms && a.atoms.length);
  const picked = withAtoms.includes(p.alerts[state.alert]) ? p.alerts[state.alert] : null;
  const highlightAtoms = [...new Set((picked ? [picked] : withAtoms).flatMap((a) => a.atoms))].sort((a, b) => a - b);
  const fixed = bioavailabilityAxes(p);
  const percentile = percentileAxes(p, state.names);
  const radars = [
    percentile.length >= 3 ? `<figure class="radar-figure percentile"><figcaption>Percentile within the reference set${
      state.reference && state.reference.name ? `: ${escapeHtml(state.reference.name)}${typeof state.reference.molecules === "number"
        ? ` (${state.reference.molecules.toLocaleString("en")} molecules)` : ""}` : ""}</figcaption>
      ${radarSvg(percentile, { label: "percentile radar" })}<div class="units">band: the reference set's middle half (25th-75th percentile)</div></figure>` : "",
    fixed.length >= 3 ? `<figure class="radar-figure bioavailability"><figcaption>Bioavailability radar (fixed ranges)</figcaption>
      ${radarSvg(fixed, { label: "bioavailability radar" })}<div class="units">band: favourable range (SwissADME; WLOGP for LIPO)</div></figure>` : "",
  ].join("");
  detail.innerHTML = `<div class="detail-head"><h2>Molecule ${r.index + 1}</h2><code>${escapeHtml(r.canonical_smiles)}</code>
      ${p.egg ? `<span class="badge egg-${p.egg}">${EGG_LABELS[p.egg]}</span>` : ""}</div>
    <div class="detail-grid">
      <div class="detail-block depiction-block"><img class="detail-depiction" alt="${escapeHtml(r.canonical_smiles)}"
        src="${depictUrl(r.canonical_smiles, highlightAtoms)}">
        ${highlightAtoms.length && features.highlight ? `<div class="units highlight-note">highlighted: ${
          escapeHtml(picked ? `${picked.catalog} ${picked.description}` : "atoms matched by the alerts")}</div>` : ""}</div>
      ${radars ? `<div class="detail-block radars">${radars}</div>` : ""}
      ${p.rules.length ? `<div class="detail-block rules-block"><h3>Rules</h3>${rulesHtml(p.rules)}</div>` : ""}
      ${r.predictions.structural_alerts || p.alerts.length ? `<div class="detail-block alerts-block"><h3>Structural alerts</h3>${alertsHtml(p.alerts)}</div>` : ""}
      ${attributionHtml(r)}
    </div>`;
  detail.querySelectorAll(".alerts li[data-alert]").forEach((item) => {
    item.classList.toggle("picked", Number(item.dataset.alert) === state.alert);
    item.addEventListener("click", () => {
      const index = Number(item.dataset.alert);
      state.alert = state.alert === index ? null : index;
      renderOverview();
    });
  });
  const picker = $("#explain-endpoint");
  if (picker) picker.addEventListener("change", () => { state.explained = picker.value; renderOverview(); });
}

$("#egg").addEventListener("click", (event) => {
  const point = event.target.closest(".egg-point");
  if (point) selectMolecule(Number(point.dataset.index));
});
$("#egg").addEventListener("keydown", (event) => {
  const point = event.target.closest(".egg-point");
  if (point && (event.key === "Enter" || event.key === " ")) { event.preventDefault(); selectMolecule(Number(point.dataset.index)); }
});

function csvField(value) {
  let text = value === null || value === undefined ? "" : String(value);
  // Text a spreadsheet would run as a formula is shown as text (numbers keep their sign).
  if (typeof value === "string" && /^[=+\-@\t\r]/.test(text)) text = `'${text}`;
  return /[",\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

function downloadCsv() {
  const names = state.names;
  const profile = hasProfile();
  const header = ["row", "input", "canonical_smiles", "error"];
  names.forEach((n) => header.push(n, `${n}_lower`, `${n}_upper`, `${n}_tier`, `${n}_degraded_reason`, `${n}_in_domain`));
  if (profile) header.push("boiled_egg", "rules_failed", "alerts");
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
    if (profile) {
      const p = r.profile;
      row.push(p && p.egg ? p.egg : "", p ? p.failedRules.map((x) => x.name).join("; ") : "",
        p ? p.alerts.map((a) => `${a.catalog}: ${a.description}`).join("; ") : "");
    }
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

// Each tier's figures for the endpoint, side by side: out of fold on the fast model's scaffold
// folds (fast, foundation and their blend: what `auto` chooses on first), on the validation
// molecules the fast and graph tiers share (then), and on the held-out test split where the model
// has one (reported only: it chooses nothing). The row `auto` picks is marked.
function tierTable(e) {
  const figure = (scores) => {
    scores = scores || {};
    const parts = [];
    if (scores.rmse !== undefined) parts.push(`RMSE ${scores.rmse.toFixed(3)}`);
    if (scores.mae !== undefined) parts.push(`MAE ${scores.mae.toFixed(3)}`);
    if (scores.spearman !== undefined && scores.rmse !== undefined) parts.push(`Spearman ${scores.spearman.toFixed(3)}`);
    if (scores.roc_auc !== undefined) parts.push(`ROC AUC ${scores.roc_auc.toFixed(3)}`);
    if (scores.pr_auc !== undefined && scores.roc_auc !== undefined) parts.push(`PR AUC ${scores.pr_auc.toFixed(3)}`);
    return parts.join(", ");
  };
  const cv = (e.cv && e.cv.scores) || {};
  const rows = e.models.map((m) => {
    const fast = m.tier === "fast";
    const test = fast ? (m.metrics || {}).test : m.metrics;
    const valid = fast ? (m.metrics || {}).valid : m.valid;
    const folds = cv[m.tier] || (fast ? (m.metrics || {}).out_of_fold : null);
    const auto = (e.preferred_tier || "fast") === m.tier ? " (auto)" : "";
    return `<tr><td>${escapeHtml(m.tier)}${auto}</td><td class="cv">${escapeHtml(figure(folds) || "-")}</td>` +
      `<td class="valid">${escapeHtml(figure(valid) || "-")}</td>` +
      `<td class="test">${escapeHtml(figure(test) || "-")}</td></tr>`;
  }).join("");
  const metric = e.cv && e.cv.metric ? ` (chosen by ${escapeHtml(e.cv.metric)})` : "";
  return `<table class="tier-metrics"><thead><tr><th>tier</th><th>out of fold${metric}</th>` +
    `<th>validation</th><th>held-out test</th></tr></thead><tbody>${rows}</tbody></table>`;
}

function reliabilitySvg(curve) {
  const size = 260, m = 34;
  const x = (v) => m + v * (size - 2 * m), y = (v) => size - m - v * (size - 2 * m);
  const most = Math.max(...curve.count, 1);
  const points = curve.predicted.map((p, i) => `<circle cx="${x(p).toFixed(1)}" cy="${y(curve.observed[i]).toFixed(1)}" ` +
    `r="${(2 + 4 * Math.sqrt(curve.count[i] / most)).toFixed(1)}" fill="#2857c5" fill-opacity=".6">` +
    `<title>${curve.count[i]} molecules: predicted ${p.toFixed(2)}, observed ${curve.observed[i].toFixed(2)}</title></circle>`).join("");
  return `<svg class="plot reliability" viewBox="0 0 ${size} ${size}" role="img" aria-label="reliability curve">
    <rect x="${m}" y="${m}" width="${size - 2 * m}" height="${size - 2 * m}" fill="none" stroke="#d9dee8"/>
    <line x1="${x(0)}" y1="${y(0)}" x2="${x(1)}" y2="${y(1)}" stroke="#5b6475" stroke-dasharray="4 3"/>
    ${points}
    <text x="${size / 2}" y="${size - 8}" font-size="10" text-anchor="middle">predicted probability</text>
    <text x="10" y="${size / 2}" font-size="10" text-anchor="middle" transform="rotate(-90 10 ${size / 2})">observed positive fraction</text></svg>`;
}

const percent = (v) => `${(100 * v).toFixed(1)}%`;

// How far to trust the model's intervals, probabilities and domain, from its manifest: the
// test coverage at each confidence level and the calibration set it came from; the classifier's
// calibration error; the domain threshold and how the test molecules fell against it.
function trustBlock(manifest) {
  const u = manifest.uncertainty || {}, d = manifest.applicability_domain || {};
  const test = (manifest.metrics || {}).test || {};
  const oof = (manifest.metrics || {}).out_of_fold || {};
  const items = [];
  const levels = test.interval_coverage_by_level;
  const set = u.calibration_set ? ` (calibrated on ${u.calibration_set.molecules} molecules: ${u.calibration_set.rule})` : "";
  if (levels) {
    const shown = Object.keys(levels).sort().map((c) => `${Math.round(100 * Number(c))}%: ${percent(levels[c])}`).join(", ");
    items.push(`<dt>interval coverage on test</dt><dd class="coverage">${escapeHtml(shown)}${escapeHtml(set)}</dd>`);
  } else if (oof.interval_coverage !== undefined) {
    // A production model (every labelled row fitted): the 90% interval around each out-of-fold
    // prediction, on the fitted molecules that did not calibrate it.
    items.push(`<dt>interval coverage out of fold</dt><dd class="coverage">90%: ${percent(oof.interval_coverage)} ` +
      `of ${oof.interval_coverage_molecules} molecules${escapeHtml(set)}</dd>`);
  }
  const ece = test.ece !== undefined ? test.ece : oof.ece;
  if (ece !== undefined) {
    const pc = u.probability_calibration;
    const how = pc ? (pc.applied ? `Platt scaling applied` : `not recalibrated: ${pc.reason || ""}`) : "";
    const where = test.ece !== undefined ? "on test" : "out of fold";
    items.push(`<dt>calibration error (ECE) ${where}</dt><dd class="ece">${ece.toFixed(3)}${how ? ` (${escapeHtml(how)})` : ""}</dd>`);
  }
  if (d.threshold !== undefined) {
    const t = d.test || {};
    const where = t.in_domain_fraction !== undefined ? `; ${percent(t.in_domain_fraction)} of ${t.molecules} test molecules in domain` : "";
    const rmse = test.rmse_in_domain !== undefined
      ? `; test RMSE ${test.rmse_in_domain.toFixed(3)} in domain, ${test.rmse_out_of_domain.toFixed(3)} out` : "";
    items.push(`<dt>applicability domain</dt><dd class="domain">max similarity to training ≥ ${d.threshold.toFixed(3)} ` +
      `(${escapeHtml(d.threshold_rule || "")})${escapeHtml(where)}${escapeHtml(rmse)}</dd>`);
  }
  const curve = test.reliability || oof.reliability;
  return `<dl class="trust">${items.join("")}</dl>` + (curve && curve.predicted.length ? reliabilitySvg(curve) : "");
}

// A model trained on top of bundled endpoints: what each candidate scored out of fold (the
// team's data alone, the bases recalibrated, their stack) and which one answers.
function onBase(section) {
  if (!section) return "";
  const bases = (section.bases || []).map((b) => `${b.endpoint} v${b.version}`).join(", ") || "none kept";
  const scores = Object.entries(section.scores || {})
    .map(([name, score]) => `${name} ${Number(score).toFixed(3)}${name === section.chosen ? " (answers)" : ""}`)
    .join(" · ");
  return `<dt>learned on top of</dt><dd class="on-base">${escapeHtml(bases)}; out of fold
    (${escapeHtml(section.metric || "")}): ${escapeHtml(scores)}${section.reason ? `; ${escapeHtml(section.reason)}` : ""}</dd>`;
}

async function renderModels() {
  if (!state.endpoints) await loadEndpoints();  // the tab was opened before the list arrived
  const predicted = state.endpoints.filter((e) => e.kind === "predicted" && (!e.status || e.status === "available"));
  const cards = await Promise.all(predicted.map(async (e) => {
    const fast = e.models.find((m) => m.tier === "fast");
    if (!fast) return "";
    const manifest = await api(`/v1/models/${encodeURIComponent(e.name)}/${fast.version}`);
    const parity = manifest.test_predictions;  // none for a production model (no test set)
    const plot = !parity ? "" : parity.roc ? rocSvg(parity.roc)
      : scatterSvg(parity.measured, parity.predicted, e.units);
    const held = manifest.metrics.test && Object.keys(manifest.metrics.test).length;
    const baseline = manifest.metrics.baseline_test;
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
        ${manifest.trained_on ? `<dt>trained on</dt><dd class="trained-on">${escapeHtml(manifest.trained_on.rows)}; figures ${escapeHtml(manifest.trained_on.figures)}</dd>` : ""}
        <dt>model</dt><dd>${escapeHtml(manifest.model_id)} v${manifest.version}</dd>
        ${onBase(manifest.on_base)}
        ${held ? metricList(manifest.metrics.test) : metricList(manifest.metrics.out_of_fold)}</dl>
      ${trustBlock(manifest)}
      ${baseline ? `<div class="units">baseline (${escapeHtml(baseline.model)}): ${
        baseline.rmse !== undefined ? `RMSE ${baseline.rmse.toFixed(3)}` : `ROC AUC ${baseline.roc_auc.toFixed(3)}`}</div>` : ""}
      ${plot}</div>`;
  }));
  $("#model-cards").innerHTML = cards.join("");
}

// Jobs ------------------------------------------------------------------------------------
let jobTimer = null;

function formatSeconds(seconds) {
  const s = Math.round(seconds);
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

// A screen's progress as its status reports it (shards, molecules, rate), wherever the job puts
// it: at the top level, under `metrics` or under a `progress_detail`/`screen` object.
function screenProgress(job) {
  if (job.kind !== "screen") return "";
  const sources = [job.progress_detail, job.screen, job.metrics, job].filter((x) => x && typeof x === "object");
  const pick = (...keys) => {
    for (const source of sources) {
      for (const key of keys) {
        const path = key.split(".");
        const v = path.reduce((node, k) => (node && typeof node === "object" ? node[k] : undefined), source);
        if (typeof v === "number" && Number.isFinite(v)) return v;
      }
    }
    return null;
  };
  const shardsDone = pick("shards_done", "shards.done", "chunks_done");
  const shardsTotal = pick("shards_total", "shards.total", "chunks_total");
  const molecules = pick("molecules_done", "molecules.done", "rows_done", "molecules");
  const moleculesTotal = pick("molecules_total", "molecules.total", "rows_total");
  const rate = pick("molecules_per_second", "rate", "molecules_per_s", "rows_per_s");
  const hits = pick("hits", "hits_kept");
  const parts = [];
  if (shardsDone !== null) parts.push(`shards ${shardsDone}${shardsTotal !== null ? ` / ${shardsTotal}` : ""}`);
  if (molecules !== null) {
    parts.push(`${molecules.toLocaleString("en")}${moleculesTotal !== null ? ` / ${moleculesTotal.toLocaleString("en")}` : ""} molecules`);
  }
  if (hits !== null) parts.push(`${hits.toLocaleString("en")} hits`);
  if (rate !== null) parts.push(`${rate >= 100 ? Math.round(rate).toLocaleString("en") : rate.toFixed(1)} molecules/s`);
  return parts.length ? `<div class="screen-progress units">${parts.map(escapeHtml).join(" · ")}</div>` : "";
}

async function refreshJobs() {
  let jobs = [];
  try { jobs = await api("/v1/jobs", { headers: withKey() }); } catch (error) { return; }
  $("#job-table tbody").innerHTML = jobs.map((j) => `
    <tr data-job="${escapeHtml(j.id)}"><td>${escapeHtml(j.id)}</td><td>${escapeHtml(j.kind)}</td>
      <td class="job-state">${escapeHtml(j.state)}</td>
      <td><progress max="1" value="${j.progress}"></progress> ${(j.progress * 100).toFixed(0)}%</td>
      <td>${escapeHtml(j.step || "")}${j.eta_s ? ` (ETA ${formatSeconds(j.eta_s)})` : ""}${screenProgress(j)}${j.error ? `<div class="error">${escapeHtml(j.error)}</div>` : ""}</td>
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
        ...($("#train-base").value ? { bases: [$("#train-base").value] } : {}),
      }),
    });
    status.textContent = `Submitted job ${job.id}.`;
    refreshJobs();
  } catch (error) {
    status.innerHTML = `<span class="error">${escapeHtml(error.message)}</span>`;
  }
});

loadFeatures();
loadEndpoints().catch((error) => { $("#status").textContent = `Could not load endpoints: ${error.message}`; });
watchBootstrap();
loadHealth();
setInterval(loadHealth, 10000);
