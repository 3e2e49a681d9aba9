// What relockctl takeover/handback learn about the lock daemon from /proc:
// its binary, its argv as virtlockd's getopt reads it, its effective uid and
// environment, its mount namespace, its systemd unit, and the record locks
// each of its fds holds (fdinfo "lock:" lines: POSIX or OFDLCK).

import { readFileSync, readdirSync, readlinkSync, statSync } from 'node:fs';
import { join } from 'node:path';

export function exeOf(pid: number): string | null {
  try {
    return readlinkSync(`/proc/${pid}/exe`).replace(/ \(deleted\)$/, '');
  } catch {
    return null;
  }
}

export function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

export function cmdlineOf(pid: number): string[] {
  return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').slice(0, -1);
}

export function environOf(pid: number): Record<string, string> {
  const env: Record<string, string> = {};
  for (const kv of readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0')) {
    const i = kv.indexOf('=');
    if (i > 0) env[kv.slice(0, i)] = kv.slice(i + 1);
  }
  return env;
}

export function euidOf(pid: number): number {
  const m = /^Uid:\s+\d+\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`cannot read the uid of pid ${pid}`);
  return Number(m[1]);
}

/** The systemd unit a process runs in (from its cgroup), or null. */
export function systemdUnitOf(pid: number): string | null {
  try {
    const cg = readFileSync(`/proc/${pid}/cgroup`, 'utf8');
    const m = /\/([^/\n]+\.service)(?:\/|$)/m.exec(cg);
    return m ? m[1]! : null;
  } catch {
    return null;
  }
}

/** virtlockd's options as its getopt_long("df:p:t:vVh") reads them. */
export interface VirtlockdArgs {
  argv0: string;
  daemon: boolean;
  config?: string;
  pidFile?: string;
  timeout?: string;
  verbose: boolean;
}

export function parseVirtlockdArgv(argv: string[]): VirtlockdArgs {
  const out: VirtlockdArgs = { argv0: argv[0] ?? '', daemon: false, verbose: false };
  const long: Record<string, 'daemon' | 'config' | 'pidFile' | 'timeout' | 'verbose'> = { daemon: 'daemon', config: 'config', 'pid-file': 'pidFile', timeout: 'timeout', verbose: 'verbose' };
  const short: Record<string, 'daemon' | 'config' | 'pidFile' | 'timeout' | 'verbose'> = { d: 'daemon', f: 'config', p: 'pidFile', t: 'timeout', v: 'verbose' };
  const takesValue = (k: string) => k === 'config' || k === 'pidFile' || k === 'timeout';
  const set = (k: 'daemon' | 'config' | 'pidFile' | 'timeout' | 'verbose', v?: string) => {
    if (k === 'daemon' || k === 'verbose') out[k] = true;
    else out[k] = v;
  };
  for (let i = 1; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') break;
    if (a.startsWith('--')) {
      const [name, inline] = a.slice(2).split(/=(.*)/s, 2) as [string, string | undefined];
      // getopt_long accepts unambiguous prefixes
      const matches = Object.keys(long).filter((l) => l.startsWith(name));
      const key = long[name] ?? (matches.length === 1 ? long[matches[0]!] : undefined);
      if (!key) throw new Error(`virtlockd argument not understood: ${a}`);
      if (takesValue(key)) set(key, inline ?? argv[++i]);
      else set(key);
      continue;
    }
    if (a.startsWith('-') && a.length > 1) {
      for (let j = 1; j < a.length; j++) {
        const key = short[a[j]!];
        if (!key) throw new Error(`virtlockd argument not understood: ${a}`);
        if (takesValue(key)) {
          set(key, j + 1 < a.length ? a.slice(j + 1) : argv[++i]);
          break;
        }
        set(key);
      }
      continue;
    }
    // getopt permutes: a non-option is ignored by virtlockd
  }
  return out;
}

/** execvp's view of argv[0] for a process: the absolute path it would exec (inside its mount namespace). */
export function resolveExecTarget(pid: number, argv0: string): string {
  const root = `/proc/${pid}/root`;
  if (argv0.includes('/')) {
    if (argv0.startsWith('/')) return argv0;
    const cwd = readlinkSync(`/proc/${pid}/cwd`);
    return join(cwd, argv0);
  }
  const path = environOf(pid).PATH ?? '/usr/local/bin:/usr/bin:/bin';
  for (const dir of path.split(':')) {
    const p = join(dir || '.', argv0);
    try {
      if (statSync(join(root, p)).isFile()) return p;
    } catch {
      /* next */
    }
  }
  throw new Error(`cannot find ${argv0} in the PATH of pid ${pid}`);
}

/** One record lock held through one fd of a process. */
export interface HeldLock {
  fd: number;
  path: string;
  dev: number;
  ino: number;
  kind: 'POSIX' | 'OFDLCK' | 'FLOCK';
  type: 'READ' | 'WRITE';
}

/** Every record lock a process holds, by fd (fdinfo lists the locks set through that open file). */
export function locksOf(pid: number): HeldLock[] {
  const out: HeldLock[] = [];
  let fds: string[];
  try {
    fds = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return out;
  }
  for (const f of fds) {
    const fd = Number(f);
    let info: string;
    let path: string;
    try {
      info = readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8');
      path = readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      continue;
    }
    for (const m of info.matchAll(/^lock:\s+\d+:\s+(POSIX|OFDLCK|FLOCK)\s+\S+\s+(READ|WRITE)\s+\S+\s+([0-9a-f]+):([0-9a-f]+):(\d+)\s/gm)) {
      // Only locks of this process: a classic lock of another process on the same inode is listed too.
      const major = parseInt(m[3]!, 16);
      const minor = parseInt(m[4]!, 16);
      out.push({ fd, path, dev: major * 256 + minor, ino: Number(m[5]), kind: m[1] as HeldLock['kind'], type: m[2] as HeldLock['type'] });
    }
  }
  return out;
}

/** inode identity as a key. */
export const inodeKey = (dev: number, ino: number) => `${dev}:${ino}`;
