// Nod's web console (docs/console.md): one page, no framework. It talks
// to the member that serves it: Server-Sent Events for the live numbers
// (/ui/api/events) and etcd's JSON gateway for everything else
// (/ui/api/v3/<call>, keys and values in base64, 64-bit numbers as
// strings). Without a login the member answers reads only.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  token: sessionStorage.getItem("nod-token"),
  user: sessionStorage.getItem("nod-user"),
  ticks: 0,
  series: { writes: [], reads: [], wlat: [], rlat: [] },
  last: null,
  page: null,
  watch: null,
  authEnabled: false,
};
window.nodConsole = state; // for the browser test and the curious

const POINTS = 120;
const enc = new TextEncoder();
const dec = new TextDecoder();

function b64(bytes) {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}
function unb64(s) {
  const bin = atob(s || "");
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}
const text = (s) => dec.decode(unb64(s));

// The end of the range of keys starting with `prefix` (etcd's GetPrefixRangeEnd).
function prefixEnd(prefix) {
  const end = Uint8Array.from(prefix);
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i] < 0xff) {
      end[i] += 1;
      return end.slice(0, i + 1);
    }
  }
  return Uint8Array.of(0);
}

async function call(path, body) {
  const headers = { "content-type": "application/json" };
  if (state.token) headers.authorization = state.token;
  const r = await fetch("/ui/api/v3/" + path, {
    method: "POST", headers, body: JSON.stringify(body || {}),
  });
  const answer = await r.json().catch(() => ({ message: r.statusText }));
  if (!r.ok) {
    if (answer.code === 16 && state.token) logout(); // the token expired
    throw new Error(answer.message || answer.error || r.statusText);
  }
  return answer;
}

function showError(id, e) {
  const p = $(id);
  p.hidden = !e;
  p.textContent = e ? String(e.message || e) : "";
}

function cell(row, value, cls) {
  const td = row.insertCell();
  td.textContent = value;
  if (cls) td.className = cls;
  return td;
}

// Tabs.
for (const b of document.querySelectorAll("nav button")) {
  b.addEventListener("click", () => select(b.dataset.tab));
}
function select(tab) {
  for (const b of document.querySelectorAll("nav button")) {
    b.classList.toggle("active", b.dataset.tab === tab);
  }
  for (const s of document.querySelectorAll("main section")) s.hidden = s.id !== tab;
  if (tab === "cluster") members();
}

// Live numbers.
function connect() {
  const events = new EventSource("/ui/api/events");
  events.addEventListener("stats", (e) => tick(JSON.parse(e.data)));
  events.onopen = () => { $("live").textContent = "live"; $("live").className = "pill on"; };
  events.onerror = () => { $("live").textContent = "reconnecting"; $("live").className = "pill off"; };
}

function push(list, v) {
  list.push(v);
  if (list.length > POINTS) list.shift();
}

function tick(s) {
  state.ticks += 1;
  state.last = s;
  $("member").textContent = "member " + s.member + " (" + s.id + ")";
  $("role").textContent = s.role;
  $("role").className = "pill" + (s.role === "leader" ? " leader" : "");
  $("leader").textContent = s.leader === "0" ? "no leader" : "leader " + s.leader;
  $("leader").className = "pill" + (s.leader === "0" ? " off" : "");
  $("term").textContent = "term " + s.term;
  $("indexes").textContent = "commit " + s.commit + " applied " + s.applied;
  push(state.series.writes, s.writes);
  push(state.series.reads, s.reads);
  push(state.series.wlat, s.write_p99_ms);
  push(state.series.rlat, s.read_p99_ms);
  $("writes-now").textContent = fmt(s.writes);
  $("reads-now").textContent = fmt(s.reads);
  $("wlat-now").textContent = s.write_p99_ms == null ? "–" : fmt(s.write_p99_ms);
  $("rlat-now").textContent = s.read_p99_ms == null ? "–" : fmt(s.read_p99_ms);
  draw($("rate-chart"), [state.series.writes, state.series.reads]);
  draw($("latency-chart"), [state.series.wlat, state.series.rlat]);
  if (state.ticks % 5 === 1 && !$("cluster").hidden) members();
}

function fmt(v) {
  if (v == null) return "–";
  return v >= 100 ? Math.round(v).toString() : v.toFixed(v >= 10 ? 1 : 2);
}

