// A FUSE mount (bindfs, run in the foreground so its pid is the server's)
// that a test can freeze with SIGSTOP: every call on it then blocks like on
// a hard-mounted NFS server that stopped answering. Cleanup continues the
// server, unmounts and kills it by pid, also when the test failed.

import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { waitFor } from './wait.js';

export interface FrozenableMount {
  src: string;
  mnt: string;
  pid: number;
  freeze(): void;
  thaw(): void;
  cleanup(): Promise<void>;
}

export function bindfsAvailable(): string | undefined {
  const r = spawnSync('bindfs', ['--version'], { encoding: 'utf8' });
  if (r.error || r.status !== 0) return 'bindfs is not installed (Debian package bindfs)';
  try {
    readFileSync('/dev/fuse');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return '/dev/fuse is missing';
  }
  return undefined;
}

const mounted = (mnt: string) => readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((l) => l.split(' ')[4] === mnt);

export async function mountBindfs(base: string): Promise<FrozenableMount> {
  const src = join(base, 'src');
  const mnt = join(base, 'mnt');
  mkdirSync(src, { recursive: true });
  mkdirSync(mnt, { recursive: true });
  const child: ChildProcess = spawn('bindfs', ['-f', '--no-allow-other', src, mnt], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (d) => (err += d));
  if (!(await waitFor(() => mounted(mnt), 10000))) {
    child.kill('SIGKILL');
    throw new Error(`bindfs did not mount ${mnt}: ${err}`);
  }
  const pid = child.pid!;
  const sig = (s: NodeJS.Signals) => {
    try {
      process.kill(pid, s);
    } catch {
      /* gone */
    }
  };
  return {
    src,
    mnt,
    pid,
    freeze: () => sig('SIGSTOP'),
    thaw: () => sig('SIGCONT'),
    cleanup: async () => {
      sig('SIGCONT');
      spawnSync('fusermount', ['-u', '-z', mnt]);
      if (mounted(mnt)) spawnSync('umount', ['-l', mnt]);
      sig('SIGTERM');
      if (!(await waitFor(() => child.exitCode !== null || child.signalCode !== null, 3000))) sig('SIGKILL');
    },
  };
}
