// orch's dashboard: live tasks, the queue, alerts, disk use and cleanups,
// from the daemon's own API, updated live from /v1/events. Everything a
// task wrote (descriptions, progress messages) is shown as text, never as
// markup.
"use strict";

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child ?? "")));
  }
  return node;
}

function status(text) {
  $("status").textContent = text;
}

async function api(method, path, body) {
  const init = {
    method,
    credentials: "same-origin",
    // A header a cross-site page cannot send without the daemon's consent.
    headers: { "X-Orch-Request": "dashboard" },
  };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const answer = await fetch(path, init);
  const text = await answer.text();
  let value = null;
  try { value = text ? JSON.parse(text) : null; } catch (_) { value = text; }
  if (!answer.ok) {
    const message = (value && value.error) || `${answer.status} ${answer.statusText}`;
    if (answer.status === 401) status("not signed in: open this page as /?token=<token>");
    throw new Error(message);
  }
  return value;
}

// As `orch ps` shows ids: UUID v7 ids of one moment share their first
// eight digits.
function short(id) {
  return String(id).slice(0, 13);
}

function age(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  return `${Math.floor(s / 86400)}d`;
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

function progressBar(percent, message) {
  const bar = el("div", { class: "bar", title: message || "" }, el("div"));
  bar.firstChild.style.width = `${Math.max(0, Math.min(100, percent || 0))}%`;
  return bar;
}

function renderTasks(tasks) {
  const body = $("tasks").tBodies[0];
  body.replaceChildren();
  const counts = {};
  // A cluster: each task's node, in a column of its own.
  const cluster = tasks.some((t) => t.node);
  for (const th of $("tasks").querySelectorAll("th.node")) th.hidden = !cluster;
  for (const t of tasks) {
    counts[t.state] = (counts[t.state] || 0) + 1;
    const cancel = el("button", { type: "button", class: "danger cancel" }, "Cancel");
    cancel.addEventListener("click", () => cancelTask(t.id, cancel));
    const progress = t.progress == null
      ? el("span", { class: "muted" }, "—")
      : el("span", {}, progressBar(t.progress, t.progress_message), ` ${t.progress}% `,
          el("span", { class: "muted msg" }, t.progress_message || ""));
    body.append(el("tr", { id: `task-${t.id}`, "data-state": t.state },
      el("td", { class: "id", title: t.id }, short(t.id)),
      el("td", {}, t.project),
      el("td", { class: "desc", title: t.description }, t.description),
      el("td", { class: `state state-${t.state}` }, t.state),
      el("td", { class: "progress" }, progress),
      el("td", {}, age(t.created_at)),
      ...(cluster ? [el("td", { class: "node" }, t.node || "—")] : []),
      el("td", {}, cancel)));
  }
  $("no-tasks").hidden = tasks.length > 0;
  $("counts").textContent = Object.entries(counts).map(([s, n]) => `${n} ${s}`).join(", ");
}

async function cancelTask(id, button) {
  button.disabled = true;
  button.textContent = "Cancelling…";
  try {
    await api("DELETE", `/v1/tasks/${encodeURIComponent(id)}`);
    status(`cancel sent to ${short(id)}`);
  } catch (e) {
    status(`cancel failed: ${e.message}`);
    button.disabled = false;
    button.textContent = "Cancel";
  }
  refreshTasks();
}

function renderDu(du) {
  const projects = du.projects || [];
  const max = Math.max(1, ...projects.map((p) => p.bytes));
  $("du").replaceChildren(...projects.map((p) => {
    const bar = el("div", { class: "chart-bar" });
    bar.style.width = `${(100 * p.bytes) / max}%`;
    return el("div", { class: "chart-row" },
      el("span", { title: p.project }, p.project),
      el("div", {}, bar),
      el("span", {}, bytes(p.bytes)));
  }));
  const total = du.total || { bytes: 0, workspaces: 0 };
  $("du-total").textContent = `${total.workspaces} workspace(s), ${bytes(total.bytes)} in all`;
}

function renderCleanups(list) {
  $("cleanups").replaceChildren(...list.slice().reverse().map((c) =>
    el("li", {}, `${new Date(c.at).toLocaleTimeString()} · ${c.trigger} (${c.strategy}): `, c.summary)));
  $("no-cleanups").hidden = list.length > 0;
}

function renderAlerts(alerts) {
  $("alerts").replaceChildren(...alerts.map((a) =>
    el("li", {}, `task ${short(a.id)} (${a.project}) is stuck: no progress and no output for ${a.silent_secs}s`)));
  $("alerts-section").hidden = alerts.length === 0;
}

const refreshers = {
  tasks: async () => renderTasks(await api("GET", "/v1/tasks")),
  du: async () => renderDu(await api("GET", "/v1/du")),
  cleanups: async () => renderCleanups(await api("GET", "/v1/cleanups")),
  alerts: async () => renderAlerts(await api("GET", "/v1/alerts")),
};
const pending = {};
function refresh(what) {
  // Coalesce bursts of events into one request per part.
  if (pending[what]) return;
  pending[what] = setTimeout(async () => {
    delete pending[what];
    try { await refreshers[what](); } catch (e) { console.warn(what, e); }
  }, 150);
}
const refreshTasks = () => refresh("tasks");

function listen() {
  const events = new EventSource("/v1/events");
  events.onopen = () => { status("live"); Object.keys(refreshers).forEach(refresh); };
  events.onerror = () => status("reconnecting…");
  events.addEventListener("task.progress", (m) => {
    const e = JSON.parse(m.data);
    const cell = document.querySelector(`#task-${CSS.escape(e.id)} td.progress`);
    if (!cell) return refreshTasks();
    cell.replaceChildren(el("span", {}, progressBar(e.percent, e.message), ` ${e.percent}% `,
      el("span", { class: "muted msg" }, e.message || "")));
  });
  for (const kind of ["task.state", "task.finished", "lagged"]) {
    events.addEventListener(kind, () => { refreshTasks(); refresh("alerts"); });
  }
  for (const kind of ["task.stuck", "task.unstuck"]) {
    events.addEventListener(kind, () => refresh("alerts"));
  }
  events.addEventListener("cleanup.done", () => { refresh("cleanups"); refresh("du"); });
}

async function planCleanup() {
  const button = $("cleanup");
  button.disabled = true;
  try {
    const plan = await api("POST", "/v1/cleanup", { dry_run: true });
    $("plan-summary").textContent = plan.summary;
    $("plan-items").replaceChildren(...(plan.items || []).map((i) =>
      el("li", {}, `${i.task_id ? short(i.task_id) : "(no task)"}: ${i.reason}`,
        i.bytes ? ` · ${bytes(i.bytes)}` : "")));
    $("plan-run").disabled = (plan.items || []).length === 0;
    $("plan").showModal();
  } catch (e) {
    status(`cleanup plan failed: ${e.message}`);
  } finally {
    button.disabled = false;
  }
}

async function runCleanup() {
  $("plan-run").disabled = true;
  try {
    const report = await api("POST", "/v1/cleanup", {});
    status(report.summary);
  } catch (e) {
    status(`cleanup failed: ${e.message}`);
  }
  $("plan").close();
  refresh("cleanups");
  refresh("du");
  refreshTasks();
}

$("cleanup").addEventListener("click", planCleanup);
$("plan-run").addEventListener("click", runCleanup);
$("plan-cancel").addEventListener("click", () => $("plan").close());
listen();
// Ages move on without events.
setInterval(refreshTasks, 10000);
