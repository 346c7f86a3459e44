// cubeflash dashboard: vanilla JS on the gateway's admin API. Function output is only ever
// set as textContent, never parsed as HTML; the token lives in sessionStorage and travels
// as an Authorization header.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "cubeflash-token";
const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  access: null,
  backend: null,
  repo: null,
  overview: null,
  selected: null,
  logNext: 0,
  logTimer: null,
  history: null,
  events: [],
  streamAbort: null,
};

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function notice(text, isError) {
  const n = $("notice");
  n.textContent = text || "";
  n.classList.toggle("error", Boolean(isError));
}

async function api(method, path, body) {
  const init = { method, headers: { Authorization: `Bearer ${state.token}` } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  if (resp.status === 401) {
    signOut("The token was refused: sign in again.");
    throw new Error("unauthorized");
  }
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (!resp.ok) {
    const msg = data && data.error ? data.error : `${resp.status} ${resp.statusText}`;
    throw new Error(msg);
  }
  return data;
}

// ---- sign in ----

async function signIn(token) {
  state.token = token;
  const who = await api("GET", "/system/whoami");
  sessionStorage.setItem(TOKEN_KEY, token);
  state.access = who.access;
  state.backend = who.backend;
  state.repo = who.repo;
  $("login").hidden = true;
  $("app").hidden = false;
  $("signout").hidden = false;
  $("access").hidden = false;
  $("access").textContent = who.access === "admin" ? "admin" : "read-only";
  $("backend").textContent = `${who.backend} target`;
  const canChange = who.access === "admin";
  for (const b of document.querySelectorAll("#fn-actions button, #new-create")) b.disabled = !canChange;
  $("tab-new").hidden = !(canChange && who.repo);
  $("tab-bench").hidden = !who.repo;
  startStream();
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  if (state.streamAbort) state.streamAbort.abort();
  stopLogs();
  $("app").hidden = true;
  $("login").hidden = false;
  $("signout").hidden = true;
  $("access").hidden = true;
  $("live").hidden = true;
  $("login-error").textContent = message || "";
  $("token").focus();
}

$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("login-error").textContent = "";
  try {
    await signIn($("token").value.trim());
    $("token").value = "";
  } catch (e) {
    if (e.message !== "unauthorized") $("login-error").textContent = e.message;
  }
});
$("signout").addEventListener("click", () => signOut(""));

// ---- live overview (server-sent events read through fetch, so the token is a header) ----

async function startStream() {
  if (state.streamAbort) state.streamAbort.abort();
  const abort = new AbortController();
  state.streamAbort = abort;
  let pause = 500;
  while (!abort.signal.aborted && state.token) {
    try {
      const resp = await fetch("/system/stream", {
        headers: { Authorization: `Bearer ${state.token}` },
        signal: abort.signal,
      });
      if (resp.status === 401) return signOut("The token was refused: sign in again.");
      if (!resp.ok || !resp.body) throw new Error(`stream: ${resp.status}`);
      $("live").hidden = false;
      pause = 500;
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
          if (data) showOverview(JSON.parse(data));
        }
      }
    } catch (e) {
      if (abort.signal.aborted) return;
    }
    $("live").hidden = true;
    await new Promise((r) => setTimeout(r, pause));
    pause = Math.min(pause * 2, 5000);
  }
}

// ---- functions table ----

function fmtMs(v) {
  if (v === null || v === undefined) return "–";
  return v < 10 ? `${v.toFixed(2)} ms` : v < 1000 ? `${v.toFixed(0)} ms` : `${(v / 1000).toFixed(2)} s`;
}

function stateOf(f) {
  if (f.failed) return ["failed", "failed"];
  if (f.replicas.desired === 0 && f.replicas.ready === 0) return ["at zero", "zero"];
  if (f.replicas.ready !== f.replicas.desired) return ["scaling", "scaling"];
  return ["ready", "ready"];
}

function triggerText(t) {
  if (t.http) return `http ${(t.http.methods || []).join(",") || "*"} ${t.http.path}`;
  if (t.schedule) return `schedule ${t.schedule.cron || t.schedule.every || ""}`;
  if (t.queue) return `queue ${t.queue.subject}`;
  return Object.keys(t).join(",");
}

