// Memory the daemon gives back once it has settled. A start (and more so a
// re-exec, which parses the whole state document) leaves garbage behind,
// and a burst of requests leaves free C-heap chunks and V8 pages that neither
// V8 nor glibc returns while the daemon sits idle, which is most of its life.
// Three steps, each cheap once, none on the request path:
//   1. a full V8 GC (the start's garbage, a parsed state document);
//   2. malloc_trim(0): free C-heap memory back to the kernel;
//   3. dropping this process's mappings of clean pages of the node binary
//      and its libraries that start-up touched (src/native.ts
//      dropCleanFilePages): they stay in the page cache, shared and
//      reclaimable, and come back on their next use. Most of a Node
//      process's RSS is these pages (a bare `node -e` is ~40 MB here).
// It runs once shortly after the daemon is ready (after the code cache is
// written: the GC flag below must not be part of the flags that cache was
// made under), and again whenever the daemon has been idle for a period
// after its memory grew.

import { readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { Logger } from 'pino';
import { dropCleanFilePages, mallocTrim } from '../native.js';

export interface MemoryFigures {
  /** VmRSS, kB */
  rssKb: number;
  /** RssAnon, kB */
  anonKb: number;
  /** RssFile, kB */
  fileKb: number;
}

export interface SettleResult {
  before: MemoryFigures;
  after: MemoryFigures;
  /** A full GC ran (false: no way to ask V8 for one). */
  gc: boolean;
  /** Resident clean file pages unmapped, bytes. */
  fileBytesDropped: number;
  ms: number;
}

function statusField(text: string, name: string): number {
  const m = new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(text);
  return m ? Number(m[1]) : -1;
}

function memoryFigures(): MemoryFigures {
  const st = readFileSync('/proc/self/status', 'latin1');
  return { rssKb: statusField(st, 'VmRSS'), anonKb: statusField(st, 'RssAnon'), fileKb: statusField(st, 'RssFile') };
}

type GcFn = (opts?: { type: 'major'; execution: 'async' }) => unknown;
let gcFn: GcFn | null | undefined;

/**
 * A full GC. Node exposes none without --expose-gc on the command line; the
 * flag set at run time installs `gc` in contexts created afterwards, so one
 * small context is made for it (its function collects the whole isolate),
 * and the flag is reset so that the flag set is the one the daemon started
 * with (V8's code cache checks it).
 */
async function fullGc(): Promise<boolean> {
  if (gcFn === undefined) {
    const global = (globalThis as { gc?: GcFn }).gc;
    if (typeof global === 'function') gcFn = global;
    else {
      try {
        setFlagsFromString('--expose-gc');
        gcFn = runInNewContext('gc') as GcFn;
        if (typeof gcFn !== 'function') gcFn = null;
      } catch {
        gcFn = null;
      } finally {
        setFlagsFromString('--no-expose-gc');
      }
    }
  }
  if (!gcFn) return false;
  // 'async': run from a task, without scanning our stack (it is still one
  // atomic pause: ~13 ms with 10k leases here, only ever when idle).
  // Compacting every fragmented page: a burst of requests promotes garbage
  // between the lease records that stay, and V8's own heuristics evacuate
  // only pages that are almost empty (10k leases: old space 6.9 instead of
  // 8.2 MB committed, RSS −1.7 MB; the pause ~5–10 ms longer). The flag is
  // reset afterwards, like --expose-gc above (the code cache, written
  // before the first settle, is made under the start's flags).
  setFlagsFromString('--compact-on-every-full-gc');
  try {
    await gcFn({ type: 'major', execution: 'async' });
  } finally {
    setFlagsFromString('--no-compact-on-every-full-gc');
  }
  return true;
}

/** GC, malloc_trim and (when `files`) the drop of clean file pages, now. */
async function settleMemory(files: boolean): Promise<SettleResult> {
  const t0 = performance.now();
  const before = memoryFigures();
  const gc = await fullGc();
  mallocTrim();
  const fileBytesDropped = files ? dropCleanFilePages().bytes : 0;
  return { before, after: memoryFigures(), gc, fileBytesDropped, ms: Math.round((performance.now() - t0) * 10) / 10 };
}

export interface SettlerOptions {
  /** First settle this long after ready. */
  firstMs?: number;
  /** How often idleness and growth are checked. */
  periodMs?: number;
  /** Settle again when RssAnon grew this much since the last settle… */
  anonGrowthKb?: number;
  /** …or RssFile this much (start-up-only code touched again, the optimising compiler). */
  fileGrowthKb?: number;
  /** …and the event loop was busy less than this share of the last period. */
  idleUtilization?: number;
}

/**
 * Settles once after `firstMs`, then whenever a period was idle and memory
 * grew since the last settle. Timers never keep the process alive.
 */
export function startMemorySettler(log: Logger, opts: SettlerOptions = {}): void {
  const { firstMs = 750, periodMs = 1000, anonGrowthKb = 1024, fileGrowthKb = 2048, idleUtilization = 0.05 } = opts;
  let last: MemoryFigures | null = null;
  let rebase = false;
  /** The last settle was the one again right after a settle: its rebase takes whatever level it finds. */
  let again = false;
  let running = false;
  const grew = (m: MemoryFigures, base: MemoryFigures) => m.anonKb >= base.anonKb + anonGrowthKb || m.fileKb >= base.fileKb + fileGrowthKb;
  const settle = async (why: string) => {
    if (running) return;
    running = true;
    try {
      const r = await settleMemory(true);
      last = r.after;
      rebase = true;
      log.debug({ why, ms: r.ms, gc: r.gc, rssKb: [r.before.rssKb, r.after.rssKb], anonKb: [r.before.anonKb, r.after.anonKb], fileKbDropped: Math.round(r.fileBytesDropped / 1024) }, 'memory settled');
    } catch (err) {
      log.warn({ why, err: (err as Error).message }, 'could not give memory back');
      last = memoryFigures();
    } finally {
      running = false;
    }
  };
  let elu = performance.eventLoopUtilization();
  const check = () => {
    const now = performance.eventLoopUtilization();
    const busy = performance.eventLoopUtilization(now, elu).utilization;
    elu = now;
    if (!last || busy >= idleUtilization) return;
    const m = memoryFigures();
    if (rebase) {
      // The level a period after the settle is the baseline: right after
      // it, the pages the idle daemon uses anyway (timers, GC) come back.
      // Unless that is more than a settle's worth: work still running when
      // it settled (the end of a burst of requests, which often overlaps the
      // first settle, and the optimising compiler compiling the burst's hot
      // code: ~10 MB of its text) touched them again. Then settle once more;
      // the level after that one is the baseline whatever it is (no loop).
      rebase = false;
      if (!again && grew(m, last)) {
        again = true;
        void settle('growth right after a settle');
        return;
      }
      again = false;
      last = m;
      return;
    }
    if (grew(m, last)) void settle('idle after growth');
    else if (m.anonKb < last.anonKb || m.fileKb < last.fileKb) last = { ...last, anonKb: Math.min(m.anonKb, last.anonKb), fileKb: Math.min(m.fileKb, last.fileKb) };
  };
  setTimeout(() => {
    void settle('started').then(() => {
      elu = performance.eventLoopUtilization();
      setInterval(check, periodMs).unref();
    });
  }, firstMs).unref();
}
