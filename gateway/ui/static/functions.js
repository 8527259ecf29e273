// Functions: the list with live figures, and one function's versions, instances,
// invocations (with their lines) and a live log tail.
import { ApiError, enc } from "./api.js";
import { statCharts } from "./charts.js";
import { h, ms, rate, replace, statusClass, table, when } from "./dom.js";
import { outcome, Section } from "./section.js";

const STATES = ["ready", "busy", "paused", "starting", "draining"];
const WINDOW_MIN = 15;
const TAIL_LINES = 500;

// Busy is ready with requests in flight, as in GET /metrics.
function stateOf(i) {
  return i.state === "ready" && i.in_flight > 0 ? "busy" : i.state;
}

function states(instances) {
  const n = Object.fromEntries(STATES.map((st) => [st, 0]));
  for (const i of instances) n[stateOf(i)] = (n[stateOf(i)] || 0) + 1;
  return h("div", { class: "states" },
    STATES.map((st) => h("span", { class: `state ${st}`, "data-state": st }, `${st} ${n[st]}`)));
}

function totals(t) {
  const cell = (v, label) => h("div", {}, h("b", {}, v), h("span", {}, label));
  return h("div", { class: "totals" },
    cell(rate(t.rps), "req/s"), cell(ms(t.p50_ms), "p50"), cell(ms(t.p99_ms), "p99"),
    cell(String(t.errors), "errors"), cell(String(t.cold), "cold"));
}

const EMPTY = { total: { count: 0, errors: 0, cold: 0, rps: 0, p50_ms: null, p99_ms: null }, series: [] };

function card(fn, stats, step) {
  return h("article", { class: "panel fn", "data-function": fn.name },
    h("div", { class: "card-head" },
      h("a", { href: `#/functions/${enc(fn.name)}` }, fn.name),
      h("span", { class: "badge" }, `v${fn.version}`)),
    states(fn.instances),
    totals(stats.total),
    h("div", { class: "charts" }, statCharts(stats, step)));
}

export function functionsView() {
  const list = new Section(null, "functions");
  let api;
  return {
    start(root, a) {
      api = a;
      root.append(h("h1", {}, "Functions"), h("p", { class: "muted" },
        `Each function's current version and instances, and its last ${WINDOW_MIN} minutes.`), list.el);
    },
    refresh: () => list.update(
      () => Promise.all([api.get("/v1/functions"), api.get(`/v1/stats?minutes=${WINDOW_MIN}`)]),
      ([fns, stats]) => fns.functions.length
        ? h("div", { class: "grid" },
          fns.functions.map((fn) => card(fn, stats.functions[fn.name] || EMPTY, stats.step_s)))
        : h("p", { class: "muted" }, "No functions yet: deploy one with `kapal deploy DIR`.")),
    stop() {},
  };
}

function logLine(l) {
  const cls = l.stream === "stderr" || l.level === "error" ? "err" : l.stream === "platform" ? "plat" : "";
  return h("div", { class: cls },
    h("span", { class: "ts" }, `${l.ts.slice(11, 23)} ${l.stream}${l.level ? ":" + l.level : ""} `
      + `${l.request_id ? l.request_id.slice(0, 12) : "-"} `), l.line);
}

// The live tail: GET .../logs?follow=1, read as a stream (EventSource cannot send the key).
class Tail {
  constructor(name) {
    this.name = name;
    this.pre = h("pre", { class: "log", id: "tail", "aria-live": "polite" });
    this.status = h("span", { class: "muted" }, "connecting…");
    this.seen = new Set();
    this.last = null;
    this.abort = null;
  }

  add(l) {
    const id = `${l.ts}|${l.instance}|${l.request_id}|${l.line}`;
    if (this.seen.has(id)) return;
    this.seen.add(id);
    this.last = l.ts;
    const stick = this.pre.scrollTop + this.pre.clientHeight >= this.pre.scrollHeight - 4;
    this.pre.append(logLine(l));
    while (this.pre.childElementCount > TAIL_LINES) this.pre.firstElementChild.remove();
    if (this.seen.size > 4 * TAIL_LINES) this.seen = new Set([...this.seen].slice(-TAIL_LINES));
    if (stick) this.pre.scrollTop = this.pre.scrollHeight;
  }

  async run(api) {
    while (this.abort && !this.abort.signal.aborted) {
      const since = this.last ? enc(this.last) : "15m";
      const path = `/v1/functions/${enc(this.name)}/logs?follow=1&limit=200&since=${since}`;
      this.status.textContent = "live";
      try {
        await api.stream(path, (l) => this.add(l), this.abort.signal);
        this.status.textContent = "the stream ended; reconnecting…";
      } catch (err) {
        if (err.name === "AbortError") return;
        if (err instanceof ApiError && err.status === 404) {
          this.status.textContent = "the function is gone";
          return;
        }
        this.status.textContent = `disconnected (${err.message}); reconnecting…`;
      }
      await new Promise((ok) => setTimeout(ok, 2000));
    }
  }

