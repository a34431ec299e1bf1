// The admin UI: one module, no dependencies. Every number it shows comes from the API
// (shared/API.md) with the person's token; nothing loads a whole list (pages everywhere).

const page = document.getElementById("page");
const PAGE_SIZE = 50;
const TAIL_ROWS_MAX = 200;
let stopPage = () => {};

// ---- talking to the API -----------------------------------------------------------------

class Refused extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
  }
}

function token() {
  return sessionStorage.getItem("token");
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (token()) headers.authorization = `Bearer ${token()}`;
  if (options.body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(path, { ...options, headers, body: options.body === undefined ? undefined : JSON.stringify(options.body) });
  if (response.status === 401) {
    await askForToken();
    return api(path, options);
  }
  if (!response.ok) {
    const problem = await response.json().catch(() => ({}));
    throw new Refused(response.status, problem);
  }
  if (response.status === 204) return null;
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response.text();
}

function askForToken() {
  const dialog = document.getElementById("login");
  const form = document.getElementById("login-form");
  return new Promise((resolve) => {
    form.onsubmit = (event) => {
      event.preventDefault();
      sessionStorage.setItem("token", document.getElementById("token").value.trim());
      dialog.close();
      resolve();
    };
    if (!dialog.open) dialog.showModal();
  });
}

const enc = encodeURIComponent;

// Who the page acts as, and what it may do: it offers only what the server would allow.
let session = null;
async function whoAmI() {
  session = await api("/ui/session");
  document.getElementById("who").textContent = session.token ? `token: ${session.token}` : "no auth file";
  return session;
}

// ---- building the page --------------------------------------------------------------------

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function table(columns, rows) {
  return el("table", {},
    el("thead", {}, el("tr", {}, columns.map(([label, , cls]) => el("th", { class: cls }, label)))),
    el("tbody", {}, rows.map((row) => el("tr", {}, columns.map(([, cell, cls]) => el("td", { class: cls }, cell(row)))))));
}

function show(...children) {
  page.replaceChildren(...children);
}

function failure(err) {
  return el("p", { class: "error" }, `The store answered: ${err.message}`);
}

function number(n) {
  return typeof n === "number" ? n.toLocaleString("en") : "-";
}

function sparkline(values) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 100 30");
  svg.setAttribute("preserveAspectRatio", "none");
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  const max = Math.max(1, ...values);
  const step = values.length > 1 ? 100 / (values.length - 1) : 100;
  line.setAttribute("points", values.map((v, i) => `${(i * step).toFixed(1)},${(29 - (v / max) * 28).toFixed(1)}`).join(" "));
  svg.append(line);
  return svg;
}

function tile(label, value, series) {
  return el("div", { class: "tile", "data-tile": label }, el("div", { class: "value" }, value), el("div", { class: "label" }, label), series ? sparkline(series) : null);
}

// Prometheus text: the sum of every series of `name`.
function metric(text, name) {
  let sum = 0;
  for (const line of text.split("\n")) {
    if (line.startsWith(name) && (line[name.length] === " " || line[name.length] === "{")) {
      sum += Number(line.slice(line.lastIndexOf(" ") + 1)) || 0;
    }
  }
  return sum;
}

function every(ms, task) {
  let stopped = false;
  const run = async () => {
    if (stopped) return;
    await task();
    if (!stopped) timer = setTimeout(run, ms);
  };
  let timer = setTimeout(run, 0);
  return () => { stopped = true; clearTimeout(timer); };
}

// ---- pages --------------------------------------------------------------------------------

const SAMPLES = 60;

