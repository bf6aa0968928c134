// neko-supervisor dashboard: plain JavaScript modules, no build step, nothing from elsewhere.
//
// Talks to this service's /v1 API with the token as a bearer header (kept in
// sessionStorage: this tab only). Live state comes from GET /v1/events, read
// with fetch() because EventSource cannot send a header; when that stream
// cannot be had, or goes quiet, GET /v1/plugins is polled every second until
// it comes back. Everything a plugin or a worker wrote (names, log lines,
// results, errors) is put on the page as text, never as markup.

import { drawChart } from "./chart.js";
import { entryForm } from "./forms.js";

const TOKEN_KEY = "neko-supervisor-token";
const THEME_KEY = "neko-supervisor-theme";
const LOG_LINES_SHOWN = 500;
const POLL_MS = 1000;
const STREAM_RETRY_MS = [1000, 2000, 5000, 10000];
// The service sends a snapshot at least every 2 s to an open stream: silence past
// this means a stalled connection or a buffering proxy, not a quiet service.
const STREAM_SILENCE_MS = 6000;
const NO_VALUE = "–";

const $ = (selector) => document.querySelector(selector);

const app = {
  token: null,
  plugins: new Map(),       // id -> the row of the last snapshot
  rows: new Map(),          // id -> <tr>
  selected: null,           // id of the plugin whose panel is open
  panel: 0,                 // bumped whenever the panel changes plugin: older answers are dropped
  entries: null,            // JSON of the entries the forms were built from
  entriesPid: undefined,    // the worker they were read from
  logPosition: null,        // `next` of the last log answer
  logBusy: false,
  chartAt: 0,
  chartSeen: "",            // calls/restarts of the plugin when the chart was last read
  chartBusy: false,
  stream: null,             // AbortController of the event stream
  streaming: false,         // that stream has delivered: no polling
  pollTimer: null,
  retryTimer: null,
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

const pluginPath = (id, rest = "") => `/v1/plugins/${encodeURIComponent(id)}${rest}`;

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
  // A header carries printable ASCII only; anything else is a paste gone wrong, not a dead service.
  if (!/^[\x21-\x7e]+$/.test(token)) {
    showLogin("That token has characters no token has (only printable ASCII, no spaces): check what was pasted.");
    return;
  }
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
  app.streaming = false;
  clearTimeout(app.pollTimer);
  clearTimeout(app.retryTimer);
  app.pollTimer = app.retryTimer = null;
}

async function startStream() {
  if (app.stream) app.stream.abort();
  app.retryTimer = null;
  const controller = new AbortController();
  app.stream = controller;
  // A watchdog: no headers, or no bytes, for STREAM_SILENCE_MS and the stream is given up.
  let watchdog = setTimeout(() => controller.abort(), STREAM_SILENCE_MS);
  const heard = () => {
    clearTimeout(watchdog);
    watchdog = setTimeout(() => controller.abort(), STREAM_SILENCE_MS);
  };
  try {
    const response = await fetch("/v1/events", {
      headers: { Authorization: `Bearer ${app.token}`, Accept: "text/event-stream" },
      cache: "no-store",
      signal: controller.signal,
    });
    if (response.status === 401) {
      clearTimeout(watchdog);
      signOut("The service refused this token (401 Unauthorized).");
      return;
    }
    if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
    heard();
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      heard();
      if (!app.streaming) {
        // It delivers: polling, if any, can stop.
        app.streaming = true;
        app.streamFailures = 0;
        clearTimeout(app.pollTimer);
        app.pollTimer = null;
        setConnection("live", "live");
      }
      buffer += value.replace(/\r\n?/g, "\n"); // a proxy may rewrite the line ends
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        handleEvent(buffer.slice(0, cut));
        buffer = buffer.slice(cut + 2);
      }
    }
  } catch (error) {
    // Aborted (by us or the watchdog), refused, cut, or a snapshot that would not parse.
  }
  clearTimeout(watchdog);
  streamLost(controller);
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

