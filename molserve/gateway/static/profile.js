// molserve web page: a molecule's medicinal-chemistry profile drawn as inline SVG (no library):
// the radar of key properties, the BOILED-Egg of a batch, rule violations and structural alerts.
// Pure functions of the answers of POST /v1/predict; app.js wires them into the page.
"use strict";

// Exact properties the profile asks for beside the chosen endpoints (all computed, cheap), and
// the predicted solubility for the radar's INSOLU axis when that model is served.
const PROFILE_ENDPOINTS = ["logp_crippen", "tpsa", "molecular_weight", "hbd", "hba", "rotatable_bonds",
  "structural_alerts", "solubility", "fraction_csp3", "qed"];

// The bioavailability radar on fixed ranges, after SwissADME's (Daina, Michielin & Zoete 2017,
// Sci. Rep. 7:42717): LIPO -0.7..5 (SwissADME uses XLOGP3; here Wildman-Crippen WLOGP), SIZE
// 150..500 g/mol, POLAR TPSA 20..130 A^2, INSOLU log S -6..0, INSATU Fsp3 >= 0.25, FLEX <= 9
// rotatable bonds; plus Lipinski's HBD <= 5 and HBA <= 10. `lo`..`hi` is the favourable band,
// `min`..`max` the span of the axis.
const BIOAVAILABILITY_AXES = [
  { endpoint: "logp_crippen", label: "LIPO", name: "WLOGP", min: -3, max: 8, lo: -0.7, hi: 5 },
  { endpoint: "molecular_weight", label: "SIZE", name: "MW", min: 0, max: 800, lo: 150, hi: 500 },
  { endpoint: "tpsa", label: "POLAR", name: "TPSA", min: 0, max: 200, lo: 20, hi: 130 },
  { endpoint: "solubility", label: "INSOLU", name: "log S", min: -10, max: 2, lo: -6, hi: 0 },
  { endpoint: "fraction_csp3", label: "INSATU", name: "Fsp3", min: 0, max: 1, lo: 0.25, hi: 1 },
  { endpoint: "rotatable_bonds", label: "FLEX", name: "rot. bonds", min: 0, max: 15, lo: 0, hi: 9 },
  { endpoint: "hbd", label: "HBD", name: "H donors", min: 0, max: 10, lo: 0, hi: 5 },
  { endpoint: "hba", label: "HBA", name: "H acceptors", min: 0, max: 15, lo: 0, hi: 10 },
];

// Short names for the percentile radar's axes.
const AXIS_NAMES = {
  logp_crippen: "WLOGP", tpsa: "TPSA", molecular_weight: "MW", hbd: "HBD", hba: "HBA",
  rotatable_bonds: "RotB", solubility: "log S", qed: "QED", fraction_csp3: "Fsp3",
};

// BOILED-Egg (Daina & Zoete 2016, ChemMedChem 11:1117): the white (human intestinal absorption)
// and the yolk (blood-brain barrier) are ellipses in the (TPSA, WLOGP) plane, given as centre,
// full axis lengths along TPSA and WLOGP, and a rotation in degrees applied in data units.
const EGG = {
  white: { tpsa: 71.051, wlogp: 2.292, width: 142.081, height: 8.740, angle: -1.031325 },
  yolk: { tpsa: 38.117, wlogp: 3.177, width: 82.061, height: 5.557, angle: -0.171887 },
};

function numberOr(value, fallback = null) {
  return typeof value === "number" && Number.isFinite(value) ? value : fallback;
}

function formatNumber(value, digits = 2) {
  if (typeof value !== "number") return String(value ?? "");
  return Number.isInteger(value) ? String(value) : value.toFixed(digits);
}

function insideEllipse(e, tpsa, wlogp) {
  const t = (e.angle * Math.PI) / 180;
  const dx = tpsa - e.tpsa, dy = wlogp - e.wlogp;
  const u = dx * Math.cos(t) + dy * Math.sin(t);
  const v = -dx * Math.sin(t) + dy * Math.cos(t);
  return (u / (e.width / 2)) ** 2 + (v / (e.height / 2)) ** 2 <= 1;
}

