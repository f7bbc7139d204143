// weightvault viewer, Graph tab: the model graph of /api/graph laid out by the vendored elkjs
// (static/vendor/elk.bundled.js, layered algorithm), drawn as SVG, with pan, zoom, search,
// collapsible name scopes, the weights of a clicked node, and nodes coloured by how much their
// weights changed against another file (/api/diff).
// Uses the helpers of app.js (el, svg, clear, $, api, guarded, fmt*, statRow, drawHistogram,
// drawHeatmap). Names from the file are only ever set with textContent / setAttribute.
"use strict";

const graph = {
  file: null,          // entry index whose graph is loaded
  data: null,          // /api/graph answer
  expanded: new Set(), // expanded scope ids
  scopes: new Map(),   // id -> {id, parent, name, nodes}
  layout: null,        // {items: Map(id -> box), edges: [...], width, height}
  view: { x: 0, y: 0, k: 1 },
  selected: null,      // visible item id
  diff: null,          // {b, byTensor: Map(name -> row), metric}
  diffFile: "",
  timings: null,
  elk: null,
  token: 0,            // bumps on every (re)layout so a slow one that finishes late is dropped
};
window.__graphTimings = [];

// More nodes than this start with every scope collapsed (they lay out as one box each).
const COLLAPSE_ABOVE = 300;
const NODE_H = 38, SCOPE_H = 44, CHAR_W = 6.6;
const ELK_OPTIONS = {
  "elk.algorithm": "layered",
  "elk.direction": "DOWN",
  "elk.edgeRouting": "POLYLINE",
  "elk.layered.thoroughness": "1",
  // Chosen for speed on large graphs (bench/viewer_graph.py, 2,004 ONNX nodes fully expanded on a
  // quiet 2-core machine: 4.6 s with network-simplex layering and linear-segment placement, 2.8 s
  // with these); the layouts stay readable for the layer stacks models are.
  "elk.layered.layering.strategy": "LONGEST_PATH",
  "elk.layered.crossingMinimization.greedySwitch.type": "OFF",
  "elk.layered.nodePlacement.strategy": "SIMPLE",
  "elk.separateConnectedComponents": "false",
  "elk.layered.considerModelOrder.strategy": "NODES_AND_EDGES",
  "elk.spacing.nodeNode": "16",
  "elk.layered.spacing.nodeNodeBetweenLayers": "26",
};

function initGraph(files, given) {
  const select = $("#graph-diff-file");
  clear(select).append(el("option", { value: "", text: "(nothing)" }));
  for (const f of files) select.append(el("option", { value: String(f.index), text: fileLabel(f) }));
  // Two paths given: colour the first one's graph by what changed in the second.
  if (given.length === 2) { select.value = String(given[1].index); graph.diffFile = select.value; }
  select.addEventListener("change", () => { graph.diffFile = select.value; guarded(loadGraphDiff); });
  $("#graph-diff-metric").addEventListener("change", () => { if (graph.diff) { graph.diff.metric = $("#graph-diff-metric").value; paintDiff(); } });
  $("#graph-expand").addEventListener("click", () => guarded(() => { for (const id of graph.scopes.keys()) graph.expanded.add(id); return relayout(); }));
  $("#graph-collapse").addEventListener("click", () => guarded(() => { graph.expanded.clear(); return relayout(); }));
  $("#graph-fit").addEventListener("click", () => fitView());
  $("#graph-search").addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); guarded(findNode); } });
  initPanZoom($("#graph-canvas"));
}

function graphStatus(text) { $("#graph-status").textContent = text; }

