// Ends an owner process that lost its lock connection while holding leases,
// so that no VM runs without its leases. Unlike virtlockd (virLockDaemonClientFree), this
// never blocks the event loop (timers, not sleeps) and never signals a
// recycled pid: signals go through a pidfd taken while the process was
// certainly alive, and liveness is checked through that same pidfd.
// The exit itself is an event: the pidfd becomes readable when the process
// exits, and a uv_poll_t watch (native.watchPidfd) wakes us, so the lease is
// free right after the owner's death. Only without a pidfd (kernels before
// 5.3) do we poll /proc.

import { readFileSync } from 'node:fs';
import { constants } from 'node:os';
import type { Logger } from 'pino';
import * as native from '../native.js';
import { isAlive } from '../util/processHandle.js';
import type { ProcessHandle } from '../util/processHandle.js';

export interface TerminationOptions {
  /** Time between SIGTERM and SIGKILL. */
  termGraceMs: number;
  /** After SIGKILL, how often to log that the process is still there. */
  killWarnMs: number;
  /** Poll interval while waiting for exit, only for owners without a pidfd. */
  pollMs: number;
}

export const defaultTermination: TerminationOptions = { termGraceMs: 3000, killWarnMs: 30000, pollMs: 20 };

/** 'frozen': stopped because a re-exec is carrying the termination over. */
export type TerminationResult = 'gone' | 'exited-on-term' | 'exited-on-kill' | 'frozen';


function signal(h: ProcessHandle, sig: number): void {
  if (h.pidfd >= 0) native.pidfdSendSignal(h.pidfd, sig);
  else process.kill(h.pid, sig);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A re-exec stopping terminations: checked, and waited for. */
export interface Freeze {
  readonly frozen: boolean;
  /** Calls `cb` when frozen; returns the unsubscribe function. */
  onFreeze(cb: () => void): () => void;
}

const neverFrozen: Freeze = { frozen: false, onFreeze: () => () => {} };

/**
 * Waits until the process behind the pidfd exits, `ms` pass, or a freeze,
 * whichever comes first. Everything it arms is disarmed before it resolves.
 */
function waitExit(pidfd: number, ms: number, freeze: Freeze): Promise<'exited' | 'timeout' | 'frozen' | 'broken'> {
  return new Promise((resolve) => {
    let done = false;
    const finish = (r: 'exited' | 'timeout' | 'frozen' | 'broken') => {
      if (done) return;
      done = true;
      watch?.close();
      clearTimeout(timer);
      unsubscribe();
      resolve(r);
    };
    let watch: native.PidfdWatch | null = null;
    try {
      // An error is never taken for an exit: the caller falls back to /proc.
      watch = native.watchPidfd(pidfd, (err) => finish(err ? 'broken' : 'exited'));
    } catch {
      queueMicrotask(() => finish('broken'));
    }
    const timer = setTimeout(() => finish('timeout'), Math.max(0, ms));
    const unsubscribe = freeze.onFreeze(() => finish('frozen'));
  });
}

const PF_EXITING = 0x4;

/**
 * The process is on its way out (PF_EXITING in /proc/<pid>/stat's flags).
 * Only asked while its pidfd says it has not exited, so the pid is still
 * this process's (a pid is reused only after the exit and the reaping).
 */
function isExiting(pid: number): boolean {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const flags = Number(s.slice(s.lastIndexOf(')') + 2).split(' ')[6]);
    return (flags & PF_EXITING) !== 0;
  } catch {
    return false;
  }
}

/** Liveness through the pidfd alone: it is readable once the process has exited. */
function pidfdState(h: ProcessHandle): 'exited' | 'running' | 'broken' {
  try {
    return native.pidfdExited(h.pidfd) ? 'exited' : 'running';
  } catch {
    return 'broken';
  }
}

class BrokenPidfd extends Error {}

function exitedByPidfd(h: ProcessHandle): boolean {
  const st = pidfdState(h);
  if (st === 'broken') throw new BrokenPidfd();
  return st === 'exited';
}

/**
 * SIGTERM, then SIGKILL once the grace time has passed; resolves once the
 * process can no longer run. A termination resumed after a re-exec starts
 * over (SIGTERM again, the whole grace time); `started` is for the logs. A
 * process that survives SIGKILL (stuck in the kernel) is waited for
 * indefinitely, with a warning now and then: its leases must outlive it.
 * `log` names the owner (its bindings): the lines here add only what they
 * are about, and never a second "owner" or "pid" key.
 */
