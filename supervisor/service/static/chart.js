// One plugin's last minutes as plain SVG: mean and worst call latency per bucket
// (log scale), a red line where it restarted, a red dot where calls failed.

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 600;
const HEIGHT = 140;
const TOP = 8;
const FLOOR_MS = 0.05;

function svgElement(name, attributes, title) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  if (title) {
    const tooltip = document.createElementNS(SVG, "title");
    tooltip.textContent = title;
    element.append(tooltip);
  }
  return element;
}

const plural = (count, word) => `${count} ${word}${count === 1 ? "" : "s"}`;

// `history` is GET /v1/plugins/{id}/history; draws into `svg`, describes it in `caption`.
export function drawChart(svg, caption, history) {
  const buckets = history.buckets;
  // Time runs right to left from now over the whole window; a young service fills only its right end.
  const step = WIDTH / Math.max(history.window_buckets - 1, 1);
  const x = (i) => WIDTH - (buckets.length - 1 - i) * step;
  // A log scale: a 1 ms mean and a 100 ms worst case both stay readable.
  const peak = Math.max(1, ...buckets.map((b) => b.max_ms || 0));
  const span = Math.log10(peak) - Math.log10(FLOOR_MS);
  const y = (ms) => HEIGHT - ((HEIGHT - TOP) * (Math.log10(Math.max(ms, FLOOR_MS)) - Math.log10(FLOOR_MS))) / span;
  const parts = [];
  for (const ms of [0.1, 1, 10, 100, 1000, 10000, 100000]) {
    if (ms <= peak) parts.push(svgElement("line", { class: "grid", x1: 0, x2: WIDTH, y1: y(ms), y2: y(ms) }, `${ms} ms`));
  }
  const line = (key, className) => {
    const points = [];
    buckets.forEach((bucket, i) => {
      if (bucket[key] != null) points.push([x(i), y(bucket[key])]);
    });
    if (points.length === 1) points.unshift([Math.max(points[0][0] - step, 0), points[0][1]]); // a dash, not a dot
    if (points.length) {
      parts.push(svgElement("polyline", { class: className, points: points.map(([a, b]) => `${a.toFixed(1)},${b.toFixed(1)}`).join(" ") }));
    }
  };
  line("max_ms", "max");
  line("mean_ms", "mean");
  let restarts = 0, calls = 0, failures = 0;
  buckets.forEach((bucket, i) => {
    restarts += bucket.restarts;
    calls += bucket.calls;
    failures += bucket.failures;
    const at = Math.min(Math.max(x(i), 1), WIDTH - 1);
    const when = new Date(bucket.t * 1000).toLocaleTimeString();
    if (bucket.restarts) {
      const width = Math.min(2 + bucket.restarts, 6); // several restarts in one bucket: a thicker line
      const mark = svgElement("line", { class: "restart", x1: at, x2: at, y1: 0, y2: HEIGHT }, `${plural(bucket.restarts, "restart")} at ${when}`);
      mark.style.strokeWidth = `${width}px`; // the style sheet's width is the one-restart case
      parts.push(mark);
    }
    if (bucket.failures) {
      // A zero-length line with a round cap: a dot the stretched viewBox does not squash.
      parts.push(svgElement("line", { class: "failure", x1: at, x2: at, y1: HEIGHT - 4, y2: HEIGHT - 4 }, `${plural(bucket.failures, "error")} at ${when}`));
    }
  });
  svg.replaceChildren(...parts);
  svg.dataset.calls = calls;
  svg.dataset.restarts = restarts;
  const minutes = Math.round((history.window_buckets * history.bucket_seconds) / 60);
  caption.textContent =
    `Last ${minutes} min: ${plural(calls, "call")} through the API, ${failures} answered with an error (red dots), ` +
    `${plural(restarts, "restart")} (red lines). Mean latency (dark) and worst (light) per ${history.bucket_seconds} s, ` +
    `log scale (a grid line per power of ten ms); top ${peak.toFixed(1)} ms.`;
}
