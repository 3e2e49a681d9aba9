// How an owner ended, for the log: its exit status or the signal that killed
// it, from the pidfd (PIDFD_GET_INFO with PIDFD_INFO_EXIT, Linux >= 6.15).
// The kernel records the status when the process is reaped, and the owner is
// usually not our child (QEMU's parent is libvirtd), so it may take a moment:
// we ask again a few times. This runs after the leases were released, never
// before: it is for the log only.

import { constants } from 'node:os';
import type { Logger } from 'pino';
import * as native from '../native.js';

/** Delays between attempts (ms): about 5 s in all for the parent to reap it. */
const RETRY_MS = [0, 1, 2, 5, 10, 20, 50, 100, 250, 500, 1000, 1000, 2000];

const signalNames = new Map<number, string>(Object.entries(constants.signals).map(([name, n]) => [n, name]));

export interface OwnerExit {
  /** 'exited with code 0', 'killed by SIGKILL', 'exit status unknown (…)'. */
  how: string;
  code?: number;
  signal?: string;
  coreDumped?: boolean;
}

function describeExit(info: native.ExitInfo): OwnerExit {
  if (info.code !== undefined) return { how: `exited with code ${info.code}`, code: info.code };
  if (info.signal !== undefined) {
    const signal = signalNames.get(info.signal) ?? `signal ${info.signal}`;
    return { how: `killed by ${signal}${info.coreDumped ? ' (core dumped)' : ''}`, signal, coreDumped: info.coreDumped === true };
  }
  return { how: `exit status unknown (wait status ${info.status})` };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The exit of the process behind `pidfd` (which must stay open meanwhile). */
export async function ownerExit(pidfd: number, delays: readonly number[] = RETRY_MS): Promise<OwnerExit> {
  if (pidfd < 0) return { how: 'exit status unknown (no pidfd)' };
  for (const ms of delays) {
    if (ms > 0) await sleep(ms);
    let info: native.ExitInfo | null;
    try {
      info = native.pidfdExitInfo(pidfd);
    } catch (err) {
      const code = (err as { code?: string }).code;
      // ENOTTY/EINVAL: no PIDFD_GET_INFO; ESRCH: no PIDFD_INFO_EXIT (6.13, 6.14).
      return { how: `exit status unknown (the kernel does not report it: ${code ?? String(err)})` };
    }
    if (info) return describeExit(info);
  }
  return { how: `exit status unknown (not reaped by its parent within ${delays.reduce((a, b) => a + b, 0)} ms)` };
}

/** Logs how the owner ended, then calls `done` (which closes the pidfd). */
export function logOwnerExit(pidfd: number, pid: number, log: Logger, done: () => void): void {
  void ownerExit(pidfd)
    .then((e) => log.info({ ownerPid: pid, exit: e }, `owner ended: ${e.how}`))
    .catch(() => {})
    .finally(done);
}
