// neko-supervisor dashboard: plain JavaScript, no build step, nothing from elsewhere.
//
// Talks to this service's /v1 API with the token as a bearer header (kept in
// sessionStorage: this tab only). Live state comes from GET /v1/events, read
// with fetch() because EventSource cannot send a header; when that stream
// cannot be had, GET /v1/plugins is polled every second until it can.
// Everything a plugin or a worker wrote (names, log lines, results, errors)
// is put on the page as text, never as markup.

const TOKEN_KEY = "neko-supervisor-token";
const THEME_KEY = "neko-supervisor-theme";
const LOG_LINES_SHOWN = 500;
const POLL_MS = 1000;
const STREAM_RETRY_MS = [1000, 2000, 5000, 10000];

const $ = (selector) => document.querySelector(selector);

const app = {
  token: null,
  plugins: new Map(),       // id -> the row of the last snapshot
  rows: new Map(),          // id -> <tr>
  selected: null,           // id of the plugin whose panel is open
  detail: null,             // GET /v1/plugins/{id} of the selected plugin
  detailPid: undefined,     // the worker the entries were read from
  logPosition: null,        // `next` of the last log answer
  logBusy: false,
  chartAt: 0,
  chartSeen: "",            // calls/restarts of the plugin when the chart was last read
  chartBusy: false,
  stream: null,             // AbortController of the event stream
  pollTimer: null,
  streamFailures: 0,
};

// -- API -------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, type, message, detail) {
    super(message);
    this.status = status;
    this.type = type;
    this.detail = detail || {};
  }
}

async function api(method, path, body) {
  const init = { method, headers: { Authorization: `Bearer ${app.token}` }, cache: "no-store" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new ApiError(0, "Unreachable", "the service does not answer (is it running?)");
  }
  let data = null;
  try {
    data = await response.json();
  } catch (error) {
    data = null;
  }
  if (response.status === 401) {
    signOut("The service refused this token (401 Unauthorized).");
    throw new ApiError(401, "Unauthorized", "wrong token");
  }
  if (!response.ok) {
    const error = (data && data.error) || {};
    throw new ApiError(response.status, error.type || `HTTP ${response.status}`, error.message || response.statusText, error);
  }
  return data;
}

// -- sign in and out ---------------------------------------------------------------
function showLogin(message) {
  $("#login").hidden = false;
  $("#overview").hidden = true;
  $("#detail").hidden = true;
  $("#sign-out").hidden = true;
  const error = $("#login-error");
  error.hidden = !message;
  error.textContent = message || "";
  setConnection("idle", "not connected");
  $("#token").focus();
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  app.token = null;
  stopLive();
  app.plugins.clear();
  app.rows.clear();
  $("#plugins tbody").replaceChildren();
  closeDetail();
  showLogin(message);
}

async function signIn(token) {
  app.token = token;
  let listing;
  try {
    listing = await api("GET", "/v1/plugins");
  } catch (error) {
    if (error.type === "ServiceStarting") {
      showLogin("The service is still discovering its plugins; trying again…");
      setTimeout(() => signIn(token), POLL_MS);
    } else if (error.status !== 401) {
      app.token = null;
      showLogin(`Cannot open the dashboard: ${error.message}`);
    }
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  $("#login").hidden = true;
  $("#overview").hidden = false;
  $("#sign-out").hidden = false;
  $("#token").value = "";
  render({ plugins: listing.plugins, service: null });
  startStream();
}

// -- live state: the event stream, polling as a fallback ------------------------------
function setConnection(state, text) {
  const pill = $("#connection");
  pill.dataset.state = state;
  pill.textContent = text;
}

function stopLive() {
  if (app.stream) app.stream.abort();
  app.stream = null;
  clearTimeout(app.pollTimer);
  app.pollTimer = null;
}

async function startStream() {
  stopLive();
  const controller = new AbortController();
  app.stream = controller;
  let response;
  try {
    response = await fetch("/v1/events", {
      headers: { Authorization: `Bearer ${app.token}`, Accept: "text/event-stream" },
      cache: "no-store",
      signal: controller.signal,
    });
  } catch (error) {
    if (controller.signal.aborted) return;
    return streamLost(controller);
  }
  if (response.status === 401) return signOut("The service refused this token (401 Unauthorized).");
  if (!response.ok || !response.body) return streamLost(controller);
  app.streamFailures = 0;
  setConnection("live", "live");
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        handleEvent(buffer.slice(0, cut));
        buffer = buffer.slice(cut + 2);
      }
    }
  } catch (error) {
    if (controller.signal.aborted) return;
  }
  if (!controller.signal.aborted) streamLost(controller);
}

