// weightvault viewer: vanilla JS over the JSON API in docs/viewer.md. No build step, no CDN.
// Every piece of file data (tensor names, metadata) is inserted with textContent, never as HTML,
// because a weight file is untrusted input.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const state = {
  files: [],
  file: null,        // index of the entry shown in Tensors/Metadata
  tree: null,        // /api/tree answer for state.file
  tensor: null,      // selected tensor name
  view: "tensors",
  compare: null,     // last /api/diff answer
  logHist: false,
};

// -- small DOM helpers ------------------------------------------------------------------------------
function el(tag, props, ...children) {
  const node = document.createElement(tag);
  applyProps(node, props);
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function applyProps(node, props) {
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k === "style") node.style.cssText = v;  // CSSOM: the page's CSP refuses style attributes
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k in node && typeof v !== "string") node[k] = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
}

function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }
const $ = (sel) => document.querySelector(sel);

// -- formatting -------------------------------------------------------------------------------------
function fmtInt(n) { return n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"); }
function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0; let v = n;
  while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return i === 0 ? `${v} B` : `${v.toFixed(1)} ${units[i]}`;
}
function fmtNum(v, digits = 6) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "string") return v;            // "NaN", "Infinity" from the API
  if (Number.isInteger(v) && Math.abs(v) < 1e15) return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-4 || a >= 1e6)) return v.toExponential(digits - 1);
  return String(Number(v.toPrecision(digits)));
}
function shapeText(shape) { return shape.length ? `[${shape.join(" × ")}]` : "scalar"; }

// -- API --------------------------------------------------------------------------------------------
class ApiFailure extends Error {}

async function api(endpoint, params) {
  const query = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) if (v !== undefined && v !== null) query.set(k, v);
  const url = `/api/${endpoint}${query.toString() ? "?" + query : ""}`;
  let response;
  try {
    response = await fetch(url, { headers: { Accept: "application/json" } });
  } catch (err) {
    throw new ApiFailure("the viewer server is not reachable (was it stopped?)");
  }
  let body = null;
  try { body = await response.json(); } catch (err) { body = null; }
  if (!response.ok || !body || body.error) {
    const msg = body && body.error ? body.error.message : `HTTP ${response.status}`;
    throw new ApiFailure(msg);
  }
  return body;
}

function showError(err) {
  const message = err instanceof ApiFailure ? err.message : `unexpected error in the page: ${err && err.message ? err.message : err}`;
  $("#error-message").textContent = message;
  $("#error-panel").hidden = false;
}
function hideError() { $("#error-panel").hidden = true; }

async function guarded(fn) {
  try { hideError(); await fn(); } catch (err) { showError(err); }
}

// -- files and views --------------------------------------------------------------------------------
function fileLabel(f) {
  if (f.kind === "run") return `${f.label}  (whole run, ${f.checkpoints.length} checkpoints: shows the latest)`;
  if (f.kind === "checkpoint") return `   └ step ${f.step ?? "?"}  ${f.label}`;
  return f.label;
}

function fillFileSelect(select, files, selected, includeRuns) {  // includeRuns: a run as a whole
  clear(select);
  for (const f of files) {
    if (!includeRuns && f.kind === "run") continue;
    select.append(el("option", { value: String(f.index), text: fileLabel(f), selected: f.index === selected }));
  }
}

// The paths the viewer was started with (a run counts once, not once per checkpoint).
function givenPaths() { return state.files.filter((f) => f.kind !== "checkpoint"); }

function setView(view) {
  state.view = view;
  for (const b of document.querySelectorAll("#tabs button")) b.setAttribute("aria-selected", String(b.dataset.view === view));
  for (const s of document.querySelectorAll(".view")) s.hidden = s.id !== `view-${view}`;
  if (view === "meta") guarded(loadMeta);
  if (view === "runs") guarded(loadRuns);
  if (view === "graph") guarded(() => showGraph(state.file));  // graph.js
}

async function selectFile(index) {
  state.file = index;
  state.tensor = null;
  $("#file-select").value = String(index);
  clear($("#tree"));
  $("#totals").textContent = "";
  clear($("#tensor-panel")).append(el("p", { class: "placeholder muted", text: "Select a tensor in the tree." }));
  const f = state.files[index];
  const runNote = $("#run-note");
  runNote.hidden = !(f && f.kind === "run");
  if (f && f.kind === "run") {
    const latest = state.files[f.checkpoints[f.checkpoints.length - 1]];
    runNote.textContent = latest ? `Run ${f.label}: showing its latest checkpoint (step ${latest.step ?? "?"}); the Runs tab has them all.` : `Run ${f.label} has no checkpoints.`;
  }
  if (state.view === "meta") await guarded(loadMeta);
  if (state.view === "graph") guarded(() => showGraph(index));
  await guarded(loadTree);
}

// -- tree -------------------------------------------------------------------------------------------
async function loadTree() {
  const file = state.file;
  let tree;
  try {
    tree = await api("tree", { file });
  } catch (err) {
    if (state.file === file) $("#tree").append(el("p", { class: "muted", text: "This file could not be read; see the error above." }));
    throw err;
  }
  if (state.file !== file) return;  // the user moved on while it loaded
  state.tree = tree;
  renderTree();
}