function overview() {
  const history = { appends: [], events: [], batch: [] };
  let last = null;
  return every(2000, async () => {
    try {
      const [info, text, consumers] = await Promise.all([api("/info"), api("/metrics"), api("/consumers")]);
      const now = { at: performance.now(), appends: metric(text, "eventstore_appends_total"), events: metric(text, "eventstore_events_appended_total"), commits: metric(text, "eventstore_commit_requests_count"), requests: metric(text, "eventstore_commit_requests_sum") };
      if (last) {
        const seconds = (now.at - last.at) / 1000;
        const commits = now.commits - last.commits;
        push(history.appends, (now.appends - last.appends) / seconds);
        push(history.events, (now.events - last.events) / seconds);
        push(history.batch, commits > 0 ? (now.requests - last.requests) / commits : 0);
      }
      last = now;
      const latest = (series) => (series.length ? number(Math.round(series[series.length - 1] * 10) / 10) : "…");
      show(
        el("h1", {}, "Overview"),
        el("div", { class: "tiles" },
          tile("backend", info.backend),
          tile("version", info.version),
          tile("head position", number(info.head)),
          tile("appends / s", latest(history.appends), history.appends),
          tile("events / s", latest(history.events), history.events),
          tile("requests per commit", latest(history.batch), history.batch),
          tile("subscriptions open", number(metric(text, "eventstore_subscriptions_active")))),
        el("h2", {}, "Consumers"),
        consumers.length ? consumerTable(consumers) : el("p", { class: "muted" }, "No consumer has reported a position."));
    } catch (err) {
      show(el("h1", {}, "Overview"), failure(err));
    }
  });
}

function push(series, value) {
  series.push(Math.max(0, value));
  if (series.length > SAMPLES) series.shift();
}

function consumerTable(consumers, lags) {
  return table([
    ["name", (c) => c.name],
    ["position", (c) => number(c.position), "num"],
    ["lag", (c) => number(c.lag), "num"],
    ["last update", (c) => c.updated_at, "wide"],
    ...(lags ? [["lag over this page's life", (c) => sparkline(lags.get(c.name) || [])]] : []),
  ], consumers);
}

function consumersPage() {
  const lags = new Map();
  return every(2000, async () => {
    try {
      const consumers = await api("/consumers");
      for (const c of consumers) {
        if (!lags.has(c.name)) lags.set(c.name, []);
        push(lags.get(c.name), c.lag);
      }
      show(el("h1", {}, "Consumers"), consumers.length ? consumerTable(consumers, lags) : el("p", { class: "muted" }, "No consumer has reported a position."));
    } catch (err) {
      show(el("h1", {}, "Consumers"), failure(err));
    }
  });
}

async function streamsPage(params) {
  const prefix = params.get("prefix") || "";
  const after = params.get("after");
  const query = new URLSearchParams({ limit: PAGE_SIZE });
  if (prefix) query.set("prefix", prefix);
  if (after) query.set("after", after);
  const search = el("form", { class: "inline", onsubmit: (event) => {
    event.preventDefault();
    location.hash = `#/streams?prefix=${enc(event.target.prefix.value)}`;
  } }, el("label", {}, "Name starts with ", el("input", { name: "prefix", value: prefix, placeholder: "account-" })), el("button", { type: "submit" }, "Search"));
  try {
    const list = await api(`/streams?${query}`);
    show(el("h1", {}, "Streams"), search,
      table([
        ["name", (s) => el("a", { href: `#/stream/${enc(s.name)}` }, s.name)],
        ["revision", (s) => number(s.revision), "num"],
        ["deleted", (s) => s.deleted || ""],
      ], list.streams),
      el("div", { class: "pager" },
        after ? el("a", { href: `#/streams?prefix=${enc(prefix)}` }, "« first") : null,
        list.next ? el("a", { href: `#/streams?prefix=${enc(prefix)}&after=${enc(list.next)}` }, "next »") : null));
  } catch (err) {
    show(el("h1", {}, "Streams"), search, failure(err));
  }
}

function eventRows(events) {
  return table([
    ["position", (e) => number(e.position), "num"],
    ["revision", (e) => number(e.revision), "num"],
    ["type", (e) => e.type],
    ["data", (e) => e.erased ? el("span", { class: "erased" }, "erased") : json(e.data)],
    ["metadata", (e) => e.metadata === undefined || e.metadata === null ? "" : json(e.metadata), "wide"],
    ["tags", (e) => (e.tags || []).map((t) => el("span", { class: "tag" }, t)), "wide"],
    ["data subject", (e) => e.data_subject || "", "wide"],
    ["recorded", (e) => e.recorded_at, "wide"],
  ], events);
}

function json(value) {
  const text = JSON.stringify(value, null, 2);
  if (text.length < 80) return el("pre", {}, text);
  return el("details", {}, el("summary", {}, text.slice(0, 60).replace(/\s+/g, " ") + "…"), el("pre", {}, text));
}