function handleEvent(block) {
  let name = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) name = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  if (name === "plugins" && data.length) render(JSON.parse(data.join("\n")));
}

// The stream ended or could not be had: poll until it comes back.
function streamLost(controller) {
  if (app.stream !== controller || !app.token) return;
  app.stream = null;
  const wait = STREAM_RETRY_MS[Math.min(app.streamFailures, STREAM_RETRY_MS.length - 1)];
  app.streamFailures += 1;
  setConnection("polling", "polling");
  const until = Date.now() + wait;
  const poll = async () => {
    if (!app.token || app.stream) return;
    if (Date.now() >= until) return startStream();
    try {
      const listing = await api("GET", "/v1/plugins");
      render({ plugins: listing.plugins, service: null });
    } catch (error) {
      if (error.status === 401) return;
      setConnection("error", "service unreachable");
    }
    if (app.token && !app.stream) app.pollTimer = setTimeout(poll, POLL_MS);
  };
  app.pollTimer = setTimeout(poll, Math.min(POLL_MS, wait));
}

// -- the table -------------------------------------------------------------------------
function render(snapshot) {
  if (snapshot.service) {
    const banner = $("#service-banner");
    if (snapshot.service.stopping) {
      banner.textContent = "The service is shutting down: its plugins are being stopped.";
      setConnection("stopping", "stopping");
    } else if (!snapshot.service.ready) {
      banner.textContent = "The service is still starting its plugins.";
    }
    banner.hidden = !(snapshot.service.stopping || !snapshot.service.ready);
  }
  const seen = new Set();
  const body = $("#plugins tbody");
  for (const plugin of snapshot.plugins) {
    seen.add(plugin.id);
    const before = app.plugins.get(plugin.id);
    app.plugins.set(plugin.id, plugin);
    let row = app.rows.get(plugin.id);
    if (!row) {
      row = makeRow(plugin.id);
      app.rows.set(plugin.id, row);
      body.append(row);
    }
    fillRow(row, plugin, before);
  }
  for (const [id, row] of app.rows) {
    if (!seen.has(id)) {
      row.remove();
      app.rows.delete(id);
      app.plugins.delete(id);
    }
  }
  $("#no-plugins").hidden = app.plugins.size > 0;
  if (app.selected && app.plugins.has(app.selected)) refreshDetail(app.plugins.get(app.selected));
}

const COLUMNS = ["name", "state", "pid", "restarts", "uptime", "memory", "calls", "failures"];
const NUMERIC = new Set(["restarts", "memory", "calls", "failures"]);
const WIDE = new Set(["pid", "uptime", "memory"]);

function makeRow(id) {
  const row = document.createElement("tr");
  row.dataset.plugin = id;
  row.tabIndex = 0;
  for (const column of COLUMNS) {
    const cell = document.createElement("td");
    cell.dataset.col = column;
    if (NUMERIC.has(column)) cell.classList.add("num");
    if (WIDE.has(column)) cell.classList.add("wide");
    row.append(cell);
  }
  row.addEventListener("click", () => openDetail(id));
  row.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      openDetail(id);
    }
  });
  return row;
}

function fillRow(row, plugin, before) {
  const cell = (column) => row.querySelector(`td[data-col="${column}"]`);
  const name = cell("name");
  name.replaceChildren(textSpan("plugin-name", plugin.name), textSpan("plugin-id", plugin.id));
  const why = whyText(plugin);
  if (why) name.append(textSpan("why", why));
  cell("state").replaceChildren(stateBadge(plugin.state));
  cell("pid").textContent = plugin.pid ?? "–";
  cell("restarts").textContent = plugin.restarts;
  cell("uptime").textContent = plugin.uptime == null ? "–" : formatDuration(plugin.uptime);
  cell("memory").textContent = plugin.memory_rss == null ? "–" : formatBytes(plugin.memory_rss);
  cell("calls").textContent = plugin.calls;
  cell("failures").textContent = plugin.failures;
  row.classList.toggle("selected", app.selected === plugin.id);
  if (before && plugin.restarts > before.restarts) flash(cell("restarts"));
  if (before && plugin.failures > before.failures) flash(cell("failures"));
}

