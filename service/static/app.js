// skipvit web page: classify images, show the Pareto front, switch the active point.
// Plain JS, no dependencies. Every text from the server goes into the DOM as text (textContent /
// append of strings), never as HTML. All requests go to this page's own server, by relative URL.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = "skipvit-admin-token";
  const METHOD_STYLE = {
    static: { color: "#1a1a1a", shape: "square" },
    rl: { color: "#0b62a4", shape: "circle" },
    nsga: { color: "#c44e00", shape: "triangle" },
    "nsga-joint": { color: "#00795a", shape: "diamond" },
    lac: { color: "#a8327f", shape: "circle" },
    dyce: { color: "#6b5a00", shape: "square" },
  };
  const FALLBACK_COLORS = ["#5b3d9a", "#8c4a1c", "#2f6f9f", "#3f7d20"];
  const SHAPES = ["circle", "square", "triangle", "diamond"];
  const CHART = { w: 720, h: 420, left: 64, right: 24, top: 24, bottom: 58 };

  const state = { points: [], active: null, depth: null, xKey: "mean_layers", thumbs: [], styles: {} };

  // ---------------------------------------------------------------- helpers

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    node.append(...children); // strings become text nodes
    return node;
  }

  // SVG elements take their namespace from the <svg> that the HTML parser created.
  function svgEl(tag, attrs = {}, text) {
    const node = document.createElementNS($("pareto-chart").namespaceURI, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  const pct = (x, digits = 1) => `${(100 * Number(x)).toFixed(digits)} %`;
  const num = (x, digits = 2) => Number(x).toFixed(digits);

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function errorMessage(resp, body, text) {
    let msg = "";
    if (body && body.detail !== undefined) {
      if (typeof body.detail === "string") msg = body.detail;
      else if (Array.isArray(body.detail))
        msg = body.detail
          .map((d) => `${(d.loc || []).join(".")}: ${d.msg || JSON.stringify(d)}`)
          .join("; ");
      else msg = JSON.stringify(body.detail);
      if (body.hint) msg += ` ${body.hint}`;
    } else {
      msg = (text || "").slice(0, 300) || "no details";
    }
    return `${resp.status} ${resp.statusText}: ${msg}`;
  }

  async function api(path, { method = "GET", headers = {}, body, retries = 0 } = {}) {
    for (let attempt = 0; ; attempt++) {
      let resp;
      try {
        resp = await fetch(path, { method, body, headers: { Accept: "application/json", ...headers } });
      } catch (e) {
        throw new ApiError(0, `Could not reach the server (${e.message}). Hint: is skipvit serve still running?`);
      }
      const text = await resp.text();
      let data = null;
      try {
        data = text ? JSON.parse(text) : null;
      } catch {
        data = null;
      }
      if (resp.ok) return data;
      if (resp.status === 503 && attempt < retries) {
        const wait = Math.min(5, Number(resp.headers.get("Retry-After")) || 1);
        await new Promise((r) => setTimeout(r, wait * 1000));
        continue;
      }
      throw new ApiError(resp.status, errorMessage(resp, data, text));
    }
  }

  function showError(message) {
    const box = $("error");
    box.textContent = message;
    box.hidden = !message;
  }

  function setStatus(node, stateName, message) {
    node.dataset.state = stateName;
    node.textContent = message;
  }

  function styleOf(method) {
    if (!state.styles[method]) {
      const known = METHOD_STYLE[method];
      const n = Object.keys(state.styles).length;
      state.styles[method] = known || {
        color: FALLBACK_COLORS[n % FALLBACK_COLORS.length],
        shape: SHAPES[n % SHAPES.length],
      };
    }
    return state.styles[method];
  }

  function pointById(id) {
    return state.points.find((p) => p.id === id);
  }

  function layersText(p) {
    const d = state.depth ? ` of ${state.depth}` : "";
    return `${num(p.metrics.mean_layers)}${d} layers`;
  }

  function pointSummary(p) {
    return `${p.method}, accuracy ${pct(p.metrics.accuracy)}, ${layersText(p)} on average`;
  }

  // ---------------------------------------------------------------- /pareto: chart, table, selects

  async function loadPareto() {
    const body = await api("pareto", { retries: 30 });
    state.points = body.points;
    state.active = body.active;
    // Depth: the static point runs every layer; else mean_layers / relative_compute of any point.
    const full = body.points.find((p) => p.metrics.relative_compute >= 0.999);
    const any = body.points.find((p) => p.metrics.relative_compute > 0);
    state.depth = full
      ? Math.round(full.metrics.mean_layers)
      : any
        ? Math.round(any.metrics.mean_layers / any.metrics.relative_compute)
        : null;
    renderActive();
    renderSelects();
    renderTable();
    renderChart();
  }

  function renderActive() {
    const p = pointById(state.active);
    $("active-point").textContent = state.active;
    $("active-summary").textContent = p ? `(${pointSummary(p)})` : "";
  }

  function fillSelect(select, firstOption) {
    const keep = select.value;
    const options = state.points.map((p) =>
      el("option", { value: p.id }, `${p.id} (${p.method}, ${pct(p.metrics.accuracy)}, ${layersText(p)})`),
    );
    select.replaceChildren(...(firstOption ? [firstOption] : []), ...options);
    return keep;
  }

  function renderSelects() {
    const ap = $("autopilot-family");
    const keepAp = fillSelect(ap, el("option", { value: "" }, "the active point"));
    ap.value = pointById(keepAp) ? keepAp : "";
    const cls = $("classify-point");
    const keepCls = fillSelect(cls, el("option", { value: "" }, `active point (${state.active})`));
    cls.value = pointById(keepCls) ? keepCls : "";
    const sw = $("point-select");
    const keepSw = fillSelect(sw);
    sw.value = pointById(keepSw) ? keepSw : state.active;
  }

  function pickForSwitch(id) {
    $("point-select").value = id;
    $("point-select").focus();
  }

  function renderTable() {
    const rows = state.points.map((p) => {
      const active = p.id === state.active;
      const tr = el(
        "tr",
        { "data-point": p.id, class: active ? "active" : "", "aria-current": active ? "true" : null },
        el("th", { scope: "row" }, el("code", {}, p.id)),
        el("td", {}, swatch(p.method), p.method),
        el("td", { class: "num" }, pct(p.metrics.accuracy)),
        el("td", { class: "num" }, num(p.metrics.mean_layers)),
        el("td", { class: "num" }, pct(p.metrics.relative_compute, 0)),
        el("td", { class: "active-cell" }, active ? "● active" : ""),
      );
      tr.title = `${p.description || p.method}. ${p.serving || ""}`.trim();
      tr.addEventListener("click", () => pickForSwitch(p.id));
      return tr;
    });
    $("pareto-table").tBodies[0].replaceChildren(...rows);
  }

  function swatch(method) {
    const s = styleOf(method);
    const svg = svgEl("svg", { viewBox: "-7 -7 14 14", width: 14, height: 14, class: "swatch", "aria-hidden": "true" });
    svg.append(marker(s.shape, 0, 0, 5, s.color));
    return svg;
  }

  function marker(shape, x, y, r, color) {
    const common = { fill: color, stroke: "#ffffff", "stroke-width": 1 };
    if (shape === "square") return svgEl("rect", { x: x - r, y: y - r, width: 2 * r, height: 2 * r, ...common });
    if (shape === "triangle")
      return svgEl("polygon", {
        points: `${x},${y - r * 1.2} ${x + r * 1.1},${y + r * 0.8} ${x - r * 1.1},${y + r * 0.8}`,
        ...common,
      });
    if (shape === "diamond")
      return svgEl("polygon", { points: `${x},${y - r * 1.3} ${x + r},${y} ${x},${y + r * 1.3} ${x - r},${y}`, ...common });
    return svgEl("circle", { cx: x, cy: y, r, ...common });
  }

  function niceTicks(lo, hi, target) {
    const span = hi - lo || 1;
    const raw = span / target;
    const mag = 10 ** Math.floor(Math.log10(raw));
    const n = raw / mag;
    const step = (n < 1.5 ? 1 : n < 3 ? 2 : n < 7 ? 5 : 10) * mag;
    const out = [];
    for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + 1e-9; v += step) out.push(Number(v.toFixed(10)));
    return out;
  }

  // Points not beaten by another point that is at least as accurate and at most as costly (one strictly).
  function nonDominated(points, xKey) {
    return new Set(
      points
        .filter(
          (p) =>
            !points.some(
              (q) =>
                q !== p &&
                q.metrics.accuracy >= p.metrics.accuracy &&
                q.metrics[xKey] <= p.metrics[xKey] &&
                (q.metrics.accuracy > p.metrics.accuracy || q.metrics[xKey] < p.metrics[xKey]),
            ),
        )
        .map((p) => p.id),
    );
  }

  function renderLegend(methods) {
    const items = methods.map((m) => el("li", {}, swatch(m), m));
    items.push(el("li", { class: "legend-active" }, el("span", { class: "ring", "aria-hidden": "true" }), "active point"));
    $("chart-legend").replaceChildren(...items);
  }

  function renderChart() {
    const svg = $("pareto-chart");
    const { w, h, left, right, top, bottom } = CHART;
    const xKey = state.xKey;
    const pts = state.points;
    for (const node of [...svg.childNodes]) if (!["title", "desc"].includes(node.nodeName)) node.remove();
    const methods = [...new Set(pts.map((p) => p.method))];
    renderLegend(methods);
    if (!pts.length) {
      $("chart-desc").textContent = "The bundle has no points.";
      return;
    }

    const xs = pts.map((p) => Number(p.metrics[xKey]));
    const accs = pts.map((p) => Number(p.metrics.accuracy));
    const xMax = xKey === "relative_compute" ? 1 : Math.max(state.depth || 0, Math.ceil(Math.max(...xs)), 1);
    const yLo = Math.max(0, Math.floor((Math.min(...accs) - 0.02) * 10) / 10);
    const yHi = Math.min(1, Math.ceil((Math.max(...accs) + 0.02) * 10) / 10);
    const pad = 0.03 * xMax; // keeps points at 0 and at the full depth off the axes
    const sx = (x) => left + ((x + pad) / (xMax + 2 * pad)) * (w - left - right);
    const sy = (y) => h - bottom - ((y - yLo) / (yHi - yLo || 1)) * (h - top - bottom);
    const fmtX = xKey === "relative_compute" ? (v) => `${Math.round(v * 100)} %` : (v) => String(v);

    // Grid, ticks and axis labels.
    const axes = svgEl("g", { class: "axes" });
    for (const v of niceTicks(0, xMax, 8)) {
      axes.append(svgEl("line", { x1: sx(v), x2: sx(v), y1: top, y2: h - bottom, class: "grid" }));
      axes.append(svgEl("text", { x: sx(v), y: h - bottom + 18, class: "tick", "text-anchor": "middle" }, fmtX(v)));
    }
    for (const v of niceTicks(yLo, yHi, 6)) {
      axes.append(svgEl("line", { x1: left, x2: w - right, y1: sy(v), y2: sy(v), class: "grid" }));
      axes.append(svgEl("text", { x: left - 8, y: sy(v) + 4, class: "tick", "text-anchor": "end" }, `${Math.round(v * 100)} %`));
    }
    axes.append(svgEl("line", { x1: left, x2: w - right, y1: h - bottom, y2: h - bottom, class: "axis" }));
    axes.append(svgEl("line", { x1: left, x2: left, y1: top, y2: h - bottom, class: "axis" }));
    const xLabel =
      xKey === "relative_compute"
        ? "relative compute (share of the full model's layers)"
        : `mean layers run per image${state.depth ? ` (of ${state.depth})` : ""}`;
    axes.append(svgEl("text", { x: (left + w - right) / 2, y: h - 14, class: "axis-label", "text-anchor": "middle" }, xLabel));
    const yMid = (top + h - bottom) / 2;
    axes.append(
      svgEl("text", { x: 16, y: yMid, class: "axis-label", "text-anchor": "middle", transform: `rotate(-90 16 ${yMid})` }, "test accuracy"),
    );
    svg.append(axes);

    // One staircase per method through its own non-dominated points.
    for (const m of methods) {
      const own = pts.filter((p) => p.method === m);
      const front = nonDominated(own, xKey);
      const steps = own.filter((p) => front.has(p.id)).sort((a, b) => a.metrics[xKey] - b.metrics[xKey]);
      if (steps.length < 2) continue;
      let d = `M${sx(steps[0].metrics[xKey])},${sy(steps[0].metrics.accuracy)}`;
      for (const p of steps.slice(1)) d += ` H${sx(p.metrics[xKey])} V${sy(p.metrics.accuracy)}`;
      svg.append(svgEl("path", { d, class: "step", stroke: styleOf(m).color, "data-method": m }));
    }

    // The points; faded when another point beats them on both axes.
    const best = nonDominated(pts, xKey);
    const layer = svgEl("g", { class: "points" });
    for (const p of pts) {
      const s = styleOf(p.method);
      const x = sx(p.metrics[xKey]);
      const y = sy(p.metrics.accuracy);
      const g = svgEl("g", {
        class: `pt${best.has(p.id) ? "" : " dominated"}${p.id === state.active ? " active" : ""}`,
        "data-point": p.id,
        "data-method": p.method,
        tabindex: 0,
        role: "button",
        "aria-label": `${p.id}: ${pointSummary(p)}${p.id === state.active ? " (active)" : ""}`,
      });
      g.append(svgEl("title", {}, pointTitle(p)));
      g.append(marker(s.shape, x, y, 5.5, s.color));
      g.addEventListener("click", () => pickForSwitch(p.id));
      g.addEventListener("keydown", (ev) => {
        if (ev.key === "Enter" || ev.key === " ") {
          ev.preventDefault();
          pickForSwitch(p.id);
        }
      });
      layer.append(g);
    }
    svg.append(layer);

    // The active point: a ring and a label, drawn last so that it is on top.
    const a = pointById(state.active);
    if (a) {
      const x = sx(a.metrics[xKey]);
      const y = sy(a.metrics.accuracy);
      const g = svgEl("g", { id: "active-marker", "data-point": a.id, class: "active-marker" });
      g.append(svgEl("title", {}, `active: ${pointTitle(a)}`));
      g.append(svgEl("circle", { cx: x, cy: y, r: 11, class: "ring" }));
      const rightSide = x < (left + w - right) / 2;
      const ty = y - 16 < top + 10 ? y + 26 : y - 16;
      g.append(
        svgEl("text", { x: rightSide ? x + 10 : x - 10, y: ty, class: "active-label", "text-anchor": rightSide ? "start" : "end" }, `active: ${a.id}`),
      );
      svg.append(g);
    }
    $("chart-desc").textContent =
      `${pts.length} points of ${methods.length} methods; the active point is ${state.active}` +
      (a ? `, ${pointSummary(a)}.` : ".");
  }

  function pointTitle(p) {
    const m = p.metrics;
    const lines = [
      `${p.id} (${p.method}, weights ${p.weights})`,
      `accuracy ${pct(m.accuracy, 2)} on ${m.split || "test"}${m.n ? ` (n = ${m.n})` : ""}`,
      `mean layers ${num(m.mean_layers)}${state.depth ? ` of ${state.depth}` : ""}`,
      `relative compute ${pct(m.relative_compute)}`,
    ];
    if (p.description) lines.push(p.description);
    return lines.join("\n");
  }

  // ---------------------------------------------------------------- /classify

  function clearThumbs() {
    for (const url of state.thumbs) URL.revokeObjectURL(url);
    state.thumbs = [];
  }

  async function classify() {
    const files = [...$("file-input").files];
    const results = $("results");
    const status = $("classify-status");
    if (!files.length) {
      showError("Choose one or more images first (PNG, JPEG or WebP).");
      return;
    }
    showError("");
    clearThumbs();
    results.dataset.state = "pending";
    results.replaceChildren();
    setStatus(status, "pending", `Classifying ${files.length} image${files.length > 1 ? "s" : ""}…`);
    const form = new FormData();
    for (const f of files) form.append("files", f, f.name);
    const point = $("classify-point").value;
    const url = point ? `classify?point=${encodeURIComponent(point)}` : "classify";
    $("classify-button").disabled = true;
    try {
      const body = await api(url, { method: "POST", body: form });
      renderResults(files, body);
      results.dataset.state = "done";
      setStatus(status, "done", `Served by point ${body.point}.`);
    } catch (e) {
      results.dataset.state = "error";
      setStatus(status, "error", "");
      showError(e.message);
    } finally {
      $("classify-button").disabled = false;
    }
  }

  function renderResults(files, body) {
    const cards = body.results.map((r, i) => {
      const file = files[i];
      const url = file ? URL.createObjectURL(file) : "";
      if (url) state.thumbs.push(url);
      const depth = r.path.length;
      const label = el("span", { class: "label", id: i === 0 ? "result-label" : null }, r.label);
      const topk = el(
        "ol",
        { class: "topk" },
        ...r.top_k.map((t) => {
          const fill = el("span", { class: "fill" });
          fill.style.width = `${Math.max(0, Math.min(1, t.probability)) * 100}%`;
          return el(
            "li",
            { "data-label": t.label, "data-probability": t.probability },
            el("span", { class: "name" }, t.label),
            el("span", { class: "bar", "aria-hidden": "true" }, fill),
            el("span", { class: "pct" }, pct(t.probability)),
          );
        }),
      );
      const cells = [...r.path].map((c, j) => {
        const ran = c === "1";
        return el(
          "li",
          { class: `cell ${ran ? "ran" : "skipped"}`, "data-ran": ran ? "1" : "0", title: `layer ${j + 1}: ${ran ? "ran" : "skipped"}` },
          String(j + 1),
          el("span", { class: "visually-hidden" }, ran ? " ran" : " skipped"),
        );
      });
      return el(
        "article",
        { class: "result", "data-index": i, "data-point": body.point },
        url ? el("img", { class: "thumb", src: url, alt: `uploaded image ${file.name}` }) : "",
        el(
          "div",
          { class: "result-body" },
          el("h3", {}, label, " ", el("span", { class: "prob" }, pct(r.probability))),
          el("p", { class: "meta" }, file ? `${file.name} · ` : "", "served by point ", el("code", { class: "served-by" }, body.point)),
          el("h4", {}, "Top probabilities"),
          topk,
          el(
            "h4",
            {},
            "Path through the layers ",
            el("span", { class: "layers" }, `${r.layers_executed} / ${depth} layers ran`),
          ),
          el("ol", { class: "path", "aria-label": `layers 1 to ${depth}` }, ...cells),
        ),
      );
    });
    $("results").replaceChildren(...cards);
  }

  // ---------------------------------------------------------------- /config (operator)

  function renderConfig(cfg) {
    $("config-info").textContent =
      `Batching: up to ${cfg.max_batch_size} images per batch, waits at most ${cfg.max_wait_ms} ms, ` +
      `queue of ${cfg.max_queue} images, request timeout ${cfg.request_timeout_s} s.`;
    renderAutopilot(cfg.autopilot);
    if (cfg.point !== state.active) {
      state.active = cfg.point;
      renderActive();
      renderTable();
      renderChart();
    }
  }

  function putConfig(token, change) {
    return api("config", {
      method: "PUT",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
      body: JSON.stringify(change),
    });
  }

  // ---------------------------------------------------------------- autopilot

  const ms = (v) => (v === null || v === undefined ? "–" : `${Math.round(v)} ms`);

  function renderAutopilot(ap) {
    $("ap-state").textContent = !ap
      ? "off"
      : ap.stopped
        ? `stopped: ${ap.stopped} (turn it off and on again)`
        : ap.warming_up
          ? "warming up (timing the family)"
          : "on";
    $("ap-point").textContent = ap && ap.point ? ap.point : "–";
    $("ap-reason").textContent = ap && ap.reason ? ap.reason : "–";
    $("ap-rate").textContent = ap ? `${ap.arrival_rate.toFixed(0)} images/s` : "–";
    $("ap-p95").textContent = ap ? `${ms(ap.observed_p95_ms)} / ${ms(ap.predicted_p95_ms)} / ${ms(ap.p95_ms)}` : "–";
    $("ap-family").textContent = ap ? ap.family.join(", ") : "–";
  }

  async function setAutopilot(on) {
    const status = $("autopilot-status");
    const token = $("token").value.trim();
    if (!token) {
      setStatus(status, "error", "Enter the admin token first (Operator, above).");
      return;
    }
    const autopilot = on
      ? {
          p95_ms: Number($("autopilot-p95").value),
          min_accuracy: Number($("autopilot-floor").value) / 100,
          ...($("autopilot-family").value ? { family: $("autopilot-family").value } : {}),
        }
      : null;
    setStatus(status, "pending", on ? "Turning the autopilot on…" : "Turning the autopilot off…");
    try {
      const cfg = await putConfig(token, { autopilot });
      renderConfig(cfg);
      setStatus(status, "ok", on ? "The autopilot is on." : "The autopilot is off; the active point stays.");
    } catch (e) {
      setStatus(status, "error", `Not changed. ${e.message}`);
    }
  }

  function pollConfig() {
    if (document.visibilityState === "visible") {
      api("config")
        .then(renderConfig)
        .catch(() => {});
    }
    setTimeout(pollConfig, 1000);
  }

  function readStoredToken() {
    try {
      return sessionStorage.getItem(TOKEN_KEY);
    } catch {
      return null;
    }
  }

  function storeToken(token) {
    try {
      if (token) sessionStorage.setItem(TOKEN_KEY, token);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch {
      /* storage unavailable: keep the token in the field only */
    }
  }

  async function switchPoint() {
    const status = $("switch-status");
    const token = $("token").value.trim();
    const point = $("point-select").value;
    if (!token) {
      setStatus(status, "error", "Enter the admin token first (SKIPVIT_ADMIN_TOKEN or the server's token file).");
      return;
    }
    if (!point) {
      setStatus(status, "error", "Pick a point to switch to.");
      return;
    }
    storeToken($("remember-token").checked ? token : "");
    setStatus(status, "pending", `Switching to ${point}…`);
    $("switch-button").disabled = true;
    try {
      const cfg = await putConfig(token, { point });
      renderConfig(cfg);
      await loadPareto();
      setStatus(status, "ok", `Switched: the active point is now ${cfg.point}.`);
    } catch (e) {
      setStatus(status, "error", `Not switched. ${e.message}`);
    } finally {
      $("switch-button").disabled = false;
    }
  }

  // ---------------------------------------------------------------- start

  function init() {
    $("classify-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      classify();
    });
    $("file-input").addEventListener("change", () => classify());
    $("switch-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      switchPoint();
    });
    $("x-axis").addEventListener("change", (ev) => {
      state.xKey = ev.target.value;
      renderChart();
    });
    const stored = readStoredToken();
    if (stored) {
      $("token").value = stored;
      $("remember-token").checked = true;
    }
    $("remember-token").addEventListener("change", (ev) => {
      if (!ev.target.checked) storeToken("");
    });
    $("autopilot-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      setAutopilot(true);
    });
    $("autopilot-off").addEventListener("click", () => setAutopilot(false));
    loadPareto()
      .then(() => {
        api("config", { retries: 30 })
          .then((cfg) => {
            renderConfig(cfg);
            setTimeout(pollConfig, 1000);
          })
          .catch((e) => showError(`Could not load the configuration: ${e.message}`));
      })
      .catch((e) => showError(`Could not load the points: ${e.message}`));
  }

  init();
})();
