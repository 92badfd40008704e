"use strict";
// Line charts of fixed-step time series (the gateway's last hour) drawn as SVG: no library,
// nothing fetched from elsewhere. Colours come from CSS classes (s0, s1, ...) so that the page's
// content security policy needs no inline styles.
window.SollolCharts = (function () {
  const NS = "http://www.w3.org/2000/svg";

  function node(name, attrs, text) {
    const e = document.createElementNS(NS, name);
    for (const key in attrs) e.setAttribute(key, attrs[key]);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function niceMax(value) {
    if (!(value > 0)) return 1;
    const power = Math.pow(10, Math.floor(Math.log10(value)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * power >= value) return m * power;
    return 10 * power;
  }

  // The widest of `labels` as the chart's axis text renders it (an estimate while hidden).
  function labelWidth(svg, labels) {
    const probe = node("text", {class: "axis", x: 0, y: -100});
    svg.append(probe);
    let widest = 0;
    for (const label of labels) {
      probe.textContent = label;
      widest = Math.max(widest, probe.getComputedTextLength() || label.length * 7);
    }
    probe.remove();
    return Math.ceil(widest);
  }

  // series: [{values: [number|null], cls: "s0", area: bool}]; opts: {step, format}
  function draw(svg, series, opts) {
    const box = svg.getBoundingClientRect();
    const W = Math.max(Math.round(box.width), 200), H = Math.max(Math.round(box.height), 80);
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    svg.replaceChildren();
    const n = Math.max(2, ...series.map(s => s.values.length));
    let max = 0;
    for (const s of series) for (const v of s.values) if (v !== null && v > max) max = v;
    max = niceMax(max * 1.1);
    const ticks = [0, 0.5, 1].map(frac => [max * frac, opts.format(max * frac)]);
    // the y-axis labels decide the left margin: "10.00 s" must not be cut off
    const left = labelWidth(svg, ticks.map(t => t[1])) + 10, right = 8, top = 8, bottom = 18;
    const w = W - left - right, h = H - top - bottom;
    const x = i => left + (w * i) / (n - 1);
    const y = v => top + h - (h * v) / max;
    for (const [v, label] of ticks) {
      const py = y(v);
      svg.append(node("line", {class: "gridline", x1: left, x2: W - right, y1: py, y2: py}));
      svg.append(node("text", {class: "axis", x: left - 6, y: py + 3, "text-anchor": "end"},
                      label));
    }
    const span = (n * (opts.step || 10)) / 60;
    for (const frac of [0, 1 / 3, 2 / 3, 1]) {
      const minutes = Math.round(span * (1 - frac));
      const anchor = frac === 0 ? "start" : frac === 1 ? "end" : "middle";
      svg.append(node("text", {class: "axis", x: left + w * frac, y: H - 4, "text-anchor": anchor},
                      minutes ? "-" + minutes + "m" : "now"));
    }
    for (const s of series) {
      let line = "", run = [];
      const flush = () => {
        if (run.length === 1) {  // a lone value between gaps: a dot, or it would not show
          svg.append(node("circle", {class: "dot " + s.cls, cx: run[0][0], cy: run[0][1], r: 2.2}));
        }
        if (s.area && run.length > 1) {
          const d = "M" + run[0][0] + "," + y(0) + run.map(p => "L" + p[0] + "," + p[1]).join("") +
            "L" + run[run.length - 1][0] + "," + y(0) + "Z";
          svg.append(node("path", {class: "area " + s.cls, d: d}));
        }
        run = [];
      };
      s.values.forEach((v, i) => {
        if (v === null || v === undefined) { flush(); return; }
        const px = x(i).toFixed(1), py = y(v).toFixed(1);
        line += (run.length ? "L" : "M") + px + "," + py;
        run.push([px, py]);
      });
      flush();
      if (line) svg.append(node("path", {class: "series " + s.cls, d: line}));
    }
  }

  return {draw: draw};
})();