function showOverview(o) {
  state.overview = o;
  const p = o.provenance;
  const badge = $("provenance");
  if (p) {
    badge.hidden = false;
    const parts = [p.commit ? `commit ${p.commit}` : "no commit"];
    if (p.dirty) parts.push("uncommitted changes");
    if (p.generatedStale) parts.push("generated/ is stale: run cubeflash render");
    badge.textContent = parts.join(" · ");
    badge.title = p.note || "";
    badge.className = `badge ${p.generatedStale || p.dirty ? "warn" : "ok"}`;
  }
  const body = document.querySelector("#functions tbody");
  const rows = [];
  for (const f of o.functions) {
    const r = o.rates[f.name] || {};
    const [label, cls] = stateOf(f);
    const lag = (f.queues || []).reduce((a, q) => a + q.backlog, 0);
    const tr = el("tr", { tabindex: "0", "data-name": f.name, "aria-selected": String(f.name === state.selected) },
      el("td", { text: f.name }),
      el("td", { text: f.runtime }),
      el("td", { text: (f.triggers || []).map(triggerText).join("; ") || "–" }),
      el("td", { class: `state-${cls}`, text: label }),
      el("td", { class: "num", text: `${f.replicas.ready}/${f.replicas.desired}` }),
      el("td", { class: "num", text: String(f.inflight) }),
      el("td", { class: "num", text: String(f.queued) }),
      el("td", { class: "num", text: (r.requestsPerSecond || 0).toFixed(1) }),
      el("td", { class: "num", text: `${((r.errorRate || 0) * 100).toFixed(1)}%` }),
      el("td", { class: "num", text: fmtMs(r.p50Ms) }),
      el("td", { class: "num", text: fmtMs(r.p99Ms) }),
      el("td", { class: "num", text: `${f.coldStarts}${r.lastColdStartMs ? ` (last ${fmtMs(r.lastColdStartMs)})` : ""}` }),
      el("td", { class: "num", text: `${f.asyncPending} pending` }),
      el("td", { class: "num", text: f.queues && f.queues.length ? String(lag) : "–" }),
      el("td", {}, el("code", { text: f.url })),
    );
    if (f.baselineUrl) tr.title = `baseline: ${f.baselineUrl}`;
    tr.addEventListener("click", () => select(f.name));
    tr.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); select(f.name); } });
    rows.push(tr);
  }
  const focused = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.name : null;
  body.replaceChildren(...rows);
  if (focused) {
    const again = body.querySelector(`tr[data-name="${CSS.escape(focused)}"]`);
    if (again) again.focus();
  }
  $("empty").hidden = o.functions.length > 0;
  const fnSelect = $("calls-function");
  const chosen = fnSelect.value;
  fnSelect.replaceChildren(el("option", { value: "", text: "all" }), ...o.functions.map((f) => el("option", { text: f.name })));
  fnSelect.value = chosen;
  showActions(o.actions);
  showQueues(o.functions);
  if (state.selected) showDetail();
}

function current() {
  return state.overview && state.overview.functions.find((f) => f.name === state.selected);
}

// ---- one function ----

async function select(name) {
  if (state.selected !== name) {
    state.selected = name;
    state.logNext = 0;
    $("logs").textContent = "";
    $("log-replica").replaceChildren(el("option", { value: "", text: "all" }));
    $("result").hidden = true;
    $("curl-text").hidden = true;
  }
  $("detail").hidden = false;
  for (const tr of document.querySelectorAll("#functions tbody tr")) tr.setAttribute("aria-selected", String(tr.dataset.name === name));
  showDetail();
  loadHistory();
  loadEvents();
  startLogs();
}

function showDetail() {
  const f = current();
  if (!f) {
    $("detail-title").textContent = `${state.selected} (no longer served)`;
    return;
  }
  $("detail-title").textContent = f.name;
  const bits = [`${f.runtime}`, `scale ${f.scale.min}–${f.scale.max}`, `timeout ${f.timeout}`, `pids ${f.replicaPids.join(", ") || "none"}`];
  if (f.baselineUrl) bits.push(`baseline ${f.baselineUrl}`);
  if (f.failed) bits.push(`failed: ${f.failed}`);
  if (f.trouble) bits.push(`trouble: ${f.trouble}`);
  $("detail-meta").textContent = bits.join(" · ");
  $("act-n").max = String(f.scale.max);
}

