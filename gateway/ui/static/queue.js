// The queue's views: jobs with their progress, dead letters to re-drive, webhooks and
// schedules.
import { ApiError, enc } from "./api.js";
import { h, statusClass, table, when } from "./dom.js";
import { outcome, Section } from "./section.js";

function eta(s) {
  if (s === null || s === undefined) return "";
  return s >= 90 ? ` · ETA ${Math.round(s / 60)} min` : ` · ETA ${Math.round(s)} s`;
}

export function jobsView() {
  const jobs = new Section("", "jobs");
  const detail = new Section("Job", "job");
  let api;
  let picked = null;
  detail.el.hidden = true;

  const showJob = () => detail.update(() => api.get(`/v1/jobs/${enc(picked)}`), (j) => [
    h("p", { class: "mono" }, `${j.id} · ${j.function} · ${j.state}`),
    table(["state", "items"], Object.entries(j.counts).map(([k, v]) => h("tr", {}, h("td", {}, k), h("td", {}, String(v))))),
  ]);

  function open(id) {
    picked = id;
    detail.el.hidden = false;
    showJob();
  }

  return {
    start(root, a) {
      api = a;
      root.append(h("h1", {}, "Jobs"), jobs.el, detail.el);
    },
    async refresh() {
      await jobs.update(() => api.get("/v1/jobs?limit=50"), (d) => table(
        ["created", "function", "state", "progress", "", "retries"],
        d.jobs.map((j) => h("tr", { class: "pick", "data-job": j.id, tabIndex: 0,
          onclick: () => open(j.id), onkeydown: (e) => e.key === "Enter" && open(j.id) },
          h("td", {}, when(j.created_at)), h("td", {}, j.function), h("td", {}, j.state),
          h("td", {}, h("progress", { max: Math.max(1, j.total), value: j.done,
            "aria-label": `${j.function} job progress` })),
          h("td", {}, `${j.done}/${j.total} (${Math.round(j.progress * 100)}%)`
            + (j.rate_per_s ? ` · ${j.rate_per_s.toFixed(1)}/s` : "") + eta(j.eta_s)),
          h("td", {}, String(j.max_retries)))),
        "No jobs: POST /v1/jobs or `kapal jobs create`."));
      if (picked) await showJob();
    },
    stop() {},
  };
}

export function deadView() {
  const note = h("p", { hidden: true, id: "redrive-note" });
  const dead = new Section("", "dead", note);
  let api;

  async function redrive(inv, button) {
    button.disabled = true;
    try {
      const out = await api.post(`/v1/invocations/${enc(inv.id)}/retry`);
      outcome(note, `Re-driven: ${out.id} is ${out.status} again.`, true);
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      outcome(note, `Re-drive failed: ${err.message}`, false);
      button.disabled = false;
    }
  }

  return {
    start(root, a) {
      api = a;
      root.append(h("h1", {}, "Dead letters"), h("p", { class: "muted" },
        "Async invocations that ran out of retries. Re-drive runs one again from its first attempt."),
      dead.el);
    },
    refresh: () => dead.update(() => api.get("/v1/invocations?status=dead&limit=100"), (d) => table(
      ["last attempt", "function", "request", "attempts", "answer", ""],
      d.invocations.map((i) => h("tr", { "data-invocation": i.id },
        h("td", {}, when(i.last_attempt_at || i.created_at)), h("td", {}, i.function),
        h("td", { class: "mono" }, `${i.method} ${i.path}`), h("td", {}, String(i.attempts)),
        h("td", { class: i.response ? statusClass(i.response.status) : "st-bad" },
          i.response ? String(i.response.status) : (i.error || "–")),
        h("td", {}, h("button", { type: "button", class: "small", onclick: (e) => redrive(i, e.currentTarget) },
          "Re-drive")))),
      "No dead letters.")),
    stop() {},
  };
}

export function triggersView() {
  const hooks = new Section("Webhooks", "webhooks");
  const schedules = new Section("Schedules", "schedules");
  let api;
  return {
    start(root, a) {
      api = a;
      root.append(h("h1", {}, "Webhooks & schedules"), hooks.el, schedules.el);
    },
    refresh: () => Promise.all([
      hooks.update(() => api.get("/v1/webhooks"), (d) => table(["function", "verify", "url", "created", "rotated"],
        d.webhooks.map((w) => h("tr", {}, h("td", {}, w.function), h("td", {}, w.verify),
          h("td", { class: "mono" }, w.url), h("td", {}, when(w.created_at)), h("td", {}, when(w.rotated_at)))),
        "No webhooks.")),
      schedules.update(() => api.get("/v1/schedules"), (d) => table(
        ["function", "cron", "timezone", "next run", "last run"],
        d.schedules.map((c) => h("tr", {}, h("td", {}, c.function), h("td", { class: "mono" }, c.cron),
          h("td", {}, c.timezone), h("td", {}, when(c.next_run)), h("td", {}, when(c.last_run)))),
        "No schedules.")),
    ]),
    stop() {},
  };
}