// Why a plugin is not simply running, or why it last restarted.
function whyText(plugin) {
  if (plugin.state === "running" && plugin.restarts === 0) return "";
  if (plugin.error && plugin.state !== "running") return firstLine(plugin.error);
  if (plugin.last_exit) return `last exit: ${plugin.last_exit.description}`;
  return plugin.error ? firstLine(plugin.error) : "";
}

function stateBadge(state) {
  const badge = textSpan(`state state-${state}`, state);
  badge.dataset.state = state;
  return badge;
}

function textSpan(className, text) {
  const span = document.createElement("span");
  span.className = className;
  span.textContent = text;
  return span;
}

function flash(element) {
  element.classList.remove("bump");
  void element.offsetWidth; // restart the animation
  element.classList.add("bump");
}

function firstLine(text) {
  const line = String(text).split("\n")[0];
  return line.length > 200 ? `${line.slice(0, 200)}…` : line;
}

function formatDuration(seconds) {
  const s = Math.floor(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

function formatBytes(bytes) {
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(0)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

// -- one plugin's panel ------------------------------------------------------------------
async function openDetail(id) {
  app.selected = id;
  app.detail = null;
  app.detailPid = undefined;
  app.logPosition = null;
  app.chartAt = 0;
  for (const [rowId, row] of app.rows) row.classList.toggle("selected", rowId === id);
  $("#detail").hidden = false;
  $("#entries").replaceChildren();
  $("#log").textContent = "";
  $("#log-note").textContent = "";
  $("#action-result").textContent = "";
  $("#chart").replaceChildren();
  const plugin = app.plugins.get(id);
  if (plugin) refreshDetail(plugin);
}

function closeDetail() {
  app.selected = null;
  $("#detail").hidden = true;
  for (const row of app.rows.values()) row.classList.remove("selected");
}

function refreshDetail(plugin) {
  $("#detail-title").textContent = `${plugin.name} (${plugin.id})`;
  $("#detail-state").replaceChildren(stateBadge(plugin.state));
  const why = $("#detail-why");
  const reason = whyText(plugin);
  why.hidden = !reason;
  why.textContent = reason;
  if (app.detailPid !== plugin.pid) {
    app.detailPid = plugin.pid;
    loadEntries(plugin.id);
  }
  if (app.logPosition === null || plugin.log_lines !== app.logPosition) loadLog(plugin.id);
  const moved = app.chartSeen !== `${plugin.calls}/${plugin.restarts}`;
  if (Date.now() - app.chartAt > (moved ? 1000 : 5000)) loadChart(plugin.id, `${plugin.calls}/${plugin.restarts}`);
}

async function loadEntries(id) {
  let detail;
  try {
    detail = (await api("GET", `/v1/plugins/${encodeURIComponent(id)}`)).plugin;
  } catch (error) {
    return;
  }
  if (app.selected !== id) return;
  const known = app.detail && JSON.stringify(app.detail.entries) === JSON.stringify(detail.entries);
  app.detail = detail;
  if (known) return; // keep what the user typed in the forms
  const list = $("#entries");
  list.replaceChildren();
  if (!detail.entries.length) {
    list.append(textSpan("hint", detail.state === "running" ? "This plugin has no entries." : "Entries show once the plugin runs."));
  }
  for (const entry of detail.entries) list.append(entryForm(id, entry));
}

async function loadLog(id) {
  if (app.logBusy) return;
  app.logBusy = true;
  try {
    const first = app.logPosition === null;
    const query = first ? "tail=200" : `tail=${LOG_LINES_SHOWN}&after=${app.logPosition}`;
    const answer = await api("GET", `/v1/plugins/${encodeURIComponent(id)}/logs?${query}`);
    if (app.selected !== id) return;
    const log = $("#log");
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    const lines = first ? [] : log.textContent.split("\n").filter((line, i, all) => i < all.length - 1 || line);
    if (answer.skipped) lines.push(`… ${answer.skipped} lines not shown …`);
    lines.push(...answer.lines);
    const kept = lines.slice(-LOG_LINES_SHOWN);
    log.textContent = kept.length ? `${kept.join("\n")}\n` : "";
    $("#log-note").textContent = answer.next ? `(${answer.next} lines since the service started; the last ${Math.min(kept.length, LOG_LINES_SHOWN)} here)` : "";
    if (atBottom || first) log.scrollTop = log.scrollHeight;
    app.logPosition = answer.next;
  } catch (error) {
    // The next snapshot tries again.
  } finally {
    app.logBusy = false;
  }
  const plugin = app.plugins.get(id);
  if (app.selected === id && plugin && plugin.log_lines !== app.logPosition) loadLog(id);
}

// -- the chart ----------------------------------------------------------------------------
const SVG = "http://www.w3.org/2000/svg";

async function loadChart(id, seen) {
  if (app.chartBusy) return;
  app.chartBusy = true;
  app.chartAt = Date.now();
  app.chartSeen = seen;
  try {
    const history = await api("GET", `/v1/plugins/${encodeURIComponent(id)}/history`);
    if (app.selected === id) drawChart(history);
  } catch (error) {
    // The next snapshot tries again.
  } finally {
    app.chartBusy = false;
  }
}

function svgElement(name, attributes) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  return element;
}

function drawChart(history) {
  const svg = $("#chart");
  const width = 600, height = 140, top = 8;
  const buckets = history.buckets;
  // Time runs right to left from now over the whole window; a young service fills only its right end.
  const step = width / Math.max(history.window_buckets - 1, 1);
  const x = (i) => width - (buckets.length - 1 - i) * step;
  // A log scale: a 1 ms mean and a 100 ms worst case both stay readable.
  const floor = 0.05;
  const peak = Math.max(1, ...buckets.map((b) => b.max_ms || 0));
  const span = Math.log10(peak) - Math.log10(floor);
  const y = (ms) => height - ((height - top) * (Math.log10(Math.max(ms, floor)) - Math.log10(floor))) / span;
  const parts = [];
  for (const ms of [0.1, 1, 10, 100, 1000, 10000, 100000]) {
    if (ms <= peak) parts.push(svgElement("line", { class: "grid", x1: 0, x2: width, y1: y(ms), y2: y(ms) }));
  }
  const line = (key, className) => {
    const points = [];
    buckets.forEach((bucket, i) => {
      if (bucket[key] != null) points.push(`${x(i).toFixed(1)},${y(bucket[key]).toFixed(1)}`);
    });
    if (points.length === 1) points.unshift(points[0].replace(/^[\d.]+/, (at) => `${Math.max(Number(at) - step / 2, 0)}`));
    if (points.length) parts.push(svgElement("polyline", { class: className, points: points.join(" ") }));
  };
  line("max_ms", "max");
  line("mean_ms", "mean");
  let restarts = 0, calls = 0, failures = 0;
  buckets.forEach((bucket, i) => {
    restarts += bucket.restarts;
    calls += bucket.calls;
    failures += bucket.failures;
    const at = Math.min(Math.max(x(i), 1), width - 1);
    if (bucket.restarts) parts.push(svgElement("line", { class: "restart", x1: at, x2: at, y1: 0, y2: height }));
    // A zero-length line with a round cap: a dot the stretched viewBox does not squash.
    if (bucket.failures) parts.push(svgElement("line", { class: "failure", x1: at, x2: at, y1: height - 4, y2: height - 4 }));
  });
  svg.replaceChildren(...parts);
  svg.dataset.calls = calls;
  svg.dataset.restarts = restarts;
  const minutes = Math.round((history.window_buckets * history.bucket_seconds) / 60);
  $("#chart-caption").textContent =
    `Last ${minutes} min: ${calls} calls through the API, ${failures} answered with an error (red dots), ${restarts} restarts (red lines). ` +
    `Mean latency (dark) and max (light) per ${history.bucket_seconds} s, log scale (a line per power of ten ms); top ${peak.toFixed(1)} ms.`;
}

// -- entries: a form built from each entry's input schema ---------------------------------
function entryForm(pluginId, entry) {
  const box = document.createElement("div");
  box.className = "entry";
  box.dataset.entry = entry.id;
  const head = document.createElement("div");
  head.className = "entry-head";
  head.append(textSpan("plugin-name", entry.name), textSpan("mono", entry.id));
  if (entry.timeout) head.append(textSpan("hint", `timeout ${entry.timeout} s`));
  box.append(head);
  if (entry.description) {
    const description = document.createElement("p");
    description.textContent = entry.description;
    box.append(description);
  }
  const form = document.createElement("form");
  const fields = schemaFields(entry.input_schema);
  for (const field of fields) form.append(field.element);
  const row = document.createElement("div");
  row.className = "call-row";
  const submit = document.createElement("button");
  submit.type = "submit";
  submit.textContent = "Call";
  row.append(submit);
  form.append(row);
  const outcome = document.createElement("pre");
  outcome.className = "outcome";
  outcome.hidden = true;
  outcome.setAttribute("role", "status");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    let args;
    try {
      args = collectArguments(fields);
    } catch (error) {
      return showOutcome(outcome, false, error.message);
    }
    submit.disabled = true;
    const began = performance.now();
    try {
      const answer = await api("POST", `/v1/plugins/${encodeURIComponent(pluginId)}/entries/${encodeURIComponent(entry.id)}`, args);
      const ms = (performance.now() - began).toFixed(1);
      showOutcome(outcome, true, `ok in ${ms} ms\n${JSON.stringify(answer.value, null, 2)}`);
    } catch (error) {
      const lines = [`${error.status ? `${error.status} ` : ""}${error.type}: ${error.message}`];
      if (error.detail.remote_type) lines.push(`raised in the plugin: ${error.detail.remote_type}: ${error.detail.remote_message || ""}`);
      if (error.detail.traceback) lines.push("", error.detail.traceback);
      showOutcome(outcome, false, lines.join("\n"));
    } finally {
      submit.disabled = false;
    }
  });
  box.append(form, outcome);
  return box;
}

