'use strict';
// The log port: where the gateway pulls the function's lines, `GET /_/logs`.
//
// A listener of its own, apart from the invocation server, so it stays open while that
// one drains and after it closed.
//
// `GET /_/logs?after=SEQ&wait=SECONDS&limit=BYTES`
// - `after` (int >= 0, default 0): the caller stored every line up to SEQ; they are freed.
// - `wait` (0..30 s, default 0): with no line past `after`, hold the request until one is
//   added (then ~10 ms more, or until 64 KiB are ready, to answer with a batch).
// - `limit` (int >= 1, default 1 MiB): about that many bytes at most, at least one line.
// 200 text/plain, one COPY text row per line (logbuffer.js); headers X-Kapal-Log-Last,
// X-Kapal-Log-Dropped, X-Kapal-Log-Function, X-Kapal-Log-Version. A bad parameter is a 400
// `invalid_parameter` naming it; another path 404; another method 405.

const http = require('http');
const crypto = require('crypto');
const { REQUEST_ID, sendError, notAllowed } = require('./errors');

const PATH = '/_/logs';
const MAX_WAIT_S = 30;
const DEFAULT_LIMIT = 1 << 20;
// Once a line arrives for a held pull: answer this much later, or once this much is ready.
const BATCH_MS = 10;
const BATCH_BYTES = 64 * 1024;

class BadParameter extends Error {}

function integer(raw, name, fallback, least) {
  if (raw === null || raw === '') return fallback;
  if (!/^[0-9]+$/.test(raw) || Number(raw) < least) {
    throw new BadParameter(`${name} must be an integer >= ${least}, not ${JSON.stringify(raw)}`);
  }
  return Number(raw);
}

function seconds(raw) {
  if (raw === null || raw === '') return 0;
  const value = /^\s*[0-9.eE+-]+\s*$/.test(raw) ? Number(raw) : NaN;
  if (!(value >= 0 && value <= MAX_WAIT_S)) {
    throw new BadParameter(`wait must be seconds from 0 to ${MAX_WAIT_S}, not ${JSON.stringify(raw)}`);
  }
  return value;
}

// (after, wait, limit) of a pull; BadParameter names the one that is wrong.
function parseQuery(params) {
  return [
    integer(params.get('after'), 'after', 0, 0),
    seconds(params.get('wait')),
    integer(params.get('limit'), 'limit', DEFAULT_LIMIT, 1),
  ];
}

class LogPort {
  // `serving()`: [function, version] the runtime serves now.
  constructor(buffer, port, serving, drainS) {
    this.buffer = buffer;
    this.port = port;
    this.serving = serving;
    this.drainS = drainS;
    this.waiting = new Set();
    this.ackWaiters = new Set();
    this.closing = false;
    // Whether a gateway ever pulled: a container nobody collects from (a prewarmed one
    // never specialized) does not wait at exit for acks that will not come.
    this.pulled = false;
    this.server = http.createServer((req, res) => this.handle(req, res));
    this.server.keepAliveTimeout = 75_000;
    this.server.headersTimeout = 80_000;
    this.server.requestTimeout = 0;
  }

  start() {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.port, '0.0.0.0', resolve);
    });
  }

  // Until every line is acked, or `drainS` passes (not at all if nobody pulls).
  async drain() {
    if (!this.pulled) return;
    const until = Date.now() + this.drainS * 1000;
    while (this.buffer.acked < this.buffer.lastSeq) {
      const left = until - Date.now();
      if (left <= 0) return;
      await new Promise((resolve) => {
        const timer = setTimeout(done, left);
        const ackWaiters = this.ackWaiters;
        function done() {
          clearTimeout(timer);
          ackWaiters.delete(done);
          resolve();
        }
        ackWaiters.add(done);
      });
    }
  }

  close() {
    this.closing = true;
    this.wake(); // held pulls answer now, with what there is
    return new Promise((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }

  async handle(req, res) {
    const requestId = req.headers['x-kapal-request-id'] || crypto.randomBytes(16).toString('hex');
    const url = new URL(req.url, 'http://runtime');
    if (url.pathname !== PATH) {
      return sendError(res, 'not_found', `no log endpoint ${url.pathname}`, requestId);
    }
    if (req.method !== 'GET') return notAllowed(res, 'GET', requestId);
    let after, wait, limit;
    try {
      [after, wait, limit] = parseQuery(url.searchParams);
    } catch (err) {
      if (!(err instanceof BadParameter)) throw err;
      return sendError(res, 'invalid_parameter', err.message, requestId);
    }
    this.pulled = true;
    const buffer = this.buffer;
    buffer.ack(after);
    if (buffer.acked >= buffer.lastSeq) for (const done of [...this.ackWaiters]) done();
    if (wait > 0 && buffer.lastSeq <= after && !this.closing) {
      if (await this.waitForLine(after, wait)) await this.gather();
    }
    const [body, last] = buffer.read(after, limit);
    const [fn, version] = this.serving();
    res.writeHead(200, {
      'Content-Type': 'text/plain; charset=utf-8',
      'Content-Length': body.length,
      'X-Kapal-Log-Last': String(last),
      'X-Kapal-Log-Dropped': String(buffer.dropped),
      'X-Kapal-Log-Function': fn,
      'X-Kapal-Log-Version': String(version),
      [REQUEST_ID]: requestId,
    });
    res.end(body);
  }

  // True once a line past `after` is there, false if `wait` passed first.
  waitForLine(after, wait) {
    return new Promise((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        this.waiting.delete(wake);
        resolve(this.buffer.lastSeq > after);
      };
      const timer = setTimeout(wake, wait * 1000);
      this.waiting.add(wake);
      if (!this.buffer.wakeOnNext(after, () => this.wake())) wake();
    });
  }

  // A line came: let a batch follow it before answering.
  gather() {
    return new Promise((resolve) => {
      const until = Date.now() + BATCH_MS;
      const poll = () => {
        if (this.closing || this.buffer.bytes >= BATCH_BYTES || Date.now() >= until) resolve();
        else setTimeout(poll, 2);
      };
      poll();
    });
  }

  wake() {
    for (const wake of [...this.waiting]) wake();
  }
}

module.exports = { LogPort, parseQuery, BadParameter };
