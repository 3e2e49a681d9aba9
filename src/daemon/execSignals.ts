// Signals held back across relockd's own execve.
//
// From execve until the new image has installed its handlers every signal
// has its default action, and for these that is to end the process: a
// SIGTERM from `systemctl stop` or an admin, a SIGHUP from a reload or
// logrotate, a SIGPROF from a profiler, landing in those ~20 ms of Node
// start-up, would drop every lock. Blocking them before execve is not
// enough, because Node's start-up sets the signal mask again; so the new
// image is started with relockd_exec_hold.so preloaded (native/exec_hold.c),
// which keeps them blocked through Node's own mask changes. Once its handlers
// are in place the new image ends the hold, takes out the pending signals it
// has no handler for, and unblocks the rest: a signal sent during the exec is
// handled, late, instead of killing the daemon.
import { existsSync } from 'node:fs';
import { constants } from 'node:os';
import { dirname, join } from 'node:path';
import * as native from '../native.js';

/** Signals the daemon handles (src/cli/main.ts installs the handlers). */
export const HANDLED_SIGNALS = ['SIGUSR1', 'SIGHUP', 'SIGTERM', 'SIGINT', 'SIGQUIT', 'SIGUSR2'] as const;
/** Asynchronous signals whose default action ends the process and that the daemon has no handler for. */
const UNHANDLED = ['SIGPIPE', 'SIGALRM', 'SIGVTALRM', 'SIGPROF', 'SIGIO', 'SIGPWR', 'SIGXCPU', 'SIGSTKFLT'] as const;

const num = (name: string): number => constants.signals[name as keyof typeof constants.signals];
const byNumber = new Map<number, string>([...HANDLED_SIGNALS, ...UNHANDLED].map((n) => [num(n), n]));

/** Every signal held across the execve. */
const EXEC_HELD_SIGNALS: readonly number[] = [...HANDLED_SIGNALS, ...UNHANDLED].map(num);

/** The preload library, built beside the addon (binding.gyp). */
const EXEC_HOLD_LIBRARY = join(dirname(native.addonPath), 'relockd_exec_hold.so');

/**
 * The environment entries that make the new image hold the signals (empty
 * when the library is missing: then the exec has the window it always had).
 */
export function execHoldEnv(env: NodeJS.ProcessEnv): Record<string, string> {
  if (!existsSync(EXEC_HOLD_LIBRARY)) return {};
  const before = env.LD_PRELOAD ?? '';
  // Benchmarking aid (bin/relockd.cjs): a boot profile is sampled with
  // SIGPROF from the first statement on, so SIGPROF cannot be held then.
  const held = env.RELOCKD_BOOT_PROFILE ? EXEC_HELD_SIGNALS.filter((s) => s !== num('SIGPROF')) : EXEC_HELD_SIGNALS;
  return {
    LD_PRELOAD: before ? `${EXEC_HOLD_LIBRARY} ${before}` : EXEC_HOLD_LIBRARY,
    RELOCKD_EXEC_HOLD_PRELOAD: before,
    RELOCKD_EXEC_HOLD: held.join(','),
  };
}

/**
 * The old image, at the start of its last synchronous stretch (no
 * JavaScript runs until execve): a handled signal from now on is only noted,
 * instead of being taken by libuv's handler and lost at execve.
 */
export function captureSignalsForExec(): void {
  native.signalCapture(HANDLED_SIGNALS.map(num));
}

/** The old image, just before execve: the mask survives the exec, and so do the noted signals, made pending again. */
export function holdSignalsForExec(): void {
  native.sigmask('block', EXEC_HELD_SIGNALS);
  native.signalCaptureEnd('pending');
}

/** The old image, when the exec did not happen: libuv's handlers back, and the noted signals sent again (they are handled as usual). */
export function endSignalCapture(): void {
  native.signalCaptureEnd('raise');
}

/**
 * The new image once its handlers are installed (or the old one after a
 * failed execve): ends the library's hold, discards the pending signals it
 * has no handler for, then unblocks them all; pending handled ones are
 * delivered now. Returns the names of the signals discarded.
 */
export function releaseHeldSignals(): string[] {
  // The library takes its variables out of the environment; if it could not
  // be loaded they are still here, and must not reach children or the next exec.
  if (process.env.RELOCKD_EXEC_HOLD_PRELOAD !== undefined) {
    if (process.env.RELOCKD_EXEC_HOLD_PRELOAD) process.env.LD_PRELOAD = process.env.RELOCKD_EXEC_HOLD_PRELOAD;
    else delete process.env.LD_PRELOAD;
    delete process.env.RELOCKD_EXEC_HOLD_PRELOAD;
  }
  delete process.env.RELOCKD_EXEC_HOLD;
  native.execHoldRelease();
  const dropped = native.sigdrain(UNHANDLED.map(num));
  native.sigmask('unblock', EXEC_HELD_SIGNALS);
  return dropped.map((n) => byNumber.get(n) ?? String(n));
}