async function scale(n) {
  const name = state.selected;
  try {
    await api("POST", `/system/functions/${encodeURIComponent(name)}/scale`, { replicas: n });
    notice(`Scaled ${name} to ${n}.`);
    $("act-cli").textContent = `Same from a terminal: cubeflash scale ${name} ${n}`;
  } catch (e) { notice(e.message, true); }
}

$("act-wake").addEventListener("click", () => scale(Math.max(1, (current() || { scale: { min: 1 } }).scale.min || 1)));
$("act-zero").addEventListener("click", () => scale(0));
$("act-scale").addEventListener("click", () => scale(Number($("act-n").value)));
$("act-redeploy").addEventListener("click", async () => {
  if (state.backend !== "local") {
    notice("In a cluster, git and `cubeflash deploy` are the source of truth: commit, then run `cubeflash deploy --target kubernetes`.");
    $("act-cli").textContent = "cubeflash deploy --target kubernetes";
    return;
  }
  notice("Reloading from the repo…");
  try {
    const r = await api("POST", "/system/reload");
    const failed = r.failed.map((f) => `${f.name}: ${f.reason}`).join("; ");
    notice(`Reloaded: ${r.added.length} added, ${r.changed.length} changed, ${r.removed.length} removed${failed ? `; failed: ${failed}` : ""}.`, Boolean(failed));
    $("act-cli").textContent = "Same from a terminal: cubeflash deploy";
  } catch (e) { notice(e.message, true); }
});
$("act-delete").addEventListener("click", () => {
  $("delete-name").value = "";
  $("delete-confirm").disabled = true;
  $("delete-title").textContent = `Delete ${state.selected}`;
  $("delete-dialog").showModal();
  $("delete-name").focus();
});
$("delete-name").addEventListener("input", () => { $("delete-confirm").disabled = $("delete-name").value !== state.selected; });
$("delete-cancel").addEventListener("click", () => $("delete-dialog").close());
$("delete-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const name = state.selected;
  if ($("delete-name").value !== name) return;
  $("delete-dialog").close();
  try {
    await api("DELETE", `/system/functions/${encodeURIComponent(name)}`);
    notice(`Deleted ${name}. Its files are still in functions/${name}/: remove them and deploy to make it final.`);
    $("act-cli").textContent = `Same from a terminal: cubeflash delete ${name}`;
    $("detail").hidden = true;
    state.selected = null;
    stopLogs();
  } catch (e) { notice(e.message, true); }
});

// ---- charts (SVG, drawn here from the gateway's history) ----

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs) {
  const n = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
  return n;
}

function chart(title, points, series, unit) {
  const W = 300, H = 120, L = 34, B = 16;
  const box = el("div", { class: "chart" });
  const legend = el("div", { class: "legend" }, el("strong", { text: title }));
  for (const s of series) legend.append(el("span", {}, el("span", { class: `swatch c-${s.color}` }), s.label));
  box.append(legend);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  const values = series.flatMap((s) => points.map(s.value).filter((v) => v !== null && v !== undefined));
  const max = Math.max(1e-9, ...values);
  const t0 = points.length ? points[0].t : 0;
  const t1 = points.length ? points[points.length - 1].t : 1;
  const x = (t) => L + ((t - t0) / Math.max(1, t1 - t0)) * (W - L - 4);
  const y = (v) => H - B - (v / max) * (H - B - 6);
  root.append(svg("line", { class: "axis", x1: L, y1: H - B, x2: W, y2: H - B }));
  root.append(svg("line", { class: "axis", x1: L, y1: 4, x2: L, y2: H - B }));
  const top = svg("text", { x: 2, y: 12 });
  top.textContent = `${max < 10 ? max.toFixed(2) : max.toFixed(0)}${unit}`;
  root.append(top);
  const zero = svg("text", { x: 2, y: H - B });
  zero.textContent = `0${unit}`;
  root.append(zero);
  if (points.length) {
    const span = svg("text", { x: L, y: H - 3 });
    span.textContent = `${Math.round((t1 - t0) / 60000)} min`;
    root.append(span);
  }
  for (const s of series) {
    const pts = points.filter((p) => s.value(p) !== null && s.value(p) !== undefined).map((p) => `${x(p.t).toFixed(1)},${y(s.value(p)).toFixed(1)}`);
    if (pts.length) root.append(svg("polyline", { class: `line c-${s.color}`, points: pts.join(" ") }));
  }
  box.append(root);
  if (!points.length) box.append(el("p", { class: "meta", text: "No points yet: one is taken every 5 s." }));
  return box;
}

