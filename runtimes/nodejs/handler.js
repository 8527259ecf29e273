'use strict';
// Loading the function's handler once, calling it in its style, and turning what it
// returns into a reply.
//
// A handler spec is "file.export", the file relative to the code folder without its
// extension ("index.handler", "src/app.main"): file.js, file.mjs or file.cjs, CommonJS or
// an ES module. Styles: `native` calls handler(event, context) (events.js Event/Context);
// `lambda` and `lambda-v1` call it with an API Gateway v2 or v1 event and Lambda's
// context, and also accept callback-style handlers (event, context, callback).

const fs = require('fs');
const path = require('path');
const { pathToFileURL } = require('url');
const events = require('./events');

const STYLES = ['native', 'lambda', 'lambda-v1'];
const EXTENSIONS = ['.js', '.mjs', '.cjs'];
const SPEC = /^([A-Za-z0-9_-]+(?:\/[A-Za-z0-9_-]+)*)\.([A-Za-z_$][A-Za-z0-9_$]*)$/;

const JSON_TYPE = 'application/json';
const TEXT_TYPE = 'text/plain; charset=utf-8';
const BINARY_TYPE = 'application/octet-stream';
// The server computes these itself; a handler's value would only corrupt the framing.
const DROPPED_HEADERS = new Set(['content-length', 'transfer-encoding', 'connection']);

class InvalidReturnValue extends Error {}

// ["src/app", "main"] of "src/app.main"; throws saying what the form is.
function parseSpec(spec) {
  const match = SPEC.exec(spec);
  if (!match) throw new Error(`handler ${JSON.stringify(spec)} is not of the form 'file.export'`);
  return [match[1], match[2]];
}

async function loadHandler(spec, style, codeDir) {
  const [file, name] = parseSpec(spec);
  const base = path.join(codeDir, file);
  const found = EXTENSIONS.map((ext) => base + ext).find((p) => fs.existsSync(p));
  if (found === undefined) {
    throw new Error(`handler ${spec}: no ${file}.js, ${file}.mjs or ${file}.cjs in the code`);
  }
  let module;
  if (found.endsWith('.mjs')) {
    module = await import(pathToFileURL(found).href);
  } else {
    try {
      module = require(found);
    } catch (err) {
      // A .js file of a package with "type": "module".
      if (err.code !== 'ERR_REQUIRE_ESM') throw err;
      module = await import(pathToFileURL(found).href);
    }
  }
  let fn = module[name];
  if (fn === undefined && module.default && typeof module.default === 'object') {
    fn = module.default[name]; // an ES module importing a CommonJS module.exports
  }
  if (typeof fn !== 'function') {
    throw new TypeError(`${spec} is not a function (it is ${fn === null ? 'null' : typeof fn})`);
  }
  return new LoadedHandler(spec, style, fn);
}

class LoadedHandler {
  constructor(spec, style, fn) {
    this.spec = spec;
    this.style = style;
    this.fn = fn;
    this.isAsync = fn.constructor.name === 'AsyncFunction';
    // Lambda's callback style: a plain function declaring a third parameter.
    this.takesCallback = style !== 'native' && !this.isAsync && fn.length >= 3;
  }

  // Call the handler for one request; resolves to a reply {status, headers, body}.
  async run(request, runtime) {
    if (this.style === 'native') {
      const event = new events.Event(request);
      return toReply(await this.fn(event, new events.Context(runtime, request)));
    }
    const event = this.style === 'lambda' ? events.lambdaV2Event(request) : events.lambdaV1Event(request);
    const context = new events.LambdaContext(runtime, request);
    const result = await this.callLambda(event, context);
    if (this.style === 'lambda' && !isResponseObject(result)) {
      // HTTP API v2 with no statusCode: 200, the value as JSON (a string as is).
      const body = typeof result === 'string' ? Buffer.from(result) : toJson(result ?? null);
      return { status: 200, headers: [['Content-Type', JSON_TYPE]], body };
    }
    // API Gateway answers a string body without a Content-Type as application/json.
    return toReply(result, JSON_TYPE);
  }

  callLambda(event, context) {
    return new Promise((resolve, reject) => {
      const callback = (err, value) => (err ? reject(err) : resolve(value));
      // Lambda's legacy context methods, for handlers that still use them.
      context.done = callback;
      context.succeed = (value) => resolve(value);
      context.fail = (err) => reject(err);
      let returned;
      try {
        returned = this.takesCallback ? this.fn(event, context, callback) : this.fn(event, context);
      } catch (err) {
        reject(err);
        return;
      }
      if (!this.takesCallback || (returned && typeof returned.then === 'function')) {
        Promise.resolve(returned).then(resolve, reject);
      }
    });
  }
}

