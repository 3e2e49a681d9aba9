// Process-level wiring for `relockd`: signal handlers, last-resort error
// handlers, and replay of signals that arrived while we were loading.

import * as native from '../native.js';
import { HANDLED_SIGNALS, releaseHeldSignals } from '../daemon/execSignals.js';
import { main } from './relockd.js';

// Also in bin/relockd.cjs (its early listeners), which loads before any module.
const SIGNALS = HANDLED_SIGNALS;
type Sig = (typeof SIGNALS)[number];

export async function run(argv: string[], early: Sig[], originalArgv?: string[]): Promise<void> {
  // glibc malloc, tuned for a daemon that idles most of its life:
  // - one arena for the threads still to come (V8's GC and compiler
  //   threads, libuv's pool; they allocate little): malloc_trim never
  //   returns the top chunk of a thread's own arena, ~1 MB each after a burst;
  // - fixed thresholds: glibc's dynamic ones grow with the largest block
  //   freed (up to 32 MB), after which the arenas' free tops are kept. Fixed,
  //   a free top above 128 kB goes back at once, and blocks above 128 kB are
  //   their own mappings (a re-exec's state document, large log batches).
  native.mallopt('arenaMax', 1);
  native.mallopt('trimThreshold', 128 * 1024);
  native.mallopt('mmapThreshold', 128 * 1024);
  // A dead reader of our stdout/stderr must not crash the daemon.
  process.stdout.on('error', () => {});
  process.stderr.on('error', () => {});

  // Exiting would drop every lock (a re-exec'd image holds them from its
  // first instruction): log loudly and keep running instead. Until the
  // daemon's logger exists, stderr it is.
  let fatal = (what: string, err: unknown): void => {
    process.stderr.write(`relockd: ${what} (kept running to keep the locks): ${String((err as Error)?.stack ?? err)}\n`);
  };
  process.on('uncaughtException', (err) => fatal('uncaught exception', err));
  process.on('unhandledRejection', (err) => fatal('unhandled rejection', err));

  const daemon = await main(argv, originalArgv);
  if (!daemon) return;
  const log = daemon.log;
  fatal = (what, err) => {
    log.fatal({ err }, `${what} (daemon keeps running to keep its locks)`);
  };

  const handle = (sig: Sig) => {
    switch (sig) {
      case 'SIGTERM':
      case 'SIGINT':
      case 'SIGQUIT':
        void daemon.requestStop(sig);
        break;
      case 'SIGUSR1':
        void daemon.reexec('SIGUSR1');
        break;
      case 'SIGHUP':
        // virtlockd dies on SIGHUP (every lock dropped); we re-read the configuration.
        void daemon.reload();
        break;
      default:
        // virtlockd dies on SIGHUP and drops every lock; we never do.
        log.warn({ signal: sig }, 'signal ignored');
    }
  };
  for (const sig of SIGNALS) {
    // Add ours before removing the early ones: with no listener left even
    // for a moment, Node closes the signal's handle and drops a signal that
    // arrived but was not dispatched yet (seen under load: a SIGUSR2 sent
    // right after the socket appeared was never seen).
    const loading = process.listeners(sig);
    process.on(sig, () => handle(sig));
    for (const l of loading) process.removeListener(sig, l as (...a: unknown[]) => void);
  }
  // Signals sent while the previous image exec'd us were held back
  // (src/daemon/execSignals.ts): pending ones are delivered now, to these
  // handlers. (Node itself leaves SIGUSR1 blocked under the permission model.)
  const dropped = releaseHeldSignals();
  if (dropped.length) log.warn({ signals: dropped }, 'signals without a handler arrived before the daemon was ready (during a re-exec): discarded');
  for (const sig of early) handle(sig);
}
