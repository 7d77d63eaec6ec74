// geoalign web page: upload photos, show each prediction on an offline Leaflet map.
// Talks only to this server: /page-config.json, /basemap.geojson, /v1/predict and, for
// concept-aware models, /v1/explain.
"use strict";

const $ = (id) => document.getElementById(id);
let pageConfig = { tiles: null, api_key_required: false, max_images: 16, max_upload_mb: 20 };
let basemap = null; // the country outlines, fetched once and shared by every map

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function placeName(place) {
  if (!place) return "";
  return [place.city, place.region, place.country_name].filter(Boolean).join(", ");
}

function setStatus(text) { $("status").textContent = text; }

async function loadPageConfig() {
  try {
    const res = await fetch("/page-config.json");
    if (res.ok) pageConfig = await res.json();
  } catch (err) { /* the defaults stand */ }
}

async function loadConfig() {
  await loadPageConfig();
  $("key-field").hidden = !pageConfig.api_key_required;
  $("limits").textContent = `Up to ${pageConfig.max_upload_mb} MB per request. Photos are sent only to this server.`;
  try {
    const res = await fetch("/basemap.geojson");
    if (res.ok) basemap = await res.json();
  } catch (err) { basemap = null; }
}

function priorParams(params) {
  const kind = $("prior-kind").value;
  if (kind === "within" && $("within").value.trim()) params.set("within", $("within").value.trim());
  if (kind === "near" && $("near").value.trim()) {
    params.set("near", $("near").value.trim());
    params.set("radius_km", $("radius-km").value.trim() || "500");
  }
  if (kind === "bbox" && $("bbox").value.trim()) params.set("bbox", $("bbox").value.trim());
}

function makeMap(element) {
  const map = L.map(element, { worldCopyJump: true, minZoom: 1, maxZoom: 12 }).setView([20, 0], 1);
  if (pageConfig.tiles) {
    L.tileLayer(pageConfig.tiles, { maxZoom: 18, attribution: "tiles: configured server" }).addTo(map);
  } else if (basemap) {
    L.geoJSON(basemap, {
      interactive: false,
      style: { className: "ga-country", color: "#7c8b99", weight: 0.6, fillColor: "#f3efe6", fillOpacity: 1 },
    }).addTo(map);
  }
  return map;
}

function download(name, data, type) {
  const blob = new Blob([JSON.stringify(data, null, 2)], { type });
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  a.textContent = name.endsWith(".geojson") ? "GeoJSON" : "JSON";
  return a;
}

function stem(name) { return name.replace(/\.[^.]*$/, "") || "photo"; }

function verdictHtml(check) {
  if (!check) return "";
  if (check.error) {
    return `<div class="verdict none" data-testid="exif">EXIF claim: ${escapeHtml(check.error.replace(/^.*?: /, ""))}</div>`;
  }
  const where = `${check.claimed_lat.toFixed(4)}, ${check.claimed_lon.toFixed(4)}`;
  return `<div class="verdict ${check.verdict}" data-testid="exif">EXIF claim ${where}: <b>${check.verdict}</b>
    at α=${check.alpha} (claim level ${(check.level * 100).toFixed(0)}%, ${check.distance_km.toFixed(0)} km from the estimate)</div>`;
}

function conceptsHtml(exp) {
  // The concept explanation (concept-aware models): the strongest concepts with their scores,
  // and the country the concept bottleneck reads from them with each concept's share.
  if (!exp) return "";
  if (exp.error) return `<div class="concepts none" data-testid="concepts">Concepts: ${escapeHtml(exp.error)}</div>`;
  const rows = exp.concept_activations.map((c) => `<tr><td>${escapeHtml(c.concept)}</td>
      <td class="muted">${escapeHtml(c.category)}</td><td class="num">${c.activation.toFixed(3)}</td></tr>`).join("");
  let country = "";
  if (exp.country) {
    const shares = exp.concept_contributions.slice(0, 5).map((c) =>
      `${escapeHtml(c.concept)} ${c.contribution >= 0 ? "+" : ""}${(c.contribution * 100).toFixed(0)}%`).join(", ");
    country = `<p data-testid="concept-country">Concept bottleneck: <b>${escapeHtml(exp.country.name)}</b>
      (${escapeHtml(exp.country.code)}) ${(exp.country.prob * 100).toFixed(0)}%${shares ? ` — ${shares}` : ""}</p>`;
  }
  return `<div class="concepts" data-testid="concepts"><h3>Strongest concepts</h3>
    <table><thead><tr><th>concept</th><th>category</th><th>score</th></tr></thead><tbody>${rows}</tbody></table>${country}</div>`;
}

