// A process handle that survives pid reuse: a pidfd where the kernel has
// one, and the start time from /proc/<pid>/stat always. Shared by the owner
// termination (services/terminator.ts), the restore (state/restore.ts) and the boot.

import { closeSync, readFileSync } from 'node:fs';
import * as native from '../native.js';

/** Process identity that survives pid reuse. */
export interface ProcessHandle {
  pid: number;
  /** pidfd, or -1 when the kernel has none (then start time guards kill). */
  pidfd: number;
  /** Start time (clock ticks since boot, /proc/<pid>/stat field 22). */
  startTime: string;
}

async function procStat(pid: number): Promise<{ state: string; startTime: string } | null> {
  try {
    // node:fs/promises on first use: it is not needed to restore, and loading it costs ~1 ms of a re-exec.
    const s = await process.getBuiltinModule('node:fs/promises').readFile(`/proc/${pid}/stat`, 'utf8');
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