function isResponseObject(value) {
  return value !== null && typeof value === 'object' && !Buffer.isBuffer(value) && 'statusCode' in value;
}

// Adapt a native handler's return value: undefined/null → 204; string → text;
// Buffer/Uint8Array → octet-stream; an object with statusCode → that response (Lambda /
// OpenFaaS style); anything else → 200 JSON.
function toReply(value, stringType = TEXT_TYPE) {
  if (value === undefined || value === null) return { status: 204, headers: [], body: Buffer.alloc(0) };
  if (typeof value === 'string') {
    return { status: 200, headers: [['Content-Type', TEXT_TYPE]], body: Buffer.from(value) };
  }
  if (value instanceof Uint8Array) {
    return { status: 200, headers: [['Content-Type', BINARY_TYPE]], body: Buffer.from(value) };
  }
  if (isResponseObject(value)) return fromResponseObject(value, stringType);
  return { status: 200, headers: [['Content-Type', JSON_TYPE]], body: toJson(value) };
}

function fromResponseObject(value, stringType) {
  const status = value.statusCode;
  if (!Number.isInteger(status) || status < 200 || status > 599) {
    throw new InvalidReturnValue(`statusCode must be an integer in 200..599, not ${JSON.stringify(status)}`);
  }
  const headers = headerList(value.headers, value.multiValueHeaders);
  for (const cookie of value.cookies || []) headers.push(['Set-Cookie', headerValue('Set-Cookie', cookie)]);
  const has = (name) => headers.some(([n]) => n.toLowerCase() === name);
  const withType = (type) => (has('content-type') ? headers : [...headers, ['Content-Type', type]]);
  const body = value.body;
  if (value.isBase64Encoded) {
    if (typeof body !== 'string') throw new InvalidReturnValue('isBase64Encoded needs a string body');
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(body.replace(/\s/g, '')) || body.replace(/\s/g, '').length % 4) {
      throw new InvalidReturnValue('body is not valid base64');
    }
    return { status, headers: withType(BINARY_TYPE), body: Buffer.from(body, 'base64') };
  }
  if (body === undefined || body === null) return { status, headers, body: Buffer.alloc(0) };
  if (typeof body === 'string') return { status, headers: withType(stringType), body: Buffer.from(body) };
  if (body instanceof Uint8Array) return { status, headers: withType(BINARY_TYPE), body: Buffer.from(body) };
  return { status, headers: withType(JSON_TYPE), body: toJson(body) };
}

function headerList(single, multi) {
  const headers = [];
  for (const source of [single, multi]) {
    if (source === undefined || source === null) continue;
    if (typeof source !== 'object' || Array.isArray(source)) {
      throw new InvalidReturnValue(`headers must be an object, not ${Array.isArray(source) ? 'array' : typeof source}`);
    }
    for (const [name, value] of Object.entries(source)) {
      if (!name || !isClean(name) || /[\s:]/.test(name)) {
        throw new InvalidReturnValue(`invalid header name ${JSON.stringify(name)}`);
      }
      if (DROPPED_HEADERS.has(name.toLowerCase())) continue;
      for (const item of Array.isArray(value) ? value : [value]) headers.push([name, headerValue(name, item)]);
    }
  }
  return headers;
}

function headerValue(name, value) {
  if (typeof value !== 'string' && typeof value !== 'number') {
    throw new InvalidReturnValue(`header ${name} must be a string, not ${value === null ? 'null' : typeof value}`);
  }
  const text = String(value);
  if (!isClean(text)) throw new InvalidReturnValue(`header ${name} contains a line break or NUL`);
  return text;
}

function isClean(text) {
  return !/[\r\n\0]/.test(text);
}

function toJson(value) {
  let text;
  try {
    text = JSON.stringify(value);
  } catch (err) {
    throw new InvalidReturnValue(`cannot serialize the return value as JSON: ${err.message}`);
  }
  if (text === undefined) throw new InvalidReturnValue(`cannot serialize a ${typeof value} as JSON`);
  return Buffer.from(text);
}

module.exports = { loadHandler, parseSpec, toReply, STYLES, InvalidReturnValue };