// "yolk" (brain-penetrant), "white" (absorbed, not brain-penetrant), "grey" (neither).
function eggRegion(tpsa, wlogp) {
  if (tpsa === null || wlogp === null) return null;
  if (insideEllipse(EGG.yolk, tpsa, wlogp)) return "yolk";
  if (insideEllipse(EGG.white, tpsa, wlogp)) return "white";
  return "grey";
}

const EGG_LABELS = { yolk: "BBB (yolk)", white: "HIA (white)", grey: "outside" };

// Everything the profile panels need of one result, read once after a prediction. Fields the
// server does not send stay empty, and the panels that need them are hidden.
function moleculeProfile(result) {
  const answers = result.predictions || {};
  const value = (name) => {
    const a = answers[name];
    return a && !a.error ? numberOr(a.value) : null;
  };
  const rules = [];
  const alerts = [];
  const seen = new Set();
  const addAlert = (alert, endpoint) => {
    if (!alert || typeof alert !== "object") return;
    const key = `${alert.catalog}|${alert.description}`;
    if (seen.has(key)) {
      // The same alert from a richer source keeps the matched atoms.
      const known = alerts.find((a) => `${a.catalog}|${a.description}` === key);
      if (known && !known.atoms && Array.isArray(alert.atoms)) known.atoms = alert.atoms;
      return;
    }
    seen.add(key);
    alerts.push({ catalog: alert.catalog || "", description: alert.description || "",
      atoms: Array.isArray(alert.atoms) ? alert.atoms : null, endpoint });
  };
  const explanations = {};
  const percentiles = {};
  let inDomain = null;
  Object.entries(answers).forEach(([name, a]) => {
    if (!a || a.error) return;
    const details = a.details && typeof a.details === "object" ? a.details : null;
    if (details && Array.isArray(details.violations)) {
      const passed = a.label ? /^(pass|passed|true|yes)$/i.test(String(a.label)) : details.violations.length === 0;
      rules.push({ name, passed, label: a.label || (passed ? "pass" : "fail"), violations: details.violations });
    }
    if (details && Array.isArray(details.alerts)) details.alerts.forEach((alert) => addAlert(alert, name));
    else if (name === "structural_alerts" && Array.isArray(a.value)) a.value.forEach((alert) => addAlert(alert, name));
    if (a.explanation && typeof a.explanation === "object") explanations[name] = a.explanation;
    // Rules and alerts count violations: their percentiles say little about the molecule.
    const percentile = numberOr(a.reference_percentile);
    if (percentile !== null && !details) percentiles[name] = percentile;
    if (a.applicability_domain) inDomain = (inDomain ?? true) && Boolean(a.applicability_domain.in_domain);
  });
  const tpsa = value("tpsa"), wlogp = value("logp_crippen");
  return {
    value, tpsa, wlogp, egg: eggRegion(tpsa, wlogp), rules, alerts, explanations, percentiles, inDomain,
    failedRules: rules.filter((r) => !r.passed),
    violationCount: rules.reduce((n, r) => n + r.violations.length, 0),
  };
}

// Axes of the radar against fixed ranges, for the properties this result has.
function bioavailabilityAxes(profile) {
  return BIOAVAILABILITY_AXES.filter((axis) => profile.value(axis.endpoint) !== null).map((axis) => {
    const v = profile.value(axis.endpoint);
    const scale = (x) => Math.min(1, Math.max(0, (x - axis.min) / (axis.max - axis.min)));
    return { label: axis.label, title: `${axis.name} ${formatNumber(v)} (favourable ${axis.lo} to ${axis.hi})`,
      r: scale(v), lo: scale(axis.lo), hi: scale(axis.hi), outside: v < axis.lo || v > axis.hi };
  });
}