function matcher(text) {
  const t = text.trim();
  if (!t) return () => true;
  if (t.length > 2 && t.startsWith("/") && t.endsWith("/")) {
    try { const re = new RegExp(t.slice(1, -1), "i"); return (n) => re.test(n); } catch (err) { /* fall through */ }
  }
  const low = t.toLowerCase();
  return (n) => n.toLowerCase().includes(low);
}

function newNode(label, sep) { return { label, sep, children: new Map(), tensor: null, count: 0, params: 0, bytes: 0 }; }

// Group by "." and "/" alike: "enc.layer0.w" and "enc/attn/q" share the group "enc".
function buildTree(rows) {
  const root = newNode("", "");
  for (const row of rows) {
    const parts = [...row.name.matchAll(/([^./]+)([./]?)/g)].map((m) => [m[1], m[2]]);
    if (!parts.length) parts.push([row.name, ""]);
    let node = root;
    const path = [node];
    for (const [part, sep] of parts) {
      if (!node.children.has(part)) node.children.set(part, newNode(part, sep));
      node = node.children.get(part);
      path.push(node);
    }
    if (node.tensor || node.children.size) {
      // "a.b" beside "a/b" (or a tensor named like a group): keep it as its own leaf row
      const alt = newNode(row.name, "");
      alt.tensor = row;
      path[path.length - 2].children.set("\u0000" + row.name, alt);
      path[path.length - 1] = alt;
    } else {
      node.tensor = row;
    }
    for (const n of path) { n.count += 1; n.params += row.numel || 0; n.bytes += row.nbytes || 0; }
  }
  compress(root);
  return root;
}

// A group whose only child is a group is shown as one row: "encoder.layer0"
function compress(node) {
  for (const [key, child] of [...node.children]) {
    let c = child;
    while (!c.tensor && c.children.size === 1) {
      const only = [...c.children.values()][0];
      if (only.tensor) break;  // keep a leaf visible under its group
      c = { ...only, label: c.label + c.sep + only.label };
    }
    node.children.set(key, c);
    compress(c);
  }
}

function renderTree() {
  const tree = state.tree;
  if (!tree) return;
  const match = matcher($("#filter").value);
  const rows = tree.tensors.filter((t) => match(t.name));
  const total = tree.totals;
  const totals = $("#totals");
  clear(totals).append(
    el("span", { class: "fmt", text: tree.format }), " ",
    el("span", { text: `${fmtInt(total.tensors)} tensors · ${fmtInt(total.params)} model params · ${fmtBytes(total.bytes)}` }),
  );
  const roleLabels = { buffer: "buffers", optimizer: "optimizer", ema: "EMA", other: "other" };
  const rest = Object.entries(roleLabels).filter(([r]) => (total.by_role || {})[r]).map(([r, label]) => `${fmtInt(total.by_role[r])} ${label}`);
  if (rest.length) totals.append(el("div", { class: "roles", text: `+ ${rest.join(" · ")}` }));
  if (rows.length !== tree.tensors.length) totals.append(el("div", { class: "showing", text: `showing ${rows.length} of ${tree.tensors.length}` }));
  const dtypes = Object.entries(total.by_dtype || {}).map(([d, n]) => `${d}: ${fmtInt(n)}`).join(" · ");
  if (dtypes) totals.append(el("div", { class: "dtypes", text: dtypes }));

  const root = buildTree(rows);
  const expandAll = rows.length <= 300 || $("#filter").value.trim() !== "";
  const container = clear($("#tree"));
  sizeTreeColumns(container, tree.tensors, root);
  container.append(el("div", { class: "tree-head", role: "presentation" },
    el("span", { class: "label", text: "name" }), el("span", { class: "dtype", text: "dtype" }),
    el("span", { class: "shape", text: "shape" }), el("span", { class: "params", text: "params" }),
    el("span", { class: "bytes", text: "bytes" })));
  if (!rows.length) container.append(el("p", { class: "muted", text: "no tensor matches the filter" }));
  for (const child of root.children.values()) container.append(renderNode(child, expandAll, 0));
}

// Every column as wide as its longest text (the tree is monospace, so "ch" is exact): a shape
// is never cut, and the columns line up at every depth. The names take the rest, and the tree
// scrolls sideways when even that is too narrow.
function sizeTreeColumns(container, tensors, root) {
  const widest = (texts, header) => Math.max(header.length, ...texts.map((t) => t.length)) + 1;
  const ok = tensors.filter((t) => !t.error);
  const cols = {
    "--dtype-w": widest(ok.map((t) => t.dtype), "dtype"),
    "--shape-w": widest(ok.map((t) => shapeText(t.shape)), "shape"),
    "--params-w": widest([fmtInt(root.params)], "params"),
    "--bytes-w": widest([fmtBytes(root.bytes), "1023.9 KiB"], "bytes"),
  };
  for (const [k, v] of Object.entries(cols)) container.style.setProperty(k, `${v}ch`);
  // Widen the sidebar (up to 65% of the page) so that all columns fit beside 24ch of names.
  const probe = el("span", { text: "0".repeat(100), style: "position:absolute;visibility:hidden;white-space:pre" });
  container.append(probe);
  const ch = probe.getBoundingClientRect().width / 100;
  probe.remove();
  const chars = 24 + Object.values(cols).reduce((a, b) => a + b, 0);
  const need = Math.ceil(chars * ch + 4 * 6 + 8 + 22 + 16);  // gaps, row padding, sidebar box, scrollbar
  $("#view-tensors").style.gridTemplateColumns = `minmax(min(${need}px, 65%), 40%) minmax(0, 1fr)`;
}