async function showGraph(file) {
  if (file === null || file === undefined) return;
  if (graph.file === file && graph.data) return;  // already shown (a failed load is retried)
  graph.file = file;
  graph.data = null;
  graph.selected = null;
  const canvas = clear($("#graph-canvas"));
  clear($("#graph-panel")).append(el("p", { class: "muted", text: "Click a node for its attributes and weights; double-click a box of collapsed nodes to open it." }));
  graphStatus("reading the graph…");
  const t0 = performance.now();
  let data;
  try {
    data = await api("graph", { file });
  } catch (err) {
    if (graph.file === file) { graphStatus(""); canvas.append(el("p", { class: "muted graph-none", text: "No graph: see the error above." })); }
    throw err;
  }
  if (graph.file !== file) return;
  if (!data.available) {
    graphStatus("");
    canvas.append(el("p", { class: "muted graph-none", text: `No graph: ${data.reason}.` }));
    return;
  }
  graph.data = data;
  graph.scopes = new Map(data.scopes.map((s) => [s.id, s]));
  graph.expanded = new Set(data.node_count > COLLAPSE_ABOVE ? [] : graph.scopes.keys());
  graph.fetchMs = performance.now() - t0;
  await relayout();
  if (graph.diffFile) await loadGraphDiff();
}

// -- which items are visible: a node, or the outermost collapsed scope that holds it ---------------
function scopeReps() {
  // Scopes sorted so a parent comes before its children ("a" < "a/b"); no recursion.
  const rep = new Map();  // scope id -> id of the collapsed scope that stands for it, or null
  for (const id of [...graph.scopes.keys()].sort()) {
    const s = graph.scopes.get(id);
    const up = s.parent ? rep.get(s.parent) : null;
    rep.set(id, up ? up : (graph.expanded.has(id) ? null : id));
  }
  return rep;
}

function visibleGraph() {
  const data = graph.data;
  const rep = scopeReps();
  const itemOf = new Array(data.nodes.length);
  const items = new Map();
  for (const n of data.nodes) {
    const r = n.scope ? rep.get(n.scope) : null;
    const id = r ? `s:${r}` : `n:${n.id}`;
    itemOf[n.id] = id;
    if (!items.has(id)) items.set(id, r ? { id, scope: r, members: [] } : { id, node: n, members: [] });
    items.get(id).members.push(n.id);
  }
  const edges = new Map();
  for (const e of data.edges) {
    const s = itemOf[e.source], t = itemOf[e.target];
    if (s === t) continue;
    const key = `${s}\u0000${t}`;
    const have = edges.get(key);
    if (have) have.count += 1;
    else edges.set(key, { source: s, target: t, count: 1, tensor: e.tensor, shape: e.shape });
  }
  return { items, edges: [...edges.values()] };
}

function itemSize(item) {
  if (item.scope) {
    const s = graph.scopes.get(item.scope);
    const text = Math.max(s.name.length, `${s.nodes} nodes`.length + 2);
    return { width: Math.min(360, Math.max(90, text * CHAR_W + 24)), height: SCOPE_H };
  }
  const n = item.node;
  const text = Math.max(n.op.length, shortName(n.name).length);
  return { width: Math.min(360, Math.max(70, text * CHAR_W + 20)), height: NODE_H };
}

function shortName(name) {
  const parts = name.split("/").filter((p) => p);
  return parts.length ? parts[parts.length - 1] : name;
}

