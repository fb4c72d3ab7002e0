// The Coffer operator console: one page over the node's public HTTP API (docs/api.md).
//
// Why this shape: the console is a client like any other. It signs in with an API key, asks
// GET /v1/whoami for the key's role and shows only the actions that role may take; the node
// enforces roles anyway, so a hidden button is a courtesy, never the protection. Views are
// addressed by the URL fragment (#/account/alice) so they can be bookmarked and shared. Every
// text that comes from the ledger is put in the page as text, never as HTML.
"use strict";

const roleRank = { reader: 1, operator: 2, admin: 3 };
const livePollMs = 2000; // how often the live charts read /metrics
const livePointsMax = 150; // five minutes of live samples at one per two seconds
const statementPagesMax = 10; // a balance chart reads at most this many statement pages
const openTransactionsShown = 100;
const searchLimit = 50;

const session = {
  key: sessionStorage.getItem("coffer.key") || "",
  role: null,
  keyId: null,
  shards: 1, // more than one: a sharded node (per-shard views take shard=)
  shard: Number(sessionStorage.getItem("coffer.shard") || 0),
};
let stopView = () => {}; // the current view's cleanup (live polling)
let generation = 0; // grows with every render: a view still loading when another began stops quietly

class ApiError extends Error {
  constructor(status, code, message) {
    super(`${code}: ${message}`);
    this.status = status;
    this.code = code;
  }
}

// ------------------------------------------------------------------------------------ plumbing

async function api(path, { method = "GET", body, params, text = false } = {}) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(params || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  const headers = { Accept: text ? "text/plain" : "application/json" };
  if (session.key) headers["X-API-Key"] = session.key;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (text && response.ok) return response.text();
  let data = null;
  try { data = await response.json(); } catch { data = null; }
  if (!response.ok) {
    const error = (data && data.error) || {};
    throw new ApiError(response.status, error.code || `HTTP_${response.status}`, error.message || response.statusText);
  }
  return data;
}

function can(role) {
  return session.role !== null && roleRank[session.role] >= roleRank[role];
}

function dedupId(action) {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes); // works on plain http too, unlike randomUUID
  return `console-${action}-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

// h("a", {href: "#/"}, "text", child…): an element; strings become text nodes, never HTML.
function h(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.appendChild(typeof child === "string" || typeof child === "number" ? document.createTextNode(String(child)) : child);
  }
  return node;
}

function table(headers, rows, options = {}) {
  const numeric = new Set(options.numeric || []);
  return h("table", { id: options.id, "data-testid": options.testid },
    h("thead", {}, h("tr", {}, headers.map((name, i) => h("th", { class: numeric.has(i) ? "number" : null }, name)))),
    h("tbody", {}, rows.map((row) => h("tr", row.attributes || {},
      (row.cells || row).map((cell, i) => h("td", { class: numeric.has(i) ? "number" : null }, cell))))));
}

function accountLink(accountId) {
  return h("a", { href: `#/account/${encodeURIComponent(accountId)}`, class: "mono" }, accountId);
}

function eventLink(seq, label, shard = session.shard) {
  const suffix = session.shards > 1 ? `?shard=${shard}` : "";
  return h("a", { href: `#/event/${seq}${suffix}`, class: "mono" }, label === undefined ? String(seq) : label);
}

function entries(map) {
  const pairs = Object.entries(map || {});
  return pairs.length ? pairs.map(([key, value]) => `${key}: ${value}`).join(", ") : "—";
}

function sum(map, scale) {
  // Exact sum of decimal strings at one scale, through integers of the minor unit.
  let total = 0n;
  for (const value of Object.values(map || {})) total += toMinor(value, scale);
  return fromMinor(total, scale);
}

function toMinor(text, scale) {
  const negative = text.startsWith("-");
  const [whole, fraction = ""] = text.replace("-", "").split(".");
  const value = BigInt(whole + fraction.padEnd(scale, "0").slice(0, scale));
  return negative ? -value : value;
}

function fromMinor(value, scale) {
  const negative = value < 0n;
  const digits = (negative ? -value : value).toString().padStart(scale + 1, "0");
  const text = scale ? `${digits.slice(0, -scale)}.${digits.slice(-scale)}` : digits;
  return negative ? `-${text}` : text;
}

function notice(message, isError = false) {
  const box = document.getElementById("notice");
  box.textContent = message;
  box.className = isError ? "error" : "";
  box.hidden = !message;
}