function renderNode(node, expandAll, depth) {
  if (node.tensor && node.children.size === 0) return tensorRow(node.label, node.tensor, depth);
  const summary = el("summary", { class: "group" },
    el("span", { class: "label", style: `padding-left: ${depth * 12}px`, title: node.label, text: node.label }),
    el("span", { class: "count muted", text: `${node.count} tensor${node.count === 1 ? "" : "s"}` }),
    el("span", { class: "params", text: fmtInt(node.params) }),
    el("span", { class: "bytes muted", text: fmtBytes(node.bytes) }),
  );
  const details = el("details", { open: expandAll || depth === 0 }, summary);
  if (node.tensor) details.append(tensorRow("(self)", node.tensor, depth + 1));
  for (const child of node.children.values()) details.append(renderNode(child, expandAll, depth + 1));
  return details;
}

function tensorRow(label, t, depth) {
  const row = el("button", {
    class: "tensor-row" + (t.name === state.tensor ? " selected" : "") + (t.error ? " broken" : ""),
    role: "treeitem", title: t.name, dataset: { name: t.name },
    onclick: () => guarded(() => selectTensor(t.name)),
  },
  el("span", { class: "label", style: `padding-left: ${(depth || 0) * 12 + 14}px`, text: label }),
  el("span", { class: "dtype", text: t.error ? "error" : t.dtype }),
  el("span", { class: "shape", title: t.error ? t.error : shapeText(t.shape), text: t.error ? "" : shapeText(t.shape) }),
  el("span", { class: "params", text: t.error ? "" : fmtInt(t.numel) }),
  el("span", { class: "bytes muted", text: t.error ? "" : fmtBytes(t.nbytes) }));
  return row;
}

// -- tensor panel -----------------------------------------------------------------------------------
async function selectTensor(name) {
  state.tensor = name;
  for (const b of document.querySelectorAll(".tensor-row")) b.classList.toggle("selected", b.dataset.name === name);
  const panel = clear($("#tensor-panel"));
  panel.append(el("h2", { text: name }), el("p", { class: "muted loading", text: "reading and computing statistics…" }));
  const file = state.file;
  const data = await api("tensor", { file, name });
  if (state.tensor !== name || state.file !== file) return;
  renderTensor(data);
  await loadValues();
}

function statRow(label, value, cls) { return el("div", { class: "stat " + (cls || "") }, el("dt", { text: label }), el("dd", { text: value })); }

function renderTensor(data) {
  const info = data.info;
  const panel = clear($("#tensor-panel"));
  panel.append(el("h2", { text: info.name }));
  panel.append(el("div", { class: "chips" },
    el("span", { class: "chip", text: info.dtype }),
    el("span", { class: "chip", text: shapeText(info.shape) }),
    el("span", { class: "chip", text: `${fmtInt(info.numel)} params` }),
    el("span", { class: "chip", text: fmtBytes(info.nbytes) })));
  const extra = Object.entries(info.extra || {});
  if (extra.length) {
    panel.append(el("details", { class: "extra" }, el("summary", { text: "format details" }),
      el("table", {}, extra.map(([k, v]) => el("tr", {}, el("th", { text: k }), el("td", { text: typeof v === "object" ? JSON.stringify(v) : String(v) }))))));
  }
  if (data.note) panel.append(el("p", { class: "muted", text: data.note }));
  const s = data.stats;
  if (s) {
    panel.append(el("h3", { text: "Statistics" }), el("dl", { id: "stats", class: "stats" },
      statRow("min", fmtNum(s.min)), statRow("max", fmtNum(s.max)), statRow("mean", fmtNum(s.mean)), statRow("std", fmtNum(s.std)),
      statRow("zeros", fmtInt(s.zeros)), statRow("NaN", fmtInt(s.nan), s.nan ? "warn" : ""), statRow("Inf", fmtInt(s.inf), s.inf ? "warn" : ""),
      statRow("numel", fmtInt(s.numel))));
  }
  if (data.histogram) {
    const wrap = el("div", { id: "histogram" });
    const logBox = el("input", { type: "checkbox", checked: state.logHist, onchange: (e) => { state.logHist = e.target.checked; drawHistogram(wrap, data.histogram, state.logHist); } });
    panel.append(el("h3", {}, "Histogram ", el("label", { class: "small muted" }, logBox, " log scale")), wrap);
    drawHistogram(wrap, data.histogram, state.logHist);
  }
  if (data.heatmap) {
    const h = data.heatmap;
    const notes = [];
    if (h.reshaped) notes.push(`shown as ${h.source_shape[0]} × ${h.source_shape[1]} (first axis × the rest)`);
    const wrap = el("div", { id: "heatmap" });
    const modeSelect = el("select", { id: "heatmap-mode", onchange: (e) => { state.heatMode = e.target.value; drawHeatmap(wrap, h, state.heatMode); label.textContent = heatLabel(h, notes, state.heatMode); } },
      el("option", { value: "mean", text: "block mean", selected: state.heatMode !== "max_abs" }),
      el("option", { value: "max_abs", text: "block max |x|", selected: state.heatMode === "max_abs" }));
    const label = el("p", { id: "heatmap-label", class: "muted small", text: heatLabel(h, notes, state.heatMode) });
    panel.append(el("h3", {}, "Heat-map ", h.downsampled ? el("label", { class: "small muted" }, "show ", modeSelect) : null), label, wrap);
    drawHeatmap(wrap, h, state.heatMode);
  }
  const precision = el("input", { id: "precision", type: "number", min: "0", max: "16", value: String(state.precision ?? 4), onchange: () => guarded(loadValues) });
  const count = el("input", { id: "value-count", type: "number", min: "1", max: "10000", value: String(state.count ?? 100), onchange: () => guarded(loadValues) });
  panel.append(el("h3", {}, "Values ",
    el("label", { class: "small muted" }, "precision ", precision),
    el("label", { class: "small muted" }, " count ", count)),
  el("pre", { id: "values", class: "values" }));
}