// -- layout (elkjs) and drawing ---------------------------------------------------------------------
async function relayout() {
  if (!graph.data) return;
  if (typeof ELK === "undefined") throw new ApiFailure("the graph layout library (static/vendor/elk.bundled.js) did not load");
  const token = ++graph.token;
  const t0 = performance.now();
  const vis = visibleGraph();
  graphStatus(`laying out ${fmtInt(vis.items.size)} boxes…`);
  await new Promise((r) => setTimeout(r, 0));  // let the status paint first
  const children = [], ids = new Map();
  let k = 0;
  for (const item of vis.items.values()) {
    const key = `v${k++}`;
    ids.set(key, item.id);
    item.key = key;
    children.push({ id: key, ...itemSize(item) });
  }
  const edges = vis.edges.map((e, i) => ({ id: `e${i}`, sources: [vis.items.get(e.source).key], targets: [vis.items.get(e.target).key] }));
  // In a Web Worker (the same vendored file registers itself there): the page stays responsive
  // (pan, zoom, other tabs) while a large graph is laid out.
  if (!graph.elk) {
    try { graph.elk = new ELK({ workerUrl: "/static/vendor/elk.bundled.js" }); }
    catch (err) { graph.elk = new ELK(); }  // no Worker here: lay out on the page's own thread
  }
  const result = await graph.elk.layout({ id: "root", layoutOptions: ELK_OPTIONS, children, edges });
  if (token !== graph.token) return;
  const t1 = performance.now();
  const boxes = new Map();
  for (const c of result.children) {
    const item = vis.items.get(ids.get(c.id));
    boxes.set(item.id, { ...item, x: c.x, y: c.y, width: c.width, height: c.height });
  }
  const routed = (result.edges || []).map((e, i) => ({ ...vis.edges[i], sections: e.sections || [] }));
  graph.layout = { boxes, edges: routed, width: result.width || 0, height: result.height || 0 };
  draw();
  fitView();
  // the drawing is done when the browser has painted it
  await new Promise((r) => requestAnimationFrame(() => setTimeout(r, 0)));
  const t2 = performance.now();
  graph.timings = { boxes: boxes.size, nodes: graph.data.node_count, expanded: graph.expanded.size, scopes: graph.scopes.size, layout_ms: Math.round(t1 - t0), draw_ms: Math.round(t2 - t1), total_ms: Math.round(t2 - t0) };
  window.__graphTimings.push(graph.timings);
  const d = graph.data;
  graphStatus(`${d.source} · ${fmtInt(d.node_count)} nodes, ${fmtInt(d.edge_count)} edges · ${fmtInt(boxes.size)} boxes shown · layout ${(graph.timings.layout_ms / 1000).toFixed(2)} s, drawn ${(graph.timings.draw_ms / 1000).toFixed(2)} s`);
  if (graph.diff) paintDiff();
  if (graph.selected && boxes.has(graph.selected)) markSelected(graph.selected);
}