export async function terminate(
  h: ProcessHandle,
  opts: TerminationOptions,
  log: Logger,
  freeze: Freeze = neverFrozen,
  started: number = Date.now(),
): Promise<TerminationResult> {
  if (h.pidfd < 0) return terminateByPolling(h, opts, log, freeze);
  try {
    return await terminateByPidfd(h, opts, log, freeze, started);
  } catch (err) {
    if (!(err instanceof BrokenPidfd)) throw err;
    // Never seen in practice; never take it for an exit: /proc and the start time decide.
    log.error({ ownerPid: h.pid }, 'owner pidfd unusable: watching /proc instead');
    return terminateByPolling({ ...h, pidfd: -1 }, opts, log, freeze);
  }
}

async function terminateByPidfd(h: ProcessHandle, opts: TerminationOptions, log: Logger, freeze: Freeze, started: number): Promise<TerminationResult> {
  if (exitedByPidfd(h)) return 'gone';
  if (freeze.frozen) return 'frozen';
  const graceFrom = Date.now();
  let graceLeft = opts.termGraceMs;
  if (graceLeft > 0 && isExiting(h.pid)) {
    // The usual case: the owner is dying, which is what closed its
    // connection (the kernel closes fds before the exit is complete).
    // Nothing to signal; wait for the exit itself, within the grace time.
    const r = await waitExit(h.pidfd, graceLeft, freeze);
    if (r === 'frozen') return 'frozen';
    if (r === 'broken') throw new BrokenPidfd();
    if (r === 'exited' || exitedByPidfd(h)) return 'gone';
    graceLeft = graceFrom + opts.termGraceMs - Date.now();
  }
  if (graceLeft > 0) {
    try {
      signal(h, constants.signals.SIGTERM);
      log.warn({ ownerPid: h.pid }, 'owner still running after its lock connection closed: sent SIGTERM');
    } catch {
      return 'gone';
    }
    const r = await waitExit(h.pidfd, graceLeft, freeze);
    if (r === 'frozen') return 'frozen';
    if (r === 'broken') throw new BrokenPidfd();
    if (r === 'exited' || exitedByPidfd(h)) {
      log.info({ ownerPid: h.pid, ms: Date.now() - started }, 'owner exited after SIGTERM');
      return 'exited-on-term';
    }
  }
  try {
    signal(h, constants.signals.SIGKILL);
    log.warn({ ownerPid: h.pid }, graceLeft > 0 ? 'owner ignored SIGTERM: sent SIGKILL' : 'owner still exiting after the grace time: sent SIGKILL');
  } catch {
    return 'exited-on-term';
  }
  for (;;) {
    const r = await waitExit(h.pidfd, opts.killWarnMs, freeze);
    if (r === 'frozen') return 'frozen';
    if (r === 'broken') throw new BrokenPidfd();
    if (r === 'exited' || exitedByPidfd(h)) {
      log.info({ ownerPid: h.pid, ms: Date.now() - started }, 'owner exited after SIGKILL');
      return 'exited-on-kill';
    }
    log.error({ ownerPid: h.pid }, 'owner survives SIGKILL (stuck in the kernel?); keeping its leases until it exits');
  }
}

/** The same without a pidfd: liveness from /proc (start time guards pid reuse). */
async function terminateByPolling(h: ProcessHandle, opts: TerminationOptions, log: Logger, freeze: Freeze): Promise<TerminationResult> {
  if (!(await isAlive(h))) return 'gone';
  if (freeze.frozen) return 'frozen';
  const started = Date.now();
  try {
    signal(h, constants.signals.SIGTERM);
    log.warn({ ownerPid: h.pid }, 'owner still running after its lock connection closed: sent SIGTERM');
  } catch {
    return 'gone';
  }
  while (Date.now() - started < opts.termGraceMs) {
    await sleep(opts.pollMs);
    if (freeze.frozen) return 'frozen';
    if (!(await isAlive(h))) {
      log.info({ ownerPid: h.pid, ms: Date.now() - started }, 'owner exited after SIGTERM');
      return 'exited-on-term';
    }
  }
  try {
    signal(h, constants.signals.SIGKILL);
    log.warn({ ownerPid: h.pid }, 'owner ignored SIGTERM: sent SIGKILL');
  } catch {
    return 'exited-on-term';
  }
  let lastWarn = Date.now();
  for (;;) {
    await sleep(opts.pollMs);
    if (freeze.frozen) return 'frozen';
    if (!(await isAlive(h))) {
      log.info({ ownerPid: h.pid, ms: Date.now() - started }, 'owner exited after SIGKILL');
      return 'exited-on-kill';
    }
    if (Date.now() - lastWarn > opts.killWarnMs) {
      lastWarn = Date.now();
      log.error({ ownerPid: h.pid }, 'owner survives SIGKILL (stuck in the kernel?); keeping its leases until it exits');
    }
  }
}