async function loadHistory() {
  const name = state.selected;
  if (!name) return;
  try {
    const h = await api("GET", `/system/functions/${encodeURIComponent(name)}/history`);
    if (name !== state.selected) return;
    const secs = h.bucketMs / 1000;
    const pts = h.points;
    $("charts").replaceChildren(
      chart("Requests/s and errors/s", pts, [
        { label: "requests/s", color: "serverless", value: (p) => p.requests / secs },
        { label: "5xx/s", color: "errors", value: (p) => p.errors / secs },
      ], ""),
      chart("Latency", pts, [
        { label: "p50", color: "serverless", value: (p) => p.p50Ms },
        { label: "p99", color: "p99", value: (p) => p.p99Ms },
      ], " ms"),
      chart("Replicas and cold starts", pts, [
        { label: "replicas", color: "replicas", value: (p) => p.replicas },
        { label: "cold starts", color: "errors", value: (p) => p.coldStarts },
      ], ""),
    );
  } catch (e) { notice(e.message, true); }
}
setInterval(() => { if (state.selected && state.token) loadHistory(); }, 5000);

// ---- invoke console ----

function consoleRequest() {
  const name = state.selected;
  let path = $("inv-path").value.trim() || "/";
  if (!path.startsWith("/")) path = `/${path}`;
  const q = $("inv-query").value.trim().replace(/^\?/, "");
  const url = `/function/${encodeURIComponent(name)}${path}${q ? `?${q}` : ""}`;
  const headers = {};
  for (const row of $("inv-headers").children) {
    const [k, v] = row.querySelectorAll("input");
    if (k.value.trim()) headers[k.value.trim()] = v.value;
  }
  const method = $("inv-method").value;
  let body;
  const kind = $("inv-kind").value;
  if (method !== "GET" && method !== "HEAD") {
    if (kind === "file" && $("inv-file").files.length) body = $("inv-file").files[0];
    else if ($("inv-body").value !== "") {
      body = $("inv-body").value;
      if (kind === "json") {
        JSON.parse(body); // a typo is said before anything is sent
        if (!Object.keys(headers).some((h) => h.toLowerCase() === "content-type")) headers["Content-Type"] = "application/json";
      }
    }
  }
  return { url, method, headers, body };
}

function shellQuote(s) { return `'${String(s).replace(/'/g, "'\\''")}'`; }

function curlOf(r) {
  const base = state.overview ? state.overview.gatewayUrl : location.origin;
  const parts = ["curl", "-i", "-X", r.method];
  for (const [k, v] of Object.entries(r.headers)) parts.push("-H", shellQuote(`${k}: ${v}`));
  if (typeof r.body === "string") parts.push("--data-binary", shellQuote(r.body));
  else if (r.body) parts.push("--data-binary", shellQuote(`@${r.body.name}`));
  parts.push(shellQuote(base + r.url));
  return parts.join(" ");
}

function timingText(header, total) {
  const parts = {};
  for (const item of (header || "").split(",")) {
    const m = item.trim().match(/^([a-z]+);dur=([0-9.]+)$/);
    if (m) parts[m[1]] = Number(m[2]);
  }
  const out = [`total ${fmtMs(total)}`];
  if (parts.cold !== undefined) out.push(`cold start ${fmtMs(parts.cold)}`);
  if (parts.queue !== undefined) out.push(`queue wait ${fmtMs(parts.queue)}`);
  if (parts.function !== undefined) out.push(`function ${fmtMs(parts.function)}`);
  if (parts.gateway !== undefined) out.push(`gateway ${fmtMs(parts.gateway)}`);
  return out.join(" · ");
}