async function streamPage(name, params) {
  const from = params.get("from");
  const query = new URLSearchParams({ direction: "backward", limit: PAGE_SIZE });
  if (from) query.set("from", from);
  const heading = el("h1", {}, `Stream ${name}`);
  try {
    const [read, metadata] = await Promise.all([
      api(`/streams/${enc(name)}?${query}`).catch((err) => (err.status === 404 ? null : Promise.reject(err))),
      api(`/streams/${enc(name)}/metadata`).catch((err) => (err.status === 404 ? null : Promise.reject(err))),
    ]);
    const events = read ? read.events : [];
    show(heading,
      metadata ? el("p", { class: "muted" }, `revision ${metadata.revision} · deleted: ${metadata.deleted || "no"}`) : el("p", { class: "muted" }, "Never written."),
      metadata && session && session.roles.delete ? retention(name, metadata) : null,
      el("h2", {}, "Events, newest first"),
      events.length ? eventRows(events) : el("p", { class: "muted" }, read ? "No event." : "The stream reads as not found."),
      el("div", { class: "pager" },
        from ? el("a", { href: `#/stream/${enc(name)}` }, "« newest") : null,
        read && read.next !== null && read.next !== undefined ? el("a", { href: `#/stream/${enc(name)}?from=${read.next}` }, "older »") : null));
  } catch (err) {
    show(heading, failure(err));
  }
}

function retention(name, metadata) {
  const field = (key, label) => el("label", {}, `${label} `, el("input", { name: key, type: "number", min: key === "truncate_before" ? 0 : 1, value: metadata[key] ?? "", size: 8 }));
  const value = (form, key) => (form[key].value === "" ? null : Number(form[key].value));
  const status = el("span", { class: "muted" });
  const edit = el("form", { class: "inline", "data-form": "retention", onsubmit: async (event) => {
    event.preventDefault();
    const form = event.target;
    const body = { max_count: value(form, "max_count"), max_age_seconds: value(form, "max_age_seconds"), truncate_before: value(form, "truncate_before") };
    if (!confirm(`Set the retention of ${name}? Events it gives up are removed for good.`)) return;
    try {
      await api(`/streams/${enc(name)}/metadata`, { method: "PUT", body });
      route();
    } catch (err) {
      status.textContent = err.message;
    }
  } }, field("max_count", "max count"), field("max_age_seconds", "max age (s)"), field("truncate_before", "truncate before"), el("button", { type: "submit" }, "Set retention"), status);
  const remove = el("button", { class: "danger", "data-action": "delete", type: "button", onclick: async () => {
    if (!confirm(`Delete stream ${name}? Its events are removed for good.`)) return;
    try {
      await api(`/streams/${enc(name)}`, { method: "DELETE" });
      route();
    } catch (err) {
      status.textContent = err.message;
    }
  } }, "Delete stream");
  return el("div", {}, el("h2", {}, "Retention"), edit, metadata.deleted ? null : remove);
}

async function catalogPage(params) {
  const heading = el("h1", {}, "Categories and event types");
  try {
    const categoriesQuery = new URLSearchParams({ limit: PAGE_SIZE });
    if (params.get("categories_after")) categoriesQuery.set("after", params.get("categories_after"));
    const typesQuery = new URLSearchParams({ limit: PAGE_SIZE });
    if (params.get("types_after")) typesQuery.set("after", params.get("types_after"));
    const [categories, types] = await Promise.all([api(`/categories?${categoriesQuery}`), api(`/types?${typesQuery}`)]);
    show(heading,
      el("h2", {}, "Categories"),
      table([["name", (c) => c.name], ["streams", (c) => number(c.streams), "num"], ["events", (c) => number(c.events), "num"]], categories.categories),
      categories.next ? el("div", { class: "pager" }, el("a", { href: `#/catalog?categories_after=${enc(categories.next)}` }, "more categories »")) : null,
      el("h2", {}, "Event types"),
      table([["name", (t) => t.name], ["events", (t) => number(t.events), "num"], ["schema versions", (t) => t.schema_versions.join(", ")]], types.types),
      types.next ? el("div", { class: "pager" }, el("a", { href: `#/catalog?types_after=${enc(types.next)}` }, "more types »")) : null);
  } catch (err) {
    show(heading, failure(err));
  }
}