async function loadValues() {
  const p = $("#precision"); const c = $("#value-count");
  if (!p || !state.tensor) return;
  state.precision = Math.max(0, Math.min(16, parseInt(p.value, 10) || 0));
  state.count = Math.max(1, Math.min(10000, parseInt(c.value, 10) || 100));
  const name = state.tensor;
  const data = await api("values", { file: state.file, name, precision: state.precision, count: state.count });
  if (name !== state.tensor) return;
  const head = data.whole ? `all ${fmtInt(data.numel)} values` : `first ${fmtInt(data.count)} of ${fmtInt(data.numel)} values (flattened)`;
  $("#values").textContent = `${head}, precision ${data.precision}\n${data.text}`;
}

// -- charts -----------------------------------------------------------------------------------------
function drawHistogram(container, hist, logScale, opts) {
  clear(container);
  const W = 640, H = 220, L = 56, R = 12, T = 10, B = 34;
  const counts = hist.counts;
  if (!counts.length) { container.append(el("p", { class: "muted", text: "no finite values" })); return; }
  const tx = (c) => (logScale ? Math.log10(c + 1) : c);
  const maxC = Math.max(...counts.map(tx), 1e-9);
  const plotW = W - L - R, plotH = H - T - B;
  const bw = plotW / counts.length;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart hist", role: "img", "aria-label": (opts && opts.label) || "histogram" });
  root.append(svg("line", { x1: L, y1: T + plotH, x2: L + plotW, y2: T + plotH, class: "axis" }));
  root.append(svg("line", { x1: L, y1: T, x2: L, y2: T + plotH, class: "axis" }));
  counts.forEach((c, i) => {
    const h = (tx(c) / maxC) * plotH;
    const rect = svg("rect", { x: L + i * bw + 0.5, y: T + plotH - h, width: Math.max(bw - 1, 0.5), height: Math.max(h, c ? 1 : 0), class: "bar" });
    rect.append(svg("title", {}, `[${fmtNum(hist.edges[i], 8)}, ${fmtNum(hist.edges[i + 1], 8)}): ${fmtInt(c)}`));
    root.append(rect);
  });
  const lo = hist.edges[0], hi = hist.edges[hist.edges.length - 1];
  // enough significant digits that the three ticks differ even for a narrow range (0.25 ± 1e-8)
  const span = Math.abs(hi - lo), mag = Math.max(Math.abs(lo), Math.abs(hi));
  const digits = span > 0 && mag > 0 ? Math.min(12, Math.max(4, Math.ceil(Math.log10(mag / span)) + 3)) : 4;
  root.append(svg("text", { x: L, y: H - 12, class: "tick", "text-anchor": "start" }, fmtNum(lo, digits)));
  root.append(svg("text", { x: L + plotW / 2, y: H - 12, class: "tick", "text-anchor": "middle" }, fmtNum((lo + hi) / 2, digits)));
  root.append(svg("text", { x: L + plotW, y: H - 12, class: "tick", "text-anchor": "end" }, fmtNum(hi, digits)));
  const top = Math.max(...counts);
  root.append(svg("text", { x: L - 6, y: T + 10, class: "tick", "text-anchor": "end" }, fmtInt(top)));
  root.append(svg("text", { x: L - 6, y: T + plotH, class: "tick", "text-anchor": "end" }, "0"));
  container.append(root, el("p", { class: "muted small", text: `${counts.length} bins · ${fmtInt(hist.total)} finite values${logScale ? " · log scale" : ""}` }));
}

// viridis-like stops for one-signed data; blue-white-red for data around zero
const SEQ = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
function lerpStops(stops, t) {
  const x = Math.min(Math.max(t, 0), 1) * (stops.length - 1);
  const i = Math.min(Math.floor(x), stops.length - 2); const f = x - i;
  return stops[i].map((c, k) => Math.round(c + (stops[i + 1][k] - c) * f));
}
function colorFor(v, lo, hi, diverging) {
  if (v === null) return [200, 200, 200];
  if (diverging) {
    const m = Math.max(Math.abs(lo), Math.abs(hi)) || 1;
    const t = v / m;  // -1..1
    return t < 0 ? lerpStops([[255, 255, 255], [33, 102, 172]], -t) : lerpStops([[255, 255, 255], [178, 24, 43]], t);
  }
  return lerpStops(SEQ, hi > lo ? (v - lo) / (hi - lo) : 0.5);
}