function shardParams() {
  return session.shards > 1 ? { shard: session.shard } : {};
}

function routeQuery() {
  const hash = window.location.hash.slice(1) || "/";
  const [path, query = ""] = hash.split("?");
  return { path, params: new URLSearchParams(query) };
}

function setHash(path, params) {
  const query = new URLSearchParams(Object.entries(params).filter(([, v]) => v !== "" && v !== undefined && v !== null)).toString();
  const target = `#${path}${query ? "?" + query : ""}`;
  if (window.location.hash === target) render();
  else window.location.hash = target;
}

// Prometheus text format: [{name, labels, value}]
function parseMetrics(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/);
    if (!match) continue;
    const labels = {};
    for (const pair of (match[3] || "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[pair[1]] = pair[2];
    samples.push({ name: match[1], labels, value: Number(match[4]) });
  }
  return samples;
}

function metricSum(samples, name, filter = () => true) {
  return samples.filter((s) => s.name === name && filter(s.labels)).reduce((total, s) => total + s.value, 0);
}

function metricValue(samples, name) {
  const found = samples.find((s) => s.name === name);
  return found ? found.value : null;
}

// Cumulative histogram buckets {le: count} of a metric, summed over the samples that pass filter.
function buckets(samples, name, filter = () => true) {
  const found = new Map();
  for (const s of samples) {
    if (s.name !== `${name}_bucket` || !filter(s.labels)) continue;
    const le = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
    found.set(le, (found.get(le) || 0) + s.value);
  }
  return found;
}

// The q-quantile of the observations between two bucket readings, as Prometheus' histogram_quantile.
function quantile(q, before, after) {
  const bounds = [...after.keys()].sort((a, b) => a - b);
  const counts = bounds.map((le) => after.get(le) - (before.get(le) || 0));
  const total = counts[counts.length - 1];
  if (!total || total <= 0) return null;
  const rank = q * total;
  for (let i = 0; i < bounds.length; i++) {
    if (counts[i] >= rank) {
      if (bounds[i] === Infinity) return bounds[i - 1] ?? null;
      const lower = i ? bounds[i - 1] : 0;
      const below = i ? counts[i - 1] : 0;
      const inBucket = counts[i] - below;
      return lower + (bounds[i] - lower) * (inBucket ? (rank - below) / inBucket : 1);
    }
  }
  return null;
}

// ------------------------------------------------------------------------------------ sign in

async function signIn(key) {
  session.key = key;
  const who = await api("/v1/whoami");
  if (who.role === null) throw new ApiError(401, "UNAUTHORIZED", key ? "This key is not one of this node's keys." : "");
  session.role = who.role;
  session.keyId = who.key_id;
  if (key) sessionStorage.setItem("coffer.key", key);
  try {
    const shards = await api("/v1/shards");
    session.shards = shards.map ? shards.shards.length : 1;
  } catch {
    session.shards = 1;
  }
  if (session.shard >= session.shards) session.shard = 0;
  document.body.dataset.role = session.role;
  document.getElementById("who").textContent =
    session.keyId ? `${session.role} (key ${session.keyId})` : `${session.role} (this node has no keys)`;
  document.getElementById("sign-out").hidden = !session.keyId;
  document.getElementById("sign-in").hidden = true;
  const picker = document.getElementById("shard-picker");
  picker.hidden = session.shards <= 1;
  const select = document.getElementById("shard");
  select.textContent = "";
  for (let shard = 0; shard < session.shards; shard++) select.appendChild(h("option", { value: shard, selected: shard === session.shard }, String(shard)));
}

function showSignIn(message) {
  session.role = null;
  document.getElementById("sign-in").hidden = false;
  document.getElementById("view").textContent = "";
  document.getElementById("who").textContent = "";
  document.getElementById("sign-out").hidden = true;
  const error = document.getElementById("sign-in-error");
  error.textContent = message || "";
  error.hidden = !message;
}

// ------------------------------------------------------------------------------------ views

const views = {
  "/": overview,
  "/accounts": accounts,
  "/account": account,
  "/events": events,
  "/event": eventDetail,
  "/transactions": transactions,
  "/health": health,
};

