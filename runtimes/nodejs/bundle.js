'use strict';
// The /_/init payload: its JSON shape, and unpacking code and dependency archives safely.
//
// Archives are checked whole before anything is written, so a refused init leaves the
// container untouched and still prewarm.

const { readTar, checkMembers, extract, InvalidArchive } = require('./tar');
const { parseSpec, STYLES } = require('./handler');
const { DEFAULT_HANDLER } = require('./config');

class InvalidInit extends Error {}

function archive(body, key) {
  const value = body[key];
  if (value === undefined || value === null) return null;
  if (typeof value !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(value) || value.length % 4) {
    throw new InvalidInit(`${key} must be a base64 string`);
  }
  return Buffer.from(value, 'base64');
}

function environment(env) {
  if (env === undefined || env === null) return {};
  if (typeof env !== 'object' || Array.isArray(env)) throw new InvalidInit('env must be an object of strings');
  for (const [key, value] of Object.entries(env)) {
    if (!key || key.includes('=') || key.includes('\0')) {
      throw new InvalidInit(`env name ${JSON.stringify(key)} is not valid`);
    }
    if (typeof value !== 'string' || value.includes('\0')) {
      throw new InvalidInit(`env ${key} must be a string without NUL`);
    }
  }
  return env;
}

// Validate an init body: {"function": str, "version": int, "handler": str, "style": str,
// "env": {str: str}, "code": base64 tar(.gz), "deps": base64 tar(.gz), "concurrency": int}.
function parseInit(raw) {
  let body;
  try {
    body = JSON.parse(raw.toString('utf8'));
  } catch (err) {
    throw new InvalidInit(`body is not valid JSON: ${err.message}`);
  }
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw new InvalidInit('body must be a JSON object');
  }
  if (typeof body.function !== 'string' || !body.function) {
    throw new InvalidInit('function must be a non-empty string');
  }
  if (!Number.isInteger(body.version) || body.version < 0) {
    throw new InvalidInit(`version must be a non-negative integer, not ${JSON.stringify(body.version)}`);
  }
  const handler = body.handler || DEFAULT_HANDLER;
  if (typeof handler !== 'string') throw new InvalidInit('handler must be a string');
  try {
    parseSpec(handler);
  } catch (err) {
    throw new InvalidInit(err.message);
  }
  const style = body.style ?? null;
  if (style !== null && !STYLES.includes(style)) {
    throw new InvalidInit(`style must be one of ${STYLES.join(', ')}, not ${JSON.stringify(style)}`);
  }
  const concurrency = body.concurrency ?? null;
  if (concurrency !== null && (!Number.isInteger(concurrency) || concurrency < 0)) {
    throw new InvalidInit(`concurrency must be a non-negative integer, not ${JSON.stringify(concurrency)}`);
  }
  return {
    function: body.function,
    version: body.version,
    handler,
    style,
    env: environment(body.env),
    code: archive(body, 'code'),
    deps: archive(body, 'deps'),
    concurrency,
  };
}

// Check both archives, then unpack them. InvalidInit means nothing was written.
function install(spec, codeDir, depsDir) {
  const wanted = [
    ['code', spec.code, codeDir],
    ['deps', spec.deps, depsDir],
  ].filter(([, data]) => data !== null);
  const read = [];
  for (const [what, data, dest] of wanted) {
    let members;
    try {
      members = readTar(data);
      checkMembers(members, dest, what);
    } catch (err) {
      if (!(err instanceof InvalidArchive)) throw err;
      throw new InvalidInit(err.message.startsWith(what) ? err.message : `${what} is not a valid tar archive: ${err.message}`);
    }
    read.push([members, dest]);
  }
  for (const [members, dest] of read) extract(members, dest);
}

module.exports = { parseInit, install, InvalidInit };
