#!/usr/bin/env -S node --experimental-permission --allow-fs-read=* --allow-fs-write=* --allow-addons --allow-child-process --no-warnings
'use strict';
globalThis.__relockdEntryMs = Math.round(performance.now() * 10) / 10; // Node's own start-up
// Entry point. Its first statements own the signals that would otherwise
// kill the daemon (and drop every lock) or open Node's inspector while the
// rest loads; they are queued and replayed once the daemon is ready.
const early = [];
for (const sig of ['SIGUSR1', 'SIGHUP', 'SIGTERM', 'SIGINT', 'SIGQUIT', 'SIGUSR2']) {
  process.on(sig, () => early.push(sig));
}
// The exact argv we were started with, for re-exec (process.argv is resolved).
let cmdline;
try {
  cmdline = require('node:fs').readFileSync('/proc/self/cmdline', 'utf8').split('\0').slice(0, -1);
} catch {
  cmdline = undefined;
}
// Storage calls run on libuv's pool; give a hung mount room to not starve
// the others (see src/locks/storageGate.ts). Must be set before first use.
if (!process.env.UV_THREADPOOL_SIZE) process.env.UV_THREADPOOL_SIZE = '32';
import('../dist/relockd.mjs').then((m) => m.run(process.argv.slice(2), early, cmdline));