function draw() {
  const { boxes, edges, width, height } = graph.layout;
  const canvas = clear($("#graph-canvas"));
  const root = svg("svg", { id: "graph-svg", class: "graph", role: "img", "aria-label": "model graph" });
  root.append(svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
    svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrow" }))));
  const layer = svg("g", { id: "graph-layer" });
  const edgeLayer = svg("g", { class: "edges" }), labelLayer = svg("g", { class: "edge-labels" }), nodeLayer = svg("g", { class: "nodes" });
  for (const e of edges) {
    for (const s of e.sections) {
      const pts = [s.startPoint, ...(s.bendPoints || []), s.endPoint];
      const path = svg("path", { d: "M " + pts.map((p) => `${p.x.toFixed(1)} ${p.y.toFixed(1)}`).join(" L "), class: "gedge", "marker-end": "url(#arrow)" });
      const label = edgeLabel(e);
      path.append(svg("title", {}, label.long));
      edgeLayer.append(path);
      if (label.short) {
        const mid = pts[Math.floor((pts.length - 1) / 2)], next = pts[Math.floor((pts.length - 1) / 2) + 1] || mid;
        labelLayer.append(svg("text", { x: ((mid.x + next.x) / 2 + 4).toFixed(1), y: ((mid.y + next.y) / 2 + 3).toFixed(1), class: "gedge-label" }, label.short));
      }
    }
  }
  for (const b of boxes.values()) nodeLayer.append(drawBox(b));
  layer.append(edgeLayer, labelLayer, nodeLayer);
  root.append(layer);
  canvas.append(root);
  graph.svgSize = { width, height };
}

function edgeLabel(e) {
  const shape = Array.isArray(e.shape) ? `[${e.shape.map((d) => (d === null ? "?" : String(d))).join("×")}]` : "";
  const many = e.count > 1 ? `${e.count} tensors` : "";
  return { short: many || shape, long: e.count > 1 ? `${e.count} tensors, e.g. ${e.tensor} ${shape}` : `${e.tensor} ${shape}`.trim() };
}

function drawBox(b) {
  const g = svg("g", { class: b.scope ? "gnode scope" : `gnode kind-${b.node.kind}`, transform: `translate(${b.x.toFixed(1)},${b.y.toFixed(1)})` });
  g.dataset.id = b.id;
  const rect = svg("rect", { width: b.width, height: b.height, rx: b.scope ? 8 : 4, class: "gbox" });
  g.append(rect);
  if (b.scope) {
    const s = graph.scopes.get(b.scope);
    g.dataset.scope = b.scope;
    g.append(svg("text", { x: 10, y: 17, class: "gop" }, s.name), svg("text", { x: 10, y: 33, class: "gname" }, `${fmtInt(s.nodes)} nodes ▸`));
    g.append(svg("title", {}, `${b.scope} (${s.nodes} nodes): double-click to open`));
  } else {
    const n = b.node;
    g.dataset.name = n.name;
    g.append(svg("text", { x: 8, y: 15, class: "gop" }, n.op), svg("text", { x: 8, y: 30, class: "gname" }, shortName(n.name)));
    if (n.weights.length) g.append(svg("circle", { cx: b.width - 8, cy: 8, r: 3.5, class: "gweights" }));
    g.append(svg("title", {}, `${n.op} ${n.name}${n.weights.length ? `\n${n.weights.length} weight tensor(s)` : ""}`));
  }
  g.addEventListener("click", (ev) => { ev.stopPropagation(); guarded(() => selectItem(b.id)); });
  g.addEventListener("dblclick", (ev) => { ev.stopPropagation(); if (b.scope) guarded(() => expandScope(b.scope)); });
  return g;
}

async function expandScope(scope) {
  graph.expanded.add(scope);
  // Open its ancestors too (they may have been collapsed around it).
  for (let s = graph.scopes.get(scope); s && s.parent; s = graph.scopes.get(s.parent)) graph.expanded.add(s.parent);
  await relayout();
}

async function collapseScope(scope) {
  graph.expanded.delete(scope);
  graph.selected = `s:${scope}`;
  await relayout();
  selectItem(`s:${scope}`);
}

// -- pan and zoom -----------------------------------------------------------------------------------
function applyView() {
  const layer = document.getElementById("graph-layer");
  if (layer) layer.setAttribute("transform", `translate(${graph.view.x.toFixed(1)},${graph.view.y.toFixed(1)}) scale(${graph.view.k.toFixed(4)})`);
}

function fitView() {
  const canvas = $("#graph-canvas");
  if (!graph.layout) return;
  const w = canvas.clientWidth || 800, h = canvas.clientHeight || 600;
  const gw = Math.max(graph.layout.width, 1), gh = Math.max(graph.layout.height, 1);
  // A tall graph is fitted to the width (readable), not shrunk to nothing: scroll it by dragging.
  const k = Math.min(1.5, Math.max(Math.min(w / gw, h / gh), Math.min(w / gw, 1) * 0.6, 0.05));
  graph.view = { k, x: Math.max(8, (w - gw * k) / 2), y: 8 };
  applyView();
}

function centerOn(box) {
  const canvas = $("#graph-canvas");
  const k = Math.max(graph.view.k, 0.8);
  graph.view = { k, x: canvas.clientWidth / 2 - (box.x + box.width / 2) * k, y: canvas.clientHeight / 2 - (box.y + box.height / 2) * k };
  applyView();
}

function initPanZoom(canvas) {
  let drag = null;
  canvas.addEventListener("mousedown", (e) => { if (e.button === 0) drag = { x: e.clientX, y: e.clientY, vx: graph.view.x, vy: graph.view.y, moved: false }; });
  window.addEventListener("mousemove", (e) => {
    if (!drag) return;
    const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
    graph.view.x = drag.vx + dx; graph.view.y = drag.vy + dy;
    applyView();
  });
  window.addEventListener("mouseup", () => { drag = null; });
  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    const rect = canvas.getBoundingClientRect();
    const px = e.clientX - rect.left, py = e.clientY - rect.top;
    const factor = Math.exp(-e.deltaY * 0.0015);
    const k = Math.min(4, Math.max(0.02, graph.view.k * factor));
    graph.view.x = px - ((px - graph.view.x) * k) / graph.view.k;
    graph.view.y = py - ((py - graph.view.y) * k) / graph.view.k;
    graph.view.k = k;
    applyView();
  }, { passive: false });
}

