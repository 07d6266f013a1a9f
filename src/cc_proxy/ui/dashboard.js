// The cc-proxy dashboard: reads the gateway's own endpoints once a second and switches the
// mode with PUT /api/mode. Plain DOM, no build step. Every value from the gateway is put
// on the page as text (textContent), never as markup.
"use strict";

const POLL_MS = 1000;
const COMPARE_POLL_MS = 5000;
const TOKEN_KEY = "cc-proxy-admin-token";

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  compare: { filters: "", cursor: null, pages: 0, selected: null, lastPoll: 0 },
};

const $ = (selector) => document.querySelector(selector);

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function authHeaders(extra = {}) {
  return state.token ? { ...extra, Authorization: `Bearer ${state.token}` } : extra;
}

// fetch that never throws: {ok, status, body} with body the parsed JSON or null.
async function call(path, options = {}) {
  try {
    const response = await fetch(path, {
      cache: "no-store",
      ...options,
      headers: authHeaders(options.headers),
    });
    const body = await response.json().catch(() => null);
    return { ok: response.ok, status: response.status, body };
  } catch (error) {
    return { ok: false, status: 0, body: null, error: String(error) };
  }
}

// The reason an Anthropic-shaped error body gives, else the status.
function reason(result) {
  const message = result.body && result.body.error && result.body.error.message;
  if (message) return message;
  return result.status ? `HTTP ${result.status}` : `gateway unreachable (${result.error})`;
}

function notice(text, kind) {
  const node = $("#notice");
  node.textContent = text;
  node.className = kind;
  node.hidden = false;
}

const number = new Intl.NumberFormat("en");
const fmt = (value) => (value === null || value === undefined ? "–" : number.format(value));

function clock(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString([], { hour12: false });
}

// --- mode -------------------------------------------------------------------------------

function showMode(mode, health) {
  $("#mode").textContent = mode;
  for (const button of document.querySelectorAll("#mode-switch button")) {
    const current = button.dataset.mode === mode;
    button.classList.toggle("current", current);
    button.setAttribute("aria-pressed", String(current));
    if (health && button.dataset.mode === "anthropic-only") {
      button.title = health.allow_anthropic_only
        ? "send everything to the passthrough (Anthropic)"
        : "needs cc-proxy started with --allow-anthropic-only";
    }
  }
}

async function switchMode(mode) {
  const result = await call("/api/mode", {
    method: "PUT",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ mode }),
  });
  if (result.ok) {
    showMode(result.body.mode);
    notice(`Mode switched to ${result.body.mode}; requests that start from now on use it.`, "ok");
  } else {
    notice(`Switch to ${mode} refused (${result.status}): ${reason(result)}`, "error");
  }
}

// --- counters ---------------------------------------------------------------------------

function pick(object, path) {
  return path.split(".").reduce((node, key) => (node == null ? undefined : node[key]), object);
}

function showCounters(stats) {
  for (const node of document.querySelectorAll("[data-counter]")) {
    const text = fmt(pick(stats, node.dataset.counter) ?? 0);
    if (node.textContent !== text) {
      node.textContent = text;
      node.classList.remove("bumped");
      void node.offsetWidth; // restart the highlight animation
      node.classList.add("bumped");
    }
  }
}

// --- upstreams and sparklines -----------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";

function sparkline(values, label) {
  const width = 240;
  const height = 36;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("class", "sparkline");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", label);
  const present = values.filter((v) => v !== null);
  const max = Math.max(1, ...present);
  const step = width / Math.max(1, values.length - 1);
  // A bucket without a value (no TTFT measured) breaks the line instead of dropping to 0.
  let points = [];
  const flush = () => {
    if (points.length === 1) points.push([points[0][0] + 3, points[0][1]]);
    if (points.length) {
      const line = document.createElementNS(SVG, "polyline");
      line.setAttribute("points", points.map((p) => p.join(",")).join(" "));
      svg.append(line);
    }
    points = [];
  };
  values.forEach((value, i) => {
    if (value === null) return flush();
    points.push([+(i * step).toFixed(1), +(height - 2 - (value / max) * (height - 4)).toFixed(1)]);
  });
  flush();
  return svg;
}

function lastValue(values) {
  for (let i = values.length - 1; i >= 0; i--) if (values[i] !== null) return values[i];
  return null;
}