async function render() {
  stopView();
  stopView = () => {};
  const mine = ++generation;
  if (session.role === null) return;
  notice("");
  const { path, params } = routeQuery();
  const [, first = "", ...rest] = path.split("/");
  const view = views[`/${first}`] || overview;
  const container = document.getElementById("view");
  container.textContent = "";
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("active", link.getAttribute("href") === `#/${first}`);
  }
  try {
    await view(container, params, rest.map(decodeURIComponent).join("/"));
  } catch (error) {
    if (mine !== generation) return; // the page moved on while this view loaded
    if (error instanceof ApiError && error.status === 401) {
      showSignIn("The key was refused (401): sign in again.");
      return;
    }
    notice(error.message, true);
  }
}

// --- overview: status cards, live throughput and latency

async function overview(container) {
  const mine = generation;
  container.appendChild(h("h1", {}, "Overview"));
  const cards = h("div", { class: "cards", id: "overview-cards" });
  container.appendChild(cards);
  container.appendChild(h("form", { class: "filters", id: "quick-search", onsubmit: (event) => {
    event.preventDefault();
    setHash("/accounts", { prefix: event.target.elements.prefix.value.trim() });
  } }, h("label", {}, "find accounts by id or prefix", h("input", { name: "prefix", placeholder: "e.g. cust-12" })),
  h("button", { type: "submit", class: "primary" }, "Search")));
  const charts = h("div", { class: "charts" },
    h("div", { class: "panel" }, h("h2", {}, "Throughput"), h("div", { class: "chart-box", id: "chart-throughput" })),
    h("div", { class: "panel" }, h("h2", {}, "Latency"), h("div", { class: "chart-box", id: "chart-latency" })));
  container.appendChild(charts);
  container.appendChild(h("p", { class: "muted" },
    "Live from this node's /metrics every 2 s", session.shards > 1 ? ` (shard ${session.shard})` : "",
    ": commands answered and HTTP requests per second; p50 and p99 latency of writes (POST) and reads (GET), and of log appends."));

  const ready = await api("/readyz").catch((error) => ({ status: `not ready: ${error.message}` }));
  const head = await api("/v1/audit/head", { params: shardParams() });
  const card = (label, value, id) => h("div", { class: "card", "data-testid": id }, h("div", { class: "label" }, label), h("div", { class: "value" }, value));
  cards.append(
    card("node", ready.status === "ready" ? "ready" : String(ready.status), "card-ready"),
    card("shards", String(session.shards), "card-shards"),
    card("chain head seq", String(head.seq), "card-seq"),
    card("head hash", head.hash.slice(0, 16) + "…", "card-hash"),
    card("signed in as", session.role, "card-role"));

  let previous = null;
  const throughput = { commands: [], requests: [] };
  const latency = { "POST p50": [], "POST p99": [], "GET p99": [], "append p99": [] };
  const draw = () => {
    if (mine !== generation) return;
    const toSeries = (map) => Object.entries(map).map(([name, points]) => ({ name, points }));
    CofferCharts.line(document.getElementById("chart-throughput"), { series: toSeries(throughput), time: true, unit: "/s", title: "throughput", empty: "collecting samples…" });
    CofferCharts.line(document.getElementById("chart-latency"), { series: toSeries(latency), time: true, unit: "ms", title: "latency", empty: "collecting samples…" });
  };
  const poll = async () => {
    let text;
    try {
      text = await api("/metrics", { text: true, params: shardParams() });
    } catch (error) {
      notice(`metrics: ${error.message}`, true);
      return;
    }
    const now = Date.now();
    const parsed = parseMetrics(text);
    const reading = {
      time: now,
      commands: metricSum(parsed, "coffer_commands_total"),
      requests: metricSum(parsed, "coffer_http_requests_total"),
      samples: parsed,
    };
    if (previous) {
      const seconds = (reading.time - previous.time) / 1000;
      const push = (list, value) => { if (value !== null && Number.isFinite(value)) { list.push([now, value]); if (list.length > livePointsMax) list.shift(); } };
      push(throughput.commands, Math.max(0, (reading.commands - previous.commands) / seconds));
      push(throughput.requests, Math.max(0, (reading.requests - previous.requests) / seconds));
      const latencyMs = (name, q, filter) => {
        const value = quantile(q, buckets(previous.samples, name, filter), buckets(reading.samples, name, filter));
        return value === null ? null : value * 1000;
      };
      push(latency["POST p50"], latencyMs("coffer_http_request_seconds", 0.5, (l) => l.method === "POST"));
      push(latency["POST p99"], latencyMs("coffer_http_request_seconds", 0.99, (l) => l.method === "POST"));
      push(latency["GET p99"], latencyMs("coffer_http_request_seconds", 0.99, (l) => l.method === "GET"));
      push(latency["append p99"], latencyMs("coffer_log_append_seconds", 0.99));
    }
    previous = reading;
    draw();
  };
  draw();
  await poll();
  if (mine !== generation) return; // another view began meanwhile: no polling for this one
  const timer = setInterval(poll, livePollMs);
  stopView = () => clearInterval(timer);
}