function showOutcome(element, ok, text) {
  element.hidden = false;
  element.className = `outcome ${ok ? "ok" : "failed"}`;
  element.textContent = text;
}

// One field per property of an object schema; one JSON box otherwise.
function schemaFields(schema) {
  const properties = schema && typeof schema === "object" && schema.properties && typeof schema.properties === "object" ? schema.properties : null;
  if (!properties) {
    return [jsonField("arguments", "Arguments (a JSON object)", "{}", true)];
  }
  const required = new Set(Array.isArray(schema.required) ? schema.required : []);
  const fields = [];
  for (const [name, property] of Object.entries(properties)) {
    const spec = property && typeof property === "object" ? property : {};
    const type = Array.isArray(spec.type) ? spec.type.find((t) => t !== "null") : spec.type;
    const label = `${name}${required.has(name) ? " *" : ""}`;
    const hasDefault = Object.prototype.hasOwnProperty.call(spec, "default");
    let field;
    if (Array.isArray(spec.enum)) field = enumField(name, label, spec.enum, spec.default);
    else if (type === "boolean") field = checkField(name, label, spec.default === true);
    else if (type === "integer" || type === "number") field = numberField(name, label, type, hasDefault ? spec.default : "");
    else if (type === "string") field = textField(name, label, hasDefault ? spec.default : "");
    else field = jsonField(name, `${label} (JSON)`, hasDefault ? JSON.stringify(spec.default) : "", false);
    field.required = required.has(name);
    if (spec.description) field.element.append(textSpan("hint", spec.description));
    fields.push(field);
  }
  return fields;
}