// What the picture shows: "block means of 521 × 1 elements: 50,000 × 8 → 96 × 8 (rows downsampled)".
function heatLabel(h, notes, mode) {
  const parts = [...notes];
  if (h.downsampled) {
    const [br, bc] = h.block || [1, 1];
    const what = mode === "max_abs" ? "largest |x| of each block" : "mean of each block";
    const axes = [h.rows < h.source_shape[0] ? "rows" : null, h.cols < h.source_shape[1] ? "columns" : null].filter(Boolean).join(" and ");
    parts.push(`${axes} downsampled to the picture: ${fmtInt(h.source_shape[0])} × ${fmtInt(h.source_shape[1])} → ${h.rows} × ${h.cols}, each cell the ${what} of up to ${fmtInt(br)} × ${fmtInt(bc)} elements`);
  }
  if (stretched(h)) parts.push("cells drawn wider than tall so a narrow tensor stays readable (aspect not kept)");
  return parts.join("; ");
}

// A very tall or very wide picture (a [50000, 8] embedding is 96 × 8 cells) would be a stripe a
// few pixels across: stretch the short side to at least MIN_PX.
const HEAT_PX = 480, MIN_PX = 240;
function stretched(h) { return Math.min(h.rows, h.cols) * Math.max(1, Math.floor(HEAT_PX / Math.max(h.cols, h.rows))) < Math.min(MIN_PX, 16 * Math.min(h.rows, h.cols)); }

function drawHeatmap(container, h, mode) {
  clear(container);
  const maxAbs = mode === "max_abs";
  const cells = maxAbs ? h.max_abs : h.values;
  const lo = maxAbs ? 0 : (h.min ?? 0), hi = maxAbs ? (h.max_abs_max ?? 0) : (h.max ?? 0);
  const diverging = lo < 0 && hi > 0;
  const canvas = el("canvas", { width: h.cols, height: h.rows, class: "heat" });
  const scale = Math.max(1, Math.floor(HEAT_PX / Math.max(h.cols, h.rows)));
  let sx = scale, sy = scale;
  if (stretched(h)) {
    if (h.cols < h.rows) sx = Math.max(scale, Math.floor(Math.min(MIN_PX, 16 * h.cols) / h.cols));
    else sy = Math.max(scale, Math.floor(Math.min(MIN_PX, 16 * h.rows) / h.rows));
  }
  canvas.style.width = `${h.cols * sx}px`;
  canvas.style.height = `${h.rows * sy}px`;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(h.cols, h.rows);
  cells.forEach((v, i) => {
    const [r, g, b] = colorFor(v, lo, hi, diverging);
    img.data.set([r, g, b, 255], i * 4);
  });
  ctx.putImageData(img, 0, 0);
  const tip = $("#tooltip");
  canvas.addEventListener("mousemove", (e) => {
    const rect = canvas.getBoundingClientRect();
    const c = Math.floor(((e.clientX - rect.left) / rect.width) * h.cols);
    const r = Math.floor(((e.clientY - rect.top) / rect.height) * h.rows);
    if (r < 0 || c < 0 || r >= h.rows || c >= h.cols) return;
    const rs = Math.floor((r * h.source_shape[0]) / h.rows), cs = Math.floor((c * h.source_shape[1]) / h.cols);
    tip.textContent = `${h.downsampled ? "block at " : ""}[${rs}, ${cs}]: ${maxAbs ? "max |x| " : ""}${fmtNum(cells[r * h.cols + c], 5)}`;
    tip.style.left = `${e.pageX + 12}px`; tip.style.top = `${e.pageY + 12}px`;
    tip.hidden = false;
  });
  canvas.addEventListener("mouseleave", () => { tip.hidden = true; });
  const legend = el("div", { class: "legend" },
    el("span", { text: fmtNum(diverging ? -Math.max(-lo, hi) : lo, 4) }),
    el("span", { class: "ramp " + (diverging ? "diverging" : "sequential") }),
    el("span", { text: fmtNum(diverging ? Math.max(-lo, hi) : hi, 4) }));
  container.append(canvas, legend);
}

function drawLineChart(container, points, metric, onPick) {
  clear(container);
  const pts = points.filter((p) => typeof p.y === "number" && typeof p.x === "number");
  if (!pts.length) { container.append(el("p", { class: "muted", text: `no numeric values of ${metric}` })); return; }
  const W = 640, H = 200, L = 60, R = 16, T = 12, B = 30;
  const xs = pts.map((p) => p.x), ys = pts.map((p) => p.y);
  let x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  if (y0 === y1) { y0 -= Math.abs(y0) * 0.1 || 1; y1 += Math.abs(y1) * 0.1 || 1; }
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart line", role: "img", "aria-label": `${metric} by step` });
  root.append(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }), svg("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }));
  root.append(svg("polyline", { points: pts.map((p) => `${sx(p.x)},${sy(p.y)}`).join(" "), class: "series" }));
  for (const p of pts) {
    const dot = svg("circle", { cx: sx(p.x), cy: sy(p.y), r: 4, class: "point" }, svg("title", {}, `step ${p.x}: ${metric} = ${fmtNum(p.y)}`));
    dot.addEventListener("click", () => onPick(p));
    root.append(dot);
  }
  root.append(svg("text", { x: L, y: H - 10, class: "tick", "text-anchor": "start" }, `step ${x0}`));
  root.append(svg("text", { x: W - R, y: H - 10, class: "tick", "text-anchor": "end" }, `step ${x1}`));
  root.append(svg("text", { x: L - 6, y: T + 8, class: "tick", "text-anchor": "end" }, fmtNum(y1, 4)));
  root.append(svg("text", { x: L - 6, y: H - B, class: "tick", "text-anchor": "end" }, fmtNum(y0, 4)));
  container.append(root);
}