// Axes of the radar against the reference set: each key property's percentile (0-100) among the
// reference molecules; the band is the reference set's middle half (25th to 75th percentile).
function percentileAxes(profile, extra = []) {
  const names = [...PROFILE_ENDPOINTS.filter((n) => n !== "structural_alerts"), ...extra]
    .filter((n, i, all) => all.indexOf(n) === i && profile.percentiles[n] !== undefined);
  return names.slice(0, 10).map((name) => {
    const p = profile.percentiles[name];
    return { label: AXIS_NAMES[name] || name, title: `${name}: percentile ${formatNumber(p, 0)} of the reference set`,
      r: p / 100, lo: 0.25, hi: 0.75, outside: p < 5 || p > 95 };
  });
}

function radarSvg(axes, { size = 240, mini = false, label = "radar" } = {}) {
  if (axes.length < 3) return "";
  const c = size / 2, radius = size / 2 - (mini ? 6 : 42);
  const angle = (i) => -Math.PI / 2 + (2 * Math.PI * i) / axes.length;
  const at = (i, r) => [c + radius * r * Math.cos(angle(i)), c + radius * r * Math.sin(angle(i))];
  const polygon = (radii) => radii.map((r, i) => at(i, r).map((v) => v.toFixed(1)).join(",")).join(" ");
  const ring = (r) => `<polygon points="${polygon(axes.map(() => r))}" fill="none" stroke="#d9dee8" stroke-width="${mini ? 0.6 : 1}"/>`;
  const spokes = axes.map((_, i) => {
    const [x, y] = at(i, 1);
    return `<line x1="${c}" y1="${c}" x2="${x.toFixed(1)}" y2="${y.toFixed(1)}" stroke="#d9dee8" stroke-width="${mini ? 0.6 : 1}"/>`;
  }).join("");
  const outerBand = axes.map((a, i) => at(i, a.hi).map((v) => v.toFixed(1)).join(",")).join(" L");
  const innerBand = axes.map((a, i) => at(i, a.lo).map((v) => v.toFixed(1)).join(",")).join(" L");
  const band = `<path d="M${outerBand} Z M${innerBand} Z" fill="#7c9cf0" fill-opacity=".22" fill-rule="evenodd" stroke="none"/>`;
  const anyOutside = axes.some((a) => a.outside);
  const colour = anyOutside ? "#b42318" : "#1f7a4d";
  const shape = `<polygon class="radar-molecule" points="${polygon(axes.map((a) => a.r))}" fill="${colour}" fill-opacity=".12" stroke="${colour}" stroke-width="${mini ? 1.2 : 2}"/>`;
  const dots = mini ? "" : axes.map((a, i) => {
    const [x, y] = at(i, a.r);
    return `<circle cx="${x.toFixed(1)}" cy="${y.toFixed(1)}" r="3" fill="${a.outside ? "#b42318" : colour}"><title>${escapeHtml(a.title)}</title></circle>`;
  }).join("");
  const labels = mini ? "" : axes.map((a, i) => {
    const [x, y] = at(i, 1.16);
    const anchor = Math.abs(x - c) < 4 ? "middle" : (x > c ? "start" : "end");
    return `<text x="${x.toFixed(1)}" y="${(y + 4).toFixed(1)}" font-size="11" text-anchor="${anchor}" fill="${a.outside ? "#b42318" : "#1d2433"}">${escapeHtml(a.label)}<title>${escapeHtml(a.title)}</title></text>`;
  }).join("");
  return `<svg class="radar${mini ? " mini" : ""}" viewBox="0 0 ${size} ${size}" width="${size}" height="${size}" role="img" aria-label="${escapeHtml(label)}">
    ${[0.25, 0.5, 0.75, 1].map(ring).join("")}${spokes}${band}${shape}${dots}${labels}</svg>`;
}