// -- search -----------------------------------------------------------------------------------------
async function findNode() {
  if (!graph.data) return;
  const text = $("#graph-search").value.trim();
  if (!text) return;
  const match = matcher(text);  // app.js: substring or /regex/
  // exact names first, then other matching names, then matching op types
  const exact = graph.data.nodes.filter((n) => n.name === text);
  const named = graph.data.nodes.filter((n) => n.name !== text && match(n.name));
  const typed = graph.data.nodes.filter((n) => !match(n.name) && match(n.op));
  const hits = [...exact, ...named, ...typed];
  if (!hits.length) { graphStatus(`no node matches ${JSON.stringify(text)}`); return; }
  // Cycle through the hits on repeated Enter.
  graph.searchIndex = graph.searchText === text ? (graph.searchIndex + 1) % hits.length : 0;
  graph.searchText = text;
  const hit = hits[graph.searchIndex];
  let changed = false;
  for (let scope = hit.scope; scope; scope = (graph.scopes.get(scope) || {}).parent) {
    if (!graph.expanded.has(scope)) { graph.expanded.add(scope); changed = true; }
  }
  if (changed) await relayout();
  for (const g of document.querySelectorAll(".gnode.hit")) g.classList.remove("hit");
  for (const n of hits) {
    const g = document.querySelector(`.gnode[data-id="n:${n.id}"]`);
    if (g) g.classList.add("hit");
  }
  await selectItem(`n:${hit.id}`);
  centerOn(graph.layout.boxes.get(`n:${hit.id}`));
  graphStatus(`${hits.length} match${hits.length === 1 ? "" : "es"} · showing ${graph.searchIndex + 1}: ${hit.name}`);
}

// -- the clicked node: attributes, inputs, outputs, and its weights with their summaries ------------
function markSelected(id) {
  for (const g of document.querySelectorAll(".gnode.selected")) g.classList.remove("selected");
  const g = document.querySelector(`.gnode[data-id="${CSS.escape(id)}"]`);
  if (g) g.classList.add("selected");
}

async function selectItem(id) {
  graph.selected = id;
  markSelected(id);
  const box = graph.layout.boxes.get(id);
  const panel = clear($("#graph-panel"));
  if (!box) return;
  if (box.scope) return scopePanel(panel, box);
  const n = box.node;
  panel.append(el("h2", { class: "gpanel-title", text: n.name }), el("div", { class: "chips" },
    el("span", { class: "chip", text: n.op }), el("span", { class: "chip", text: n.kind })));
  if (n.scope) {
    const crumbs = el("p", { class: "small scope-crumbs" }, "scope: ");
    const parts = n.scope.split("/");
    parts.forEach((p, i) => {
      const id = parts.slice(0, i + 1).join("/");
      crumbs.append(el("button", { type: "button", class: "link", title: `collapse ${id}`, text: p, onclick: () => guarded(() => collapseScope(id)) }), i < parts.length - 1 ? " / " : "");
    });
    crumbs.append(el("span", { class: "muted", text: "  (click a scope to collapse it)" }));
    panel.append(crumbs);
  }
  if (graph.diff) panel.append(diffLine(n.weights));
  const attrs = Object.entries(n.attrs || {});
  if (attrs.length) panel.append(el("h3", { text: "Attributes" }), el("table", { class: "kv gattrs" }, attrs.map(([k, v]) =>
    el("tr", {}, el("th", { text: k }), el("td", { text: v !== null && typeof v === "object" ? JSON.stringify(v) : String(v) })))));
  const io = (label, names) => names.length ? [el("h3", { text: label }), el("ul", { class: "names gio" }, names.map((t) => {
    const shape = shapeOfValue(t);
    return el("li", {}, el("span", { class: "name", text: t }), shape ? el("span", { class: "muted", text: ` ${shape}` }) : null);
  }))] : [];
  panel.append(...io("Inputs", n.inputs.filter((i) => !n.weights.includes(i))), ...io("Outputs", n.outputs));
  if (!n.weights.length) { panel.append(el("p", { class: "muted", text: "This node uses no weight tensor of the file." })); return; }
  const list = el("ul", { class: "names gweights-list" });
  const summary = el("div", { id: "graph-weight" });
  panel.append(el("h3", {}, "Weights ", el("span", { class: "badge", text: String(n.weights.length) })), list, summary);
  for (const w of n.weights) {
    list.append(el("li", { class: "clickable", dataset: { name: w }, onclick: () => guarded(() => showWeight(w, summary)) },
      el("span", { class: "name", text: w }), weightInfo(w), diffTag(w)));
  }
  await showWeight(n.weights[0], summary);
}

