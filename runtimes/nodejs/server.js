'use strict';
// The runtime's HTTP server: /_/health, /_/init, and every other request as an invocation.
//
// Each invocation is tagged for the logs (capture.js) while it runs; the lines are served
// on a port of their own (logport.js), which outlives this server's drain at SIGTERM.

const http = require('http');
const crypto = require('crypto');
const fs = require('fs');
const { REQUEST_ID, sendError, sendJson, notAllowed } = require('./errors');
const { loadHandler } = require('./handler');
const { InvalidJSONBody } = require('./events');
const { parseInit, install, InvalidInit } = require('./bundle');
const { logEvent, logTraceback, describe } = require('./log');

// A busy answer keeps the connection when the unread body is this small (it is read and
// dropped); a larger or chunked one closes it rather than read it all.
const BUSY_DRAIN_BYTES = 64 * 1024;
const STATUS_PREWARM = '{"status":"prewarm","in_flight":0}';
const STATUS_INITIALIZING = '{"status":"initializing"}';

class BodyTooLarge extends Error {}

// The memory limit of this container in MiB (Lambda's memoryLimitInMB), from its cgroup.
function memoryLimitMb() {
  for (const file of ['/sys/fs/cgroup/memory.max', '/sys/fs/cgroup/memory/memory.limit_in_bytes']) {
    try {
      const raw = fs.readFileSync(file, 'utf8').trim();
      if (/^[0-9]+$/.test(raw) && Number(raw) < 2 ** 52) return Math.floor(Number(raw) / 1048576);
    } catch {
      // not this cgroup version
    }
  }
  return Math.floor(require('os').totalmem() / 1048576);
}