// --- accounts: search by id or prefix

async function accounts(container, params) {
  const prefix = params.get("prefix") || "";
  const after = params.get("after") || "";
  container.appendChild(h("h1", {}, "Accounts"));
  const form = h("form", { class: "filters", id: "account-search", onsubmit: (event) => {
    event.preventDefault();
    const value = event.target.elements.prefix.value.trim();
    setHash("/accounts", { prefix: value });
  } },
  h("label", {}, "account id or prefix", h("input", { name: "prefix", id: "search-prefix", value: prefix, placeholder: "e.g. alice or cust-" })),
  h("button", { type: "submit", class: "primary" }, "Search"));
  container.appendChild(form);
  const found = await api("/v1/search/accounts", { params: { prefix, limit: searchLimit, after } });
  const exact = found.accounts.find((view) => view.account_id === prefix);
  if (exact) container.appendChild(h("p", {}, "Exact match: ", accountLink(prefix)));
  const rows = found.accounts.map((view) => [
    accountLink(view.account_id), view.asset, view.state, view.available, sum(view.reservations, view.scale),
    sum(view.pending_in, view.scale), sum(view.pending_out, view.scale), String(view.version),
  ]);
  container.appendChild(table(["account", "asset", "state", "available", "reserved", "pending in", "pending out", "version"], rows,
    { numeric: [3, 4, 5, 6, 7], id: "account-results", testid: "account-results" }));
  if (!rows.length) container.appendChild(h("p", { class: "muted", id: "no-accounts" }, `No account id starts with “${prefix}”.`));
  if (found.next) {
    container.appendChild(h("p", {}, h("a", { href: `#/accounts?${new URLSearchParams({ prefix, after: found.next })}`, id: "accounts-next" }, "Next page →")));
  }
}

// --- one account: every section, limits, state, version, metadata, balance chart, history