function scopePanel(panel, box) {
  const s = graph.scopes.get(box.scope);
  const weights = new Set();
  for (const id of box.members) for (const w of graph.data.nodes[id].weights) weights.add(w);
  panel.append(el("h2", { class: "gpanel-title", text: box.scope }),
    el("p", {}, `${fmtInt(s.nodes)} nodes, ${fmtInt(weights.size)} weight tensors. `,
      el("button", { type: "button", text: "expand", onclick: () => guarded(() => expandScope(box.scope)) })));
  if (graph.diff) panel.append(diffLine([...weights]));
  const ops = new Map();
  for (const id of box.members) { const op = graph.data.nodes[id].op; ops.set(op, (ops.get(op) || 0) + 1); }
  panel.append(el("h3", { text: "Ops inside" }), el("table", { class: "kv" }, [...ops.entries()].sort((a, b) => b[1] - a[1]).slice(0, 30).map(([op, c]) =>
    el("tr", {}, el("th", { text: op }), el("td", { text: fmtInt(c) })))));
}

function shapeOfValue(name) {
  const e = graph.data.edges.find((x) => x.tensor === name && Array.isArray(x.shape));
  return e ? `[${e.shape.map((d) => (d === null ? "?" : String(d))).join(" × ")}]` : "";
}

function weightInfo(name) {
  const row = state.tree && state.tree.file === graph.file ? state.tree.tensors.find((t) => t.name === name) : null;
  return row && !row.error ? el("span", { class: "muted", text: ` ${row.dtype} ${shapeText(row.shape)}` }) : null;
}

async function showWeight(name, container) {
  for (const li of document.querySelectorAll(".gweights-list li")) li.classList.toggle("selected", li.dataset.name === name);
  clear(container).append(el("p", { class: "muted loading", text: `reading ${name}…` }));
  const file = graph.file;
  const data = await api("tensor", { file, name });
  if (graph.file !== file || !container.isConnected) return;
  clear(container);
  const info = data.info;
  container.append(el("h4", { class: "name", text: info.name }), el("div", { class: "chips" },
    el("span", { class: "chip", text: info.dtype }), el("span", { class: "chip", text: shapeText(info.shape) }),
    el("span", { class: "chip", text: `${fmtInt(info.numel)} params` })));
  if (data.note) container.append(el("p", { class: "muted", text: data.note }));
  const s = data.stats;
  if (s) container.append(el("dl", { class: "stats graph-stats" }, statRow("min", fmtNum(s.min)), statRow("max", fmtNum(s.max)),
    statRow("mean", fmtNum(s.mean)), statRow("std", fmtNum(s.std)), statRow("zeros", fmtInt(s.zeros)),
    statRow("NaN", fmtInt(s.nan), s.nan ? "warn" : ""), statRow("Inf", fmtInt(s.inf), s.inf ? "warn" : ""), statRow("numel", fmtInt(s.numel))));
  if (data.histogram) { const h = el("div", { class: "graph-hist" }); container.append(h); drawHistogram(h, data.histogram, state.logHist, { label: `histogram of ${info.name}` }); }
  if (data.heatmap) { const h = el("div", { class: "graph-heat" }); container.append(el("p", { class: "muted small", text: heatLabel(data.heatmap, [], "mean") }), h); drawHeatmap(h, data.heatmap, "mean"); }
  if (graph.diff && graph.diff.byTensor.has(name)) {
    const d = await api("diff_tensor", { a: file, b: graph.diff.b, name });
    if (!container.isConnected) return;
    const h = el("div", { class: "graph-diff-hist" });
    container.append(el("h4", { text: `B − A (B: ${fileLabel(state.files[graph.diff.b]).trim()})` }),
      el("dl", { class: "stats" }, statRow("max |Δ|", fmtNum(d.stats.max_abs)), statRow("mean Δ", fmtNum(d.stats.mean)), statRow("unchanged", fmtInt(d.stats.zeros))), h);
    drawHistogram(h, d.histogram, state.logHist, { label: "histogram of differences" });
  }
}

