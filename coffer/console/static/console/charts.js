// Small SVG line charts for the console: balances over time, throughput and latency.
//
// Why our own: the console must work with nothing but the node (no CDN), and the charts it needs
// are few and simple: a time axis, one or a few series, steps for balances. This draws them as SVG
// (crisp at any size, testable as DOM), with a legend and a tooltip on each point.
"use strict";

const CofferCharts = (() => {
  const svgNamespace = "http://www.w3.org/2000/svg";
  const palette = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2"];
  const pointsWithTooltipsMax = 400; // more points than this get no per-point tooltip (DOM size)

  function element(name, attributes, parent) {
    const node = document.createElementNS(svgNamespace, name);
    for (const [key, value] of Object.entries(attributes || {})) node.setAttribute(key, String(value));
    if (parent) parent.appendChild(node);
    return node;
  }

  // About `count` round tick values covering [low, high].
  function ticks(low, high, count) {
    if (!(high > low)) return [low];
    const rough = (high - low) / count;
    const power = Math.pow(10, Math.floor(Math.log10(rough)));
    const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= rough) || rough;
    const found = [];
    for (let value = Math.ceil(low / step) * step; value <= high + step * 1e-9; value += step) found.push(+value.toPrecision(12));
    return found;
  }

  function formatNumber(value) {
    const magnitude = Math.abs(value);
    if (magnitude >= 1e9) return (value / 1e9).toPrecision(3) + "G";
    if (magnitude >= 1e6) return (value / 1e6).toPrecision(3) + "M";
    if (magnitude >= 1e4) return (value / 1e3).toPrecision(3) + "k";
    if (magnitude === 0) return "0";
    return String(+value.toPrecision(4));
  }

  function formatTime(milliseconds, span) {
    const date = new Date(milliseconds);
    const iso = date.toISOString();
    if (span > 2 * 86400000) return iso.slice(0, 10);
    if (span > 600000) return iso.slice(11, 16);
    if (span > 20000) return iso.slice(11, 19);
    return iso.slice(11, 21); // tenths of a second: a burst of changes still gets distinct labels
  }

  // options: {series: [{name, points: [[x, y], ...], color?}], time: bool, step: bool,
  //           unit: string, height: number, title: string, empty: string}
  function line(container, options) {
    container.textContent = "";
    const width = Math.max(container.clientWidth || 0, 320);
    const height = options.height || 220;
    const margin = { left: 64, right: 16, top: 12, bottom: 28 };
    const series = (options.series || []).filter((s) => s.points && s.points.length);
    const svg = element("svg", {
      width, height, viewBox: `0 0 ${width} ${height}`, role: "img", class: "chart",
      "aria-label": options.title || "chart",
    }, container);
    if (!series.length) {
      const text = element("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "chart-empty" }, svg);
      text.textContent = options.empty || "no data yet";
      return svg;
    }
    let xLow = Infinity, xHigh = -Infinity, yLow = Infinity, yHigh = -Infinity;
    for (const s of series) for (const [x, y] of s.points) {
      xLow = Math.min(xLow, x); xHigh = Math.max(xHigh, x);
      yLow = Math.min(yLow, y); yHigh = Math.max(yHigh, y);
    }
    if (options.zero !== false) { yLow = Math.min(yLow, 0); yHigh = Math.max(yHigh, 0); }
    if (yHigh === yLow) { yHigh += 1; }
    if (xHigh === xLow) { xLow -= 1000; xHigh += 1000; }
    const yPad = (yHigh - yLow) * 0.05;
    yHigh += yPad; if (yLow < 0) yLow -= yPad;
    const plotWidth = width - margin.left - margin.right;
    const plotHeight = height - margin.top - margin.bottom;
    const sx = (x) => margin.left + ((x - xLow) / (xHigh - xLow)) * plotWidth;
    const sy = (y) => margin.top + plotHeight - ((y - yLow) / (yHigh - yLow)) * plotHeight;

    const grid = element("g", { class: "chart-grid" }, svg);
    for (const value of ticks(yLow, yHigh, 5)) {
      element("line", { x1: margin.left, x2: width - margin.right, y1: sy(value), y2: sy(value) }, grid);
      const label = element("text", { x: margin.left - 6, y: sy(value) + 4, "text-anchor": "end", class: "chart-label" }, svg);
      label.textContent = formatNumber(value) + (options.unit ? " " + options.unit : "");
    }
    const xTicks = ticks(xLow, xHigh, Math.max(2, Math.floor(plotWidth / 110)));
    for (const value of xTicks) {
      element("line", { x1: sx(value), x2: sx(value), y1: margin.top, y2: margin.top + plotHeight }, grid);
      const label = element("text", { x: sx(value), y: height - 8, "text-anchor": "middle", class: "chart-label" }, svg);
      label.textContent = options.time ? formatTime(value, xHigh - xLow) : formatNumber(value);
    }
    element("rect", { x: margin.left, y: margin.top, width: plotWidth, height: plotHeight, class: "chart-frame" }, svg);

    series.forEach((s, index) => {
      const color = s.color || palette[index % palette.length];
      let path = "";
      s.points.forEach(([x, y], position) => {
        if (position === 0) path += `M${sx(x).toFixed(1)},${sy(y).toFixed(1)}`;
        else if (options.step) path += `H${sx(x).toFixed(1)}V${sy(y).toFixed(1)}`;
        else path += `L${sx(x).toFixed(1)},${sy(y).toFixed(1)}`;
      });
      if (options.step && options.extendTo !== undefined) path += `H${sx(Math.max(options.extendTo, xHigh)).toFixed(1)}`;
      element("path", { d: path, fill: "none", stroke: color, "stroke-width": 2, class: "chart-line", "data-series": s.name }, svg);
      if (s.points.length <= pointsWithTooltipsMax) {
        for (const [x, y, note] of s.points) {
          const dot = element("circle", { cx: sx(x), cy: sy(y), r: 2.5, fill: color, class: "chart-point" }, svg);
          const title = element("title", {}, dot);
          const when = options.time ? new Date(x).toISOString() : formatNumber(x);
          title.textContent = `${s.name}: ${note || formatNumber(y)} at ${when}`;
        }
      }
    });
    const legend = element("g", { class: "chart-legend" }, svg);
    let offset = margin.left + 8;
    series.forEach((s, index) => {
      const color = s.color || palette[index % palette.length];
      element("rect", { x: offset, y: margin.top + 6, width: 10, height: 10, fill: color }, legend);
      const text = element("text", { x: offset + 14, y: margin.top + 15, class: "chart-label" }, legend);
      text.textContent = s.name;
      offset += 24 + 7 * s.name.length;
    });
    return svg;
  }

  return { line, ticks, formatNumber };
})();
