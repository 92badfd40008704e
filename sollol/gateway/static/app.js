"use strict";
// SOLLOL's dashboard: one server-sent event stream (/sollol/stream) feeds every part of the page.
// Everything shown is built with textContent (model names and errors come from clients and
// nodes: never parsed as HTML). The browser reconnects by itself after a cut; a stream that has
// gone quiet or failed for good is reopened here, with back-off.
(function () {
  const MAX_ROWS = 500;
  const STALE_MS = 6000;
  const state = {overview: null, history: null, requests: [], resetRequests: true,
                 source: null, lastMessage: 0, backoff: 1000, retryTimer: null, drawn: false};
  const $ = id => document.getElementById(id);

  // ------------------------------------------------------------------ small DOM helpers

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  // One wrapper per cell: on a phone each cell is a two-column grid of label and value.
  function cell(label, content, cls) {
    const td = el("td", cls), value = el("div", "v");
    td.dataset.label = label;
    for (const part of [].concat(content)) {
      if (part === null || part === undefined) continue;
      value.append(typeof part === "object" ? part : document.createTextNode(String(part)));
    }
    td.append(value);
    return td;
  }

  function pill(text, kind) { return el("span", "pill " + kind, text); }

  function meter(fraction) {
    const m = el("div", "meter"), fill = el("span");
    fill.style.width = Math.max(0, Math.min(1, fraction || 0)) * 100 + "%";
    m.append(fill);
    return m;
  }

  // ------------------------------------------------------------------ formatting

  function bytes(n) {
    if (n === null || n === undefined) return "–";
    const units = [["TiB", 2 ** 40], ["GiB", 2 ** 30], ["MiB", 2 ** 20], ["KiB", 2 ** 10]];
    for (const [unit, scale] of units) if (Math.abs(n) >= scale) return (n / scale).toFixed(1) + " " + unit;
    return n + " B";
  }

  function seconds(v) {
    if (v === null || v === undefined) return "–";
    if (v === 0) return "0";
    if (v < 0.001) return (v * 1e6).toFixed(0) + " µs";
    if (v < 1) return (v * 1000).toFixed(v < 0.01 ? 1 : 0) + " ms";
    return v.toFixed(2) + " s";
  }

  function number(v, digits) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    if (v >= 10000) return (v / 1000).toFixed(1) + "k";
    return v.toFixed(v >= 100 ? 0 : (digits === undefined ? 1 : digits));
  }

  function duration(s) {
    if (s === null || s === undefined) return "–";
    s = Math.max(0, Math.floor(s));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
    return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
  }

  function ago(t) { return t ? duration(Date.now() / 1000 - t) + " ago" : ""; }

  function clock(t) {
    const d = new Date(t * 1000);
    return d.toLocaleTimeString([], {hour12: false}) + "." + String(d.getMilliseconds()).padStart(3, "0").slice(0, 1);
  }

  function healthKind(h) {
    return {healthy: "ok", ready: "ok", up: "ok", starting: "warn", unknown: "warn",
            draining: "warn", ejected: "bad", down: "bad", failed: "bad"}[h] || "idle";
  }

  // Tokens/s: the server's own figure (llama-server /metrics) when the gateway could read one.
  function speed(item) {
    const scraped = item.throughput && item.throughput.tokens_per_second;
    if (scraped) return [number(scraped), el("div", "small", "server")];
    const measured = (item.stats && item.stats.tokens_per_second) || item.tokens_per_second;
    return measured ? [number(measured), el("div", "small", "measured")] : "–";
  }

  // ------------------------------------------------------------------ sections

  function renderTop(o) {
    $("where").textContent = location.host + " · SOLLOL " + o.version +
      (o.policy ? " · policy " + o.policy : "") + " · routes: " +
      (Object.keys(o.routes || {}).join(", ") || "none");
    const r = o.requests || {};
    $("kpi-running").textContent = r.running;
    $("kpi-waiting").textContent = r.waiting;
    const errors = $("kpi-errors");
    errors.textContent = o.metrics_enabled ? r.errors : "–";
    errors.classList.toggle("bad", r.errors > 0);
    $("kpi-failovers").textContent = o.metrics_enabled ? r.failovers : "–";
    const minute = o.last_minute;
    $("kpi-rate").textContent = minute ? number(minute.requests_per_second, 2) : "–";
    $("kpi-tokens").textContent = minute ? number(minute.tokens_per_second, 0) : "–";
    $("kpi-uptime").textContent = duration(o.uptime_s);
    const up = (o.nodes || []).filter(n => n.health === "healthy").length;
    $("kpi-nodes").textContent = (o.nodes || []).length ? up + "/" + o.nodes.length : "–";
    $("kpi-nodes").classList.toggle("bad", up < (o.nodes || []).length);
    $("metrics-off").hidden = !!o.metrics_enabled;
    $("foot").textContent = "SOLLOL " + o.version + " · updated " + new Date(o.time * 1000).toLocaleTimeString([], {hour12: false});
  }

  function renderNodes(o) {
    const body = $("nodes").tBodies[0], rows = [];
    const nodes = o.nodes || [];
    $("nodes-count").textContent = nodes.length ? "(" + nodes.length + ")" : "";
    const queue = Object.values(o.routes || {}).map(r => r.queue).filter(Boolean)[0];
    $("queue").textContent = queue ? "queue " + queue.waiting + " / " + queue.limit : "";
    $("nodes-empty").hidden = nodes.length > 0;
    $("nodes").hidden = nodes.length === 0;
    for (const n of nodes) {
      const tr = el("tr");
      tr.dataset.node = n.id;
      tr.dataset.health = n.health;
      const health = [pill(n.health, healthKind(n.health))];
      if (n.health === "ejected" && n.ejected_until) {
        health.push(el("div", "small", "back in " + duration(n.ejected_until - Date.now() / 1000)));
      }
      if (n.health !== "healthy" && n.detail) health.push(el("div", "err", n.detail));
      const models = (n.running || []).map(m => {
        const line = el("span", "model", m.name);
        if (m.size_vram) line.append(el("span", "small", " " + bytes(m.size_vram)));
        return line;
      });
      const stats = n.stats || {};
      const lastError = stats.last_error
        ? [el("div", "err", stats.last_error), el("div", "small", ago(stats.last_error_at))] : "–";
      tr.append(
        cell("Node", [el("div", "id", n.id), el("div", "small", (n.api || n.kind) + (n.version ? " " + n.version : "")
                                                         + (n.member ? " · joined" : ""))]),
        cell("Health", health),
        cell("Load", [n.in_flight + " / " + n.limit, meter(n.in_flight / (n.limit || 1))]),
        cell("Models", models.length ? models : "–"),
        cell("tok/s", speed(n), "num"),
        cell("Served", [String(n.served), n.failed ? el("div", "err", n.failed + " failed") : null], "num"),
        cell("Last error", lastError));
      rows.push(tr);
    }
    body.replaceChildren(...rows);
  }

  function renderRpc(o) {
    const servers = o.rpc_servers || [], rows = [];
    $("rpc-count").textContent = servers.length ? "(" + servers.length + ")" : "";
    $("rpc-empty").hidden = servers.length > 0 || !o.modes.model_sharding_enabled;
    $("rpc").hidden = servers.length === 0;
    for (const s of servers) {
      const tr = el("tr");
      tr.dataset.rpc = s.address;
      const health = s.healthy ? "up" : "down";
      const mem = s.memory_total
        ? [bytes(s.memory_free) + " / " + bytes(s.memory_total), meter(1 - s.memory_free / s.memory_total)] : "–";
      // llama.cpp's device names (Vulkan0, CUDA0, CPU) where `sollol rpc serve` recorded them
      const devices = (s.devices || []).map(d => el("div", "device", d.name + " · " + bytes(d.free) + " free"));
      tr.dataset.devices = (s.devices || []).map(d => d.name).join(",");
      tr.append(
        // a machine joined with `sollol join`: its name first, then its tunnel endpoint
        cell("Address", s.member ? [el("div", "id", s.member), el("div", "small", s.address)]
                                 : el("span", "id", s.address)),
        cell("Health", [pill(health, healthKind(health)), !s.healthy && s.detail ? el("div", "err", s.detail) : null,
                        s.incompatible ? el("div", "err", s.incompatible) : null]),
        cell("Protocol", s.version || "?"),
        cell("Devices", devices.length ? devices : "–"),
        cell("Memory", mem),
        cell("Held by", s.coordinator ? el("span", "model", s.coordinator) : "free"));
      rows.push(tr);
    }
    $("rpc").tBodies[0].replaceChildren(...rows);
    $("shards-panel").hidden = !o.modes.model_sharding_enabled && servers.length === 0;
  }

  function layerBars(c) {
    const report = c.layers;
    if (!report) return el("div", "small", c.state === "starting" ? "loading: layer distribution follows" : "layer distribution not known");
    const shares = (report.backends || []).slice();
    if (report.coordinator && report.coordinator.layers) shares.push(Object.assign({host: true}, report.coordinator));
    const total = shares.reduce((sum, s) => sum + (s.layers || 0), 0) || 1;
    const wrap = el("div");
    const stack = el("div", "stack");
    const grid = el("div", "layers");
    shares.forEach((s, i) => {
      const swatch = s.host ? "swatch-host" : "swatch-" + (i % 6);
      const part = el("span", swatch);
      part.style.width = (100 * (s.layers || 0)) / total + "%";
      part.title = s.address + ": " + s.layers + " layers";
      stack.append(part);
      const bar = el("div", "bar"), fill = el("span", swatch);
      fill.style.width = (100 * (s.layers || 0)) / total + "%";
      bar.append(fill);
      bar.dataset.layers = s.layers;
      const where = s.host ? "gateway host" : s.address + (s.devices && s.devices.length ? " (" + s.devices.join(",") + ")" : "");
      grid.append(el("span", "addr", where), bar,
                  el("span", "what", s.layers + " layers [" + (s.layer_range || "–") + "] · " + (s.weights_mib || 0).toFixed(1) + " MiB"));
    });
    wrap.append(stack, grid);
    if (report.offloaded) wrap.append(el("div", "small", "offloaded " + report.offloaded + " · output layer on " + (report.output_layer_on || "?")));
    return wrap;
  }

  function renderCoordinators(o) {
    const coords = o.coordinators || [], cards = [];
    $("coords-count").textContent = coords.length ? "(" + coords.length + ")" : "";
    $("coords-empty").hidden = coords.length > 0 || !o.modes.model_sharding_enabled;
    for (const c of coords) {
      const card = el("article", "coord");
      card.dataset.model = c.model;
      card.dataset.state = c.state;
      const head = el("div", "coord-head");
      const state = c.draining && c.state === "ready" ? "draining" : c.state;
      head.append(el("span", "name", c.model), pill(state, healthKind(state)));
      const facts = el("div", "coord-facts");
      const fact = (label, value) => { const f = el("span", null, label + " "); f.append(el("b", null, value)); facts.append(f); };
      fact("up", duration(Date.now() / 1000 - c.started_at));
      fact("restarts", Math.max((c.starts || 1) - 1, 0));
      fact("served", c.served);
      fact("in flight", c.in_flight);
      const tps = c.throughput && c.throughput.tokens_per_second;
      fact("tok/s", tps ? number(tps) + " (server)" : (c.stats && c.stats.tokens_per_second ? number(c.stats.tokens_per_second) : "–"));
      if (c.load_seconds) fact("loaded in", c.load_seconds + " s");
      if (c.slots) fact("slots", c.slots.busy + "/" + (c.slots.total || "auto") + " busy · " + c.slots.queued + " queued · " + c.slots.refused + " refused");
      card.append(head, facts);
      const pipe = c.pipeline || (c.pipeline_expected ? "expected " + c.pipeline_expected : "");
      if (pipe) card.append(el("div", "small pipeline", "pipeline parallelism: " + pipe));
      if (c.placement && c.placement.draft) card.append(el("div", "small", "draft model: " + c.placement.draft));
      if (c.state === "starting" && c.progress) card.append(el("div", "progress", c.progress));
      if (c.draining) card.append(el("div", "progress", "draining: " + c.draining));
      if (c.error) card.append(el("div", "err", c.error));
      card.append(layerBars(c));
      if (c.log_tail && c.log_tail.length) {
        const log = el("details", "log");
        log.append(el("summary", null, "log tail (" + c.log_tail.length + " lines)"), el("pre", null, c.log_tail.join("\n")));
        card.append(log);
      }
      cards.push(card);
    }
    // keep an open log open across refreshes
    const open = new Set([...document.querySelectorAll("#coordinators details[open]")].map(d => d.closest(".coord").dataset.model));
    $("coordinators").replaceChildren(...cards);
    for (const card of cards) if (open.has(card.dataset.model)) card.querySelector("details") && (card.querySelector("details").open = true);
  }

  // ------------------------------------------------------------------ requests

  function matches(row, text, status) {
    if (status === "ok" && !row.ok) return false;
    if (status === "error" && row.ok) return false;
    if (!text) return true;
    const hay = [row.model, row.route, row.backend, row.status, row.reason, row.error, row.endpoint, row.api]
      .join(" ").toLowerCase();
    return text.split(/\s+/).every(word => hay.includes(word));
  }

  function renderRequests() {
    const text = $("filter").value.trim().toLowerCase(), status = $("filter-status").value;
    const shown = state.requests.filter(r => matches(r, text, status)).slice(0, 200);
    const rows = shown.map(r => {
      const tr = el("tr", r.ok ? "" : "failed");
      tr.dataset.model = r.model;
      const code = r.status < 400 ? "code-ok" : r.status === 429 || r.status === 499 ? "code-warn" : "code-bad";
      tr.append(
        cell("Time", clock(r.time), "num"),
        cell("Model", el("span", "model", r.model)),
        cell("Route", r.route || "–"),
        cell("Node", el("span", "id", r.backend || "–")),
        cell("Status", el("span", code, r.status), "num"),
        cell("First token", seconds(r.ttft_s), "num"),
        cell("Duration", seconds(r.duration_s), "num"),
        cell("tok/s", r.tokens_per_second ? number(r.tokens_per_second) : "–", "num"),
        cell("Reason", [r.error ? el("div", "err", r.error) : null,
                        r.reason && r.reason !== r.error ? el("div", "reason", r.reason + (r.attempts > 1 ? " · " + r.attempts + " attempts" : "")) : null]));
      return tr;
    });
    $("requests").tBodies[0].replaceChildren(...rows);
    const total = state.requests.length;
    $("requests-count").textContent = total ? "(" + (shown.length < total ? shown.length + " of " : "") + total + ")" : "";
    $("requests-empty").hidden = total > 0;
  }

  function addRequests(rows) {
    if (state.resetRequests) { state.requests = []; state.resetRequests = false; }
    for (const row of rows) state.requests.unshift(row);
    state.requests.length = Math.min(state.requests.length, MAX_ROWS);
    schedule();
  }

  // ------------------------------------------------------------------ charts

  function renderCharts() {
    const h = state.history;
    if (!h || !window.SollolCharts) return;
    const draw = window.SollolCharts.draw;
    draw($("chart-rate"), [{values: h.requests_per_second, cls: "s0", area: true},
                           {values: h.errors_per_second, cls: "s1"}], {step: h.step, format: v => number(v, 2)});
    draw($("chart-latency"), [{values: h.latency_p50_s, cls: "s0"}, {values: h.latency_p95_s, cls: "s2"}],
         {step: h.step, format: seconds});
    draw($("chart-tokens"), [{values: h.tokens_per_second, cls: "s3", area: true}], {step: h.step, format: v => number(v, 0)});
    const last = list => list[list.length - 1];  // the newest bucket: a rate over its time so far
    $("now-rate").textContent = number(last(h.requests_per_second), 2) + "/s";
    const p50 = h.latency_p50_s.filter(v => v !== null), p95 = h.latency_p95_s.filter(v => v !== null);
    $("now-latency").textContent = p50.length ? seconds(p50[p50.length - 1]) + " / " + seconds(p95[p95.length - 1]) : "";
    $("now-tokens").textContent = number(last(h.tokens_per_second), 0) + "/s";
  }

  // ------------------------------------------------------------------ render loop

  let pending = false;
  function schedule() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      const o = state.overview;
      if (o) { renderTop(o); renderNodes(o); renderRpc(o); renderCoordinators(o); }
      renderRequests();
      if (!state.drawn) { renderCharts(); state.drawn = true; }
      document.body.dataset.ready = o ? "1" : "";
    });
  }

  // ------------------------------------------------------------------ the stream

  function setLink(kind, text) {
    const link = $("link");
    link.dataset.state = kind;
    link.textContent = text;
  }

  function connect() {
    clearTimeout(state.retryTimer);
    if (state.source) state.source.close();
    const source = new EventSource("/sollol/stream");
    state.source = source;
    source.addEventListener("open", () => {
      state.backoff = 1000;
      state.resetRequests = true;  // the server starts every stream with its recent requests
      state.lastMessage = Date.now();
      setLink("live", "live");
    });
    const on = (name, handle) => source.addEventListener(name, e => {
      state.lastMessage = Date.now();
      handle(JSON.parse(e.data));
    });
    on("overview", o => { state.overview = o; schedule(); });
    on("history", h => { state.history = h; state.drawn = false; schedule(); });
    on("requests", rows => addRequests(rows));
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {  // refused for good: retry ourselves
        setLink("down", "gateway unreachable · retrying");
        state.retryTimer = setTimeout(connect, state.backoff);
        state.backoff = Math.min(state.backoff * 2, 15000);
      } else {
        setLink("down", "reconnecting…");
      }
    });
  }

  // A stream can go silent without an error (a proxy, a suspended laptop): reopen it.
  setInterval(() => {
    if (state.source && state.source.readyState === EventSource.OPEN && Date.now() - state.lastMessage > STALE_MS) {
      setLink("down", "stale · reconnecting");
      connect();
    }
  }, 1000);

  $("filter").addEventListener("input", schedule);
  $("filter-status").addEventListener("change", schedule);
  window.addEventListener("resize", () => { state.drawn = false; schedule(); });
  connect();
})();
