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
// Benchmarking aid (bench/README.md): RELOCKD_BOOT_PROFILE=DIR makes a
// re-exec'd image write a CPU profile of its first 250 ms to DIR. Node's
// inspector is refused under --experimental-permission: then nothing happens.
if (process.env.RELOCKD_BOOT_PROFILE && process.env.RELOCKD_REEXEC !== undefined) {
  try {
    const session = new (require('node:inspector').Session)();
    session.connect();
    session.post('Profiler.enable');
    session.post('Profiler.setSamplingInterval', { interval: 25 });
    session.post('Profiler.start');
    const dir = process.env.RELOCKD_BOOT_PROFILE;
    setTimeout(() => {
      session.post('Profiler.stop', (err, r) => {
        try {
          if (!err) require('node:fs').writeFileSync(`${dir}/boot-${process.pid}-${Date.now()}.cpuprofile`, JSON.stringify(r.profile));
        } catch {}
        session.disconnect();
      });
    }, 250).unref();
  } catch {}
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
// The daemon's bundle, compiled from V8's code cache when the previous image
// left one (a re-exec: RELOCKD_CODE_CACHE names it, see
// src/daemon/codeCache.ts). V8 rejects a cache made for another source,
// V8 version or set of flags; then it compiles as usual.
const { runMain } = (() => {
  const fs = require('node:fs');
  const vm = require('node:vm');
  const Module = require('node:module');
  const path = require('node:path');
  const file = path.join(__dirname, '..', 'dist', 'relockd-main.cjs');
  const cachePath = process.env.RELOCKD_CODE_CACHE;
  delete process.env.RELOCKD_CODE_CACHE;
  let cachedData;
  if (cachePath) {
    try {
      cachedData = fs.readFileSync(cachePath);
    } catch {
      cachedData = undefined;
    }
  }
  const script = new vm.Script(Module.wrap(fs.readFileSync(file, 'utf8')), {
    filename: file,
    cachedData,
    importModuleDynamically: vm.constants.USE_MAIN_CONTEXT_DEFAULT_LOADER,
  });
  const mod = { exports: {} };
  script.runInThisContext().call(mod.exports, mod.exports, Module.createRequire(file), mod, file, path.dirname(file));
  globalThis.__relockdCodeCache = { script, used: cachedData !== undefined && !script.cachedDataRejected, offered: cachedData !== undefined };
  return { runMain: mod.exports.run };
})();
runMain(process.argv.slice(2), early, cmdline);
