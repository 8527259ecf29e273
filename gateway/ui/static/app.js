// The dashboard's shell: sign-in, the hash router, and the poll that keeps a view live.
import { Api, ApiError } from "./api.js";
import { replace } from "./dom.js";
import { functionsView, functionView } from "./functions.js";
import { deadView, jobsView, triggersView } from "./queue.js";

const KEY = "kapal.key";
const POLL_MS = 3000;
const $ = (id) => document.getElementById(id);

let api = null;
let current = null;
let timer = null;

function viewFor(hash) {
  const parts = hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  if (parts[0] === "functions" && parts[1]) return ["functions", functionView(parts[1])];
  if (parts[0] === "jobs") return ["jobs", jobsView()];
  if (parts[0] === "dead") return ["dead", deadView()];
  if (parts[0] === "triggers") return ["triggers", triggersView()];
  return ["functions", functionsView()];
}

async function tick() {
  if (!current || current.busy || document.visibilityState === "hidden") return;
  current.busy = true;
  try {
    await current.view.refresh();
  } catch (err) {
    if (!(err instanceof ApiError)) throw err;
  } finally {
    current.busy = false;
  }
}

function show() {
  if (current) current.view.stop();
  const root = $("view");
  replace(root);
  const [name, view] = viewFor(location.hash);
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.view === name);
  current = { view, busy: false };
  view.start(root, api);
  tick();
}

function signedIn(key) {
  api = new Api(key, () => signOut("Your key is no longer accepted (revoked?). Sign in again."));
  $("sign-in").hidden = true;
  $("nav").hidden = false;
  show();
  clearInterval(timer);
  timer = setInterval(tick, POLL_MS);
}

function signOut(message) {
  sessionStorage.removeItem(KEY);
  clearInterval(timer);
  if (current) current.view.stop();
  current = null;
  api = null;
  replace($("view"));
  $("nav").hidden = true;
  $("sign-in").hidden = false;
  $("key").value = "";
  const err = $("sign-in-error");
  err.hidden = !message;
  err.textContent = message || "";
  $("key").focus();
}

async function submit(event) {
  event.preventDefault();
  const key = $("key").value.trim();
  const err = $("sign-in-error");
  err.hidden = true;
  try {
    await new Api(key).get("/v1/functions");
  } catch (e) {
    if (!(e instanceof ApiError)) throw e;
    err.textContent = e.status === 401 ? "That API key is not valid (unknown or revoked)."
      : e.status === 403 ? "That key lacks the scope the dashboard needs (deploy or admin)."
      : `Sign-in failed: ${e.message}`;
    err.hidden = false;
    return;
  }
  sessionStorage.setItem(KEY, key);
  signedIn(key);
}

$("sign-in").addEventListener("submit", submit);
$("sign-out").addEventListener("click", () => signOut(""));
window.addEventListener("hashchange", () => { if (api) show(); });
document.addEventListener("visibilitychange", tick);

const saved = sessionStorage.getItem(KEY);
if (saved) signedIn(saved);
else signOut("");