function tailPage(params) {
  const target = params.get("target") || "";
  const types = params.get("types") || "";
  const tags = params.get("tags") || "";
  const form = el("form", { class: "inline", onsubmit: (event) => {
    event.preventDefault();
    const f = event.target;
    location.hash = `#/tail?target=${enc(f.target.value)}&types=${enc(f.types.value)}&tags=${enc(f.tags.value)}`;
  } },
  el("label", {}, "Stream or category ", el("input", { name: "target", value: target, placeholder: "empty: the whole log; account or account-1" })),
  el("label", {}, "Types ", el("input", { name: "types", value: types, placeholder: "A,B" })),
  el("label", {}, "Tags ", el("input", { name: "tags", value: tags })),
  el("button", { type: "submit" }, "Follow"));
  const rows = el("tbody");
  const state = el("span", { class: "muted" }, "connecting…");
  let paused = false;
  const pause = el("button", { type: "button", onclick: () => { paused = !paused; pause.textContent = paused ? "Resume" : "Pause"; } }, "Pause");
  show(el("h1", {}, "Live tail"), form, el("p", {}, pause, " ", state, el("span", { class: "muted" }, ` · the newest ${TAIL_ROWS_MAX} rows are kept`)),
    el("table", {}, el("thead", {}, el("tr", {}, ["position", "stream", "type", "data"].map((h) => el("th", {}, h)))), rows));
  const filter = new URLSearchParams();
  if (types) filter.set("types", types);
  if (tags) filter.set("tags", tags);
  const stream = target.includes("-");
  const path = !target ? "/all/subscribe" : stream ? `/streams/${enc(target)}/subscribe` : `/categories/${enc(target)}/subscribe`;
  let source = null;
  let last = null;
  let stopped = false;
  // With an auth file, each connection takes a fresh single-use ticket (an EventSource
  // cannot send the token); so a broken connection is reopened here, after the last
  // event shown, rather than by the browser with a spent ticket.
  const connect = async () => {
    if (stopped) return;
    const query = stream ? new URLSearchParams() : new URLSearchParams(filter);
    if (last !== null) query.set("after", last);
    try {
      if (session && session.token) query.set("ticket", (await api("/ui/tickets", { method: "POST" })).ticket);
    } catch (err) {
      state.textContent = `cannot subscribe: ${err.message}`;
      return;
    }
    source = new EventSource(`${path}?${query}`);
    source.addEventListener("open", () => { state.textContent = "live"; });
    source.addEventListener("error", () => {
      source.close();
      state.textContent = "reconnecting…";
      setTimeout(connect, 1000);
    });
    source.addEventListener("message", (message) => {
      const event = JSON.parse(message.data);
      last = event.position;
      if (paused) return;
      rows.prepend(el("tr", { "data-position": event.position }, el("td", { class: "num" }, event.position), el("td", {}, event.stream), el("td", {}, event.type), el("td", {}, event.erased ? el("span", { class: "erased" }, "erased") : JSON.stringify(event.data))));
      while (rows.childElementCount > TAIL_ROWS_MAX) rows.lastElementChild.remove();
    });
  };
  connect();
  return () => { stopped = true; if (source) source.close(); };
}

// ---- routing ------------------------------------------------------------------------------

function route() {
  stopPage();
  stopPage = () => {};
  const [path, search] = location.hash.slice(1).split("?");
  const params = new URLSearchParams(search || "");
  const parts = (path || "/").split("/").filter(Boolean);
  const links = document.querySelectorAll("nav a");
  links.forEach((a) => a.classList.toggle("current", a.getAttribute("href") === `#/${parts[0] || ""}`));
  switch (parts[0]) {
    case undefined: stopPage = overview(); break;
    case "streams": streamsPage(params); break;
    case "stream": streamPage(decodeURIComponent(parts.slice(1).join("/")), params); break;
    case "catalog": catalogPage(params); break;
    case "tail": stopPage = tailPage(params); break;
    case "consumers": stopPage = consumersPage(); break;
    default: show(el("h1", {}, "Not found"), el("p", {}, el("a", { href: "#/" }, "Overview")));
  }
}

window.addEventListener("hashchange", route);
whoAmI().catch(() => {}).finally(route);