let fieldCounter = 0;

function fieldShell(label, control, className = "field") {
  const element = document.createElement("div");
  element.className = className;
  control.id = `field-${++fieldCounter}`;
  const caption = document.createElement("label");
  caption.htmlFor = control.id;
  caption.textContent = label;
  if (className.includes("check")) element.append(control, caption);
  else element.append(caption, control);
  return element;
}

function textField(name, label, value) {
  const input = document.createElement("input");
  input.type = "text";
  input.name = name;
  input.value = value ?? "";
  return { name, element: fieldShell(label, input), read: () => (input.value === "" ? undefined : input.value) };
}

function numberField(name, label, type, value) {
  const input = document.createElement("input");
  input.type = "number";
  input.name = name;
  input.step = type === "integer" ? "1" : "any";
  input.value = value ?? "";
  return {
    name,
    element: fieldShell(label, input),
    read: () => {
      if (input.value.trim() === "") return undefined;
      const number = Number(input.value);
      if (!Number.isFinite(number) || (type === "integer" && !Number.isInteger(number))) {
        throw new Error(`${name} must be ${type === "integer" ? "a whole number" : "a number"}`);
      }
      return number;
    },
  };
}

function checkField(name, label, checked) {
  const input = document.createElement("input");
  input.type = "checkbox";
  input.name = name;
  input.checked = checked;
  return { name, element: fieldShell(label, input, "field check"), read: () => input.checked };
}

