// The two lock daemons libvirtd is pointed at: relockd (this checkout's
// bin/relockd.cjs, started exactly as in production tests) and, for the
// comparison figures, the real /usr/sbin/virtlockd via test/lib/virtlockd.ts
// (socket-activated in its own private mount namespace).

import { spawn, spawnSync } from 'node:child_process';
import { closeSync, mkdirSync, openSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { cleanEnv, ENV_PREFIX, NODE_FLAGS, RELOCKD_BIN } from '../lib/relockd.js';
import { startVirtlockd } from '../lib/virtlockd.js';
import type { StartedDaemon as VirtlockdHandle } from '../lib/virtlockd.js';
import { assertNotAborted, pidAlive, pidStartTime, signalPid, sleep, stopPid, trackPid, untrackPid } from './proc.js';

export type DaemonKind = 'relockd' | 'virtlockd';

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface LockDaemon {
  readonly kind: DaemonKind;
  readonly pid: number;
  readonly socketPath: string;
  isRunning(): boolean;
  /** Opaque position in the daemon's log, for logSince(). */
  logMark(): number;
  logSince(mark: number): string;
  /** SIGUSR1 and wait until the new image serves again (same pid). */
  reexec(): Promise<void>;
  /** SIGTERM and wait; resolves with the exit status, or 'timeout' (the daemon still runs). */
  terminate(timeoutMs?: number): Promise<ExitInfo | 'timeout'>;
  /** Stop no matter what (SIGTERM, then SIGKILL), by pid. */
  kill(): Promise<void>;
}

let lockspaceOption: boolean | undefined;

/** Whether this relockd build has `--lockspace DIR` (a directory lock space created at start). */
export function relockdHasLockspaceOption(): boolean {
  if (lockspaceOption === undefined) {
    const r = spawnSync('/usr/bin/env', [...ENV_PREFIX, process.execPath, ...NODE_FLAGS, RELOCKD_BIN, '--help'], { encoding: 'utf8', env: cleanEnv(), timeout: 30_000 });
    lockspaceOption = /--lockspace\b/.test(`${r.stdout}`);
  }
  return lockspaceOption;
}

export interface RelockdStartOptions {
  runtimeDir: string;
  logPath: string;
  /** --lockspace DIR for each (only when relockdHasLockspaceOption()). */
  lockspaces?: string[];
}

function fileSize(p: string): number {
  try {
    return statSync(p).size;
  } catch {
    return 0;
  }
}

export async function startRelockd(o: RelockdStartOptions): Promise<LockDaemon> {
  assertNotAborted('relockd');
  mkdirSync(o.runtimeDir, { recursive: true });
  const socketPath = join(o.runtimeDir, 'relockd.sock');
  const args = [
    '--pdeathsig', 'KILL', '--',
    '/usr/bin/env', ...ENV_PREFIX, process.execPath, ...NODE_FLAGS, RELOCKD_BIN,
    '--runtime-dir', o.runtimeDir, '--socket', socketPath, '--log-level', 'debug',
    ...(o.lockspaces ?? []).flatMap((d) => ['--lockspace', d]),
  ];
  const start = fileSize(o.logPath);
  const out = openSync(o.logPath, 'a');
  const child = spawn('/usr/bin/setpriv', args, { stdio: ['ignore', out, out], env: cleanEnv() });
  closeSync(out);
  const pid = child.pid;
  if (!pid) throw new Error('cannot spawn relockd');
  trackPid(pid, 'relockd');
  let exit: ExitInfo | undefined;
  const exited = new Promise<ExitInfo>((resolve) =>
    child.once('exit', (code, signal) => {
      exit = { code, signal };
      untrackPid(pid);
      resolve(exit);
    }),
  );
  const logSince = (mark: number) => {
    try {
      return readFileSync(o.logPath).subarray(mark).toString('utf8');
    } catch {
      return '';
    }
  };
  const deadline = Date.now() + 20_000;
  while (!/"msg":"relockd ready"/.test(logSince(start))) {
    if (exit) throw new Error(`relockd exited during start-up (code ${exit.code}, signal ${exit.signal})\n${logSince(start).slice(-3000)}`);
    if (Date.now() > deadline) {
      await stopPid(pid, 'SIGKILL');
      throw new Error(`relockd not ready after 20 s\n${logSince(start).slice(-3000)}`);
    }
    await sleep(10);
  }
  const count = (s: string, re: RegExp) => (s.match(re) ?? []).length;
  return {
    kind: 'relockd',
    pid,
    socketPath,
    isRunning: () => exit === undefined,
    logMark: () => fileSize(o.logPath),
    logSince,
    async reexec() {
      const mark = fileSize(o.logPath);
      const startTime = pidStartTime(pid);
      signalPid(pid, 'SIGUSR1');
      const end = Date.now() + 20_000;
      for (;;) {
        const s = logSince(mark);
        if (count(s, /"msg":"re-exec complete"/g) > 0) break;
        if (/"msg":"re-exec failed[^"]*"/.test(s)) throw new Error(`relockd: re-exec failed\n${s.slice(-3000)}`);
        if (exit) throw new Error(`relockd exited during re-exec (code ${exit.code}, signal ${exit.signal})\n${s.slice(-3000)}`);
        if (Date.now() > end) throw new Error(`relockd: no "re-exec complete" within 20 s\n${s.slice(-3000)}`);
        await sleep(5);
      }
      if (pidStartTime(pid) !== startTime) throw new Error('relockd pid now belongs to another process');
    },
    async terminate(timeoutMs = 15_000) {
      if (exit) return exit;
      signalPid(pid, 'SIGTERM');
      const t = await Promise.race([exited, sleep(timeoutMs).then(() => 'timeout' as const)]);
      return t;
    },
    async kill() {
      if (exit) return;
      await stopPid(pid, 'SIGTERM', 3000);
      await Promise.race([exited, sleep(5000)]);
    },
  };
}

export async function startRealVirtlockd(dir: string): Promise<LockDaemon> {
  assertNotAborted('virtlockd');
  mkdirSync(dir, { recursive: true });
  const d: VirtlockdHandle = await startVirtlockd({ dir, logLevel: 2, logFilters: '3:rpc 3:util 3:event 3:object' });
  trackPid(d.pid, 'virtlockd');
  let exit: ExitInfo | undefined;
  const exited = d.exited.then((e) => {
    exit = e;
    untrackPid(d.pid);
    return e;
  });
  return {
    kind: 'virtlockd',
    pid: d.pid,
    socketPath: d.socketPath,
    isRunning: () => d.isRunning() && pidAlive(d.pid),
    logMark: () => d.logs().length,
    logSince: (mark: number) => d.logs().slice(mark),
    reexec: () => d.reexec(20_000),
    async terminate(timeoutMs = 15_000) {
      if (exit) return exit;
      d.kill('SIGTERM');
      const t = await Promise.race([exited, sleep(timeoutMs).then(() => 'timeout' as const)]);
      if (t !== 'timeout') await d.stop();
      return t;
    },
    async kill() {
      await d.stop(3000);
    },
  };
}