async function account(container, params, accountId) {
  const view = await api(`/v1/accounts/${encodeURIComponent(accountId)}`);
  container.appendChild(h("h1", {}, "Account ", h("span", { class: "mono", id: "account-id" }, view.account_id)));
  const stateClass = view.state === "NORMAL" ? "ok" : view.state === "LOCKED" ? "warn" : "bad";
  const fields = [
    ["asset", `${view.asset} (scale ${view.scale})`],
    ["state", h("span", { class: stateClass, id: "account-state" }, view.state)],
    ["available", h("span", { id: "account-available" }, view.available)],
    ["reserved", `${sum(view.reservations, view.scale)} (${entries(view.reservations)})`],
    ["pending out", `${sum(view.pending_out, view.scale)} (${entries(view.pending_out)})`],
    ["pending in", `${sum(view.pending_in, view.scale)} (${entries(view.pending_in)})`],
    ["lower limit", view.lower_limit],
    ["upper limit", view.upper_limit === null ? "none" : view.upper_limit],
    ["version", h("span", { id: "account-version" }, String(view.version))],
    ["as of seq", String(view.seq)],
    ["metadata", entries(view.metadata)],
  ];
  if (view.shard !== undefined) fields.push(["shard", String(view.shard)]);
  container.appendChild(h("div", { class: "panel" }, h("dl", { class: "fields", id: "account-fields" }, fields.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]))));

  const sections = [];
  for (const [title, map] of [["Reservations", view.reservations], ["Pending out (TCC)", view.pending_out], ["Pending in (TCC)", view.pending_in]]) {
    const pairs = Object.entries(map);
    if (pairs.length) sections.push(h("div", { class: "panel" }, h("h2", {}, title), table(["id", "amount"], pairs.map(([id, amount]) => [h("span", { class: "mono" }, id), amount]), { numeric: [1] })));
  }
  container.append(...sections);

  if (can("admin")) {
    const act = async (action) => {
      try {
        await api(`/v1/accounts/${encodeURIComponent(accountId)}/${action}`, { method: "POST", body: { dedup_id: dedupId(action) } });
        await render();
        notice(`${action}: done`);
      } catch (error) {
        notice(`${action}: ${error.message}`, true);
      }
    };
    container.appendChild(h("div", { class: "panel actions", id: "account-actions" },
      view.state === "NORMAL" ? h("button", { type: "button", id: "lock-account", onclick: () => act("lock") }, "Lock") : null,
      view.state === "LOCKED" ? h("button", { type: "button", id: "unlock-account", onclick: () => act("unlock") }, "Unlock") : null));
  }

  const chartBox = h("div", { class: "chart-box", id: "chart-balance" });
  container.appendChild(h("div", { class: "panel" }, h("h2", {}, "Balance over time"), chartBox,
    h("p", { class: "muted" }, "From the account's statement: available, and held (reserved + pending out), after every change.")));
  const changes = [];
  let statement = null;
  let cursor = null;
  for (let page = 0; page < statementPagesMax; page++) {
    statement = await api(`/v1/accounts/${encodeURIComponent(accountId)}/statement`, { params: { cursor, limit: 1000 } });
    changes.push(...statement.changes);
    cursor = statement.next;
    if (!cursor) break;
  }
  const available = [];
  const held = [];
  for (const change of changes) {
    const at = Date.parse(change.time);
    available.push([at, Number(change.available), `${change.available} ${view.asset} (seq ${change.seq}, ${change.type})`]);
    const holding = toMinor(sum(change.reservations, view.scale), view.scale) + toMinor(sum(change.pending_out, view.scale), view.scale);
    held.push([at, Number(fromMinor(holding, view.scale)), `${fromMinor(holding, view.scale)} ${view.asset} held (seq ${change.seq})`]);
  }
  CofferCharts.line(chartBox, {
    series: [{ name: `available ${view.asset}`, points: available }, { name: "held", points: held }],
    time: true, step: true, extendTo: Date.now(), title: "balance over time", empty: "no changes",
  });
  if (cursor) chartBox.appendChild(h("p", { class: "muted" }, `Showing the first ${changes.length} changes.`));

  const history = h("div", { class: "panel", id: "history" }, h("h2", {}, "History"));
  container.appendChild(history);
  const historyRows = h("tbody");
  history.appendChild(h("table", { id: "history-table" },
    h("thead", {}, h("tr", {}, ["seq", "time", "type", "dedup_id", "change", "available", "reserved", "pending out", "pending in", "version", "state"].map((name) => h("th", {}, name)))),
    historyRows));
  for (const change of changes.slice().reverse()) {
    historyRows.appendChild(h("tr", {},
      h("td", {}, eventLink(change.seq, undefined, view.shard ?? session.shard)), h("td", { class: "mono" }, change.time), h("td", {}, change.type),
      h("td", { class: "mono" }, change.dedup_id ?? "—"), h("td", { class: "number" }, change.available_delta),
      h("td", { class: "number" }, change.available), h("td", { class: "number" }, sum(change.reservations, view.scale)),
      h("td", { class: "number" }, sum(change.pending_out, view.scale)), h("td", { class: "number" }, sum(change.pending_in, view.scale)),
      h("td", { class: "number" }, String(change.version)), h("td", {}, change.state)));
  }
}

// --- the event log, its filters and hash links; the chain head and an audit run