// -- compare ----------------------------------------------------------------------------------------
async function runCompare(event) {
  if (event) event.preventDefault();
  const a = $("#compare-a").value, b = $("#compare-b").value;
  const out = clear($("#compare-result"));
  out.append(el("p", { class: "muted loading", text: "comparing every tensor…" }));
  const report = await api("diff", { a, b, atol: $("#compare-atol").value || 0, rtol: $("#compare-rtol").value || 0 });
  state.compare = report;
  renderCompare(report);
}

function section(title, count, body) {
  return el("section", { class: "diff-section" }, el("h3", {}, `${title} `, el("span", { class: "badge", text: String(count) })), body);
}

// Compare groups tensors by what they are (weightvault.inspect.tensor_role), so a step counter
// that moved by 100 or RNG bytes that moved by 255 neither hide nor flatten the weights' changes.
const COMPARE_GROUPS = [
  { id: "model", title: "Model", roles: ["model", "buffer", "ema"] },
  { id: "optimizer", title: "Optimizer state", roles: ["optimizer"] },
  { id: "other", title: "Other state (counters, RNG, learning rates)", roles: ["other"] },
];
function groupOf(role) { return (COMPARE_GROUPS.find((g) => g.roles.includes(role)) || COMPARE_GROUPS[0]).id; }

const SORTS = {
  max_abs: { label: "max |Δ| (largest first)", key: (v) => -(typeof v.max_abs === "number" ? v.max_abs : Infinity) },
  max_rel: { label: "max rel (largest first)", key: (v) => -(typeof v.max_rel === "number" ? v.max_rel : Infinity) },
  changed: { label: "changed fraction", key: (v) => -(v.numel ? v.changed / v.numel : 0) },
  name: { label: "name", key: (v) => v.name },
};
function sortRows(rows, by) {
  const key = (SORTS[by] || SORTS.max_abs).key;
  return [...rows].sort((x, y) => { const a = key(x), b = key(y); return a < b ? -1 : a > b ? 1 : (x.name < y.name ? -1 : 1); });
}

function renderCompare(r) {
  const out = clear($("#compare-result"));
  out.append(el("p", { id: "compare-summary", class: r.identical ? "ok" : "changed",
    text: r.identical ? `identical (${r.equal} tensors equal)` :
      `${r.value_changed.length} changed · ${r.added.length} added · ${r.removed.length} removed · ${r.shape_changed.length} shape changed · ${r.dtype_changed.length} dtype changed · ${r.equal} equal` }));
  const filter = el("input", { id: "compare-filter", type: "search", placeholder: "filter (substring or /regex/)", value: state.compareFilter || "",
    oninput: (e) => { state.compareFilter = e.target.value; renderCompareLists(r); } });
  const sort = el("select", { id: "compare-sort", onchange: (e) => { state.compareSort = e.target.value; renderCompareLists(r); } },
    Object.entries(SORTS).map(([k, v]) => el("option", { value: k, text: v.label, selected: k === (state.compareSort || "max_abs") })));
  out.append(el("div", { class: "toolbar compare-tools" }, el("label", {}, "filter ", filter), el("label", {}, "sort by ", sort)));
  // Lists on the left; B − A of the selected tensor on the right, sticky, so it is always on screen.
  out.append(el("div", { class: "compare-body" }, el("div", { id: "compare-lists" }), el("aside", { id: "diff-histogram", class: "diff-panel" },
    el("p", { class: "muted", text: r.value_changed.length ? "click a changed tensor for the histogram of its differences (B − A)" : "no tensor changed its values" }))));
  renderCompareLists(r);
  if (r.value_changed.length) {
    const first = sortRows(r.value_changed.filter((v) => groupOf(v.role) === "model"), state.compareSort)[0] || sortRows(r.value_changed, state.compareSort)[0];
    guarded(() => loadDiffTensor(r, first.name));
  }
}

