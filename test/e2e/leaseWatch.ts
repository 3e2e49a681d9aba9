// Who holds a lease, seen from outside the lock daemons, for the multi-host
// test (test/e2e/multihost.ts):
//
// * LeaseWatch: a separate python3 process polling F_GETLK on the lease file
//   at a high rate (re-opening it on every poll, so an autocreated lease file
//   that is unlinked and created again is followed). F_GETLK only asks, it
//   never takes the lock, so watching cannot disturb a migration. It records
//   every change (held / held-shared / free / missing) with a monotonic
//   timestamp: the free interval between the source daemon's release and the
//   destination daemon's acquire is the migration's lease gap. Optionally it
//   sends a signal to a pid at the first moment the lease is seen free (to
//   re-exec the source daemon exactly in that window).
// * lockHolders: which of the given processes hold a lock on the file, from
//   /proc/PID/fdinfo/* "lock:" lines (works for OFD locks, whose F_GETLK pid
//   is -1, and for classic POSIX locks alike).

import { spawn } from 'node:child_process';
import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { PYTHON } from './leases.js';
import { assertNotAborted, signalPid, trackPid, untrackPid } from './proc.js';

const WATCH = `
import fcntl, os, sys, time, json, struct, select, signal
path = sys.argv[1]; sig_pid = int(sys.argv[2]); interval = float(sys.argv[3])
FL = 'hhqqi4x'
Q = struct.pack(FL, fcntl.F_WRLCK, 0, 0, 1, 0)
def state():
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return 'missing'
    except OSError as e:
        return 'error:' + (e.strerror or str(e))
    try:
        t = struct.unpack(FL, fcntl.fcntl(fd, fcntl.F_GETLK, Q))[0]
    finally:
        os.close(fd)
    return 'free' if t == fcntl.F_UNLCK else ('held-shared' if t == fcntl.F_RDLCK else 'held')
t0 = time.monotonic()
last = state()
trans = [[0.0, last]]
polls = 1
signalled = None
sys.stdout.write('ready\\n'); sys.stdout.flush()
while True:
    if polls % 32 == 0 and select.select([sys.stdin], [], [], 0)[0]:
        break
    s = state(); polls += 1
    if s != last:
        now = (time.monotonic() - t0) * 1000
        trans.append([now, s])
        if sig_pid > 0 and signalled is None and last.startswith('held') and s in ('free', 'missing'):
            os.kill(sig_pid, signal.SIGUSR1); signalled = now
        last = s
    if interval > 0:
        time.sleep(interval)
print(json.dumps({'polls': polls, 'ms': (time.monotonic() - t0) * 1000, 'transitions': trans, 'signalled': signalled}))
`;

export type WatchState = 'held' | 'held-shared' | 'free' | 'missing' | `error:${string}`;

export interface WatchResult {
  polls: number;
  /** Wall time watched. */
  ms: number;
  /** [ms since start, state] at the start and at every change. */
  transitions: Array<[number, WatchState]>;
  /** When SIGUSR1 was sent (ms since start), if asked for and it happened. */
  signalled: number | null;
}

export class LeaseWatch {
  private constructor(private readonly child: ChildProcessWithoutNullStreams) {}

  /**
   * Starts watching `path`. `intervalS` = sleep between polls (0: spin; the
   * default 50 µs keeps a core mostly free for the migration). With
   * `signalPidOnFree`, that pid gets SIGUSR1 the first time the lease turns
   * from held to free.
   */
  static start(path: string, opts: { intervalS?: number; signalPidOnFree?: number } = {}): Promise<LeaseWatch> {
    assertNotAborted('the lease watcher');
    const child = spawn(PYTHON, ['-c', WATCH, path, String(opts.signalPidOnFree ?? 0), String(opts.intervalS ?? 0.00005)]);
    const pid = child.pid;
    if (pid) trackPid(pid, 'lease watcher');
    child.once('exit', () => pid && untrackPid(pid));
    return new Promise((resolve, reject) => {
      let err = '';
      child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
      child.once('error', reject);
      child.stdout.once('data', () => resolve(new LeaseWatch(child)));
      child.once('exit', (code) => reject(new Error(`lease watcher exited early (${code}): ${err.trim()}`)));
    });
  }

  stop(): Promise<WatchResult> {
    return new Promise((resolve, reject) => {
      let out = '';
      let err = '';
      this.child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
      this.child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
      this.child.once('exit', () => {
        try {
          resolve(JSON.parse(out.trim().split('\n').pop()!) as WatchResult);
        } catch {
          reject(new Error(`lease watcher gave no result: ${out.slice(-200)} ${err.trim()}`));
        }
      });
      this.child.stdin.end('stop\n');
    });
  }

  kill(): void {
    if (this.child.exitCode === null) signalPid(this.child.pid, 'SIGKILL');
  }
}

/** Intervals in which the lease was free (or its file missing) and that ended with it held again. */
export function freeIntervals(r: WatchResult): Array<{ from: number; to: number; ms: number }> {
  const out: Array<{ from: number; to: number; ms: number }> = [];
  let since: number | undefined;
  for (const [t, s] of r.transitions) {
    const free = s === 'free' || s === 'missing';
    if (free && since === undefined) since = t;
    else if (!free && s.startsWith('held') && since !== undefined) {
      out.push({ from: since, to: t, ms: t - since });
      since = undefined;
    }
  }
  return out;
}

/** The state at the end of the watch. */
export function finalState(r: WatchResult): WatchState {
  return r.transitions[r.transitions.length - 1]![1];
}

/** Average time between two polls, in ms. */
export function pollResolution(r: WatchResult): number {
  return r.ms / Math.max(1, r.polls);
}

/** "dev:ino" as /proc/locks and fdinfo print it: %02x:%02x:%lu. */
function lockId(path: string): string | undefined {
  let st;
  try {
    st = statSync(path, { bigint: true });
  } catch {
    return undefined;
  }
  const dev = st.dev;
  const major = ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn);
  const minor = (dev & 0xffn) | ((dev >> 12n) & ~0xffn);
  return `${major.toString(16).padStart(2, '0')}:${minor.toString(16).padStart(2, '0')}:${st.ino}`;
}

/**
 * For each pid: the lock it holds on `path` ('WRITE' / 'READ'), or undefined.
 * Read from /proc/PID/fdinfo: a lock is listed under the fd it was taken
 * through. An absent file has no holders.
 */
export function lockHolders(path: string, pids: number[]): Map<number, 'WRITE' | 'READ' | undefined> {
  const id = lockId(path);
  const out = new Map<number, 'WRITE' | 'READ' | undefined>();
  for (const pid of pids) {
    out.set(pid, undefined);
    if (!id) continue;
    let fds: string[] = [];
    try {
      fds = readdirSync(`/proc/${pid}/fdinfo`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      let info = '';
      try {
        info = readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8');
      } catch {
        continue;
      }
      for (const line of info.split('\n')) {
        if (!line.startsWith('lock:') || !line.includes(` ${id} `)) continue;
        // lock:	1: OFDLCK ADVISORY  WRITE -1 fe:00:2148222 0 0
        const m = /(WRITE|READ)\s+-?\d+\s+\S+\s+(\d+)\s/.exec(line);
        if (m && m[2] === '0') out.set(pid, m[1] as 'WRITE' | 'READ');
      }
    }
  }
  return out;
}
