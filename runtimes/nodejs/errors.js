'use strict';
// The one shape of every answer the runtime gives when it cannot do what was asked:
// {"error": {"code", "message", "request_id"}}, its status and X-Kapal-Error.

const REQUEST_ID = 'X-Kapal-Request-Id';
const ERROR_KIND = 'X-Kapal-Error';

// Every error the runtime answers: code -> [HTTP status, X-Kapal-Error value].
const ERRORS = {
  handler_error: [500, 'handler'],
  handler_load_failed: [500, 'load'],
  init_failed: [500, 'init'],
  timeout: [504, 'timeout'],
  busy: [503, 'busy'],
  invalid_json: [400, 'request'],
  invalid_parameter: [400, 'request'],
  body_too_large: [413, 'request'],
  not_initialized: [503, 'init'],
  invalid_init: [400, 'init'],
  already_initialized: [409, 'init'],
  not_found: [404, 'runtime'],
  method_not_allowed: [405, 'runtime'],
};

function sendJson(res, status, body, requestId, headers = {}) {
  const data = Buffer.from(body);
  res.writeHead(status, {
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': data.length,
    [REQUEST_ID]: requestId,
    ...headers,
  });
  res.end(data);
}

function sendError(res, code, message, requestId, headers = {}) {
  const [status, kind] = ERRORS[code];
  const body = JSON.stringify({ error: { code, message, request_id: requestId } });
  sendJson(res, status, body, requestId, { [ERROR_KIND]: kind, ...headers });
}

function notAllowed(res, allow, requestId) {
  sendError(res, 'method_not_allowed', `use ${allow}`, requestId, { Allow: allow });
}

module.exports = { REQUEST_ID, ERROR_KIND, ERRORS, sendJson, sendError, notAllowed };