function renderCompareLists(r) {
  const out = clear($("#compare-lists"));
  const match = matcher(state.compareFilter || "");
  const changed = r.value_changed.filter((v) => match(v.name));
  const shown = [...changed, ...r.added, ...r.removed, ...r.shape_changed, ...r.dtype_changed].filter((t) => match(t.name)).length;
  const total = r.value_changed.length + r.added.length + r.removed.length + r.shape_changed.length + r.dtype_changed.length;
  if (shown !== total) out.append(el("p", { class: "muted small showing", text: `showing ${shown} of ${total}` }));
  for (const g of COMPARE_GROUPS) {
    const rows = sortRows(changed.filter((v) => groupOf(v.role) === g.id), state.compareSort);
    if (!rows.length) continue;
    // Bars are scaled within the group: its largest max |Δ| is a full bar.
    const maxAbs = Math.max(...rows.map((v) => (typeof v.max_abs === "number" ? v.max_abs : 0)), 1e-300);
    const table = el("table", { class: "grid changed-table", id: g.id === "model" ? "changed-table" : `changed-table-${g.id}`, dataset: { group: g.id } },
      el("tr", {}, ["tensor", "changed", "max |Δ|", "", "max rel"].map((h) => el("th", { text: h }))),
      rows.map((v) => el("tr", { class: "clickable", dataset: { name: v.name, role: v.role }, onclick: () => guarded(() => loadDiffTensor(r, v.name)) },
        el("td", { class: "name" }, v.name, v.role !== "model" && g.id === "model" ? el("span", { class: "role-tag", text: v.role }) : null),
        el("td", { text: `${fmtInt(v.changed)} / ${fmtInt(v.numel)}` }),
        el("td", { text: fmtNum(v.max_abs, 4) }),
        el("td", { class: "barcell" }, el("span", { class: "hbar", dataset: { w: String(typeof v.max_abs === "number" ? v.max_abs / maxAbs : 1) } })),
        el("td", { text: fmtNum(v.max_rel, 4) }))));
    for (const bar of table.querySelectorAll(".hbar")) bar.style.width = `${Math.max(2, Number(bar.dataset.w) * 120)}px`;
    out.append(section(`Changed values: ${g.title}`, rows.length, el("div", {}, table,
      el("p", { class: "muted small", text: `bars: max |Δ| relative to this group's largest (${fmtNum(maxAbs, 4)})` }))));
  }
  const list = (rows, fmt) => el("ul", { class: "names" }, rows.map((x) => el("li", {}, ...fmt(x), x.role && x.role !== "model" ? el("span", { class: "role-tag", text: x.role }) : null)));
  const pick = (rows) => rows.filter((t) => match(t.name));
  const added = pick(r.added), removed = pick(r.removed), shapes = pick(r.shape_changed), dtypes = pick(r.dtype_changed);
  if (added.length) out.append(section("Added (only in B)", added.length, list(added, (t) => [el("span", { class: "name", text: t.name }), ` ${t.dtype} ${shapeText(t.shape)}`])));
  if (removed.length) out.append(section("Removed (only in A)", removed.length, list(removed, (t) => [el("span", { class: "name", text: t.name }), ` ${t.dtype} ${shapeText(t.shape)}`])));
  if (shapes.length) out.append(section("Shape changed", shapes.length, list(shapes, (t) => [el("span", { class: "name", text: t.name }), ` ${shapeText(t.a)} → ${shapeText(t.b)}`])));
  if (dtypes.length) out.append(section("Dtype changed", dtypes.length, list(dtypes, (t) => [el("span", { class: "name", text: t.name }), ` ${t.a} → ${t.b}`])));
  if (!shown && total) out.append(el("p", { class: "muted", text: "nothing matches the filter" }));
  if (state.diffName) for (const tr of document.querySelectorAll(".changed-table tr")) tr.classList.toggle("selected", tr.dataset.name === state.diffName);
}

async function loadDiffTensor(report, name) {
  state.diffName = name;
  for (const tr of document.querySelectorAll(".changed-table tr")) tr.classList.toggle("selected", tr.dataset.name === name);
  const data = await api("diff_tensor", { a: report.a, b: report.b, name });
  if (state.diffName !== name) return;
  const wrap = clear($("#diff-histogram"));
  const s = data.stats;
  wrap.append(el("h4", { text: `Differences B − A of ${name}` }),
    el("dl", { class: "stats" }, statRow("min Δ", fmtNum(s.min)), statRow("max Δ", fmtNum(s.max)), statRow("max |Δ|", fmtNum(s.max_abs)),
      statRow("mean Δ", fmtNum(s.mean)), statRow("std Δ", fmtNum(s.std)), statRow("unchanged", fmtInt(s.zeros)), statRow("NaN", fmtInt(s.nan))));
  const chart = el("div");
  wrap.append(chart);
  drawHistogram(chart, data.histogram, state.logHist, { label: "histogram of differences" });
  wrap.scrollIntoView({ block: "nearest" });  // on a narrow screen the panel sits below the lists
}

// -- metadata ---------------------------------------------------------------------------------------
function kvTable(obj) {
  return el("table", { class: "kv" }, Object.entries(obj).map(([k, v]) =>
    el("tr", {}, el("th", { text: k }), el("td", { text: v !== null && typeof v === "object" ? JSON.stringify(v) : fmtNum(v) }))));
}