// -- colouring by change against another file -------------------------------------------------------
async function loadGraphDiff() {
  graph.diff = null;
  paintDiff();
  if (!graph.data || graph.diffFile === "") return;
  const b = Number(graph.diffFile);
  if (b === graph.file) { graphStatus("compare with another file to colour the graph"); return; }
  const report = await api("diff", { a: graph.file, b });
  const byTensor = new Map();
  for (const row of report.value_changed) byTensor.set(row.name, row);
  const unchanged = new Set();
  // tensors in both files with equal values: known to be unchanged (0)
  for (const n of graph.data.nodes) for (const w of n.weights) if (!byTensor.has(w)) unchanged.add(w);
  const missing = new Set([...report.removed.map((r) => r.name), ...report.shape_changed.map((r) => r.name), ...report.dtype_changed.map((r) => r.name)]);
  graph.diff = { b, byTensor, missing, metric: $("#graph-diff-metric").value, changed: report.value_changed.length };
  paintDiff();
}

function changeOf(weights) {
  const d = graph.diff;
  let best = null;
  for (const w of weights) {
    if (d.missing.has(w)) return { value: NaN, missing: true, text: "not in B (or another shape/dtype)" };
    const row = d.byTensor.get(w);
    const v = row ? (typeof row[d.metric] === "number" ? row[d.metric] : Infinity) : 0;
    if (best === null || v > best) best = v;
  }
  return best === null ? null : { value: best, text: best === 0 ? "unchanged" : `${d.metric === "max_abs" ? "max |Δ|" : "max rel"} ${fmtNum(best, 4)}` };
}

function diffTag(name) {
  if (!graph.diff) return null;
  const c = changeOf([name]);
  return c ? el("span", { class: c.value === 0 ? "diff-tag same" : "diff-tag changed", text: ` ${c.text}` }) : null;
}

function diffLine(weights) {
  const c = changeOf(weights);
  return el("p", { class: "diff-line" }, c ? `Change against B: ${c.text}` : "No weights to compare.");
}

const CHANGE_STOPS = [[255, 247, 236], [253, 187, 132], [239, 101, 72], [179, 0, 0]];
function paintDiff() {
  const legend = document.getElementById("graph-legend");
  if (legend) legend.remove();
  for (const g of document.querySelectorAll(".gnode")) { g.classList.remove("changed", "unchanged", "missing"); const r = g.querySelector("rect"); if (r) r.style.fill = ""; }
  if (!graph.diff || !graph.layout) return;
  const values = new Map();
  let top = 0;
  for (const b of graph.layout.boxes.values()) {
    const weights = [];
    for (const id of b.members) weights.push(...graph.data.nodes[id].weights);
    const c = changeOf(weights);
    if (!c) continue;
    values.set(b.id, c.missing ? NaN : c.value);
    if (Number.isFinite(c.value)) top = Math.max(top, c.value);
  }
  for (const [id, v] of values) {
    const g = document.querySelector(`.gnode[data-id="${CSS.escape(id)}"]`);
    if (!g) continue;
    const rect = g.querySelector("rect");
    if (v === 0) { g.classList.add("unchanged"); continue; }
    if (Number.isNaN(v)) { g.classList.add("missing"); continue; }
    g.classList.add("changed");
    // log scale between top/1e6 and top: small changes stay visible beside big ones
    const t = Number.isFinite(v) && top > 0 ? Math.max(0, 1 + Math.log10(v / top) / 6) : 1;
    const [r, gg, bb] = lerpStops(CHANGE_STOPS, t);
    rect.style.fill = `rgb(${r},${gg},${bb})`;
  }
  const d = graph.diff;
  $("#graph-canvas").append(el("div", { id: "graph-legend", class: "legend graph-legend" },
    el("span", { text: `B: ${fileLabel(state.files[d.b]).trim()} · ${d.changed} tensors changed · ${d.metric === "max_abs" ? "max |Δ|" : "max rel Δ"}: ` }),
    el("span", { class: "swatch same", text: "0" }), el("span", { text: fmtNum(top / 1e6, 2) }), el("span", { class: "ramp change" }), el("span", { text: fmtNum(top, 3) })));
}