async function events(container, params) {
  container.appendChild(h("h1", {}, "Events"));
  const chain = h("div", { class: "panel", id: "chain" });
  container.appendChild(chain);
  const head = await api("/v1/audit/head", { params: shardParams() });
  const verdictBox = h("div", { id: "verdict" });
  chain.append(
    h("h2", {}, "Chain", session.shards > 1 ? ` of shard ${session.shard}` : ""),
    h("dl", { class: "fields" },
      h("dt", {}, "head seq"), h("dd", { id: "head-seq" }, head.seq ? eventLink(head.seq) : "0 (no events yet)"),
      h("dt", {}, "head hash"), h("dd", { class: "mono", id: "head-hash" }, head.hash)),
    h("p", {}, h("button", { type: "button", id: "verify-chain", class: "primary", onclick: async (event) => {
      event.target.disabled = true;
      verdictBox.textContent = "verifying every stored event…";
      try {
        const verdict = await api("/v1/audit/verify", { params: shardParams() });
        verdictBox.textContent = "";
        verdictBox.append(
          h("p", {}, h("span", { class: verdict.ok ? "ok" : "bad", id: "verdict-result" }, verdict.ok ? "OK" : "FAILED"),
            verdict.ok ? ` — ${verdict.events} events from seq ${verdict.from_seq} to ${verdict.seq} verified in ${verdict.elapsed_ms} ms; ${verdict.accounts_compared} of ${verdict.accounts} accounts match the live state`
              : ` at seq ${verdict.first_bad_seq ?? "?"}: ${verdict.problem}`),
          h("ul", {}, verdict.notes.map((note) => h("li", {}, note))));
      } catch (error) {
        verdictBox.textContent = `verification did not run: ${error.message}`;
      } finally {
        event.target.disabled = false;
      }
    } }, "Verify the chain")), verdictBox);

  const filter = (name) => params.get(name) || "";
  const form = h("form", { class: "filters", id: "event-filters", onsubmit: (event) => {
    event.preventDefault();
    const fields = event.target.elements;
    setHash("/events", Object.fromEntries(["from_seq", "to_seq", "from_time", "to_time", "type", "account", "limit"].map((name) => [name, fields[name].value.trim()])));
  } },
  ["from_seq", "to_seq", "from_time", "to_time"].map((name) => h("label", {}, name.replace("_", " "), h("input", { name, value: filter(name), size: 14 }))),
  h("label", {}, "type", h("input", { name: "type", value: filter("type"), size: 16, placeholder: "e.g. transferred" })),
  h("label", {}, "account", h("input", { name: "account", value: filter("account"), size: 14 })),
  h("label", {}, "limit", h("input", { name: "limit", value: filter("limit") || "100", size: 5 })),
  h("button", { type: "submit", class: "primary" }, "Filter"));
  container.appendChild(form);

  const query = {
    from_seq: filter("from_seq"), to_seq: filter("to_seq"), from_time: filter("from_time"), to_time: filter("to_time"),
    limit: filter("limit") || "100", cursor: filter("cursor"), ...shardParams(),
  };
  const page = await api("/v1/events", { params: query });
  const type = filter("type");
  const accountFilter = filter("account");
  const shown = page.events.filter((event) => (!type || event.type === type)
    && (!accountFilter || event.accounts.some((view) => view.account_id === accountFilter)));
  const rows = shown.map((event) => ({
    attributes: { "data-seq": event.seq },
    cells: [
      eventLink(event.seq), h("span", { class: "mono" }, event.time), event.type, h("span", { class: "mono" }, event.dedup_id ?? "—"),
      h("span", {}, event.accounts.map((view, i) => [i ? ", " : "", accountLink(view.account_id), ` ${view.available}`])),
      event.actor ? `${event.actor.role} ${event.actor.key_id}` : "—",
      eventLink(event.seq, event.hash.slice(0, 12) + "…"),
    ],
  }));
  container.appendChild(table(["seq", "time", "type", "dedup_id", "accounts (available)", "actor", "hash"], rows, { id: "events-table", testid: "events-table" }));
  container.appendChild(h("p", { class: "muted" }, `${shown.length} of ${page.events.length} events on this page match.`));
  if (page.next) {
    const next = Object.fromEntries([...params.entries()]);
    next.cursor = page.next;
    container.appendChild(h("p", {}, h("a", { href: `#/events?${new URLSearchParams(next)}`, id: "events-next" }, "Next page →")));
  }
}

async function eventDetail(container, params, seqText) {
  const seq = Number(seqText);
  if (params.get("shard") !== null) session.shard = Number(params.get("shard"));
  const page = await api("/v1/events", { params: { from_seq: seq, to_seq: seq + 1, limit: 1, ...shardParams() } });
  const event = page.events[0];
  if (!event) {
    container.appendChild(h("p", { class: "error" }, `No event ${seq} is stored here.`));
    return;
  }
  container.appendChild(h("h1", {}, `Event ${event.seq}`));
  container.appendChild(h("div", { class: "panel" }, h("dl", { class: "fields", id: "event-fields" },
    [["seq", String(event.seq)], ["time", event.time], ["type", event.type], ["dedup_id", event.dedup_id ?? "—"],
      ["log index", String(event.log_index)], ["actor", event.actor ? `${event.actor.role} (key ${event.actor.key_id})` : "—"],
      ["format", String(event.format)],
      ["previous hash", event.seq > 1 ? eventLink(event.seq - 1, event.prev_hash) : h("span", { class: "mono" }, event.prev_hash)],
      ["hash", h("span", { class: "mono", id: "event-hash" }, event.hash)],
    ].map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]))));
  container.appendChild(h("p", {}, event.seq > 1 ? eventLink(event.seq - 1, "← previous") : null, " ", eventLink(event.seq + 1, "next →")));
  container.appendChild(h("h2", {}, "Accounts after this event"));
  container.appendChild(table(["account", "available", "reserved", "pending out", "pending in", "version", "state"],
    event.accounts.map((view) => [accountLink(view.account_id), view.available, sum(view.reservations, view.scale), sum(view.pending_out, view.scale), sum(view.pending_in, view.scale), String(view.version), view.state]),
    { numeric: [1, 2, 3, 4, 5] }));
  container.appendChild(h("h2", {}, "As JSON"));
  container.appendChild(h("pre", {}, JSON.stringify(event, null, 2)));
}