function enumField(name, label, options, value) {
  const select = document.createElement("select");
  select.name = name;
  for (const option of options) {
    const element = document.createElement("option");
    element.value = JSON.stringify(option);
    element.textContent = typeof option === "string" ? option : JSON.stringify(option);
    if (JSON.stringify(option) === JSON.stringify(value)) element.selected = true;
    select.append(element);
  }
  return { name, element: fieldShell(label, select), read: () => JSON.parse(select.value) };
}

function jsonField(name, label, value, whole) {
  const area = document.createElement("textarea");
  area.name = name;
  area.value = value;
  area.spellcheck = false;
  area.className = "mono";
  return {
    name,
    whole,
    element: fieldShell(label, area),
    read: () => {
      if (area.value.trim() === "") return undefined;
      try {
        return JSON.parse(area.value);
      } catch (error) {
        throw new Error(`${whole ? "the arguments are" : `${name} is`} not valid JSON: ${error.message}`);
      }
    },
  };
}

function collectArguments(fields) {
  if (fields.length === 1 && fields[0].whole) {
    const value = fields[0].read();
    if (value === undefined) return {};
    if (value === null || typeof value !== "object" || Array.isArray(value)) throw new Error("the arguments must be a JSON object, such as {\"key\": \"value\"}");
    return value;
  }
  const args = {};
  for (const field of fields) {
    const value = field.read();
    if (value === undefined) {
      if (field.required) throw new Error(`${field.name} is required`);
      continue;
    }
    args[field.name] = value;
  }
  return args;
}

// -- lifecycle buttons ------------------------------------------------------------------------
async function lifecycle(action) {
  const id = app.selected;
  if (!id) return;
  const buttons = document.querySelectorAll("[data-action]");
  const result = $("#action-result");
  buttons.forEach((button) => { button.disabled = true; });
  result.className = "result-line";
  result.textContent = `${action} ${id}…`;
  try {
    const answer = await api("POST", `/v1/plugins/${encodeURIComponent(id)}/${action}`);
    const plugin = answer.plugin;
    result.textContent = `${action}: ${plugin.state}${plugin.pid ? ` (pid ${plugin.pid})` : ""}`;
  } catch (error) {
    result.className = "result-line failed";
    result.textContent = `${action} failed: ${error.type}: ${error.message}`;
  } finally {
    buttons.forEach((button) => { button.disabled = false; });
  }
}

// -- theme --------------------------------------------------------------------------------------
const THEMES = ["auto", "dark", "light"];

function applyTheme(theme) {
  if (theme === "auto") delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = theme;
  $("#theme").textContent = `Theme: ${theme}`;
}

// -- wiring ---------------------------------------------------------------------------------------
function main() {
  let theme = localStorage.getItem(THEME_KEY);
  if (!THEMES.includes(theme)) theme = "auto";
  applyTheme(theme);
  $("#theme").addEventListener("click", () => {
    theme = THEMES[(THEMES.indexOf(theme) + 1) % THEMES.length];
    localStorage.setItem(THEME_KEY, theme);
    applyTheme(theme);
  });
  $("#token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("#token").value.trim();
    if (token) signIn(token);
  });
  $("#sign-out").addEventListener("click", () => signOut(""));
  $("#close-detail").addEventListener("click", closeDetail);
  for (const button of document.querySelectorAll("[data-action]")) {
    button.addEventListener("click", () => lifecycle(button.dataset.action));
  }
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) signIn(saved);
  else showLogin("");
}

main();
