// Ends an owner process that lost its lock connection while holding leases,
// so that no VM runs without its leases. Unlike virtlockd (spec 3.6), this
// never blocks the event loop (timers, not sleeps) and never signals a
// recycled pid: signals go through a pidfd taken while the process was
// certainly alive, and liveness is checked through that same pidfd.

import { closeSync, readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { constants } from 'node:os';
import type { Logger } from 'pino';
import * as native from '../native.js';
import type { Owner } from '../locks/lockManager.js';

export interface TerminationOptions {
  /** Time between SIGTERM and SIGKILL. */
  termGraceMs: number;
  /** After SIGKILL, how often to log that the process is still there. */
  killWarnMs: number;
  /** Poll interval while waiting for exit. */
  pollMs: number;
}

export const defaultTermination: TerminationOptions = { termGraceMs: 3000, killWarnMs: 30000, pollMs: 20 };

/** Process identity that survives pid reuse. */
export interface ProcessHandle {
  pid: number;
  /** pidfd, or -1 when the kernel has none (then start time guards kill). */
  pidfd: number;
  /** Start time (clock ticks since boot, /proc/<pid>/stat field 22). */
  startTime: string;
}

/** 'frozen': stopped because a re-exec is carrying the termination over. */
export type TerminationResult = 'gone' | 'exited-on-term' | 'exited-on-kill' | 'frozen';

async function procStat(pid: number): Promise<{ state: string; startTime: string } | null> {
  try {
    const s = await readFile(`/proc/${pid}/stat`, 'utf8');
    // comm may contain spaces and parens: fields start after the last ')'.
    const rest = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return { state: rest[0]!, startTime: rest[19]! };
  } catch {
    return null;
  }
}

/** /proc/<pid>/stat synchronously: procfs, never storage, so it cannot hang. */
function procStatSync(pid: number): { state: string; startTime: string } | null {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const rest = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return { state: rest[0]!, startTime: rest[19]! };
  } catch {
    return null;
  }
}

/**
 * Opens a handle on the peer of `sockFd` (SO_PEERPIDFD: the very process
 * that connected), or on `pid` as a fallback.
 */
export function openProcessHandle(pid: number, sockFd: number): ProcessHandle | null {
  let pidfd = -1;
  try {
    pidfd = native.peerPidfd(sockFd);
  } catch {
    try {
      pidfd = native.pidfdOpen(pid);
    } catch {
      pidfd = -1;
    }
  }
  const st = procStatSync(pid);
  if (!st) {
    if (pidfd >= 0) closeSync(pidfd);
    return null;
  }
  return { pid, pidfd, startTime: st.startTime };
}

export function closeProcessHandle(h: ProcessHandle): void {
  if (h.pidfd >= 0) {
    try {
      closeSync(h.pidfd);
    } catch {
      /* already closed */
    }
    h.pidfd = -1;
  }
}

/** True while the process can still run: not reaped, not a zombie, not reused. */
export async function isAlive(h: ProcessHandle): Promise<boolean> {
  if (h.pidfd >= 0) {
    try {
      native.pidfdSendSignal(h.pidfd, 0);
    } catch {
      return false;
    }
  }
  const st = await procStat(h.pid);
  if (!st || st.startTime !== h.startTime) return false;
  return st.state !== 'Z' && st.state !== 'X';
}

function signal(h: ProcessHandle, sig: number): void {
  if (h.pidfd >= 0) native.pidfdSendSignal(h.pidfd, sig);
  else process.kill(h.pid, sig);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * SIGTERM, then SIGKILL after the grace time; resolves once the process can
 * no longer run. A process that survives SIGKILL (stuck in the kernel) is
 * waited for indefinitely, with a warning now and then: its leases must
 * outlive it.
 */
export async function terminate(
  h: ProcessHandle,
  owner: Owner,
  opts: TerminationOptions,
  log: Logger,
  frozen: () => boolean = () => false,
): Promise<TerminationResult> {
  const l = log.child({ owner });
  if (!(await isAlive(h))) return 'gone';
  if (frozen()) return 'frozen';
  const started = Date.now();
  try {
    signal(h, constants.signals.SIGTERM);
    l.warn({ pid: h.pid }, 'owner still running after its lock connection closed: sent SIGTERM');
  } catch {
    return 'gone';
  }
  while (Date.now() - started < opts.termGraceMs) {
    await sleep(opts.pollMs);
    if (frozen()) return 'frozen';
    if (!(await isAlive(h))) {
      l.info({ pid: h.pid, ms: Date.now() - started }, 'owner exited after SIGTERM');
      return 'exited-on-term';
    }
  }
  try {
    signal(h, constants.signals.SIGKILL);
    l.warn({ pid: h.pid }, 'owner ignored SIGTERM: sent SIGKILL');
  } catch {
    return 'exited-on-term';
  }
  let lastWarn = Date.now();
  for (;;) {
    await sleep(opts.pollMs);
    if (frozen()) return 'frozen';
    if (!(await isAlive(h))) {
      l.info({ pid: h.pid, ms: Date.now() - started }, 'owner exited after SIGKILL');
      return 'exited-on-kill';
    }
    if (Date.now() - lastWarn > opts.killWarnMs) {
      lastWarn = Date.now();
      l.error({ pid: h.pid }, 'owner survives SIGKILL (stuck in the kernel?); keeping its leases until it exits');
    }
  }
}
