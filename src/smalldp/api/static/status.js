// smalldp status page: fetches /xrpc/_health every REFRESH_MS and shows it.
// Plain DOM and SVG, no libraries; every string from the server goes in through
// textContent or setAttribute, never as HTML.
"use strict";

const REFRESH_MS = 5000;
const TIMEOUT_MS = 4000;
const SVG = "http://www.w3.org/2000/svg";
let lastOk = null;  // Date of the last successful refresh

function fields(name) { return document.querySelectorAll(`[data-field="${name}"]`); }

// Show `text` in every element of field `name`, keeping the raw value in data-value
// (what the figure is, unrounded: tests and scrapers read it there).
function show(name, value, text) {
  for (const el of fields(name)) {
    el.textContent = text;
    el.dataset.value = value === null || value === undefined ? "" : String(value);
  }
}

function integer(n) { return n === null || n === undefined ? "–" : Math.round(n).toLocaleString("en-US"); }

function rate(n) {
  if (n === null || n === undefined) return "–";
  return n < 100 ? n.toFixed(1) : Math.round(n).toLocaleString("en-US");
}

// Binary units with three significant digits: 1.23 GiB, 512 KiB, 87 B.
function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  const digits = i === 0 || n >= 100 ? 0 : n >= 10 ? 1 : 2;
  return `${n.toFixed(digits)} ${units[i]}`;
}