async function send(r) {
  $("result").hidden = false;
  $("res-status").textContent = "…";
  $("res-timing").textContent = "";
  $("res-body").textContent = "";
  $("res-logs").textContent = "";
  $("res-download").hidden = true;
  const headers = Object.assign({ "X-Cubeflash-Timing": "1" }, r.headers);
  const started = performance.now();
  let resp;
  try {
    resp = await fetch(r.url, { method: r.method, headers, body: r.body });
  } catch (e) {
    $("res-status").textContent = `could not reach the gateway: ${e.message}`;
    return;
  }
  const buf = await resp.arrayBuffer();
  const total = performance.now() - started;
  $("res-status").textContent = `${resp.status} ${resp.statusText}`;
  $("res-timing").textContent = timingText(resp.headers.get("server-timing"), total);
  const call = resp.headers.get("x-cubeflash-call-id") || "";
  $("res-call").textContent = call || "(none)";
  $("res-headers").textContent = [...resp.headers.entries()].map(([k, v]) => `${k}: ${v}`).join("\n");
  const type = resp.headers.get("content-type") || "";
  let text = null;
  try { text = new TextDecoder("utf-8", { fatal: true }).decode(buf); } catch (_) { text = null; }
  if (text !== null && /json/.test(type)) {
    try { text = JSON.stringify(JSON.parse(text), null, 2); } catch (_) { /* shown as it came */ }
  }
  if (text !== null) {
    $("res-body").textContent = text;
  } else {
    $("res-body").textContent = `${buf.byteLength} bytes of binary (${type || "no content type"})`;
    const a = $("res-download");
    a.href = URL.createObjectURL(new Blob([buf], { type }));
    a.download = `${state.selected}-${call || "answer"}`;
    a.hidden = false;
  }
  if (call && state.selected) {
    // A replica's lines reach the gateway a moment after the answer.
    await new Promise((res) => setTimeout(res, 400));
    try {
      const l = await api("GET", `/system/functions/${encodeURIComponent(state.selected)}/logs?lines=200&call=${encodeURIComponent(call)}`);
      $("res-logs").textContent = l.lines.join("\n") || "(the call wrote no lines)";
    } catch (e) { $("res-logs").textContent = e.message; }
  }
}

let headerRows = 0;
function addHeaderRow(name, value) {
  headerRows += 1;
  const n = headerRows;
  const k = el("input", { "aria-label": `header ${n} name`, placeholder: "Name", autocomplete: "off" });
  const v = el("input", { "aria-label": `header ${n} value`, placeholder: "value", autocomplete: "off" });
  k.value = name || "";
  v.value = value || "";
  const remove = el("button", { type: "button", "aria-label": `remove header ${n}`, text: "Remove" });
  const row = el("div", { class: "actions header-row" }, k, v, remove);
  remove.addEventListener("click", () => row.remove());
  $("inv-headers").append(row);
  return k;
}
$("inv-add-header").addEventListener("click", () => addHeaderRow("", "").focus());

$("invoke-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try { await send(consoleRequest()); } catch (e) { notice(`Not sent: ${e.message}`, true); }
});
$("inv-curl").addEventListener("click", async () => {
  let text;
  try { text = curlOf(consoleRequest()); } catch (e) { return notice(`Not a request: ${e.message}`, true); }
  const box = $("curl-text");
  box.value = text;
  box.hidden = false;
  box.select();
  try { await navigator.clipboard.writeText(text); notice("curl command copied."); } catch (_) { notice("Select the curl command below to copy it."); }
});

async function loadEvents() {
  const name = state.selected;
  const sel = $("inv-event");
  sel.replaceChildren(el("option", { value: "", text: "(none)" }));
  $("events-note").textContent = "";
  try {
    const events = await api("GET", `/system/functions/${encodeURIComponent(name)}/events`);
    if (name !== state.selected) return;
    state.events = events;
    for (const e of events) sel.append(el("option", { value: e.name, text: `${e.name} (${e.method} ${e.path})` }));
    $("events-note").textContent = events.length
      ? `Test events from functions/${name}/events/: also runnable as cubeflash invoke ${name} --event NAME.`
      : `No test events: add functions/${name}/events/NAME.json ({"method", "path", "headers", "body"}) and commit it.`;
  } catch (e) { $("events-note").textContent = e.message; }
}

function fillFromEvent(e) {
  $("inv-method").value = e.method;
  const [p, q] = e.path.split("?");
  $("inv-path").value = p;
  $("inv-query").value = q || "";
  $("inv-headers").replaceChildren();
  for (const [k, v] of Object.entries(e.headers)) addHeaderRow(k, v);
  const isText = typeof e.body === "string";
  $("inv-kind").value = e.body === null || e.body === undefined || isText ? "text" : "json";
  $("inv-body").value = e.body === null || e.body === undefined ? "" : isText ? e.body : JSON.stringify(e.body, null, 2);
}

