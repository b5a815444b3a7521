// The Shardflow console: plain ES modules over the public HTTP API (/v1), no build step
// and nothing fetched from elsewhere. Views are re-rendered from the API every few
// seconds; rows are keyed by ID and updated in place, so what the reader looks at stays.

const TOKEN = "shardflow.token";
const ADMIN = "shardflow.admin";
const REFRESH_MS = 3000;
const COLORS = ["#0b63ce", "#1a7f37", "#9a6700", "#8250df", "#c62828", "#0a7c86", "#bf3989"];
const $ = (sel, root = document) => root.querySelector(sel);
const view = $("#view");
let timer = null;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) node.append(c instanceof Node ? c : String(c ?? ""));
  return node;
}

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = !message;
}

async function api(path, { method = "GET", body, admin = false } = {}) {
  const token = sessionStorage.getItem(admin ? ADMIN : TOKEN) || sessionStorage.getItem(TOKEN);
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  let resp;
  try {
    resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (err) {
    throw new Error(`the router is not reachable (${err.message})`);
  }
  const doc = await resp.json().catch(() => null);
  if (!resp.ok && resp.status !== 202) {
    const e = doc && doc.error ? doc.error : { code: `http_${resp.status}`, message: resp.statusText };
    throw new Error(`${e.code}: ${e.message}`);
  }
  return doc;
}

function statusCell(status) {
  return el("span", { class: `status ${status}`, "data-status": status }, status);
}

// A table whose rows are keyed: an unchanged row keeps its DOM node.
function keyedRows(tbody, items, key, cells) {
  const seen = new Set();
  let before = null;
  for (const item of items.slice().reverse()) {
    const id = key(item);
    seen.add(id);
    let row = tbody.querySelector(`tr[data-key="${CSS.escape(id)}"]`);
    const html = cells(item).map((c) => (c instanceof Node ? c.outerHTML : esc(c))).join("\u0000");
    if (!row) {
      row = el("tr", { "data-key": id });
    }
    if (row.dataset.html !== html) {
      row.replaceChildren(...cells(item).map((c, i) => el("td", { class: i >= 3 ? "wide" : "" }, c)));
      row.dataset.html = html;
    }
    tbody.insertBefore(row, before);
    before = row;
  }
  for (const row of [...tbody.children]) if (!seen.has(row.dataset.key)) row.remove();
}

function esc(text) {
  return String(text ?? "");
}

function link(href, text) {
  return el("a", { href }, text);
}

async function confirmAction(text, admin = false) {
  const dialog = $("#confirm");
  $("#confirm-text").textContent = text;
  $("#admin-field").hidden = !admin;
  $("#admin-token").value = "";
  dialog.showModal();
  const answer = await new Promise((resolve) =>
    dialog.addEventListener("close", () => resolve(dialog.returnValue), { once: true }));
  if (answer !== "ok") return false;
  if (admin && $("#admin-token").value) sessionStorage.setItem(ADMIN, $("#admin-token").value);
  $("#admin-token").value = "";
  return true;
}

// -- workflows ------------------------------------------------------------------------
const filters = { status: "", workflow: "", id_prefix: "", created_after: "", created_before: "", shard: "" };

function listQuery(cursor) {
  const q = new URLSearchParams({ order: "newest", limit: "50" });
  for (const [k, v] of Object.entries(filters)) {
    if (!v) continue;
    q.set(k, k.startsWith("created_") ? new Date(v).toISOString() : v);
  }
  if (cursor) q.set("cursor", cursor);
  return q;
}

async function workflowsView() {
  const status = el("select", { id: "f-status", "aria-label": "status" },
    el("option", { value: "" }, "any status"),
    ...["pending", "running", "sleeping", "waiting", "completed", "failed", "cancelled"].map(
      (s) => el("option", { value: s }, s)));
  const inputs = {
    status,
    workflow: el("input", { id: "f-workflow", placeholder: "workflow name" }),
    id_prefix: el("input", { id: "f-id", placeholder: "ID prefix" }),
    created_after: el("input", { id: "f-after", type: "datetime-local", "aria-label": "created after" }),
    created_before: el("input", { id: "f-before", type: "datetime-local", "aria-label": "created before" }),
    shard: el("input", { id: "f-shard", placeholder: "shard" }),
  };
  for (const [k, input] of Object.entries(inputs)) {
    input.value = filters[k];
    input.addEventListener("change", () => { filters[k] = input.value; refresh(true); });
  }
  const counts = el("div", { class: "counts", id: "counts" });
  const tbody = el("tbody", { id: "workflow-rows" });
  const more = el("button", { id: "more", hidden: "" }, "Load more");
  let cursor = null;
  let extra = [];
  view.replaceChildren(
    el("h1", {}, "Workflows"),
    el("div", { class: "filters" }, ...Object.values(inputs)),
    counts,
    el("table", {}, el("thead", {}, el("tr", {},
      el("th", {}, "ID"), el("th", {}, "Workflow"), el("th", {}, "Status"),
      el("th", { class: "wide" }, "Shard"), el("th", { class: "wide" }, "Created"))), tbody),
    more,
  );
  const cells = (w) => [link(`#/workflow/${encodeURIComponent(w.id)}`, w.id), w.workflow,
    statusCell(w.status), w.shard, new Date(w.created_at).toLocaleString()];
  async function refresh(reset = false) {
    if (reset) { extra = []; cursor = null; }
    const q = listQuery();
    const [page, stats] = await Promise.all([
      api(`/v1/workflows?${q}`),
      api(`/v1/stats/workflows?${new URLSearchParams(filters.workflow ? { workflow: filters.workflow } : {})}`),
    ]);
    counts.replaceChildren(...Object.entries(stats.counts).map(
      ([s, n]) => el("span", { class: "chip", "data-count": s }, `${s} ${n}`)));
    if (!extra.length) cursor = page.next_cursor;
    keyedRows(tbody, [...page.workflows, ...extra], (w) => w.id, cells);
    more.hidden = !cursor;
  }
  more.addEventListener("click", async () => {
    const page = await api(`/v1/workflows?${listQuery(cursor)}`);
    extra = [...extra, ...page.workflows];
    cursor = page.next_cursor;
    await refresh();
  });
  return refresh;
}

// -- one workflow ---------------------------------------------------------------------
async function workflowView(id) {
  view.replaceChildren(el("h1", {}, `Workflow ${id}`), el("div", { id: "workflow" }));
  async function refresh() {
    const [doc, kids] = await Promise.all([
      api(`/v1/workflows/${encodeURIComponent(id)}`),
      api(`/v1/workflows?${new URLSearchParams({ parent: id, limit: "100" })}`),
    ]);
    renderWorkflow(doc, kids.workflows, refresh);
  }
  return refresh;
}

function renderWorkflow(doc, children, refresh) {
  const host = $("#workflow");
  const failing = doc.steps.filter((s) => s.status === "failed" || s.status === "retrying").pop();
  const fields = [
    ["status", statusCell(doc.status)], ["workflow", `${doc.workflow} (version ${doc.version})`],
    ["shard", `${doc.shard}, slot ${doc.slot}`], ["priority", doc.priority],
    ["attempt", doc.attempt], ["created", new Date(doc.created_at).toLocaleString()],
    ["updated", new Date(doc.updated_at).toLocaleString()],
  ];
  if (doc.parent) fields.push(["parent", link(`#/workflow/${encodeURIComponent(doc.parent)}`, doc.parent)]);
  const times = doc.steps.filter((s) => s.started_at).map((s) => [Date.parse(s.started_at), Date.parse(s.finished_at)]);
  const t0 = times.length ? Math.min(...times.map((t) => t[0])) : 0;
  const span = times.length ? Math.max(1, Math.max(...times.map((t) => t[1])) - t0) : 1;
  const steps = doc.steps.map((s) => {
    const start = s.started_at ? Date.parse(s.started_at) : null;
    const ms = start ? Date.parse(s.finished_at) - start : null;
    const bar = start ? el("div", { class: "bar", style: `margin-left:${((start - t0) / span) * 100}%;width:${Math.max(1, (ms / span) * 100)}%` }) : "";
    const err = s.error ? `${s.error.type}: ${s.error.message}` : "";
    return el("tr", { "data-step": s.seq },
      el("td", {}, s.seq), el("td", {}, s.name), el("td", {}, statusCell(s.status)),
      el("td", {}, s.attempts), el("td", { class: "wide" }, ms === null ? "" : `${ms} ms`, bar),
      el("td", { class: "wide" }, err));
  });
  const events = doc.steps.filter((s) => s.name.startsWith("ctx.wait_for_event:"));
  const awaiting = doc.status === "waiting" ? doc.steps.length : null;
  const payload = el("textarea", { id: "event-payload", "aria-label": "event payload" }, '{"approved": true}');
  const eventName = el("input", { id: "event-name", value: "approved", "aria-label": "event name" });
  const act = (label, id, fn) => el("button", { id, onclick: async () => {
    try { if (await fn()) { showError(""); await refresh(); } } catch (e) { showError(e.message); }
  } }, label);
  const actions = el("div", { class: "actions" },
    act("Cancel", "act-cancel", async () => (await confirmAction(`Cancel workflow ${doc.id}?`))
      && api(`/v1/workflows/${encodeURIComponent(doc.id)}/cancel`, { method: "POST" })),
    act("Retry from the failed step", "act-retry", async () => (await confirmAction(`Retry workflow ${doc.id}?`))
      && api(`/v1/workflows/${encodeURIComponent(doc.id)}/retry`, { method: "POST" })),
    eventName, payload,
    act("Send event", "act-event", async () => {
      let body;
      try { body = JSON.parse(payload.value); } catch (e) { throw new Error(`the payload is not JSON: ${e.message}`); }
      if (!(await confirmAction(`Send event ${eventName.value} to ${doc.id}?`))) return false;
      return api(`/v1/workflows/${encodeURIComponent(doc.id)}/events/${encodeURIComponent(eventName.value)}`,
        { method: "POST", body: { payload: body } });
    }),
  );
  const error = doc.error ? el("div", {}, el("h2", {}, "Error"),
    el("pre", { id: "wf-error" }, `${doc.error.type}: ${doc.error.message}` +
      (failing ? `\nat step ${failing.name} (position ${failing.seq}), attempt ${failing.attempts}` : ""))) : "";
  host.replaceChildren(
    el("dl", { class: "fields" }, ...fields.flatMap(([k, v]) => [el("dt", {}, k), el("dd", { "data-field": k }, v)])),
    actions,
    el("h2", {}, "Input"), el("pre", { id: "wf-input" }, JSON.stringify(doc.input, null, 2)),
    doc.output !== null && doc.output !== undefined
      ? el("div", {}, el("h2", {}, "Output"), el("pre", { id: "wf-output" }, JSON.stringify(doc.output, null, 2))) : "",
    error,
    el("h2", {}, "Steps"),
    el("table", { id: "steps" }, el("thead", {}, el("tr", {}, el("th", {}, "#"), el("th", {}, "Step"),
      el("th", {}, "Status"), el("th", {}, "Attempts"), el("th", { class: "wide" }, "Duration"),
      el("th", { class: "wide" }, "Error"))), el("tbody", {}, ...steps)),
    el("h2", {}, "Events"),
    el("p", { id: "events" }, events.length ? events.map((s) => s.name.split(":")[1]).join(", ") + " received" : "none received",
      awaiting !== null ? " — waiting for one now" : ""),
    el("h2", {}, "Compensations"),
    el("p", { id: "compensations" }, doc.compensations.length ? doc.compensations.join(", ") : "none"),
    el("h2", {}, "Children"),
    el("p", { id: "children" }, ...(children.length ? children.flatMap((c, i) =>
      [i ? ", " : "", link(`#/workflow/${encodeURIComponent(c.id)}`, c.id), ` (${c.status})`]) : ["none"])),
  );
}

// -- cluster --------------------------------------------------------------------------
async function clusterView() {
  view.replaceChildren(el("h1", {}, "Cluster"), el("div", { id: "cluster" }));
  return async () => {
    const [doc, stats] = await Promise.all([api("/v1/cluster"), api("/v1/stats/workflows")]);
    const load = (id) => {
      const c = stats.shards[id] || {};
      return `${c.running || 0} running, ${(c.pending || 0)} pending, ${(c.sleeping || 0) + (c.waiting || 0)} suspended`;
    };
    const color = Object.fromEntries(doc.shards.map((s, i) => [s.id, COLORS[i % COLORS.length]]));
    const shards = el("tbody", {});
    keyedRows(shards, doc.shards, (s) => s.id, (s) => [s.id, s.state, s.healthy ? "healthy" : "unreachable", s.slots, load(s.id)]);
    const moves = doc.moves.map((m) => el("tr", {}, el("td", {}, m.slot), el("td", {}, `${m.source} → ${m.target}`),
      el("td", {}, m.phase), el("td", {}, `${m.rows_copied || 0} rows copied`),
      el("td", { class: "wide" }, m.error || "")));
    const owners = doc.slot_owners || [];
    $("#cluster").replaceChildren(
      el("p", { id: "leader" }, doc.leader ? `leader ${doc.leader.owner}, term ${doc.leader.term}` : "no coordinator leads"),
      el("h2", {}, "Shards"),
      el("table", { id: "shards" }, el("thead", {}, el("tr", {}, el("th", {}, "Shard"), el("th", {}, "State"),
        el("th", {}, "Health"), el("th", { class: "wide" }, "Slots"), el("th", { class: "wide" }, "Load"))), shards),
      el("h2", {}, `Slot map (${owners.length} slots)`),
      el("div", { class: "legend" }, ...doc.shards.map((s) => el("span", {}, el("i", { style: `background:${color[s.id]}` }), s.id))),
      el("div", { class: "slotmap", id: "slotmap" }, ...owners.map((o, i) => el("span", { title: `slot ${i}: ${o}`, style: `background:${color[o]}` }))),
      el("h2", {}, "Moves in progress"),
      moves.length ? el("table", { id: "moves" }, el("tbody", {}, ...moves)) : el("p", { id: "moves" }, "none"),
    );
  };
}

// -- schedules ------------------------------------------------------------------------
async function schedulesView() {
  const form = el("form", { class: "filters", id: "new-schedule" },
    el("input", { name: "name", placeholder: "name", required: "" }),
    el("input", { name: "workflow", placeholder: "workflow", required: "" }),
    el("input", { name: "cron", placeholder: "cron, e.g. 0 3 * * *", required: "" }),
    el("input", { name: "timezone", placeholder: "time zone", value: "UTC" }),
    el("select", { name: "overlap" }, el("option", {}, "skip"), el("option", {}, "allow")),
    el("input", { name: "input", placeholder: "input (JSON)" }),
    el("button", { type: "submit" }, "Create"));
  const tbody = el("tbody", { id: "schedule-rows" });
  view.replaceChildren(el("h1", {}, "Schedules"), form,
    el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "Name"), el("th", {}, "Workflow"),
      el("th", {}, "Next tick"), el("th", { class: "wide" }, "Cron"), el("th", { class: "wide" }, "Last tick's workflow"),
      el("th", { class: "wide" }, ""))), tbody));
  async function refresh() {
    const doc = await api("/v1/schedules");
    keyedRows(tbody, doc.schedules, (s) => s.name, (s) => [s.name, s.workflow,
      s.next_tick ? new Date(s.next_tick).toLocaleString() : "", `${s.cron} (${s.timezone})`,
      s.last_workflow ? link(`#/workflow/${encodeURIComponent(s.last_workflow)}`, s.last_workflow) : "",
      el("button", { "data-delete": s.name }, "Delete")]);
  }
  tbody.addEventListener("click", async (ev) => {
    const name = ev.target.dataset && ev.target.dataset.delete;
    if (!name) return;
    try {
      if (await confirmAction(`Delete schedule ${name}?`, true)) {
        await api(`/v1/schedules/${encodeURIComponent(name)}`, { method: "DELETE", admin: true });
        showError(""); await refresh();
      }
    } catch (e) { showError(e.message); }
  });
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const data = Object.fromEntries(new FormData(form));
    try {
      const body = { name: data.name, workflow: data.workflow, cron: data.cron,
        timezone: data.timezone || "UTC", overlap: data.overlap };
      if (data.input) body.input = JSON.parse(data.input);
      if (await confirmAction(`Create schedule ${data.name}?`, true)) {
        await api("/v1/schedules", { method: "POST", body, admin: true });
        form.reset(); showError(""); await refresh();
      }
    } catch (e) { showError(e.message); }
  });
  return refresh;
}

// -- routing ---------------------------------------------------------------------------
async function route() {
  clearInterval(timer);
  showError("");
  const [, page, arg] = (location.hash || "#/workflows").split("/");
  const section = page === "workflow" ? "workflows" : page;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.nav === section);
  const make = { workflows: workflowsView, workflow: () => workflowView(decodeURIComponent(arg || "")),
    cluster: clusterView, schedules: schedulesView }[page] || workflowsView;
  const refresh = await make();
  const tick = async () => {
    try {
      await refresh();
      document.body.dataset.loaded = page;
      document.body.dataset.ticks = String(Number(document.body.dataset.ticks || 0) + 1);
    } catch (e) { showError(e.message); }
  };
  await tick();
  timer = setInterval(tick, REFRESH_MS);
}

$("#login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const input = $("#token");
  if (input.value) sessionStorage.setItem(TOKEN, input.value);
  else sessionStorage.removeItem(TOKEN);
  input.value = "";  // the token is kept for the session, never shown
  $("#token-state").textContent = sessionStorage.getItem(TOKEN) ? "token set" : "";
  route();
});
$("#token-state").textContent = sessionStorage.getItem(TOKEN) ? "token set" : "";
window.addEventListener("hashchange", route);
route();