function ellipsePath(e, x, y) {
  const t = (e.angle * Math.PI) / 180;
  const points = [];
  for (let k = 0; k <= 96; k += 1) {
    const s = (2 * Math.PI * k) / 96;
    const u = (e.width / 2) * Math.cos(s), v = (e.height / 2) * Math.sin(s);
    points.push(`${x(e.tpsa + u * Math.cos(t) - v * Math.sin(t)).toFixed(1)},${y(e.wlogp + u * Math.sin(t) + v * Math.cos(t)).toFixed(1)}`);
  }
  return `M${points.join(" L")} Z`;
}

// The BOILED-Egg of a batch: one point per molecule with both WLOGP and TPSA, numbered as in the
// table; `selected` is the index of the molecule shown in the detail panel.
function eggSvg(points, selected) {
  const width = 520, height = 380, left = 48, right = 16, top = 14, bottom = 42;
  // The axes span the egg and most drug-like space; a molecule far outside is drawn on the edge
  // as a hollow marker (its title gives the true values) rather than squeezing the egg.
  const tpsaMax = Math.min(300, Math.max(180, ...points.map((p) => p.tpsa + 10)));
  const wlogpMin = Math.max(-6, Math.min(-4, ...points.map((p) => p.wlogp - 0.5)));
  const wlogpMax = Math.min(10, Math.max(8, ...points.map((p) => p.wlogp + 0.5)));
  const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
  const x = (v) => left + (clamp(v, 0, tpsaMax) / tpsaMax) * (width - left - right);
  const y = (v) => height - bottom - ((clamp(v, wlogpMin, wlogpMax) - wlogpMin) / (wlogpMax - wlogpMin)) * (height - top - bottom);
  const ticks = (lo, hi, step) => {
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) out.push(v);
    return out;
  };
  const xTicks = ticks(0, tpsaMax, tpsaMax > 250 ? 50 : 20).map((v) =>
    `<line x1="${x(v)}" y1="${height - bottom}" x2="${x(v)}" y2="${height - bottom + 4}" stroke="#5b6475"/>
     <text x="${x(v)}" y="${height - bottom + 16}" font-size="10" text-anchor="middle" fill="#5b6475">${v}</text>`).join("");
  const yTicks = ticks(wlogpMin, wlogpMax, 2).map((v) =>
    `<line x1="${left - 4}" y1="${y(v)}" x2="${left}" y2="${y(v)}" stroke="#5b6475"/>
     <text x="${left - 7}" y="${y(v) + 3}" font-size="10" text-anchor="end" fill="#5b6475">${v}</text>`).join("");
  const dots = points.map((p) => {
    const on = p.index === selected;
    const off = p.tpsa > tpsaMax || p.wlogp < wlogpMin || p.wlogp > wlogpMax;
    const fill = off ? "#fff" : (on ? "#2857c5" : "#3b6fe0");
    return `<g class="egg-point${on ? " selected" : ""}${off ? " off-scale" : ""}" data-index="${p.index}" tabindex="0">
      <circle cx="${x(p.tpsa).toFixed(1)}" cy="${y(p.wlogp).toFixed(1)}" r="${on ? 7 : 5}" fill="${fill}" fill-opacity="${on || off ? 1 : 0.8}" stroke="${off ? "#2857c5" : "#fff"}" stroke-width="${off ? 2 : 1.5}"/>
      <text x="${(x(p.tpsa) + 8).toFixed(1)}" y="${(y(p.wlogp) - 6).toFixed(1)}" font-size="10" fill="#1d2433">${p.index + 1}</text>
      <title>#${p.index + 1} ${escapeHtml(p.smiles)}: TPSA ${formatNumber(p.tpsa, 1)}, WLOGP ${formatNumber(p.wlogp)}, ${EGG_LABELS[p.region]}${off ? " (off the plotted scale)" : ""}</title></g>`;
  }).join("");
  return `<svg class="egg" viewBox="0 0 ${width} ${height}" role="img" aria-label="BOILED-Egg: WLOGP against TPSA">
    <defs><clipPath id="egg-clip"><rect x="${left}" y="${top}" width="${width - left - right}" height="${height - top - bottom}"/></clipPath></defs>
    <rect x="${left}" y="${top}" width="${width - left - right}" height="${height - top - bottom}" fill="#9aa1ad" fill-opacity=".35"/>
    <g clip-path="url(#egg-clip)">
      <path class="egg-white" d="${ellipsePath(EGG.white, x, y)}" fill="#ffffff" stroke="#8c93a0"/>
      <path class="egg-yolk" d="${ellipsePath(EGG.yolk, x, y)}" fill="#f7c948" fill-opacity=".85" stroke="#c99a06"/>
      ${dots}
    </g>
    <rect x="${left}" y="${top}" width="${width - left - right}" height="${height - top - bottom}" fill="none" stroke="#5b6475"/>
    ${xTicks}${yTicks}
    <text x="${(left + width - right) / 2}" y="${height - 6}" font-size="11" text-anchor="middle">TPSA (&#8491;&#178;)</text>
    <text x="12" y="${(top + height - bottom) / 2}" font-size="11" text-anchor="middle" transform="rotate(-90 12 ${(top + height - bottom) / 2})">WLOGP</text>
  </svg>`;
}

