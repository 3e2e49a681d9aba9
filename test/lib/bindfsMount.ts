// A FUSE mount (Debian's bindfs, run in the foreground so we own its pid)
// that a test can freeze with SIGSTOP: every call on it then blocks like a
// hard NFS mount whose server went away, until SIGCONT.

import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';

export interface BindfsMount {
  src: string;
  mnt: string;
  pid: number;
  freeze(): void;
  thaw(): void;
  /** SIGCONT, unmount (lazily if busy), SIGKILL bindfs by pid. Idempotent. */
  cleanup(): Promise<void>;
}

function mounted(mnt: string): boolean {
  // mountinfo field 5 is the mount point (spaces escaped as \040; ours have none).
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .some((l) => l.split(' ')[4] === mnt);
}

export async function mountBindfs(src: string, mnt: string): Promise<BindfsMount> {
  const child: ChildProcess = spawn('bindfs', ['-f', src, mnt], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (d) => (err += d));
  const pid = child.pid!;
  let done = false;
  const cleanup = async () => {
    if (done) return;
    done = true;
    try {
      process.kill(pid, 'SIGCONT');
    } catch {
      /* gone */
    }
    if (mounted(mnt) && spawnSync('fusermount', ['-u', mnt]).status !== 0) spawnSync('umount', ['-l', mnt]);
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
      await Promise.race([exited, new Promise((r) => setTimeout(r, 3000))]);
    }
    if (mounted(mnt)) spawnSync('umount', ['-l', mnt]);
  };
  // Even if the test dies without its teardown: never leave a frozen mount behind.
  const onExit = () => {
    if (done) return;
    try {
      process.kill(pid, 'SIGCONT');
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
    spawnSync('umount', ['-l', mnt]);
  };
  process.once('exit', onExit);
  const until = Date.now() + 10000;
  while (!mounted(mnt)) {
    if (child.exitCode !== null || Date.now() > until) {
      await cleanup();
      throw new Error(`bindfs ${src} ${mnt} did not mount: ${err}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    src,
    mnt,
    pid,
    freeze: () => process.kill(pid, 'SIGSTOP'),
    thaw: () => process.kill(pid, 'SIGCONT'),
    cleanup,
  };
}