// --- pending TCC transactions, with confirm and cancel for operators

async function transactions(container) {
  container.appendChild(h("h1", {}, "Pending TCC transactions", session.shards > 1 ? ` on shard ${session.shard}` : ""));
  const open = await api("/v1/transactions", { params: { open: "true", limit: openTransactionsShown, ...shardParams() } });
  if (!open.transactions.length) {
    container.appendChild(h("p", { class: "muted", id: "no-transactions" }, `No open try (as of seq ${open.seq}).`));
    return;
  }
  const views = await Promise.all(open.transactions.map((id) => api(`/v1/transactions/${encodeURIComponent(id)}`).catch((error) => ({ txn_id: id, error }))));
  const operator = can("operator");
  const rows = views.map((txn) => {
    const legs = (txn.shards ? Object.values(txn.shards).flatMap((part) => part.legs || []) : txn.legs || [])
      .map((leg, i) => [i ? "; " : "", accountLink(leg.account_id), leg.amount_out !== "0" && !/^0(\.0+)?$/.test(leg.amount_out) ? ` out ${leg.amount_out}` : "", !/^0(\.0+)?$/.test(leg.amount_in) ? ` in ${leg.amount_in}` : "", ` ${leg.asset}`]);
    const cells = [h("span", { class: "mono" }, txn.txn_id), txn.error ? txn.error.message : txn.state, txn.deadline ?? "none", h("span", {}, legs)];
    if (operator) cells.push(transactionActions(txn.txn_id));
    return { attributes: { "data-txn": txn.txn_id }, cells };
  });
  const headers = ["txn_id", "state", "deadline", "legs"];
  if (operator) headers.push("actions");
  container.appendChild(table(headers, rows, { id: "transactions-table", testid: "transactions-table" }));
  container.appendChild(h("p", { class: "muted" }, `${open.transactions.length} open as of seq ${open.seq}.`));
}

function transactionActions(txnId) {
  const box = h("div", { class: "actions" });
  const ask = (action) => {
    box.textContent = "";
    box.append(`${action} ${txnId}? `,
      h("button", { type: "button", class: action === "cancel" ? "danger" : "primary", "data-action": `really-${action}`, onclick: async () => {
        try {
          const result = await api(`/v1/tcc/${action}`, { method: "POST", body: { txn_id: txnId, dedup_id: dedupId(action) } });
          notice(`${action} of ${txnId}: applied at seq ${result.seq}`);
          await transactions(clear());
        } catch (error) {
          notice(`${action} of ${txnId}: ${error.message}`, true);
          reset();
        }
      } }, `Yes, ${action}`),
      h("button", { type: "button", "data-action": "never-mind", onclick: () => reset() }, "No"));
  };
  const reset = () => {
    box.textContent = "";
    box.append(
      h("button", { type: "button", "data-action": "confirm", onclick: () => ask("confirm") }, "Confirm"),
      h("button", { type: "button", "data-action": "cancel", onclick: () => ask("cancel") }, "Cancel"));
  };
  reset();
  return box;
}

function clear() {
  const container = document.getElementById("view");
  container.textContent = "";
  return container;
}

// --- health: readiness, lags, checkpoints, shards

