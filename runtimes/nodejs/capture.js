'use strict';
// Everything the function writes becomes tagged lines in the log buffer.
//
// process.stdout.write and process.stderr.write are replaced (console.* writes through
// them), so nothing reaches the container's own output (dockerd would store it a second
// time). The invocation being served is found with AsyncLocalStorage: it follows the
// handler into promises, timers and callbacks it starts, even after the answer was sent.
// Lines end at LF; each invocation (and output outside any) keeps its own unfinished
// line, so invocations never mix, and a line left unfinished when its invocation ends is
// a line of its own. A line longer than the cap is cut, saying how many bytes were cut.

const { AsyncLocalStorage } = require('async_hooks');
const { LogBuffer } = require('./logbuffer');

const OUTSIDE = Symbol('outside an invocation');

// `text` cut to `cap` bytes of UTF-8, naming the bytes cut (`over` were cut before). The
// head is kept: a V8 stack starts with the message.
function cut(text, cap, over = 0) {
  let bytes = Buffer.byteLength(text);
  if (bytes > cap) {
    const kept = Buffer.from(text).subarray(0, cap).toString('utf8').replace(/\uFFFD$/, '');
    over += bytes - Buffer.byteLength(kept);
    text = kept;
  }
  return over ? `${text}… [truncated ${over} bytes]` : text;
}

class Capture {
  constructor(config) {
    this.buffer = new LogBuffer(config.logBufferBytes, config.logInvocationBytes);
    this.lineBytes = config.logLineBytes;
    this.storage = new AsyncLocalStorage();
    // Stream -> (invocation or OUTSIDE) -> [unfinished text, bytes already cut].
    this.partials = { stdout: new Map(), stderr: new Map() };
    this.original = null;
  }

  install() {
    const stdout = process.stdout;
    const stderr = process.stderr;
    this.original = {
      stdoutWrite: stdout.write.bind(stdout),
      stderrWrite: stderr.write.bind(stderr),
    };
    stdout.write = this.writer('stdout');
    stderr.write = this.writer('stderr');
  }

  // Put the original writes back (the last-resort dump and failures after it use them).
  uninstall() {
    if (this.original === null) return;
    this.endAll();
    process.stdout.write = this.original.stdoutWrite;
    process.stderr.write = this.original.stderrWrite;
  }

  writer(stream) {
    return (chunk, encoding, callback) => {
      if (typeof encoding === 'function') {
        callback = encoding;
        encoding = undefined;
      }
      const text =
        typeof chunk === 'string'
          ? chunk
          : Buffer.from(chunk.buffer ? chunk : String(chunk)).toString('utf8');
      this.write(stream, text);
      if (typeof callback === 'function') process.nextTick(callback);
      return true;
    };
  }

  current() {
    const invocation = this.storage.getStore();
    return invocation === undefined ? null : invocation;
  }

  write(stream, text) {
    const invocation = this.current();
    const key = invocation === null ? OUTSIDE : invocation;
    const partials = this.partials[stream];
    const held = partials.get(key);
    let pending = held === undefined ? text : held[0] + text;
    let over = held === undefined ? 0 : held[1];
    let newline = pending.indexOf('\n');
    while (newline !== -1) {
      this.emit(stream, cut(pending.slice(0, newline), this.lineBytes, over), invocation);
      over = 0;
      pending = pending.slice(newline + 1);
      newline = pending.indexOf('\n');
    }
    if (pending === '') {
      partials.delete(key);
      return;
    }
    // An unfinished line holds at most the cap; the rest is only counted.
    if (pending.length > this.lineBytes) {
      over += Buffer.byteLength(pending.slice(this.lineBytes));
      pending = pending.slice(0, this.lineBytes);
    }
    partials.set(key, [pending, over]);
  }

  emit(stream, line, invocation) {
    this.buffer.add(stream, null, line, invocation);
  }

  // Run `fn` as invocation `requestId`: what it writes, now or later, carries the id.
  run(requestId, fn) {
    const invocation = this.buffer.begin(requestId);
    return [invocation, this.storage.run(invocation, fn)];
  }

  // The lines `invocation` left unfinished are lines of their own (it ended).
  end(invocation) {
    for (const stream of ['stdout', 'stderr']) {
      const held = this.partials[stream].get(invocation);
      if (held !== undefined) {
        this.partials[stream].delete(invocation);
        this.emit(stream, cut(held[0], this.lineBytes, held[1]), invocation);
      }
    }
  }

  endAll() {
    for (const stream of ['stdout', 'stderr']) {
      for (const [key, held] of this.partials[stream]) {
        this.emit(stream, cut(held[0], this.lineBytes, held[1]), key === OUTSIDE ? null : key);
      }
      this.partials[stream].clear();
    }
  }

  // The runtime's own events: stream `runtime`, not counted against an invocation's cap.
  event(level, text) {
    this.buffer.add('runtime', level, cut(text, this.lineBytes), this.current(), false);
  }

  // A handler's stack: one entry, stream `stderr`, level `error`.
  traceback(text) {
    this.buffer.add('stderr', 'error', cut(text, this.lineBytes), this.current(), false);
  }
}

module.exports = { Capture, cut };
