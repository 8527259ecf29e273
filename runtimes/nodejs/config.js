'use strict';
// Runtime settings, read once from KAPAL_* environment variables; a bad value fails fast.

const path = require('path');
const { STYLES } = require('./handler');

const DEFAULT_HANDLER = 'index.handler';

class ConfigError extends Error {}

function read(env, key, parse, fallback, valid) {
  const raw = (env[key] || '').trim();
  if (!raw) return fallback;
  const value = parse(raw);
  if (value === undefined || Number.isNaN(value)) {
    throw new ConfigError(`${key}=${JSON.stringify(raw)} is not a valid ${parse.kind}`);
  }
  if (!valid(value)) throw new ConfigError(`${key}=${JSON.stringify(raw)} is not an accepted value`);
  return value;
}

const int = Object.assign((raw) => (/^-?[0-9]+$/.test(raw) ? Number(raw) : undefined), { kind: 'int' });
const float = Object.assign((raw) => (/^[0-9.eE+-]+$/.test(raw) ? Number(raw) : undefined), {
  kind: 'float',
});
const text = Object.assign((raw) => raw, { kind: 'str' });
const flag = Object.assign(
  (raw) => {
    const lowered = raw.toLowerCase();
    if (['1', 'true', 'yes', 'on'].includes(lowered)) return true;
    if (['0', 'false', 'no', 'off'].includes(lowered)) return false;
    return undefined;
  },
  { kind: 'flag' },
);
const positive = (v) => v > 0;
const any = () => true;

function fromEnv(env = process.env) {
  const config = {
    // TCP port to listen on (all interfaces).
    port: read(env, 'KAPAL_PORT', int, 8080, (v) => v > 0 && v < 65536),
    // Function name and version, reported to handlers in `context`.
    function: env.KAPAL_FUNCTION || '',
    version: read(env, 'KAPAL_VERSION', int, 0, (v) => v >= 0),
    // "file.export" inside codeDir.
    handler: (env.KAPAL_HANDLER || '').trim() || DEFAULT_HANDLER,
    // Handler convention: native (default), lambda (HTTP API v2), lambda-v1 (REST v1).
    style: read(env, 'KAPAL_STYLE', text, 'native', (v) => STYLES.includes(v)),
    // Where the function's code lives; also the working directory.
    codeDir: path.resolve(env.KAPAL_CODE_DIR || '/opt/kapal/function'),
    // Where /_/init unpacks the function's dependencies (a folder holding node_modules).
    depsDir: path.resolve(env.KAPAL_DEPS_DIR || '/opt/kapal/deps'),
    // Default time budget per invocation and for draining at SIGTERM, in seconds.
    timeoutS: read(env, 'KAPAL_TIMEOUT_S', float, 30, (v) => v > 0 && v < 1e9),
    // Largest invocation body accepted (413 above it).
    maxBodyBytes: read(env, 'KAPAL_MAX_BODY_BYTES', int, 64 * 1024 * 1024, positive),
    // Largest /_/init body accepted (base64 code and dependencies).
    maxInitBytes: read(env, 'KAPAL_MAX_INIT_BYTES', int, 512 * 1024 * 1024, positive),
    // Start without a handler and wait for POST /_/init.
    prewarm: read(env, 'KAPAL_PREWARM', flag, false, any),
    // Invocations in flight at once before new ones are answered 503 busy (0: unlimited).
    concurrency: read(env, 'KAPAL_CONCURRENCY', int, 0, (v) => v >= 0),
    // TCP port the gateway pulls log lines from; 0: no capture, output stays on stdout.
    logPort: read(env, 'KAPAL_LOG_PORT', int, 8081, (v) => v >= 0 && v < 65536),
    // Bytes of output one invocation may write; past it, one marker line, then nothing.
    logInvocationBytes: read(env, 'KAPAL_LOG_INVOCATION_BYTES', int, 64 * 1024, positive),
    // Longest line kept; a longer one is cut, saying how many bytes were cut.
    logLineBytes: read(env, 'KAPAL_LOG_LINE_BYTES', int, 16 * 1024, positive),
    // Bytes of lines not yet pulled and acked; past it, new lines are dropped and counted.
    logBufferBytes: read(env, 'KAPAL_LOG_BUFFER_BYTES', int, 8 * 1024 * 1024, positive),
    // After the drain at SIGTERM, how long to wait for the gateway to ack the last lines.
    logDrainS: read(env, 'KAPAL_LOG_DRAIN_S', float, 2, (v) => v >= 0 && v < 1e9),
  };
  if (config.logPort && config.logPort === config.port) {
    throw new ConfigError(`KAPAL_LOG_PORT=${config.logPort} is also KAPAL_PORT`);
  }
  return config;
}

module.exports = { fromEnv, ConfigError, DEFAULT_HANDLER };