function readBody(req, limit) {
  return new Promise((resolve, reject) => {
    const length = Number(req.headers['content-length']);
    if (length > limit) {
      req.resume();
      reject(new BodyTooLarge());
      return;
    }
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > limit) {
        req.removeAllListeners('data');
        req.resume();
        reject(new BodyTooLarge());
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

// Unix epoch seconds: the X-Kapal-Deadline header if it is a number, else now + timeout.
function deadlineOf(header, timeoutS) {
  const value = header === undefined ? NaN : Number(header);
  return Number.isFinite(value) && header.trim() !== '' ? value : Date.now() / 1000 + timeoutS;
}

class Runtime {
  constructor(config, capture = null) {
    this.config = config;
    // Tags what each invocation writes; null when output is not captured.
    this.capture = capture;
    this.function = config.function;
    this.version = config.version;
    this.style = config.style;
    this.memoryMb = memoryLimitMb();
    this.state = 'prewarm'; // prewarm, initializing, ready, failed
    this.handler = null;
    // [code, one-line message] answered by health and invocations once failed.
    this.failure = ['handler_load_failed', ''];
    this.concurrency = config.concurrency;
    // Invocations admitted and not yet answered, and handlers still running past a 504.
    this.open = 0;
    this.late = 0;
    this.drained = null;
    this.server = http.createServer((req, res) => this.dispatch(req, res));
    // The gateway keeps its connections; let them live as long as its own pool does.
    this.server.keepAliveTimeout = 75_000;
    this.server.headersTimeout = 80_000;
    this.server.requestTimeout = 0;
  }

  get inFlight() {
    return this.open + this.late;
  }

  // Load the handler; on failure log why and answer 500 from then on.
  async load(spec) {
    const started = performance.now();
    try {
      this.handler = await loadHandler(spec, this.style, this.config.codeDir);
    } catch (err) {
      logTraceback(err);
      this.fail('handler_load_failed', describe(err));
      logEvent('handler_load_failed', 'error', { handler: spec, error: this.failure[1] });
      return false;
    }
    this.state = 'ready';
    logEvent('handler_loaded', 'info', {
      handler: spec,
      style: this.style,
      load_ms: Math.round((performance.now() - started) * 10) / 10,
    });
    return true;
  }

  fail(code, message) {
    this.state = 'failed';
    this.failure = [code, message];
  }

  dispatch(req, res) {
    const requestId = req.headers['x-kapal-request-id'] || crypto.randomBytes(16).toString('hex');
    const rawPath = req.url.split('?', 1)[0];
    if (rawPath.startsWith('/_/')) {
      this.control(req, res, rawPath, requestId).catch((err) => this.crashed(res, err, requestId));
      return;
    }
    this.invoke(req, res, rawPath, requestId).catch((err) => this.crashed(res, err, requestId));
  }

  crashed(res, err, requestId) {
    logTraceback(err);
    if (!res.headersSent) sendError(res, 'handler_error', describe(err), requestId);
  }

  async invoke(req, res, rawPath, requestId) {
    if (this.handler === null) {
      if (this.state === 'failed') return sendError(res, ...this.failure, requestId);
      return sendError(res, 'not_initialized', 'this runtime awaits POST /_/init', requestId);
    }
    const limit = this.concurrency;
    if (limit && this.inFlight >= limit) return this.busy(req, res, limit, requestId);
    this.open += 1;
    let invocation = null;
    try {
      const run = () => this.run(req, res, rawPath, requestId);
      if (this.capture === null) return await run();
      let done;
      [invocation, done] = this.capture.run(requestId, run);
      return await done;
    } finally {
      this.open -= 1;
      if (invocation !== null) this.capture.end(invocation);
    }
  }

  async run(req, res, rawPath, requestId) {
    const deadline = deadlineOf(req.headers['x-kapal-deadline'], this.config.timeoutS);
    let body;
    try {
      body = await readBody(req, this.config.maxBodyBytes);
    } catch (err) {
      if (!(err instanceof BodyTooLarge)) throw err;
      const message = `request body exceeds ${this.config.maxBodyBytes} bytes`;
      return sendError(res, 'body_too_large', message, requestId, { Connection: 'close' });
    }
    if (deadline <= Date.now() / 1000) {
      return sendError(res, 'timeout', 'the deadline passed before the handler started', requestId);
    }
    const query = req.url.indexOf('?');
    let path;
    try {
      path = decodeURIComponent(rawPath);
    } catch {
      path = rawPath;
    }
    const request = {
      method: req.method,
      path,
      rawPath,
      rawQuery: query === -1 ? '' : req.url.slice(query + 1),
      headers: req.headers,
      rawHeaders: req.rawHeaders,
      body,
      requestId,
      deadline,
      sourceIp: String(req.headers['x-forwarded-for'] || req.socket.remoteAddress || '').split(',')[0].trim(),
    };
    const handled = this.handler.run(request, this);
    let timer;
    const late = new Promise((resolve) => {
      // Node fires a timer past 2^31-1 ms at once: a far deadline waits that long instead.
      const wait = Math.min(Math.max(0, deadline * 1000 - Date.now()), MAX_TIMER_MS);
      timer = setTimeout(resolve, wait, LATE);
    });
    let reply;
    try {
      reply = await Promise.race([handled, late]);
    } catch (err) {
      if (err instanceof InvalidJSONBody) return sendError(res, 'invalid_json', err.message, requestId);
      logTraceback(err);
      return sendError(res, 'handler_error', describe(err), requestId);
    } finally {
      clearTimeout(timer);
    }
    if (reply === LATE) {
      // A promise cannot be cancelled: the handler runs on, unseen, and counts as in flight.
      this.late += 1;
      handled.then(
        () => (this.late -= 1),
        () => (this.late -= 1),
      );
      logEvent('handler_timeout', 'warning', { request_id: requestId });
      return sendError(res, 'timeout', 'the handler did not finish by the deadline', requestId);
    }
    const headers = [...reply.headers, [REQUEST_ID, requestId], ['Content-Length', String(reply.body.length)]];
    res.writeHead(reply.status, headers.flat());
    res.end(reply.body);
  }

  // 503 busy at once, the handler not run and the body not awaited.
  busy(req, res, limit, requestId) {
    const message = `this instance already runs its limit of ${limit} invocations`;
    const length = req.headers['content-length'];
    const chunked = length === undefined && req.headers['transfer-encoding'] !== undefined;
    if (chunked || Number(length) > BUSY_DRAIN_BYTES) {
      return sendError(res, 'busy', message, requestId, { Connection: 'close' });
    }
    req.resume(); // small body: read and dropped, the connection kept
    return sendError(res, 'busy', message, requestId);
  }

  async control(req, res, rawPath, requestId) {
    if (rawPath === '/_/health') {
      if (req.method !== 'GET' && req.method !== 'HEAD') return notAllowed(res, 'GET, HEAD', requestId);
      req.resume();
      return this.health(res, requestId);
    }
    if (rawPath === '/_/init') {
      if (req.method !== 'POST') return notAllowed(res, 'POST', requestId);
      return this.init(req, res, requestId);
    }
    req.resume();
    return sendError(res, 'not_found', `no runtime endpoint ${rawPath}`, requestId);
  }

  health(res, requestId) {
    if (this.state === 'ready') return sendJson(res, 200, this.statusOk(), requestId);
    if (this.state === 'prewarm') return sendJson(res, 200, STATUS_PREWARM, requestId);
    if (this.state === 'initializing') return sendJson(res, 503, STATUS_INITIALIZING, requestId);
    return sendError(res, ...this.failure, requestId);
  }

  async init(req, res, requestId) {
    if (this.state !== 'prewarm') {
      req.resume();
      return sendError(res, 'already_initialized', this.whyNoInit(), requestId);
    }
    // Claimed before the first await, so two concurrent inits cannot both proceed.
    this.state = 'initializing';
    const started = performance.now();
    let spec;
    try {
      const raw = await readBody(req, this.config.maxInitBytes);
      spec = parseInit(raw);
      install(spec, this.config.codeDir, this.config.depsDir);
    } catch (err) {
      if (err instanceof BodyTooLarge) {
        this.state = 'prewarm';
        const message = `init body exceeds ${this.config.maxInitBytes} bytes`;
        return sendError(res, 'body_too_large', message, requestId, { Connection: 'close' });
      }
      if (err instanceof InvalidInit) {
        this.state = 'prewarm';
        logEvent('init_refused', 'warning', { error: err.message });
        return sendError(res, 'invalid_init', err.message, requestId);
      }
      logTraceback(err);
      this.fail('init_failed', describe(err));
      logEvent('init_failed', 'error', { error: this.failure[1] });
      return sendError(res, ...this.failure, requestId);
    }
    this.apply(spec);
    const loaded = await this.load(spec.handler);
    logEvent('initialized', 'info', {
      function: spec.function,
      version: spec.version,
      handler: spec.handler,
      style: this.style,
      ok: loaded,
      code_bytes: spec.code ? spec.code.length : 0,
      deps_bytes: spec.deps ? spec.deps.length : 0,
      init_ms: Math.round((performance.now() - started) * 10) / 10,
    });
    if (!loaded) return sendError(res, ...this.failure, requestId);
    return sendJson(res, 200, this.statusOk(), requestId);
  }

  statusOk() {
    // function and version let a restarted gateway adopt a prewarm-specialized container;
    // in_flight tells it when the container is idle (before pausing it).
    return JSON.stringify({
      status: 'ok',
      function: this.function,
      version: this.version,
      in_flight: this.inFlight,
    });
  }

  whyNoInit() {
    if (!this.config.prewarm) {
      return 'this runtime was started with a handler; only KAPAL_PREWARM=1 runtimes init';
    }
    if (this.state === 'initializing') return 'an init is already in progress';
    return 'this runtime is already initialized';
  }

  // Make the unpacked function look as if the container had been started for it.
  apply(spec) {
    this.function = spec.function;
    this.version = spec.version;
    if (spec.style !== null) this.style = spec.style;
    if (spec.concurrency !== null) {
      this.concurrency = spec.concurrency;
      process.env.KAPAL_CONCURRENCY = String(spec.concurrency);
    }
    Object.assign(process.env, spec.env);
    process.env.KAPAL_FUNCTION = spec.function;
    process.env.KAPAL_VERSION = String(spec.version);
    process.env.KAPAL_HANDLER = spec.handler;
    process.env.KAPAL_STYLE = this.style;
  }

  listen() {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.config.port, '0.0.0.0', resolve);
    });
  }

  // Stop listening, let in-flight invocations finish (up to the timeout), then close.
  async drain() {
    logEvent('draining', 'info', { in_flight: this.inFlight, timeout_s: this.config.timeoutS });
    const closed = new Promise((resolve) => this.server.close(resolve));
    this.server.closeIdleConnections();
    const until = Date.now() + this.config.timeoutS * 1000;
    while (this.open > 0 && Date.now() < until) {
      await new Promise((resolve) => setTimeout(resolve, 20));
      this.server.closeIdleConnections();
    }
    this.server.closeAllConnections();
    await closed;
  }
}

const LATE = Symbol('late');
const MAX_TIMER_MS = 2 ** 31 - 1;

module.exports = { Runtime, deadlineOf };