function showUpstreams(series, health) {
  const points = Object.values(series.upstreams)[0]?.requests.length || 0;
  $("#series-window").textContent =
    `last ${(points * series.bucket_secs) / 60} min, ${series.bucket_secs} s per point`;
  const cards = Object.entries(series.upstreams).map(([name, s]) => {
    const settings = health && health[name];
    const tokens = s.input_tokens.map((v, i) => v + s.output_tokens[i]);
    const sum = (values) => values.reduce((a, b) => a + b, 0);
    const limit = settings && settings.max_concurrent ? ` / ${settings.max_concurrent}` : "";
    return el(
      "article",
      { class: "upstream", dataset: { upstream: name } },
      el("h3", {}, name, el("span", { class: "url" }, settings ? settings.url || "" : "")),
      el("p", { class: "in-flight" }, `in flight: ${s.in_flight}${limit}`,
        ` · errors: ${fmt(sum(s.errors))}`),
      el(
        "div",
        { class: "spark" },
        el("span", {}, "requests"),
        sparkline(s.requests, `${name} requests`),
        el("span", { class: "figure" }, fmt(sum(s.requests))),
      ),
      el(
        "div",
        { class: "spark" },
        el("span", {}, "tokens"),
        sparkline(tokens, `${name} tokens`),
        el("span", { class: "figure" }, fmt(sum(tokens))),
      ),
      el(
        "div",
        { class: "spark" },
        el("span", {}, "TTFT ms"),
        sparkline(s.ttft_ms, `${name} time to first token`),
        el("span", { class: "figure" }, fmt(lastValue(s.ttft_ms))),
      ),
    );
  });
  $("#upstreams").replaceChildren(...cards);
}

// --- recent requests --------------------------------------------------------------------

function showRecent(exchanges) {
  $("#recent-empty").hidden = exchanges.length > 0;
  const rows = exchanges.map((x) => {
    const failed = x.error_type || x.outcome !== "complete" || (x.status || 0) >= 400;
    const model = x.model && x.model !== x.requested_model
      ? `${x.requested_model || "–"} → ${x.model}` : x.model || "–";
    return el(
      "tr",
      { class: failed ? "failed" : "", dataset: { id: x.id } },
      el("td", {}, clock(x.time)),
      el("td", { class: "id", title: x.id }, x.id.slice(0, 8)),
      el("td", {}, x.role),
      el("td", {}, x.mode),
      el("td", {}, x.upstream),
      el("td", {}, `${x.method} ${x.path}${x.stream ? " (stream)" : ""}`),
      el("td", {}, model),
      el("td", {}, x.status ?? "–"),
      el("td", { class: "num" }, fmt(x.ttft_ms)),
      el("td", { class: "num" }, fmt(x.duration_ms)),
      el("td", { class: "num" }, fmt(x.input_tokens)),
      el("td", { class: "num" }, fmt(x.output_tokens)),
      el("td", { class: "num" }, fmt(x.tool_calls)),
      el("td", { title: x.detail || "" }, x.error_type || (x.outcome !== "complete"
        ? x.outcome : x.stop_reason || "–")),
    );
  });
  $("#recent tbody").replaceChildren(...rows);
}

// --- compare records --------------------------------------------------------------------

function agreementCell(value) {
  const [text, kind] = value === true ? ["agree", "agree"]
    : value === false ? ["differ", "differ"] : ["n/a", "none"];
  return el("td", { class: `agreement ${kind}` }, text);
}

function sideSummary(side) {
  if (!side) return "–";
  if (side.dropped) return "dropped";
  return `${side.status ?? "–"} ${side.error_type || side.stop_reason || ""}`.trim();
}

function compareQuery(cursor) {
  const params = new URLSearchParams(state.compare.filters);
  params.set("limit", "20");
  if (cursor) params.set("cursor", cursor);
  return `/api/compare?${params}`;
}

async function loadCompare(append) {
  const result = await call(compareQuery(append ? state.compare.cursor : null));
  const status = $("#compare-status");
  const list = $("#compare-list");
  if (result.status === 404) {
    status.textContent = "Compare records are not available in this cc-proxy "
      + "(GET /api/compare answered 404).";
    list.hidden = true;
    $("#compare-more").hidden = true;
    return;
  }
  if (!result.ok) {
    status.textContent = `Compare records could not be read: ${reason(result)}`;
    return;
  }
  const { records, next_cursor: next } = result.body;
  state.compare.cursor = next;
  state.compare.pages = append ? state.compare.pages + 1 : 1;
  const rows = records.map((r) => el(
    "tr",
    {
      class: `record${r.id === state.compare.selected ? " selected" : ""}`,
      dataset: { id: r.id },
      tabindex: "0",
      onclick: () => showRecord(r.id),
      onkeydown: (event) => event.key === "Enter" && showRecord(r.id),
    },
    el("td", {}, new Date(r.time).toLocaleTimeString([], { hour12: false })),
    el("td", { title: r.session_id || "" }, (r.session_id || "–").slice(0, 12)),
    el("td", {}, `${r.requested_model || "–"} → ${r.rewritten_model || "–"}`),
    el("td", {}, sideSummary(r.primary)),
    el("td", {}, sideSummary(r.shadow)),
    agreementCell(r.agreement.stop_reason),
    agreementCell(r.agreement.first_tool),
    agreementCell(r.agreement.first_tool_args),
  ));
  const body = $("#compare-list tbody");
  if (append) body.append(...rows);
  else body.replaceChildren(...rows);
  const shown = body.children.length;
  status.textContent = shown ? `${shown} record${shown === 1 ? "" : "s"}, newest first`
    : "No compare records yet: switch to compare mode and send requests.";
  list.hidden = shown === 0;
  $("#compare-more").hidden = !next;
}

