// V8 code cache for the next image. bin/relockd.cjs compiles the daemon's
// bundle with vm.Script; a while after this image is ready (off the
// blackout, when the start-up or restore code and the request path have
// run and are compiled), we write that script's code cache next to the state
// file, and a re-exec hands its path to the new image (RELOCKD_CODE_CACHE),
// which then skips parsing and compiling most of the bundle. V8 itself
// rejects a cache made for another source, V8 version or flag set (a package
// upgrade), and the new image compiles as usual. The file lives in the
// runtime directory (root's, like the state file) and is rewritten by every
// image.

import { renameSync, unlinkSync, writeFileSync } from 'node:fs';
import type { Script } from 'node:vm';
import type { Logger } from 'pino';

const CODE_CACHE_ENV = 'RELOCKD_CODE_CACHE';

interface LoadedBundle {
  script: Script;
  /** The cache this image was offered / accepted by V8. */
  offered: boolean;
  used: boolean;
}

function bundle(): LoadedBundle | undefined {
  return (globalThis as { __relockdCodeCache?: LoadedBundle }).__relockdCodeCache;
}

let written: string | null = null;
/** Where this image writes (or an earlier image wrote) the cache. */
let target: string | null = null;

/** How this image was compiled, for the boot log line. */
export function codeCacheStatus(): 'used' | 'rejected' | 'none' | 'unavailable' {
  const b = bundle();
  if (!b) return 'unavailable';
  return b.used ? 'used' : b.offered ? 'rejected' : 'none';
}

/**
 * Writes this image's code cache to `path` after `delayMs` (a timer that
 * never keeps the daemon alive). `warm` runs first: V8 caches only functions
 * that have been compiled, and what a re-exec runs (the old image's save, the
 * new image's parse and schema check) has not run in a fresh image; without
 * it the first re-exec compiles the 200 kB state validator inside its
 * blackout.
 */
export function scheduleCodeCache(path: string, log: Logger, delayMs = 500, warm?: () => string): void {
  const b = bundle();
  if (!b) return; // not started through bin/relockd.cjs (tests of modules)
  target = path;
  const t = setTimeout(() => {
    const tmp = `${path}.${process.pid}.tmp`;
    let warmed = 'no';
    try {
      if (warm) warmed = warm();
    } catch (err) {
      log.warn({ err: (err as Error).message }, 'code cache warm-up failed (the next re-exec compiles more of its path)');
    }
    try {
      const data = b.script.createCachedData();
      writeFileSync(tmp, data, { mode: 0o600 });
      renameSync(tmp, path);
      written = path;
      log.debug({ path, bytes: data.length, warmed }, 'code cache written for the next image');
    } catch (err) {
      written = null;
      try {
        unlinkSync(tmp);
      } catch {
        /* not there */
      }
      log.warn({ err: (err as Error).message, path }, 'could not write the code cache (re-execs compile from source)');
    }
  }, delayMs);
  t.unref();
}

// A clean exit leaves no cache behind (execve runs no exit handlers: the next image gets it).
process.on('exit', () => {
  if (target) {
    try {
      unlinkSync(target);
    } catch {
      /* gone */
    }
  }
});

/** Environment for the next image: the cache's path, when one was written. */
export function codeCacheEnv(): Record<string, string> {
  return written ? { [CODE_CACHE_ENV]: written } : {};
}
