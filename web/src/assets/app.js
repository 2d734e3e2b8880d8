// hirte-web's page: polls /api/state (and /api/units when they changed) and renders with
// DOM calls only (textContent, never innerHTML), so names from the fleet cannot inject markup.
"use strict";

const POLL_MS = 1000;
const MAX_EVENTS_SHOWN = 100;
let lastSeq = 0;
let unitsVersion = -1;
let units = [];
let nodeStates = {};

const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function row(cells, cls) {
  const tr = el("tr", cls);
  for (const c of cells) {
    if (c instanceof Node) {
      const td = el("td");
      td.appendChild(c);
      tr.appendChild(td);
    } else if (c && typeof c === "object") {
      tr.appendChild(el("td", c.cls, c.text));
    } else {
      tr.appendChild(el("td", "", c));
    }
  }
  return tr;
}

function badge(state) {
  return el("span", "badge " + state, state);
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function ago(usec) {
  if (!usec) return "never";
  const s = Math.max(0, Math.round(Date.now() / 1000 - usec / 1e6));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.floor(s / 60) + " min ago";
  if (s < 86400) return Math.floor(s / 3600) + " h ago";
  return Math.floor(s / 86400) + " d ago";
}

function clock(usec) {
  return new Date(usec / 1000).toLocaleTimeString();
}

function duration(usec) {
  if (usec >= 1e6) return (usec / 1e6).toFixed(2) + " s";
  if (usec >= 1e3) return (usec / 1e3).toFixed(1) + " ms";
  return usec + " µs";
}

function renderManager(s) {
  const m = s.manager;
  const state = m.reachable ? (m.status || "unknown") : "unreachable";
  const b = $("manager");
  b.className = "badge " + state;
  b.textContent = "manager " + state;
  $("refreshed").textContent = m.refreshed_usec ? "updated " + clock(m.refreshed_usec) : "";
  const err = $("error");
  err.hidden = !m.error;
  err.textContent = m.error || "";
  $("version").textContent = s.version;
}

function renderNodes(nodes) {
  nodeStates = {};
  for (const n of nodes) nodeStates[n.node] = n.state;
  const online = nodes.filter((n) => n.state === "online").length;
  $("node-count").textContent = online + " of " + nodes.length + " online";
  fill($("nodes").tBodies[0], nodes.map((n) =>
    row([n.node, badge(n.state), ago(n.last_seen_usec), n.ip || "-"], n.state === "online" ? "" : "offline")));
  const sel = $("unit-node");
  const want = ["", ...nodes.map((n) => n.node)];
  const have = Array.from(sel.options).map((o) => o.value);
  if (want.join("\n") !== have.join("\n")) {
    const keep = sel.value;
    sel.replaceChildren(...want.map((v) => {
      const o = el("option", "", v || "all nodes");
      o.value = v;
      return o;
    }));
    sel.value = want.includes(keep) ? keep : "";
  }
}

function renderFailed(failed) {
  $("failed-count").textContent = failed.length ? String(failed.length) : "";
  $("no-failed").hidden = failed.length > 0;
  fill($("failed").tBodies[0], failed.map((u) =>
    row([u.node, u.unit, u.sub, { cls: "desc", text: u.description }], "failed")));
}

function renderJobs(s) {
  $("job-count").textContent = s.jobs.length ? String(s.jobs.length) : "";
  $("no-jobs").hidden = s.jobs.length > 0;
  fill($("jobs").tBodies[0], s.jobs.map((j) =>
    row([String(j.id), j.node, j.unit, j.type, j.state, ago(j.started_usec)])));
  const mean = s.job_count ? duration(Math.round((s.job_seconds / s.job_count) * 1e6)) : "-";
  $("timing-summary").textContent =
    s.job_count + " jobs ended since hirte-web started; mean time from JobNew to JobRemoved " + mean + ".";
  $("no-timings").hidden = s.timings.length > 0;
  fill($("timings").tBodies[0], s.timings.map((t) =>
    row([t.node, t.unit, duration(t.job_usec), t.unit_start_usec ? duration(t.unit_start_usec) : "-"])));
}

function renderEvents(events) {
  const list = $("events");
  for (const e of events) {
    const li = el("li", "new event-" + e.kind);
    li.appendChild(el("span", "when", clock(e.time_usec)));
    const what = e.unit ? e.node + "/" + e.unit : e.node;
    if (what) li.appendChild(el("span", "what", what));
    li.appendChild(el("span", "text", e.text));
    list.prepend(li);
  }
  while (list.children.length > MAX_EVENTS_SHOWN) list.lastChild.remove();
  if (!list.children.length) list.appendChild(el("li", "muted none", "No events yet."));
  else for (const n of list.querySelectorAll("li.none")) n.remove();
}

function renderUnits() {
  const node = $("unit-node").value;
  const words = $("unit-filter").value.trim().toLowerCase().split(/\s+/).filter(Boolean);
  const shown = units.filter((u) => (!node || u.node === node) &&
    words.every((w) => (u.unit + " " + u.active + " " + u.sub + " " + u.description).toLowerCase().includes(w)));
  $("unit-count").textContent = shown.length + " of " + units.length;
  const box = $("units");
  const parts = [];
  const byNode = new Map();
  for (const u of shown) {
    if (!byNode.has(u.node)) byNode.set(u.node, []);
    byNode.get(u.node).push(u);
  }
  for (const [n, list] of byNode) {
    // Failed first, then by name (the API's order).
    list.sort((a, b) => (b.active === "failed") - (a.active === "failed"));
    parts.push(el("h3", "", n + " (" + list.length + ")"));
    const table = el("table", "units");
    table.dataset.node = n;
    const head = el("thead");
    head.appendChild(row(["Unit", "Active", "Sub", "Load", "Description"]));
    const body = el("tbody");
    body.replaceChildren(...list.map((u) => {
      const tr = row([u.unit, badge(u.active), u.sub, u.load, { cls: "desc", text: u.description }],
        u.active === "failed" ? "failed" : "");
      tr.dataset.unit = u.unit;
      return tr;
    }));
    table.append(head, body);
    const wrap = el("div", "scroll");
    wrap.appendChild(table);
    parts.push(wrap);
  }
  if (!parts.length) parts.push(el("p", "muted", units.length ? "No unit matches." : "No units (no node online?)."));
  box.replaceChildren(...parts);
}

async function getJson(url) {
  const r = await fetch(url, { cache: "no-store" });
  if (!r.ok) throw new Error(url + ": HTTP " + r.status);
  return r.json();
}

async function poll() {
  try {
    const s = await getJson("/api/state?since=" + lastSeq);
    renderManager(s);
    renderNodes(s.nodes);
    renderFailed(s.failed);
    renderJobs(s);
    renderEvents(s.events);
    lastSeq = s.last_seq;
    if (s.units_version !== unitsVersion && s.manager.reachable) {
      units = await getJson("/api/units");
      unitsVersion = s.units_version;
      renderUnits();
    }
    document.body.dataset.loaded = "yes";
  } catch (e) {
    // hirte-web itself is gone or restarting: say so on the page, keep polling.
    const err = $("error");
    err.hidden = false;
    err.textContent = "hirte-web is not answering (" + e.message + "); retrying";
    $("manager").className = "badge unreachable";
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

$("unit-node").addEventListener("change", renderUnits);
$("unit-filter").addEventListener("input", renderUnits);
poll();