function field(name, value) {
  return el("div", { class: "field" }, el("span", { class: "name" }, name), el("span", {}, value));
}

function sideView(title, side) {
  if (!side) return el("div", { class: "side" }, el("h4", {}, title), "no answer recorded");
  const calls = (side.tool_calls || []).map((call) => el(
    "div",
    { class: "tool-call" },
    el("strong", {}, call.name),
    el("pre", {}, JSON.stringify(call.input, null, 2)),
  ));
  return el(
    "div",
    { class: "side", dataset: { side: title } },
    el("h4", {}, `${title}: ${side.upstream || ""}`),
    side.dropped ? el("p", { class: "differ" }, "dropped: the target was saturated") : null,
    field("status", side.status ?? "–"),
    field("error", side.error_type || "–"),
    field("stop reason", side.stop_reason || "–"),
    field("ttft ms", fmt(side.ttft_ms)),
    field("total ms", fmt(side.duration_ms)),
    field("tokens in / out", `${fmt(side.input_tokens)} / ${fmt(side.output_tokens)}`),
    field("cache read / write",
      `${fmt(side.cache_read_input_tokens)} / ${fmt(side.cache_creation_input_tokens)}`),
    el("h5", {}, `tool calls (${calls.length})`),
    ...calls,
    el("h5", {}, side.text_truncated ? "text (cut)" : "text"),
    el("pre", { class: "text" }, side.text || ""),
  );
}

async function showRecord(id) {
  state.compare.selected = id;
  for (const row of document.querySelectorAll("#compare-list tr.record")) {
    row.classList.toggle("selected", row.dataset.id === id);
  }
  const detail = $("#compare-detail");
  const result = await call(`/api/compare/${encodeURIComponent(id)}`);
  detail.hidden = false;
  if (!result.ok) {
    detail.replaceChildren(el("p", { class: "differ" }, `Record ${id}: ${reason(result)}`));
    return;
  }
  const record = result.body;
  const agreement = el(
    "table",
    { class: "agreement-summary" },
    el("tr", {}, ...["stop reason", "first tool", "first tool args"].map((h) => el("th", {}, h))),
    el(
      "tr",
      {},
      agreementCell(record.agreement.stop_reason),
      agreementCell(record.agreement.first_tool),
      agreementCell(record.agreement.first_tool_args),
    ),
  );
  detail.replaceChildren(
    el("h3", {}, `Record ${record.id}`),
    el("p", {}, `session ${record.session_id || "–"} · ${record.requested_model || "–"} → `
      + `${record.rewritten_model || "–"} · ${new Date(record.time).toLocaleString()}`),
    agreement,
    el("div", { class: "sides" }, sideView("primary", record.primary),
      sideView("shadow", record.shadow)),
  );
}

// --- the loop ---------------------------------------------------------------------------

async function tick() {
  const [health, stats, series, recent] = await Promise.all(
    ["/health", "/api/stats", "/api/series", "/api/recent?limit=50"].map((path) => call(path)),
  );
  const connection = $("#connection");
  if (!health.ok) {
    connection.textContent = `disconnected: ${reason(health)}`;
    connection.className = "connection down";
    return;
  }
  connection.textContent = "live";
  connection.className = "connection up";
  showMode(health.body.mode, health.body);
  if (stats.ok) showCounters(stats.body);
  if (series.ok) showUpstreams(series.body, health.body);
  if (recent.ok) showRecent(recent.body.exchanges);
  const now = Date.now();
  if (state.compare.pages <= 1 && now - state.compare.lastPoll >= COMPARE_POLL_MS) {
    state.compare.lastPoll = now;
    await loadCompare(false);
  }
  $("#updated").textContent = `updated ${new Date().toLocaleTimeString([], { hour12: false })}`;
}

async function loop() {
  await tick();
  setTimeout(loop, POLL_MS);
}

function start() {
  $("#token-form").addEventListener("submit", (event) => event.preventDefault());
  const token = $("#admin-token");
  token.value = state.token;
  token.addEventListener("input", () => {
    state.token = token.value.trim();
    if (state.token) sessionStorage.setItem(TOKEN_KEY, state.token);
    else sessionStorage.removeItem(TOKEN_KEY);
  });
  for (const button of document.querySelectorAll("#mode-switch button")) {
    button.addEventListener("click", () => switchMode(button.dataset.mode));
  }
  $("#compare-filters").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    const params = new URLSearchParams();
    for (const key of ["session", "model"]) {
      const value = String(form.get(key) || "").trim();
      if (value) params.set(key, value);
    }
    if (form.get("disagreements")) params.set("disagreements", "true");
    state.compare.filters = params.toString();
    loadCompare(false);
  });
  $("#compare-more").addEventListener("click", () => loadCompare(true));
  loop();
}

start();