function heatColour(t) {
  // pale yellow (t = 0) to dark red (t = 1), the YlOrRd ramp of the CLI's maps
  const stops = [[255, 237, 160], [254, 178, 76], [240, 59, 32], [128, 0, 38]];
  const x = t * (stops.length - 1), i = Math.min(Math.floor(x), stops.length - 2), f = x - i;
  const c = stops[i].map((v, k) => Math.round(v + (stops[i + 1][k] - v) * f));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

function renderResult(card, file, record, geojson, check, exp) {
  const panel = card.querySelector(".panel");
  const rows = record.predictions.map((p) => `<tr><td class="num">${p.rank}</td>
      <td>${escapeHtml(placeName(p.place)) || "—"}</td>
      <td class="num">${(p.prob * 100).toFixed(1)}%</td>
      <td class="num">${p.lat.toFixed(3)}, ${p.lon.toFixed(3)}</td></tr>`).join("");
  const est = record.estimate ? `<p data-testid="estimate">Estimate (${record.estimate.kind}): ${record.estimate.lat.toFixed(4)}, ${record.estimate.lon.toFixed(4)}</p>` : "";
  const regions = (record.regions || []).map((r) => `<li>${escapeHtml(r.summary)}</li>`).join("");
  panel.insertAdjacentHTML("beforeend", `
    <table data-testid="topk"><thead><tr><th>#</th><th>place</th><th>prob</th><th>lat, lon</th></tr></thead><tbody>${rows}</tbody></table>
    ${est}<ul class="regions">${regions}</ul>${verdictHtml(check)}${conceptsHtml(exp)}<p class="downloads"></p>`);
  const links = panel.querySelector(".downloads");
  links.append("Download: ", download(`${stem(file.name)}.json`, record, "application/json"),
    download(`${stem(file.name)}.geojson`, geojson, "application/geo+json"));

  const map = makeMap(card.querySelector(".map"));
  const layers = [];
  if (geojson) {
    // The heatmap: the densest cells of the smoothed density, coloured on a log scale over
    // three decades below the densest (as the CLI's maps), drawn under the region outlines.
    const heat = geojson.features.filter((f) => f.properties.kind === "heat");
    if (heat.length) {
      const top = Math.log10(Math.max(...heat.map((f) => f.properties.density_km2)));
      L.geoJSON({ type: "FeatureCollection", features: heat }, {
        interactive: false,
        style: (f) => {
          const t = Math.max(0, Math.min(1, 1 + (Math.log10(f.properties.density_km2) - top) / 3));
          return { className: "ga-heat", stroke: false, fillColor: heatColour(t), fillOpacity: 0.25 + 0.45 * t };
        },
      }).addTo(map);
    }
    const regionLayer = L.geoJSON(geojson, {
      filter: (f) => f.properties.kind === "region",
      style: (f) => ({ className: "ga-region", color: "#c2410c", weight: 1.5,
        fillOpacity: f.properties.p <= 0.5 ? 0.35 : 0.15 }),
      onEachFeature: (f, layer) => layer.bindTooltip(escapeHtml(f.properties.summary)),
    }).addTo(map);
    layers.push(regionLayer);
  }
  record.predictions.forEach((p) => {
    const pin = L.circleMarker([p.lat, p.lon], { className: "ga-pin", radius: p.rank === 1 ? 8 : 6,
      color: "#1d4ed8", weight: 2, fillColor: p.rank === 1 ? "#1d4ed8" : "#93c5fd", fillOpacity: 0.9 })
      .bindTooltip(`#${p.rank} ${escapeHtml(placeName(p.place) || "")} ${(p.prob * 100).toFixed(1)}%`)
      .addTo(map);
    layers.push(pin);
  });
  if (record.estimate) {
    layers.push(L.circleMarker([record.estimate.lat, record.estimate.lon], { className: "ga-estimate",
      radius: 5, color: "#111", weight: 2, fillColor: "#facc15", fillOpacity: 1 })
      .bindTooltip(`estimate (${record.estimate.kind})`).addTo(map));
  }
  if (check && !check.error) {
    layers.push(L.circleMarker([check.claimed_lat, check.claimed_lon], { className: "ga-claim",
      radius: 6, color: check.consistent ? "#15803d" : "#b91c1c", weight: 3, fill: false })
      .bindTooltip("EXIF claim").addTo(map));
  }
  const bounds = L.featureGroup(layers).getBounds();
  if (bounds.isValid()) map.fitBounds(bounds.pad(0.3), { maxZoom: 6 });
  card.dataset.state = "done";
}

function renderError(card, message) {
  card.querySelector(".map").remove();
  card.querySelector(".panel").remove();
  card.insertAdjacentHTML("beforeend", `<div class="error" data-testid="error">${escapeHtml(message)}</div>`);
  card.dataset.state = "error";
}

async function predictOne(file) {
  const card = document.createElement("article");
  card.className = "card";
  card.dataset.state = "pending";
  card.innerHTML = `<h2>${escapeHtml(file.name)}</h2><div class="map"></div><div class="panel"></div>`;
  $("results").prepend(card);
  if (file.type.startsWith("image/")) {
    const img = document.createElement("img");
    img.className = "thumb";
    img.alt = file.name;
    img.src = URL.createObjectURL(file);
    card.querySelector(".panel").append(img);
  }
  const params = new URLSearchParams({ top_k: $("top-k").value || "5", estimate: $("estimate").value,
    regions: "0.5,0.9", geojson: "true", heatmap: "true", check_exif: "true" });
  priorParams(params);
  const body = new FormData();
  body.append("image", file, file.name);
  const headers = {};
  if ($("api-key").value) headers["X-API-Key"] = $("api-key").value;
  if (pageConfig.explain === null || pageConfig.explain === undefined) await loadPageConfig();
  const explained = pageConfig.explain ? explainOne(file, headers) : Promise.resolve(null);
  try {
    const res = await fetch(`/v1/predict?${params}`, { method: "POST", body, headers });
    const data = await res.json().catch(() => null);
    if (!res.ok) {
      const err = data && data.error ? data.error : { message: `HTTP ${res.status}` };
      renderError(card, `Could not locate ${file.name}: ${err.message}` + (err.request_id ? ` (request ${err.request_id})` : ""));
      return;
    }
    const record = data.results[0];
    if (record.error) { renderError(card, `Could not read ${file.name}: ${record.error}`); return; }
    renderResult(card, file, record, data.geojson && data.geojson[0], data.verification && data.verification[0],
      await explained);
  } catch (err) {
    renderError(card, `Could not reach the server: ${err}`);
  }
}

async function explainOne(file, headers) {
  // Never fails the card: a problem becomes the panel's one-line message.
  const body = new FormData();
  body.append("image", file, file.name);
  try {
    const res = await fetch("/v1/explain", { method: "POST", body, headers });
    const data = await res.json().catch(() => null);
    if (!res.ok) return { error: data && data.error ? data.error.message : `HTTP ${res.status}` };
    return data.results[0];
  } catch (err) {
    return { error: `could not reach the server: ${err}` };
  }
}

async function handleFiles(files) {
  const list = Array.from(files);
  if (!list.length) return;
  setStatus(`locating ${list.length} photo${list.length > 1 ? "s" : ""}…`);
  await Promise.all(list.map(predictOne));
  setStatus(`done: ${list.length} photo${list.length > 1 ? "s" : ""}`);
}

function wire() {
  $("files").addEventListener("change", (e) => { handleFiles(e.target.files); e.target.value = ""; });
  const drop = $("drop");
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
  drop.addEventListener("drop", (e) => handleFiles(e.dataTransfer.files));
  $("prior-kind").addEventListener("change", () => {
    for (const kind of ["within", "near", "bbox"]) $(`prior-${kind}`).hidden = $("prior-kind").value !== kind;
  });
}

wire();
loadConfig().then(() => { document.body.dataset.ready = "true"; });
