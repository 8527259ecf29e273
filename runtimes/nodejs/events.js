'use strict';
// What a handler receives, per style: the native event and context, or AWS Lambda's
// API Gateway events (HTTP API v2 for `lambda`, REST v1 for `lambda-v1`) and its context.
//
// `request` is the runtime's view of one invocation: {method, path, rawPath, rawQuery,
// headers (Node's: lowercase names, repeats joined), rawHeaders, body (Buffer), requestId,
// deadline (epoch seconds), sourceIp}.

class InvalidJSONBody extends Error {}

// The native event: the OpenFaaS-like shape of the Python runtime's native style.
class Event {
  constructor(request) {
    this.method = request.method;
    // The URL path as received, percent-decoded, without the query: "/" or "/a/b".
    this.path = request.path;
    // Lowercase names; repeated headers joined with ", " (cookies with "; ").
    this.headers = request.headers;
    // First value of each query parameter; `searchParams.getAll(name)` for every value.
    this.searchParams = new URLSearchParams(request.rawQuery);
    this.query = {};
    for (const [name, value] of this.searchParams) {
      if (!(name in this.query)) this.query[name] = value;
    }
    this.body = request.body;
  }

  // The body decoded as UTF-8.
  text() {
    return this.body.toString('utf8');
  }

  // The body parsed as JSON; throws InvalidJSONBody (answered 400 if it escapes).
  json() {
    if (this.body.length === 0) throw new InvalidJSONBody('request body is empty; expected JSON');
    try {
      return JSON.parse(this.text());
    } catch (err) {
      throw new InvalidJSONBody(`request body is not valid JSON: ${err.message}`);
    }
  }
}

// Facts about this invocation that are not part of the request.
class Context {
  constructor(runtime, request) {
    this.functionName = runtime.function;
    this.version = runtime.version;
    this.requestId = request.requestId;
    // Unix epoch seconds after which the caller no longer waits for the answer.
    this.deadline = request.deadline;
  }

  // Seconds until the deadline, never negative.
  timeLeft() {
    return Math.max(0, this.deadline - Date.now() / 1000);
  }

  getRemainingTimeInMillis() {
    return Math.floor(this.timeLeft() * 1000);
  }
}

// AWS Lambda's context object, as its Node.js runtime documents it.
class LambdaContext {
  constructor(runtime, request) {
    this.awsRequestId = request.requestId;
    this.functionName = runtime.function;
    this.functionVersion = String(runtime.version);
    this.memoryLimitInMB = String(runtime.memoryMb);
    this.invokedFunctionArn = `arn:kapal:lambda:local:000000000000:function:${runtime.function}`;
    this.logGroupName = `/kapal/${runtime.function}`;
    this.logStreamName = `${runtime.version}/${request.requestId}`;
    this.callbackWaitsForEmptyEventLoop = true;
    this.deadline = request.deadline;
  }

  getRemainingTimeInMillis() {
    return Math.max(0, Math.floor(this.deadline * 1000 - Date.now()));
  }
}

const TEXT_TYPES = /^(text\/|application\/(json|xml|javascript|x-www-form-urlencoded)|[^;]*\+(json|xml))/i;

// Lambda's body: text as is, anything else base64 (as API Gateway does).
function lambdaBody(request) {
  if (request.body.length === 0) return [undefined, false];
  const type = request.headers['content-type'] || '';
  if (TEXT_TYPES.test(type) || (!type && isUtf8(request.body))) {
    return [request.body.toString('utf8'), false];
  }
  return [request.body.toString('base64'), true];
}

function isUtf8(buffer) {
  return Buffer.from(buffer.toString('utf8')).equals(buffer);
}