// A line per series (writes first, reads second) over the last POINTS seconds.
function draw(canvas, series) {
  const g = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, left = 44, bottom = 18, top = 8;
  const yOf = (fraction) => top + (h - bottom - top) * (1 - fraction);
  g.clearRect(0, 0, w, h);
  const values = series.flat().filter((v) => v != null);
  let max = Math.max(1, ...values);
  const step = Math.pow(10, Math.floor(Math.log10(max)));
  max = Math.ceil(max / step) * step;
  g.font = "11px system-ui, sans-serif";
  g.fillStyle = "#6b6b70";
  g.strokeStyle = "#dcdcd6";
  for (let i = 0; i <= 4; i++) {
    const y = Math.round(yOf(i / 4)) + 0.5;
    g.beginPath(); g.moveTo(left, y); g.lineTo(w, y); g.stroke();
    g.fillText(fmt((max * i) / 4), 2, y + 4);
  }
  g.fillText("-" + POINTS + "s", left, h - 4);
  g.fillText("now", w - 24, h - 4);
  const colors = ["#c05621", "#2f855a"];
  series.forEach((list, k) => {
    g.strokeStyle = colors[k];
    g.lineWidth = 2;
    g.beginPath();
    let drawing = false;
    list.forEach((v, i) => {
      if (v == null) { drawing = false; return; }
      const x = left + ((w - left) * (POINTS - list.length + i)) / (POINTS - 1);
      const y = yOf(v / max);
      if (drawing) g.lineTo(x, y); else g.moveTo(x, y);
      drawing = true;
    });
    g.stroke();
    g.lineWidth = 1;
  });
}

// Members, as the leader sees them.
async function members() {
  try {
    const r = await call("nod/admin/memberhealth", {});
    const body = $("members").tBodies[0];
    body.replaceChildren();
    for (const m of r.members || []) {
      const row = body.insertRow();
      row.dataset.name = m.name || "";
      cell(row, m.name || "(unstarted)");
      cell(row, BigInt(m.id).toString(16));
      cell(row, m.is_leader ? "leader" : m.is_learner ? "learner" : "follower");
      cell(row, m.healthy ? "healthy" : "unhealthy", m.healthy ? "healthy" : "unhealthy");
      cell(row, m.matched || "0");
      cell(row, m.lag || "0");
      cell(row, (m.client_urls || []).join(", "));
      cell(row, (m.peer_urls || []).join(", "));
    }
    showError("members-error", null);
  } catch (e) {
    showError("members-error", e);
  }
}

// The key browser: a page of keys under a prefix, all pages at the first
// page's revision.
async function keys(from) {
  const prefix = enc.encode($("prefix").value);
  const start = from || (prefix.length ? prefix : Uint8Array.of(0));
  const req = {
    key: b64(start),
    range_end: b64(prefix.length ? prefixEnd(prefix) : Uint8Array.of(0)),
    limit: 50,
    serializable: $("serializable").checked,
  };
  if (from && state.page) req.revision = state.page.revision;
  try {
    const r = await call("kv/range", req);
    const revision = (r.header && r.header.revision) || "0";
    if (!from) state.page = { revision, seen: 0 };
    const kvs = r.kvs || [];
    const body = $("keys-table").tBodies[0];
    body.replaceChildren();
    for (const kv of kvs) {
      const row = body.insertRow();
      cell(row, text(kv.key), "key");
      const v = text(kv.value);
      cell(row, v.length > 300 ? v.slice(0, 300) + "…" : v, "value");
      cell(row, kv.version || "0");
      cell(row, kv.mod_revision || "0");
      cell(row, kv.lease ? BigInt(kv.lease).toString(16) : "");
    }
    const first = state.page.seen + 1;
    state.page.seen += kvs.length;
    state.page.next = r.more && kvs.length
      ? Uint8Array.from([...unb64(kvs[kvs.length - 1].key), 0]) : null;
    $("keys-summary").textContent = kvs.length
      ? "keys " + first + " to " + state.page.seen + " of " + (r.count || kvs.length) +
        " at revision " + state.page.revision
      : "no keys at revision " + revision;
    $("keys-next").disabled = !state.page.next;
    $("keys-first").disabled = !from;
    showError("keys-error", null);
  } catch (e) {
    showError("keys-error", e);
  }
}
$("keys-form").addEventListener("submit", (e) => { e.preventDefault(); keys(null); });
$("keys-next").addEventListener("click", () => keys(state.page.next));
$("keys-first").addEventListener("click", () => keys(null));
$("put-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  try {
    const r = await call("kv/put", {
      key: b64(enc.encode($("put-key").value)),
      value: b64(enc.encode($("put-value").value)),
    });
    $("put-result").textContent = "written at revision " + r.header.revision;
    keys(null);
  } catch (err) {
    $("put-result").textContent = String(err.message || err);
  }
});