async function loadMeta() {
  const panel = clear($("#meta-panel"));
  if (state.file === null) return;
  const m = await api("meta", { file: state.file });
  clear(panel);
  panel.append(el("h2", { text: m.label }));
  if (m.kind === "run") { panel.append(el("p", { text: "A training run; see the Runs tab." })); return; }
  const file = state.files[m.file] || {};
  panel.append(kvTable({ path: file.path, format: m.format, tensors: m.tensors, ...(m.kind === "checkpoint" ? { step: m.step } : {}) }));
  const training = m.training || {};
  if (Object.keys(training).length) {
    const { metrics, ...rest } = training;
    panel.append(el("h3", { text: "Training" }), kvTable(rest));
    if (metrics && typeof metrics === "object") panel.append(el("h4", { text: "metrics" }), kvTable(metrics));
  }
  if (m.provenance) {
    const { source, ...rest } = m.provenance;
    panel.append(el("h3", { text: "Provenance" }), kvTable(rest));
    if (source) panel.append(el("h4", { text: "converted from" }), kvTable(source));
  }
  if (m.transforms) {
    const t = m.transforms;
    panel.append(el("h3", { text: `Conversion transforms (${t.rules ?? "rules"})` }));
    const steps = t.steps || [];
    panel.append(el("table", { class: "grid", id: "transforms" },
      el("tr", {}, ["target", "sources", "transforms"].map((h) => el("th", { text: h }))),
      steps.map((s) => el("tr", {},
        el("td", { class: "name", text: s.target }),
        el("td", { class: "name", text: (s.sources || []).join(", ") }),
        el("td", { text: [s.combine, ...(s.transforms || [])].filter(Boolean).map(describeTransform).join(" → ") || "copy" })))));
    if (t.dropped && Object.keys(t.dropped).length) panel.append(el("h4", { text: "dropped" }), kvTable(t.dropped));
    if (t.notes && t.notes.length) panel.append(el("ul", {}, t.notes.map((n) => el("li", { text: n }))));
  }
  if (m.saved_scalars) panel.append(el("h3", { text: "Saved values" }), kvTable(m.saved_scalars));
  const raw = JSON.stringify(m.metadata, null, 2);
  panel.append(el("details", { open: raw.length < 4000, class: "raw-meta" },
    el("summary", { text: `Metadata (${raw.length.toLocaleString("en-US")} characters of JSON)` }),
    el("pre", { class: "json", text: raw })));
}

function describeTransform(t) {
  const conf = Object.entries(t.configuration || {}).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(", ");
  return `${t.name}(${conf})`;
}

// -- runs -------------------------------------------------------------------------------------------
async function loadRuns() {
  const panel = clear($("#runs-panel"));
  const data = await api("runs");
  if (!data.runs.length) { panel.append(el("p", { class: "muted", text: "No run directory was opened." })); return; }
  for (const run of data.runs) {
    const names = run.metric_names;
    const chart = el("div", { class: "run-chart" });
    const pick = (p) => { setView("tensors"); guarded(() => selectFile(p.file)); };
    const points = (metric) => run.checkpoints.map((c) => ({ x: c.step, y: c.metrics[metric], file: c.file }));
    const select = el("select", { class: "metric-select", onchange: (e) => drawLineChart(chart, points(e.target.value), e.target.value, pick) },
      names.map((n) => el("option", { value: n, text: n })));
    const best = run.best;
    panel.append(el("h2", { text: run.label }), el("p", { class: "muted" }, `${run.checkpoints.length} checkpoints`,
      best ? ` · best: step ${best.step} by ${best.metric} (${best.mode}; ${best.source})` : " · no best checkpoint (no best= metric and no loss recorded)"));
    if (names.length) { panel.append(el("label", {}, "metric ", select), chart); drawLineChart(chart, points(names[0]), names[0], pick); }
    panel.append(el("table", { class: "grid runs-table" },
      el("tr", {}, ["step", "", ...names, "kept because", ""].map((h) => el("th", { text: h }))),
      run.checkpoints.map((c) => el("tr", { dataset: { step: String(c.step ?? "") }, class: [c.best ? "best" : "", c.latest ? "latest" : ""].join(" ").trim() || null },
        el("td", { text: String(c.step ?? "?") }),
        el("td", { class: "marks" },
          c.best ? el("span", { class: "mark best", title: best ? `best by ${best.metric} (${best.mode})` : "best", text: "best" }) : null,
          c.latest ? el("span", { class: "mark latest", title: "the newest checkpoint", text: "latest" }) : null),
        names.map((n) => el("td", { class: best && n === best.metric && c.best ? "best-value" : null, text: fmtNum(c.metrics[n]) })),
        el("td", { class: "kept", text: (c.kept_because || []).join(", ") || "–" }),
        el("td", {}, el("button", { text: "open", onclick: () => pick(c) }))))));
  }
}

// -- start ------------------------------------------------------------------------------------------
async function init() {
  $("#error-close").addEventListener("click", hideError);
  for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => setView(b.dataset.view));
  $("#filter").addEventListener("input", renderTree);
  $("#file-select").addEventListener("change", (e) => guarded(() => selectFile(Number(e.target.value))));
  $("#compare-form").addEventListener("submit", (e) => guarded(() => runCompare(e)));
  const { files } = await api("files");
  state.files = files;
  // Start on the first path given; a run directory is selected as a whole (its latest checkpoint
  // is what the Tensors view shows).
  const given = givenPaths();
  const firstRun = files.find((f) => f.kind === "run");
  fillFileSelect($("#file-select"), files, given[0].index, true);
  const [a, b] = compareDefaults(given);
  fillFileSelect($("#compare-a"), files, a, true);
  fillFileSelect($("#compare-b"), files, b, true);
  $('#tabs button[data-view="runs"]').hidden = !firstRun;
  initGraph(files, given);  // graph.js
  // Two paths given ("weightvault view before after"): comparing them is why the page was opened.
  if (given.length === 2) {
    setView("compare");
    guarded(() => runCompare());
  }
  await selectFile(given[0].index);
}

// A and B of the Compare tab: the first two paths given; one run alone: its last two checkpoints.
function compareDefaults(given) {
  if (given.length >= 2) return [given[0].index, given[1].index];
  const only = given[0];
  if (only.kind === "run" && only.checkpoints.length >= 2) return only.checkpoints.slice(-2);
  return [only.index, only.index];
}

document.addEventListener("DOMContentLoaded", () => guarded(init));