$("inv-event").addEventListener("change", () => {
  const e = state.events.find((x) => x.name === $("inv-event").value);
  if (e) fillFromEvent(e);
});
$("inv-run-event").addEventListener("click", async () => {
  const e = state.events.find((x) => x.name === $("inv-event").value);
  if (!e) return notice("Pick a test event first.", true);
  fillFromEvent(e);
  try { await send(consoleRequest()); } catch (err) { notice(err.message, true); }
});

// ---- logs: polled from where the last answer ended, so a dropped connection resumes
// without repeats ----

function stopLogs() {
  if (state.logTimer) clearTimeout(state.logTimer);
  state.logTimer = null;
}

function startLogs() {
  stopLogs();
  pollLogs();
}

async function pollLogs() {
  const name = state.selected;
  if (!name || !state.token) return;
  const q = encodeURIComponent($("log-q").value);
  const call = encodeURIComponent($("log-call").value.trim());
  const replica = encodeURIComponent($("log-replica").value);
  try {
    const l = await api("GET", `/system/functions/${encodeURIComponent(name)}/logs?lines=500&after=${state.logNext}&q=${q}&call=${call}&replica=${replica}`);
    if (name === state.selected) {
      const pre = $("logs");
      const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      if (l.lines.length) pre.append(document.createTextNode(`${l.lines.join("\n")}\n`));
      noteReplicas(l.lines);
      state.logNext = l.next;
      if (atEnd) pre.scrollTop = pre.scrollHeight;
    }
  } catch (e) {
    // Shown, not swallowed; a gateway that keeps no logs (a cluster) is not asked again.
    $("logs").textContent = e.message;
    if (/keeps no logs/.test(e.message)) return;
  }
  if ($("log-follow").checked && name === state.selected) state.logTimer = setTimeout(pollLogs, 1000);
}

// Each line starts with its replica, `[NAME#N]` (or `[NAME-baseline#N]`): the choices.
function noteReplicas(lines) {
  const sel = $("log-replica");
  const known = new Set([...sel.options].map((o) => o.value));
  for (const line of lines) {
    const m = line.match(/^\[([^\]\s]+#[0-9]+)\]/);
    if (m && !known.has(m[1])) {
      known.add(m[1]);
      sel.append(el("option", { value: m[1], text: m[1] }));
    }
  }
}

for (const id of ["log-q", "log-call", "log-replica"]) {
  $(id).addEventListener("change", () => { state.logNext = 0; $("logs").textContent = ""; startLogs(); });
}
$("log-follow").addEventListener("change", () => { if ($("log-follow").checked) startLogs(); else stopLogs(); });
$("log-clear").addEventListener("click", () => { $("logs").textContent = ""; });

// ---- async calls and queues ----

function when(ms) { return ms ? new Date(ms).toLocaleTimeString() : "–"; }

async function loadCalls() {
  const params = new URLSearchParams({ limit: "100" });
  if ($("calls-function").value) params.set("function", $("calls-function").value);
  if ($("calls-state").value) params.set("state", $("calls-state").value);
  const body = document.querySelector("#calls tbody");
  try {
    const calls = await api("GET", `/system/calls?${params}`);
    body.replaceChildren(...calls.map((c) => {
      const acts = el("td", {});
      if (c.state === "dead" && state.access === "admin") {
        const redrive = el("button", { type: "button", text: "Redrive" });
        redrive.addEventListener("click", () => callAction("POST", `/system/calls/${encodeURIComponent(c.id)}/redrive`, `Redrove ${c.id}.`));
        const purge = el("button", { type: "button", class: "danger", text: "Purge" });
        purge.addEventListener("click", () => callAction("DELETE", `/system/calls/${encodeURIComponent(c.id)}`, `Purged ${c.id}.`));
        acts.append(redrive, " ", purge);
      }
      return el("tr", {},
        el("td", {}, el("code", { text: c.id })),
        el("td", { text: c.function }),
        el("td", { text: c.state }),
        el("td", { class: "num", text: String(c.attempts.length) }),
        el("td", { text: when(c.nextAttemptAt) }),
        el("td", { text: c.result ? String(c.result.status) : "–" }),
        el("td", { text: c.error || "" }),
        acts);
    }));
    if (!calls.length) body.replaceChildren(el("tr", {}, el("td", { colspan: "8", text: "No async calls match." })));
  } catch (e) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: "8", text: e.message })));
  }
}

