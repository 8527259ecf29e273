'use strict';
// `node main.js`: the container's command. Loads the handler (unless prewarm), serves until
// SIGTERM or SIGINT, drains, lets the gateway pull the last lines, exits.

const { fromEnv, ConfigError } = require('./config');
const { Capture } = require('./capture');
const { LogPort } = require('./logport');
const { Runtime } = require('./server');
const { warmUp } = require('./warm');
const { logEvent, logTraceback, describe, setSink } = require('./log');

async function main() {
  let config;
  try {
    config = fromEnv();
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    logEvent('config_invalid', 'error', { error: err.message });
    process.exit(2);
  }
  // From here on, output becomes tagged lines served on the log port.
  const capture = config.logPort ? new Capture(config) : null;
  let port = null;
  const runtime = new Runtime(config, capture);
  if (capture !== null) {
    capture.install();
    setSink(capture);
    port = new LogPort(capture.buffer, config.logPort, () => [runtime.function, runtime.version], config.logDrainS);
    await port.start();
  }
  process.on('uncaughtException', (err) => {
    // A handler's stray callback threw: logged, and the container keeps serving.
    logTraceback(err);
    logEvent('uncaught_exception', 'error', { error: describe(err) });
  });
  process.on('unhandledRejection', (reason) => {
    logTraceback(reason);
    logEvent('unhandled_rejection', 'error', { error: describe(reason) });
  });
  if (!config.prewarm) {
    runtime.state = 'initializing';
    await runtime.load(config.handler);
  }
  if (config.prewarm) {
    // Before listening: the gateway takes a healthy answer as ready for an init.
    try {
      await warmUp(runtime);
    } catch (err) {
      // Only slower: the first init and invocation compile what this would have.
      logEvent('warm_up_failed', 'warning', { error: describe(err) });
    }
  }
  await runtime.listen();
  logEvent('started', 'info', {
    port: config.port,
    log_port: capture ? config.logPort : null,
    function: runtime.function,
    version: runtime.version,
    state: runtime.state,
    concurrency: runtime.concurrency,
    handler: runtime.handler ? runtime.handler.spec : null,
    style: runtime.style,
    node: process.versions.node,
  });
  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    await runtime.drain();
    logEvent('stopped');
    if (port !== null) {
      await port.drain();
      await port.close();
      capture.uninstall();
      setSink(null);
      const [rows, count] = capture.buffer.takeAll();
      if (count) {
        // Last resort: lines nobody acked still reach `docker logs`.
        logEvent('logs_not_pulled', 'warning', { lines: count });
        process.stderr.write(rows);
      }
    }
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((err) => {
  process.stderr.write(`${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
