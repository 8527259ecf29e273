'use strict';
// Log lines waiting for the gateway: their COPY text rows, sequence numbers, acks and caps.
//
// Each line becomes one row of PostgreSQL COPY text format when it is recorded, so serving
// a pull is a join of ready bytes: `seq TAB ts TAB stream TAB level TAB request_id TAB
// text LF`. Seqs are 1, 2, 3... per process with no gaps (a dropped line takes no seq).
// A pull's `after` frees every line up to it (the caller has stored them). Caps, in bytes
// of UTF-8: an invocation's output past `invocationBytes` is replaced by one marker line
// and the rest dropped; lines past `bufferBytes` not yet acked are dropped, and a marker
// says how many once there is room again. `dropped` counts every dropped line.

const NULL = '\\N';

// Text as a COPY text field: backslash, TAB, LF, CR escaped; NUL shown as `\x00`.
function escape(text) {
  // One test for most lines rather than five replaces.
  if (!/[\\\t\n\r\0]/.test(text)) return text;
  return text
    .replace(/\\/g, '\\\\')
    .replace(/\t/g, '\\t')
    .replace(/\n/g, '\\n')
    .replace(/\r/g, '\\r')
    // PostgreSQL text cannot hold NUL: store the four characters `\x00` instead.
    .replace(/\0/g, '\\\\x00');
}

function nowSeconds() {
  return (performance.timeOrigin + performance.now()) / 1000;
}

function formatRow(ts, stream, level, requestField, text) {
  return Buffer.from(`\t${ts.toFixed(6)}\t${stream}\t${level}\t${requestField}\t${escape(text)}\n`);
}

// One invocation's output budget; the invocation's async context holds it.
class Invocation {
  constructor(requestId, budget) {
    this.requestId = requestId;
    // The request id as a COPY field, escaped once.
    this.field = escape(requestId);
    // Bytes of output still allowed; below 0 once the marker is written.
    this.left = budget;
  }
}

class LogBuffer {
  constructor(bufferBytes, invocationBytes) {
    this.bufferBytes = bufferBytes;
    this.invocationBytes = invocationBytes;
    this.rows = [];
    this.base = 1; // seq of rows[0]
    this.bytes = 0; // bytes of rows
    this.dropped = 0;
    // Lines dropped at the buffer cap since the last marker that reported them.
    this.unreported = 0;
    // Called once (then forgotten) when the next line is added.
    this.waiter = null;
  }

  get lastSeq() {
    return this.base + this.rows.length - 1;
  }

  get acked() {
    return this.base - 1;
  }

  begin(requestId) {
    return new Invocation(requestId, this.invocationBytes);
  }

  // Record one line (already cut to the line cap). `capped`: counts against the
  // invocation's budget (the runtime's own lines do not).
  add(stream, level, text, invocation = null, capped = true) {
    const field = invocation === null ? NULL : invocation.field;
    const ts = nowSeconds();
    let row;
    if (invocation !== null && capped) {
      if (invocation.left < 0) {
        this.dropped += 1;
        return;
      }
      const size = Buffer.byteLength(text) + 1;
      if (size > invocation.left) {
        this.dropped += 1;
        invocation.left = -1;
        const message = `output of this invocation truncated at ${this.invocationBytes} bytes`;
        row = formatRow(ts, 'runtime', 'warning', field, message);
      } else {
        invocation.left -= size;
      }
    }
    if (row === undefined) row = formatRow(ts, stream, level || NULL, field, text);
    if (this.bytes + row.length > this.bufferBytes) {
      this.dropped += 1;
      this.unreported += 1;
      return;
    }
    if (this.unreported) {
      const message = `log buffer full: ${this.unreported} lines dropped`;
      this.unreported = 0;
      this.push(formatRow(ts, 'runtime', 'warning', NULL, message));
    }
    this.push(row);
    const waiter = this.waiter;
    this.waiter = null;
    if (waiter !== null) waiter();
  }

  push(row) {
    const full = Buffer.concat([Buffer.from(String(this.base + this.rows.length)), row]);
    this.rows.push(full);
    this.bytes += full.length;
  }

  // Have `waiter` called once when the next line is added; false (and not set) if a line
  // past `after` is already there.
  wakeOnNext(after, waiter) {
    if (this.lastSeq > after) return false;
    this.waiter = waiter;
    return true;
  }

  // The caller has stored every line up to `after`: free them.
  ack(after) {
    const n = Math.min(after - this.base + 1, this.rows.length);
    if (n <= 0) return;
    for (const row of this.rows.splice(0, n)) this.bytes -= row.length;
    this.base += n;
  }

  // Rows past `after`, about `limit` bytes of them but at least one, and the seq of the
  // last one (the last acked seq when there are none).
  read(after, limit) {
    const start = Math.max(after - this.base + 1, 0);
    const rows = [];
    let size = 0;
    for (let i = start; i < this.rows.length; i++) {
      rows.push(this.rows[i]);
      size += this.rows[i].length;
      if (size >= limit) break;
    }
    if (rows.length === 0) return [Buffer.alloc(0), this.base - 1];
    return [Buffer.concat(rows), this.base + start + rows.length - 1];
  }

  // Every row not acked, for the last-resort dump at exit.
  takeAll() {
    return [Buffer.concat(this.rows), this.rows.length];
  }
}

module.exports = { LogBuffer, Invocation, escape, formatRow, NULL };