  start(api) {
    this.abort = new AbortController();
    this.run(api);
  }

  stop() {
    if (this.abort) this.abort.abort();
    this.abort = null;
  }
}

export function functionView(name) {
  const base = `/v1/functions/${enc(name)}`;
  const charts = new Section(`Last ${WINDOW_MIN} minutes`, "stats");
  const rollbackNote = h("p", { hidden: true, id: "rollback-note" });
  const versions = new Section("Versions", "versions", rollbackNote);
  const instances = new Section("Instances", "instances");
  const invocations = new Section("Recent invocations", "invocations");
  const detail = new Section("Invocation", "invocation");
  const tail = new Tail(name);
  const tailPanel = h("section", { class: "panel", id: "live-tail" },
    h("div", { class: "row" }, h("h2", {}, "Live log tail"), tail.status), tail.pre);
  const header = h("h1", {}, name);
  let api;
  let picked = null;

  detail.el.hidden = true;

  async function rollback(version, button) {
    button.disabled = true;
    try {
      const fn = await api.post(`${base}/rollback`, { version });
      outcome(rollbackNote, `Rolled back: version ${fn.version} is current.`, true);
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      outcome(rollbackNote, `Roll back failed: ${err.message}`, false);
    }
    await refreshVersions();
  }

  const refreshVersions = () => versions.update(() => api.get(`${base}/versions`), (d) => table(
    ["version", "created", "code", "image", ""],
    [...d.versions].reverse().map((v) => h("tr", { "data-version": v.version },
      h("td", {}, `v${v.version} `, v.current ? h("span", { class: "badge current" }, "current") : null),
      h("td", {}, when(v.created_at)),
      h("td", { class: "mono" }, v.code_sha256.slice(0, 12)),
      h("td", { class: "mono" }, v.image),
      h("td", {}, v.current ? null : h("button", { type: "button", class: "small secondary",
        onclick: (e) => rollback(v.version, e.currentTarget) }, `Roll back to v${v.version}`)))),
  ));

  async function pick(id) {
    picked = id;
    detail.el.hidden = false;
    for (const tr of invocations.body.querySelectorAll("tr[data-id]")) tr.classList.toggle("picked", tr.dataset.id === id);
    await detail.update(() => api.get(`${base}/invocations/${enc(id)}`), (d) => {
      const r = d.record || d.attempts[d.attempts.length - 1];
      return [
        h("p", { class: "mono" }, `${d.id}`, r ? ` · ${r.method} ${r.path} · ${r.status} · ${ms(r.duration_ms)}` : ""),
        d.logs.length ? h("pre", { class: "log", id: "invocation-logs" }, d.logs.map(logLine))
          : h("p", { class: "muted" }, "It wrote no log lines."),
      ];
    });
  }

  return {
    start(root, a) {
      api = a;
      root.append(h("p", {}, h("a", { href: "#/functions" }, "← Functions")), header, charts.el,
        h("div", { class: "two" }, versions.el, instances.el), invocations.el, detail.el, tailPanel);
      tail.start(api);
    },
    async refresh() {
      await Promise.all([
        refreshVersions(),
        instances.update(() => api.get(base), (fn) => {
          replace(header, name, " ", h("span", { class: "badge" }, `v${fn.version}`), " ",
            h("span", { class: "badge" }, fn.public ? "public" : "private"));
          return [states(fn.instances), table(["instance", "version", "state", "in flight", "tier"],
            fn.instances.map((i) => h("tr", {}, h("td", { class: "mono" }, i.id), h("td", {}, `v${i.version}`),
              h("td", {}, stateOf(i)), h("td", {}, String(i.in_flight)), h("td", {}, i.tier))),
            "No instances: it starts one on the next call.")];
        }),
        charts.update(() => api.get(`${base}/stats?minutes=${WINDOW_MIN}`),
          (st) => [totals(st.total), h("div", { class: "charts wide" }, statCharts(st, st.step_s))]),
        invocations.update(() => api.get(`${base}/invocations?limit=25`), (d) => table(
          ["started", "status", "trigger", "duration", "cold", "request id"],
          d.invocations.map((r) => h("tr", { class: `pick${r.id === picked ? " picked" : ""}`, "data-id": r.id,
            tabIndex: 0, onclick: () => pick(r.id), onkeydown: (e) => e.key === "Enter" && pick(r.id) },
            h("td", {}, when(r.started_at)), h("td", { class: statusClass(r.status) }, String(r.status)),
            h("td", {}, r.trigger), h("td", {}, ms(r.duration_ms)), h("td", {}, r.tier || "warm"),
            h("td", { class: "mono" }, r.id.slice(0, 12)))),
          "No invocations in the records yet.")),
      ]);
    },
    stop() { tail.stop(); },
  };
}