async function callAction(method, path, done) {
  try { await api(method, path); notice(done); } catch (e) { notice(e.message, true); }
  loadCalls();
}

function showQueues(functions) {
  const rows = [];
  for (const f of functions) {
    for (const q of f.queues || []) {
      rows.push(el("tr", {}, el("td", { text: f.name }), el("td", { text: q.subject }), el("td", { text: q.stream }),
        el("td", { text: q.state }), el("td", { class: "num", text: String(q.backlog) }), el("td", { text: q.error || "" })));
    }
  }
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "6", text: "No queue triggers." })));
  document.querySelector("#queues tbody").replaceChildren(...rows);
}

$("calls-refresh").addEventListener("click", loadCalls);
$("calls-function").addEventListener("change", loadCalls);
$("calls-state").addEventListener("change", loadCalls);

// ---- new function (local target) ----

async function loadScaffold() {
  try {
    const s = await api("GET", `/system/scaffold?runtime=${encodeURIComponent($("new-runtime").value)}`);
    $("new-handler").value = s.handler;
  } catch (e) { $("new-result").textContent = e.message; }
}
$("new-runtime").addEventListener("change", loadScaffold);
$("new-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("new-result").textContent = "Creating, rendering and deploying…";
  try {
    const r = await api("POST", "/system/functions", { name: $("new-name").value.trim(), runtime: $("new-runtime").value, handler: $("new-handler").value });
    $("new-result").textContent = `Serving at ${r.url}\n\nWrote (commit these):\n${r.files.join("\n")}\n\nSame from a terminal: ${r.command}`;
  } catch (e) { $("new-result").textContent = e.message; }
});

// ---- bench runs ----

async function loadBench() {
  const list = $("bench-runs");
  try {
    const runs = await api("GET", "/system/bench");
    list.replaceChildren(...runs.map((r) => {
      const open = el("button", { type: "button", text: "Open report" });
      open.disabled = !r.files.includes("index.html");
      const li = el("li", {}, el("strong", { text: r.name }), r.latest ? " (latest) " : " ", open);
      const lines = r.conclusion.slice(0, 4);
      if (lines.length) li.append(el("ul", {}, ...lines.map((l) => el("li", { text: l }))));
      li.append(el("p", { class: "meta", text: r.files.join(" · ") }));
      open.addEventListener("click", () => openReport(r.name, li));
      return li;
    }));
    if (!runs.length) list.replaceChildren(el("li", { text: "No runs in bench/results/ yet: make bench." }));
  } catch (e) { list.replaceChildren(el("li", { text: e.message })); }
}

async function openReport(name, li) {
  // The tab is opened in the click itself (a pop-up blocker allows that), then sent to the
  // link once the gateway made it.
  const tab = window.open("", "_blank");
  if (tab) tab.opener = null;
  try {
    const link = await api("GET", `/system/bench/${encodeURIComponent(name)}/link`);
    if (tab) {
      tab.location = link.url;
    } else {
      li.append(el("a", { href: link.url, target: "_blank", rel: "noopener", class: "report-link", text: `report of ${name}` }));
    }
  } catch (e) {
    if (tab) tab.close();
    notice(`Cannot open the report: ${e.message}`, true);
  }
}

// ---- actions log ----

function showActions(actions) {
  const list = $("actions");
  list.replaceChildren(...(actions || []).slice().reverse().map((a) =>
    el("li", {}, `${when(a.atMs)} ${a.action} — `, el("code", { text: a.command }))));
  if (!actions || !actions.length) list.replaceChildren(el("li", { text: "No actions yet in this gateway's life." }));
}

// ---- views ----

for (const tab of document.querySelectorAll(".tab")) {
  tab.addEventListener("click", () => {
    for (const t of document.querySelectorAll(".tab")) t.setAttribute("aria-pressed", String(t === tab));
    for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== `view-${tab.dataset.view}`;
    if (tab.dataset.view === "calls") loadCalls();
    if (tab.dataset.view === "new" && !$("new-handler").value) loadScaffold();
    if (tab.dataset.view === "bench") loadBench();
  });
}

if (state.token) {
  signIn(state.token).catch(() => signOut(""));
} else {
  signOut("");
}