function requestTime(now) {
  // API Gateway's "12/Mar/2020:19:03:58 +0000".
  const month = now.toLocaleString('en-US', { month: 'short', timeZone: 'UTC' });
  const pad = (n) => String(n).padStart(2, '0');
  return (
    `${pad(now.getUTCDate())}/${month}/${now.getUTCFullYear()}:` +
    `${pad(now.getUTCHours())}:${pad(now.getUTCMinutes())}:${pad(now.getUTCSeconds())} +0000`
  );
}

// Headers one value per name (repeats joined with ","), and every value per name.
function headerMaps(request) {
  const single = {};
  const multi = {};
  const raw = request.rawHeaders;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i].toLowerCase();
    (multi[name] ||= []).push(raw[i + 1]);
  }
  for (const [name, values] of Object.entries(multi)) single[name] = values.join(',');
  return [single, multi];
}

function queryMaps(request) {
  const single = {};
  const multi = {};
  for (const [name, value] of new URLSearchParams(request.rawQuery)) {
    (multi[name] ||= []).push(value);
  }
  for (const [name, values] of Object.entries(multi)) single[name] = values.join(',');
  return Object.keys(multi).length ? [single, multi] : [undefined, undefined];
}

// API Gateway HTTP API (payload format 2.0) / function URL event.
function lambdaV2Event(request) {
  const [headers, multi] = headerMaps(request);
  const [query] = queryMaps(request);
  const [body, isBase64Encoded] = lambdaBody(request);
  const now = new Date();
  const cookies = (multi.cookie || []).flatMap((c) => c.split(/;\s*/)).filter(Boolean);
  delete headers.cookie;
  const event = {
    version: '2.0',
    routeKey: '$default',
    rawPath: request.rawPath,
    rawQueryString: request.rawQuery,
    headers,
    requestContext: {
      accountId: 'anonymous',
      apiId: 'kapal',
      domainName: headers.host || 'localhost',
      domainPrefix: (headers.host || 'localhost').split('.')[0],
      http: {
        method: request.method,
        path: request.rawPath,
        protocol: 'HTTP/1.1',
        sourceIp: request.sourceIp,
        userAgent: headers['user-agent'] || '',
      },
      requestId: request.requestId,
      routeKey: '$default',
      stage: '$default',
      time: requestTime(now),
      timeEpoch: now.getTime(),
    },
    isBase64Encoded,
  };
  if (cookies.length) event.cookies = cookies;
  if (query) event.queryStringParameters = query;
  if (body !== undefined) event.body = body;
  return event;
}

// API Gateway REST API (payload format 1.0) proxy event.
function lambdaV1Event(request) {
  const [headers, multiHeaders] = headerMaps(request);
  const [query, multiQuery] = queryMaps(request);
  const [body, isBase64Encoded] = lambdaBody(request);
  const now = new Date();
  // v1 gives the last value of a repeated parameter or header.
  for (const [name, values] of Object.entries(multiHeaders)) headers[name] = values.at(-1);
  if (query) for (const [name, values] of Object.entries(multiQuery)) query[name] = values.at(-1);
  return {
    resource: '/{proxy+}',
    path: request.path,
    httpMethod: request.method,
    headers,
    multiValueHeaders: multiHeaders,
    queryStringParameters: query ?? null,
    multiValueQueryStringParameters: multiQuery ?? null,
    pathParameters: { proxy: request.path.replace(/^\//, '') },
    stageVariables: null,
    requestContext: {
      accountId: 'anonymous',
      apiId: 'kapal',
      httpMethod: request.method,
      identity: { sourceIp: request.sourceIp, userAgent: headers['user-agent'] || '' },
      path: request.path,
      protocol: 'HTTP/1.1',
      requestId: request.requestId,
      requestTime: requestTime(now),
      requestTimeEpoch: now.getTime(),
      resourcePath: '/{proxy+}',
      stage: '$default',
    },
    body: body ?? null,
    isBase64Encoded,
  };
}

module.exports = { Event, Context, LambdaContext, InvalidJSONBody, lambdaV2Event, lambdaV1Event };