function violationText(v) {
  if (!v || typeof v !== "object") return escapeHtml(v);
  const value = typeof v.value === "number" ? formatNumber(v.value) : escapeHtml(v.value);
  const shown = typeof v.limit === "object" ? JSON.stringify(v.limit) : String(v.limit);
  const limit = v.limit === undefined ? "" : `<span class="limit">, limit ${escapeHtml(shown.replace("<=", "≤").replace(">=", "≥"))}</span>`;
  return `${escapeHtml(v.property || "")} ${value}${limit}`;
}

function rulesHtml(rules) {
  if (!rules.length) return "";
  const rows = rules.map((r) => `<tr class="${r.passed ? "pass" : "fail"}"><td>${escapeHtml(r.name)}</td>
    <td><span class="badge ${r.passed ? "pass" : "fail"}">${escapeHtml(r.label)}</span></td>
    <td>${r.violations.length ? r.violations.map(violationText).join("<br>") : "<span class=\"units\">no violations</span>"}</td></tr>`).join("");
  return `<table class="rules"><thead><tr><th>rule</th><th></th><th>violations</th></tr></thead><tbody>${rows}</tbody></table>`;
}

function alertsHtml(alerts) {
  if (!alerts.length) return `<p class="units no-alerts">No PAINS or Brenk alerts.</p>`;
  return `<ul class="alerts">${alerts.map((a, i) => `<li data-alert="${i}"><span class="badge alert">${escapeHtml(a.catalog)}</span>
    ${escapeHtml(a.description)}${a.atoms ? ` <span class="units">atoms ${escapeHtml(a.atoms.join(", "))}</span>` : ""}</li>`).join("")}</ul>`;
}

// The descriptors that moved the prediction most, as signed bars.
function descriptorBars(descriptors) {
  const entries = Object.entries(descriptors || {}).filter(([, v]) => typeof v === "number")
    .sort((a, b) => Math.abs(b[1]) - Math.abs(a[1])).slice(0, 6);
  if (!entries.length) return "";
  const biggest = Math.max(...entries.map(([, v]) => Math.abs(v))) || 1;
  return `<table class="bars">${entries.map(([name, v]) => {
    const w = Math.round((Math.abs(v) / biggest) * 60);
    return `<tr><td>${escapeHtml(name)}</td><td class="bar-cell"><span class="bar ${v < 0 ? "neg" : "pos"}" style="width:${w}px"></span></td>
      <td class="num">${v > 0 ? "+" : ""}${formatNumber(v, 3)}</td></tr>`;
  }).join("")}</table>`;
}