function duration(s) {
  if (s === null || s === undefined) return "–";
  if (s < 10) return `${s.toFixed(1)} s`;
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

function utc(ms) { return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC"); }

function stateClass(state) {
  if (state === "streaming") return "ok";
  if (state === "failed") return "bad";
  if (state === "disabled") return "";
  return "warn";  // starting, connecting, backoff, paused, stopping
}

function render(h) {
  const js = h.jetstream || {};
  show("version", h.version, h.version);
  show("ingest", h.ingest, h.ingest === "disabled" ? "no live ingest" : h.ingest);
  document.getElementById("state").className = `badge ${stateClass(h.ingest)}`;
  const reason = h.paused_reason || js.paused_reason || "";
  show("paused_reason", reason, reason || "no reason given");
  document.getElementById("paused").hidden = h.ingest !== "paused";
  show("last_error", js.last_error || "", js.last_error || "");
  document.getElementById("last-error").hidden = !js.last_error || h.ingest === "streaming";

  backfill(h.backfill);

  show("lag_s", h.lag_s, duration(h.lag_s));
  show("cursor", h.cursor, h.cursor === null ? "none yet" : utc(h.cursor / 1000));
  show("events_per_s", js.events_per_s, rate(js.events_per_s));
  show("events", js.events, integer(js.events));
  show("reconnects", js.reconnects, integer(js.reconnects));
  show("links", h.links, integer(h.links));
  show("runs", h.runs, integer(h.runs));
  show("records", h.records, h.records === null || h.records === undefined ? "counting…" : integer(h.records));
  document.getElementById("records-note").textContent = h.records_at
    ? `live records, counted ${duration(Math.max(0, Date.now() / 1000 - h.records_at))} ago`
    : "live records";
  show("accounts", h.accounts, integer(h.accounts));
  show("inactive_accounts", h.inactive_accounts, integer(h.inactive_accounts));
  // The WAL holds the newest commits until a checkpoint copies them into the database:
  // the store's size is both files.
  const total = h.file_bytes === undefined ? null : h.file_bytes + h.wal_bytes;
  show("file_total", total, bytes(total));
  show("file_bytes", h.file_bytes, bytes(h.file_bytes));
  show("wal_bytes", h.wal_bytes, bytes(h.wal_bytes));
  const disk = h.disk || {};
  show("disk_free", disk.free_bytes, bytes(disk.free_bytes));
  show("disk_used", disk.used_bytes, bytes(disk.used_bytes));
  show("disk_total", disk.total_bytes, bytes(disk.total_bytes));
  show("disk_path", disk.path, disk.path || "–");
  // The disk guard's floor, when live ingest reports one (jetstream.disk.floor_bytes).
  const floor = js.disk && js.disk.floor_bytes;
  show("disk_floor", floor, bytes(floor));
  document.getElementById("disk-floor").hidden = !floor;
  const used = disk.total_bytes ? disk.used_bytes / disk.total_bytes : 0;
  const bar = document.getElementById("disk-bar");
  bar.style.width = `${(100 * used).toFixed(1)}%`;
  bar.classList.toggle("full", used > 0.9);

  chart(h.events_per_s_history || [], h.ingest);
  topTargets(h.top_targets_last_hour);
}

// A backfill handed to this serve by `smalldp backfill`: running, or how the last one ended.
function backfill(b) {
  document.getElementById("backfill").hidden = !b;
  if (!b) return;
  const s = b.summary || {};
  const finished = (s.done || 0) + (s.failed || 0) + (s.skipped || 0);
  let text = `${b.state}: ${integer(finished)}/${integer(b.total)}${b.listing ? "+" : ""} repos` +
    ` (${integer(s.failed)} failed), ${integer(s.records)} records, ${rate(s.records_per_s)} records/s,` +
    ` ${bytes(s.bytes)}, ${duration(s.seconds)}`;
  if (b.error) text += ` — ${b.error}`;
  show("backfill", b.state, text);
}

// A number at least `v` of the form 1, 2 or 5 times a power of ten: a readable axis top.
function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function svg(tag, attrs, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

function chart(history, ingest) {
  const box = document.getElementById("chart");
  box.replaceChildren();
  const W = 720, H = 180, left = 52, right = 10, top = 12, bottom = 24;
  const plotW = W - left - right, plotH = H - top - bottom, slot = plotW / 60;
  const top_ = niceMax(Math.max(0, ...history.map((p) => p.events_per_s)));
  for (const f of [0, 0.5, 1]) {
    const y = top + plotH * (1 - f);
    box.append(svg("line", { x1: left, x2: W - right, y1: y, y2: y, class: "grid" }));
    const tick = top_ * f;
    box.append(svg("text", { x: left - 6, y: y + 4, "text-anchor": "end" },
      Number.isInteger(tick) ? integer(tick) : tick.toFixed(1)));
  }
  const labels = [[0, "−60 min"], [30, "−30 min"], [60, "now"]];
  for (const [i, text] of labels) {
    const anchor = i === 0 ? "start" : i === 60 ? "end" : "middle";
    box.append(svg("text", { x: left + i * slot, y: H - 6, "text-anchor": anchor }, text));
  }
  box.dataset.points = String(history.length);
  if (!history.length) {
    const why = ingest === "disabled" ? "no live ingest in this process" : "no minute measured yet";
    box.append(svg("text", { x: left + plotW / 2, y: top + plotH / 2, "text-anchor": "middle" }, why));
    return;
  }
  const newest = history[history.length - 1].t;  // the server's current minute
  for (const p of history) {
    const i = 59 - (newest - p.t) / 60;  // 59 is the rightmost slot
    if (i < 0) continue;
    const h = plotH * (p.events_per_s / top_);
    const bar = svg("rect", {
      x: left + i * slot + 1, y: top + plotH - h, width: Math.max(1, slot - 2), height: h,
      class: p.partial ? "bar partial" : "bar", "data-t": p.t, "data-value": p.events_per_s });
    const when = new Date(p.t * 1000).toISOString().slice(11, 16);
    bar.append(svg("title", {}, `${when} UTC: ${rate(p.events_per_s)} events/s${p.partial ? " (so far)" : ""}`));
    box.append(bar);
  }
}

// The short name of a collection (the NSID's last segment) for the "from" column.
function shortName(nsid) { return nsid.split(".").pop(); }

function topTargets(top) {
  const body = document.querySelector("#top tbody");
  body.replaceChildren();
  const windowNote = document.getElementById("top-window");
  const rows = top ? top.targets : [];
  if (!rows.length) {
    const tr = document.createElement("tr");
    const td = document.createElement("td");
    td.colSpan = 4;
    td.className = "empty";
    td.textContent = top ? "no links in the last hour" : "no events yet";
    tr.append(td);
    body.append(tr);
    windowNote.textContent = "";
    return;
  }
  rows.forEach((row, i) => {
    const tr = document.createElement("tr");
    tr.dataset.target = row.target;
    tr.dataset.links = String(row.links);
    const rank = document.createElement("td");
    rank.textContent = String(i + 1);
    const target = document.createElement("td");
    const main = row.sources[0];
    const a = document.createElement("a");
    a.textContent = row.target;
    a.title = row.target;
    if (main) {
      const source = `${main.collection}:${main.path.replace(/^\./, "")}`;
      a.href = `/xrpc/blue.microcosm.links.getBacklinks?subject=${encodeURIComponent(row.target)}` +
        `&source=${encodeURIComponent(source)}`;
    }
    target.append(a);
    const links = document.createElement("td");
    links.className = "num";
    links.textContent = integer(row.links);
    const from = document.createElement("td");
    from.textContent = row.sources.map((s) => `${shortName(s.collection)} ${s.path} ${integer(s.links)}`).join(", ");
    from.title = row.sources.map((s) => `${s.collection}:${s.path} ${s.links}`).join("\n");
    tr.append(rank, target, links, from);
    body.append(tr);
  });
  windowNote.textContent = `Window ${utc(top.from_us / 1000)} to ${utc(top.to_us / 1000)}; ` +
    `${integer(top.records_read)} records read` + (top.sampled ? " (a sample)." : " (all of them).");
}

async function lexicons() {
  const list = document.getElementById("lexicons");
  try {
    const reply = await fetch("/lexicons/", { cache: "no-store" });
    const items = (await reply.json()).lexicons;
    for (const lex of items) {
      const li = document.createElement("li");
      const a = document.createElement("a");
      a.href = lex.url;
      a.textContent = lex.id;
      a.title = lex.description || "";
      li.append(a);
      list.append(li);
    }
    list.dataset.count = String(items.length);
  } catch (err) {
    list.textContent = `cannot list the lexicons: ${err}`;
  }
}

async function refresh() {
  const offline = document.getElementById("offline");
  try {
    const reply = await fetch("/xrpc/_health", { cache: "no-store", signal: AbortSignal.timeout(TIMEOUT_MS) });
    if (!reply.ok) throw new Error(`HTTP ${reply.status}`);
    render(await reply.json());
    lastOk = new Date();
    offline.hidden = true;
    document.getElementById("updated").textContent =
      `updated ${lastOk.toLocaleTimeString("en-GB")} · every ${REFRESH_MS / 1000} s`;
    // How many refreshes have been drawn: lets a test (or a curious reader) know the figures are live.
    const root = document.documentElement;
    root.dataset.refreshes = String(Number(root.dataset.refreshes || 0) + 1);
  } catch (err) {
    offline.hidden = false;
    offline.textContent = `cannot reach smalldp (${err.message || err}); retrying every ${REFRESH_MS / 1000} s` +
      (lastOk ? ` — the figures below are from ${lastOk.toLocaleTimeString("en-GB")}` : "");
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

lexicons();
refresh();
