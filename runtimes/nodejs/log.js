'use strict';
// The runtime's own log lines: one JSON object per notable event, stacks as text.
//
// Once output is captured they go to the capture: events as lines of stream `runtime` with
// their level, a stack as one entry of stream `stderr`, level `error`, both tagged with the
// invocation being served. Before that (a bad configuration), or with capture off, they
// are written to stderr.

const RUNTIME_DIR = __dirname + '/';
let sink = null;

function setSink(value) {
  sink = value;
}

// Write one JSON line such as {"ts": ..., "level": "info", "event": "started", ...}.
function logEvent(event, level = 'info', fields = {}) {
  const text = JSON.stringify({ ts: new Date().toISOString(), level, event, ...fields });
  if (sink !== null) sink.event(level, text);
  else process.stderr.write(text + '\n');
}

// One line for callers, e.g. "TypeError: boom"; the stack goes to the logs.
function describe(err) {
  if (!(err instanceof Error)) {
    return `thrown value: ${String(err)}`.split('\n')[0].slice(0, 500);
  }
  const first = String(err.message || '').trim().split('\n')[0];
  const name = err.name || err.constructor?.name || 'Error';
  return first ? `${name}: ${first}` : name;
}

// Record the stack as one entry (the invocation's tag says whose it is). The runtime's own
// frames are dropped: the user wants to see their code.
function logTraceback(err) {
  let text = err instanceof Error && err.stack ? err.stack : describe(err);
  const lines = text.split('\n');
  const own = lines.filter((line, i) => i > 0 && line.includes(RUNTIME_DIR));
  // An error raised by the runtime itself (a bad return value) keeps all its frames.
  if (own.length && own.length < lines.length - 1) {
    text = lines.filter((line, i) => i === 0 || !line.includes(RUNTIME_DIR)).join('\n');
  }
  if (sink !== null) sink.traceback(text.replace(/\n+$/, ''));
  else process.stderr.write(text + '\n');
}

module.exports = { setSink, logEvent, describe, logTraceback };