async function health(container) {
  container.appendChild(h("h1", {}, "Health"));
  const ready = await api("/readyz").then((body) => ({ ok: true, body })).catch((error) => ({ ok: false, body: { status: error.message } }));
  const shards = await api("/v1/shards");
  const rows = [];
  const metricsOf = async (shard) => parseMetrics(await api("/metrics", { text: true, params: session.shards > 1 ? { shard } : {} }));
  const lagRows = [];
  const peers = [];
  for (const entry of shards.shards) {
    rows.push([String(entry.shard), h("span", { class: entry.ready ? "ok" : "bad" }, entry.ready ? "ready" : "not ready"),
      entry.head ? String(entry.head.seq) : "—", entry.head ? h("span", { class: "mono" }, entry.head.hash.slice(0, 16) + "…") : "—",
      entry.head ? String(entry.head.log_index ?? "—") : "—", entry.url ?? "this process", entry.error ?? ""]);
    let samples;
    try {
      samples = await metricsOf(entry.shard);
    } catch (error) {
      lagRows.push([String(entry.shard), error.message, "", "", "", "", ""]);
      continue;
    }
    const value = (name) => { const v = metricValue(samples, name); return v === null ? "—" : String(v); };
    const diverged = metricValue(samples, "coffer_checkpoint_diverged");
    lagRows.push([String(entry.shard), value("coffer_seq"), value("coffer_log_index"), value("coffer_log_apply_lag_entries"),
      value("coffer_event_store_seq"), value("coffer_event_store_lag_events"),
      h("span", { class: diverged ? "bad" : "ok" }, diverged ? "DIVERGED" : `${value("coffer_checkpoint_peers_agreeing")} agree, ${value("coffer_checkpoint_peers_disagreeing")} disagree`)]);
    for (const sample of samples.filter((s) => s.name === "coffer_checkpoint_peer_agrees")) {
      peers.push([String(entry.shard), sample.labels.peer, h("span", { class: sample.value ? "ok" : "bad" }, sample.value ? "agrees" : "differs")]);
    }
  }
  container.appendChild(h("div", { class: "panel" }, h("h2", {}, "Node"),
    h("dl", { class: "fields", id: "readiness" },
      h("dt", {}, "readiness"), h("dd", { class: ready.ok ? "ok" : "bad" }, ready.ok ? "ready" : String(ready.body.status)),
      Object.entries(ready.ok ? ready.body : {}).filter(([k]) => k !== "status").map(([k, v]) => [h("dt", {}, k.replaceAll("_", " ")), h("dd", {}, typeof v === "object" ? JSON.stringify(v) : String(v))]))));
  container.appendChild(h("div", { class: "panel" }, h("h2", {}, "Shards"),
    table(["shard", "state", "head seq", "head hash", "log index", "where", "error"], rows, { id: "shards-table", testid: "shards-table" })));
  container.appendChild(h("div", { class: "panel" }, h("h2", {}, "Log and store lag, checkpoints"),
    table(["shard", "applied seq", "applied log index", "apply lag (entries)", "stored seq", "store lag (events)", "checkpoints"], lagRows, { id: "lag-table", testid: "lag-table", numeric: [1, 2, 3, 4, 5] })));
  container.appendChild(h("div", { class: "panel" }, h("h2", {}, "Replicas"),
    peers.length ? table(["shard", "peer", "last checkpoint"], peers, { id: "peers-table" })
      : h("p", { class: "muted", id: "no-peers" }, "No peer replicas: this node runs on its own log (a cluster's nodes compare checkpoints every second).")));
}

// ------------------------------------------------------------------------------------ start

async function start() {
  document.getElementById("sign-in-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = document.getElementById("api-key").value.trim();
    try {
      await signIn(key);
      document.getElementById("api-key").value = "";
      await render();
    } catch (error) {
      session.key = "";
      showSignIn(error.message.replace(/^UNAUTHORIZED: /, ""));
    }
  });
  document.getElementById("sign-out").addEventListener("click", () => {
    sessionStorage.removeItem("coffer.key");
    session.key = "";
    stopView();
    showSignIn("");
  });
  document.getElementById("shard").addEventListener("change", (event) => {
    session.shard = Number(event.target.value);
    sessionStorage.setItem("coffer.shard", String(session.shard));
    render();
  });
  window.addEventListener("hashchange", render);
  try {
    await signIn(session.key);
  } catch (error) {
    sessionStorage.removeItem("coffer.key");
    session.key = "";
    showSignIn(error instanceof ApiError && error.status === 401 ? "" : error.message);
    return;
  }
  await render();
}

document.addEventListener("DOMContentLoaded", start);