// The stream ended, stalled or could not be had: poll every second, and try the
// stream again after a growing pause; polling goes on until a stream delivers.
function streamLost(controller) {
  if (app.stream !== controller || !app.token) return; // replaced, or signed out
  app.stream = null;
  app.streaming = false;
  const wait = STREAM_RETRY_MS[Math.min(app.streamFailures, STREAM_RETRY_MS.length - 1)];
  app.streamFailures += 1;
  setConnection("polling", "polling");
  clearTimeout(app.retryTimer);
  app.retryTimer = setTimeout(startStream, wait);
  if (!app.pollTimer) schedulePoll();
}

function schedulePoll() {
  app.pollTimer = setTimeout(async () => {
    if (!app.token || app.streaming) {
      app.pollTimer = null;
      return;
    }
    try {
      const listing = await api("GET", "/v1/plugins");
      if (!app.streaming) {
        render({ plugins: listing.plugins, service: null });
        setConnection("polling", "polling");
      }
    } catch (error) {
      if (error.status === 401) return; // signed out: stopLive() cleared the timer
      setConnection("error", "service unreachable");
    }
    // Still the one poller (the timer is ours until it is replaced here or cleared).
    if (app.token && !app.streaming) schedulePoll();
    else app.pollTimer = null;
  }, POLL_MS);
}

// -- the table -------------------------------------------------------------------------
function render(snapshot) {
  if (snapshot.service) {
    const banner = $("#service-banner");
    if (snapshot.service.stopping) {
      setText(banner, "The service is shutting down: its plugins are being stopped.");
      setConnection("stopping", "stopping");
    } else if (!snapshot.service.ready) {
      setText(banner, "The service is still starting its plugins.");
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
  showSummary();
  applyFilter();
  if (app.selected && app.plugins.has(app.selected)) refreshDetail(app.plugins.get(app.selected));
}

// "5 plugins: 4 running, 1 failed": the states in a fixed order, problems last so they stand out.
const STATE_ORDER = ["running", "starting", "stopped", "backoff", "failed"];

function showSummary() {
  const counts = new Map();
  for (const plugin of app.plugins.values()) counts.set(plugin.state, (counts.get(plugin.state) || 0) + 1);
  const key = JSON.stringify([...counts].sort());
  const summary = $("#summary");
  if (summary.dataset.key === key) return;
  summary.dataset.key = key;
  const parts = [document.createTextNode(`${app.plugins.size} plugin${app.plugins.size === 1 ? "" : "s"}:`)];
  const states = [...counts.keys()].sort((a, b) => STATE_ORDER.indexOf(a) - STATE_ORDER.indexOf(b));
  for (const state of states) {
    const badge = textSpan(`state state-${state}`, `${counts.get(state)} ${state}`);
    badge.dataset.state = state;
    parts.push(document.createTextNode(" "), badge);
  }
  summary.replaceChildren(...parts);
}

// Rows whose id, name or state contain every word typed (case ignored).
function applyFilter() {
  const words = $("#filter").value.toLowerCase().split(/\s+/).filter(Boolean);
  for (const [id, row] of app.rows) {
    const plugin = app.plugins.get(id);
    const text = `${id} ${plugin.name} ${plugin.state}`.toLowerCase();
    row.hidden = !words.every((word) => text.includes(word));
  }
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
  const name = row.firstChild;
  name.append(textSpan("plugin-name", ""), textSpan("plugin-id", id), textSpan("why", ""));
  row.querySelector('td[data-col="state"]').append(textSpan("state", ""));
  row.addEventListener("click", () => openDetail(id));
  row.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      openDetail(id);
    }
  });
  return row;
}

// Only what changed is written: text a reader is selecting stays put.
function setText(element, text) {
  const value = String(text);
  if (element.textContent !== value) element.textContent = value;
}

