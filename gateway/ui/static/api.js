// The JSON API, called with the signed-in key (never put in a URL).
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export class Api {
  constructor(key, onUnauthorized) {
    this.key = key;
    this.onUnauthorized = onUnauthorized;
  }

  headers(extra = {}) {
    return { Authorization: `Bearer ${this.key}`, ...extra };
  }

  async request(method, path, body, signal) {
    let r;
    try {
      r = await fetch(path, {
        method,
        headers: this.headers(body === undefined ? {} : { "Content-Type": "application/json" }),
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
        cache: "no-store",
      });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError(0, "unreachable", "cannot reach the gateway");
    }
    const text = await r.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch { data = null; }
    if (!r.ok) {
      const e = (data && data.error) || {};
      const err = new ApiError(r.status, e.code || "http_" + r.status, e.message || `HTTP ${r.status}`);
      if (r.status === 401 && this.onUnauthorized) this.onUnauthorized(err);
      throw err;
    }
    return data;
  }

  get(path, signal) { return this.request("GET", path, undefined, signal); }
  post(path, body = {}, signal) { return this.request("POST", path, body, signal); }

  // An NDJSON stream: onLine(object) for each line until it ends or `signal` aborts.
  async stream(path, onLine, signal) {
    const r = await fetch(path, { headers: this.headers(), signal, cache: "no-store" });
    if (!r.ok) {
      let e = {};
      try { e = (await r.json()).error || {}; } catch { e = {}; }
      throw new ApiError(r.status, e.code || "http_" + r.status, e.message || `HTTP ${r.status}`);
    }
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (line) onLine(JSON.parse(line));
      }
    }
  }
}

export const enc = encodeURIComponent;