// Watch: etcd's gateway streams one {"result": WatchResponse} per line.
async function watch(prefix) {
  const controller = new AbortController();
  state.watch = controller;
  $("watch-start").disabled = true;
  $("watch-stop").disabled = false;
  $("watch-table").tBodies[0].replaceChildren();
  const p = enc.encode(prefix);
  const create = {
    key: b64(p.length ? p : Uint8Array.of(0)),
    range_end: b64(p.length ? prefixEnd(p) : Uint8Array.of(0)),
  };
  const headers = { "content-type": "application/json" };
  if (state.token) headers.authorization = state.token;
  try {
    const r = await fetch("/ui/api/v3/watch", {
      method: "POST", headers, signal: controller.signal,
      body: JSON.stringify({ create_request: create }),
    });
    if (!r.ok) {
      const answer = await r.json().catch(() => ({}));
      throw new Error(answer.message || r.statusText);
    }
    const reader = r.body.getReader();
    let buffered = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffered += dec.decode(value, { stream: true });
      let nl;
      while ((nl = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, nl).trim();
        buffered = buffered.slice(nl + 1);
        if (line) watched(JSON.parse(line));
      }
    }
    showError("watch-error", null);
  } catch (e) {
    if (e.name !== "AbortError") showError("watch-error", e);
  } finally {
    $("watch-start").disabled = false;
    $("watch-stop").disabled = true;
  }
}
function watched(msg) {
  if (msg.error) throw new Error(msg.error.message || "watch failed");
  const result = msg.result || {};
  const body = $("watch-table").tBodies[0];
  for (const ev of result.events || []) {
    const row = body.insertRow(0);
    cell(row, ev.kv.mod_revision || "0");
    cell(row, ev.type || "PUT");
    cell(row, text(ev.kv.key), "key");
    cell(row, text(ev.kv.value), "value");
  }
}
$("watch-form").addEventListener("submit", (e) => { e.preventDefault(); watch($("watch-prefix").value); });
$("watch-stop").addEventListener("click", () => state.watch && state.watch.abort());

// Queries (docs/query.md).
async function query(explain) {
  let q = $("query-text").value.trim();
  if (explain && !/^explain\b/i.test(q)) q = "EXPLAIN " + q;
  const head = $("query-table").tHead, body = $("query-table").tBodies[0];
  head.replaceChildren();
  body.replaceChildren();
  $("query-plan").hidden = true;
  try {
    const r = await call("nod/query", { text: q });
    if (r.plan) {
      $("query-plan").textContent = r.plan;
      $("query-plan").hidden = false;
    }
    const hr = head.insertRow();
    for (const c of r.columns || []) {
      const th = document.createElement("th");
      th.textContent = c;
      hr.appendChild(th);
    }
    for (const row of r.rows || []) {
      const tr = body.insertRow();
      for (const c of row.cells || []) cell(tr, c, "value");
    }
    const stats = r.stats || {};
    $("query-summary").textContent = r.plan && !(r.rows || []).length
      ? "plan at revision " + (r.revision || "0")
      : (r.counted ? "count " + (r.count || "0") : (r.rows || []).length + " rows") +
        " at revision " + (r.revision || "0") + "; read " + (stats.entries || "0") +
        " index entries and " + (stats.docs || "0") + " documents";
    showError("query-error", null);
  } catch (e) {
    $("query-summary").textContent = "";
    showError("query-error", e);
  }
}
$("query-form").addEventListener("submit", (e) => { e.preventDefault(); query(false); });
$("query-explain").addEventListener("click", () => query(true));

// Logins, when the cluster has authentication on.
function signedIn() {
  const on = !!state.token;
  $("who").textContent = on ? "signed in as " + state.user : "read-only";
  $("logout").hidden = !on;
  $("put-form").hidden = !on;
  $("login-tab").hidden = on || !state.authEnabled;
}
function logout() {
  state.token = null;
  state.user = null;
  sessionStorage.removeItem("nod-token");
  sessionStorage.removeItem("nod-user");
  signedIn();
}
$("logout").addEventListener("click", logout);
$("login-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  try {
    const name = $("login-name").value;
    const r = await call("auth/authenticate", { name, password: $("login-password").value });
    state.token = r.token;
    state.user = name;
    sessionStorage.setItem("nod-token", r.token);
    sessionStorage.setItem("nod-user", name);
    $("login-password").value = "";
    showError("login-error", null);
    signedIn();
    select("keys");
  } catch (err) {
    showError("login-error", err);
  }
});
// Whether to offer a login: auth/status answers anyone while auth is off,
// and only root once it is on, so a refusal means it is on.
async function authStatus() {
  let enabled;
  try {
    enabled = !!(await call("auth/status", {})).enabled;
  } catch (e) {
    if (/starting/.test(e.message)) {
      setTimeout(authStatus, 2000);
      return;
    }
    enabled = true;
  }
  state.authEnabled = enabled;
  if (!enabled && state.token) logout();
  signedIn();
}

signedIn();
authStatus();
connect();
select("cluster");