function fillRow(row, plugin, before) {
  const cell = (column) => row.querySelector(`td[data-col="${column}"]`);
  setText(row.querySelector(".plugin-name"), plugin.name);
  const why = row.querySelector(".why");
  setText(why, whyText(plugin));
  why.hidden = !why.textContent;
  setState(row.querySelector(".state"), plugin.state);
  setText(cell("pid"), plugin.pid ?? NO_VALUE);
  setText(cell("restarts"), plugin.restarts);
  setText(cell("uptime"), plugin.uptime == null ? NO_VALUE : formatDuration(plugin.uptime));
  setText(cell("memory"), plugin.memory_rss == null ? NO_VALUE : formatBytes(plugin.memory_rss));
  setText(cell("calls"), plugin.calls);
  setText(cell("failures"), plugin.failures);
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

function setState(badge, state) {
  setText(badge, state);
  if (badge.dataset.state !== state) {
    badge.dataset.state = state;
    badge.className = `state state-${state}`;
  }
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
function openDetail(id) {
  app.selected = id;
  app.panel += 1;
  app.entries = null;
  app.entriesPid = undefined;
  app.logPosition = null;
  app.logBusy = false;
  app.chartAt = 0;
  app.chartBusy = false;
  for (const [rowId, row] of app.rows) row.classList.toggle("selected", rowId === id);
  $("#detail").hidden = false;
  $("#entries").replaceChildren();
  $("#log").replaceChildren();
  $("#log-note").textContent = "";
  $("#detail-confinement").textContent = "";
  $("#detail-warnings").replaceChildren();
  $("#detail-warnings").hidden = true;
  $("#action-result").textContent = "";
  $("#chart").replaceChildren();
  $("#chart-caption").textContent = "";
  const plugin = app.plugins.get(id);
  if (plugin) refreshDetail(plugin);
  // Below the table on a narrow screen: bring it into view.
  if (window.matchMedia("(max-width: 1499px)").matches) $("#detail").scrollIntoView({ block: "start" });
}

function closeDetail() {
  app.selected = null;
  app.panel += 1;
  $("#detail").hidden = true;
  for (const row of app.rows.values()) row.classList.remove("selected");
}

function refreshDetail(plugin) {
  setText($("#detail-title"), `${plugin.name} (${plugin.id})`);
  setState($("#detail-state"), plugin.state);
  const facts = [
    plugin.pid ? `pid ${plugin.pid}` : "no worker",
    plugin.where && plugin.where !== "local" ? plugin.where : null,
    plugin.uptime == null ? null : `up ${formatDuration(plugin.uptime)}`,
    plugin.memory_rss == null ? null : `${formatBytes(plugin.memory_rss)}`,
    plugin.cpu_time == null ? null : `${plugin.cpu_time.toFixed(1)} s CPU`,
    `${plugin.in_flight} in flight`,
    plugin.queued ? `${plugin.queued} queued` : null,
  ];
  setText($("#detail-facts"), facts.filter(Boolean).join(" · "));
  const why = $("#detail-why");
  setText(why, whyText(plugin));
  why.hidden = !why.textContent;
  // Start what is not running; stop what is not stopped.
  $('[data-action="start"]').disabled = plugin.state === "running" || plugin.state === "starting";
  $('[data-action="stop"]').disabled = plugin.state === "stopped";
  if (app.entriesPid !== plugin.pid) {
    app.entriesPid = plugin.pid;
    loadEntries(plugin.id, app.panel);
  }
  if (app.logPosition === null || plugin.log_lines !== app.logPosition) loadLog(plugin.id, app.panel, plugin.log_lines);
  const moved = app.chartSeen !== `${plugin.calls}/${plugin.restarts}`;
  if (Date.now() - app.chartAt > (moved ? 1000 : 5000)) loadChart(plugin.id, app.panel, `${plugin.calls}/${plugin.restarts}`);
}

async function loadEntries(id, panel) {
  let detail;
  try {
    detail = (await api("GET", pluginPath(id))).plugin;
  } catch (error) {
    return;
  }
  if (app.panel !== panel) return;
  showConfinement(detail);
  const entries = JSON.stringify(detail.entries);
  if (entries === app.entries) return; // keep what the user typed in the forms
  app.entries = entries;
  const list = $("#entries");
  list.replaceChildren();
  if (!detail.entries.length) {
    list.append(textSpan("hint", detail.state === "running" ? "This plugin has no entries." : "Entries show once the plugin runs."));
  }
  for (const entry of detail.entries) {
    const call = async (args) => (await api("POST", pluginPath(id, `/entries/${encodeURIComponent(entry.id)}`), args)).value;
    list.append(entryForm(entry, call));
  }
}

// How the current worker is confined, as it reported, and what looks wrong in its plugin.toml.
function showConfinement(detail) {
  const p = detail.protections || {};
  const watcher = p.watcher || {};
  const parts = [];
  if (p.sandbox) parts.push(`sandbox: ${p.sandbox.reason || p.sandbox.requested}`);
  if (watcher.memory_limit_mb) parts.push(`memory limit ${watcher.memory_limit_mb} MiB`);
  if (watcher.cpu_time_limit) parts.push(`CPU limit ${watcher.cpu_time_limit} s`);
  if (watcher.max_processes) parts.push(`at most ${watcher.max_processes} processes`);
  if (detail.log_path) parts.push(`log file ${detail.log_path}`);
  setText($("#detail-confinement"), parts.join(" · "));
  const warnings = $("#detail-warnings");
  warnings.replaceChildren(...(detail.warnings || []).map((text) => {
    const item = document.createElement("li");
    item.textContent = text;
    return item;
  }));
  warnings.hidden = !warnings.childElementCount;
}

// New log lines since the last look, appended (what a reader selected stays selected).
async function loadLog(id, panel, wanted) {
  if (app.logBusy) return;
  const log = $("#log");
  // The log's count went back: a new service with the same token. Start over from its tail.
  const restarted = app.logPosition !== null && wanted < app.logPosition;
  const first = app.logPosition === null || restarted;
  if (!first && wanted <= app.logPosition) return;
  app.logBusy = true;
  let answer;
  try {
    const query = first ? "tail=200" : `tail=${LOG_LINES_SHOWN}&after=${app.logPosition}`;
    answer = await api("GET", pluginPath(id, `/logs?${query}`));
  } catch (error) {
    return; // the next snapshot tries again
  } finally {
    if (app.panel === panel) app.logBusy = false;
  }
  if (app.panel !== panel) return;
  const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  const lines = [];
  if (restarted) lines.push("──── the service restarted ────");
  if (answer.skipped) lines.push(`… ${answer.skipped} lines not shown …`);
  lines.push(...answer.lines);
  log.append(...lines.map((line) => document.createTextNode(`${line}\n`)));
  while (log.childNodes.length > LOG_LINES_SHOWN) log.firstChild.remove();
  setText($("#log-note"), answer.next ? `(${answer.next} lines since the service started; the last ${log.childNodes.length} here)` : "");
  if (atBottom || first) log.scrollTop = log.scrollHeight;
  app.logPosition = answer.next;
}

async function loadChart(id, panel, seen) {
  if (app.chartBusy) return;
  app.chartBusy = true;
  app.chartAt = Date.now();
  app.chartSeen = seen;
  try {
    const history = await api("GET", pluginPath(id, "/history"));
    if (app.panel === panel) drawChart($("#chart"), $("#chart-caption"), history);
  } catch (error) {
    // The next snapshot tries again.
  } finally {
    if (app.panel === panel) app.chartBusy = false;
  }
}

// -- lifecycle buttons ------------------------------------------------------------------------
async function lifecycle(action) {
  const id = app.selected;
  const panel = app.panel;
  if (!id) return;
  const buttons = document.querySelectorAll("[data-action]");
  const result = $("#action-result");
  buttons.forEach((button) => { button.disabled = true; });
  result.className = "result-line";
  result.textContent = `${action} ${id}…`;
  let text, failed = false;
  try {
    const plugin = (await api("POST", pluginPath(id, `/${action}`))).plugin;
    text = `${action}: ${plugin.state}${plugin.pid ? ` (pid ${plugin.pid})` : ""}`;
  } catch (error) {
    failed = true;
    text = `${action} failed: ${error.type}: ${error.message}`;
  }
  if (app.panel !== panel) return; // the answer belongs to a panel no longer shown
  buttons.forEach((button) => { button.disabled = false; });
  result.className = failed ? "result-line failed" : "result-line";
  result.textContent = text;
  const plugin = app.plugins.get(id);
  if (plugin) refreshDetail(plugin); // the state buttons again
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
  $("#filter").addEventListener("input", applyFilter);
  for (const button of document.querySelectorAll("[data-action]")) {
    button.addEventListener("click", () => lifecycle(button.dataset.action));
  }
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) signIn(saved);
  else showLogin("");
}

main();
