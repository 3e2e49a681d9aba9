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
// Memory: V8 grows the young generation from 1 MB semi-spaces to 16 MB after
// a burst of requests and keeps them (up to ~30 MB of RSS for the daemon's
// lifetime). Almost everything a request allocates dies young, so the small
// young generation costs little; set here so it holds however node was
// started (a flag on the command line would be lost to unit files and tests).
require('node:v8').setFlagsFromString('--semi-space-growth-factor=1');
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
