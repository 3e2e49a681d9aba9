// Lock probes from ANOTHER process: a lock is only proven held when a
// separate process fails to take it. The probe is python3's fcntl.lockf, a
// classic POSIX lock on byte 0 length 1 — what virtlockd and other hosts take.

import { spawn, execFileSync } from 'node:child_process';
import type { ChildProcessWithoutNullStreams } from 'node:child_process';

// Paths travel hex-encoded: file names are bytes, and argv would force UTF-8.
const ONE_SHOT = `
import fcntl, os, sys, json
mode = sys.argv[1]
res = []
for h in sys.argv[2:]:
    p = bytes.fromhex(h)
    try:
        fd = os.open(p, os.O_RDWR)
    except OSError as e:
        res.append('error:' + (e.strerror or str(e))); continue
    try:
        fcntl.lockf(fd, (fcntl.LOCK_EX if mode == 'write' else fcntl.LOCK_SH) | fcntl.LOCK_NB, 1, 0)
        res.append('free')
    except OSError:
        res.append('held')
    os.close(fd)
print(json.dumps(res))
`;

export type ProbeResult = 'free' | 'held' | `error:${string}`;

/**
 * A path to probe: a string is its UTF-8 bytes; a Buffer is the exact bytes
 * (names that are not UTF-8). Results are keyed by the string, or by the
 * Buffer's bytes read as latin1 (one char per byte, as relockd keeps names).
 */
export type ProbePath = string | Buffer;

const keyOf = (p: ProbePath) => (typeof p === 'string' ? p : p.toString('latin1'));

/** Tries (and immediately drops) a lock on each path from a separate process. */
export function probe(paths: ProbePath[], mode: 'write' | 'read' = 'write'): Record<string, ProbeResult> {
  const hex = paths.map((p) => (typeof p === 'string' ? Buffer.from(p, 'utf8') : p).toString('hex'));
  const out = execFileSync('python3', ['-c', ONE_SHOT, mode, ...hex], { encoding: 'utf8' });
  const list = JSON.parse(out) as ProbeResult[];
  const res: Record<string, ProbeResult> = {};
  paths.forEach((p, i) => (res[keyOf(p)] = list[i]!));
  return res;
}

export function probeOne(path: ProbePath, mode: 'write' | 'read' = 'write'): ProbeResult {
  return probe([path], mode)[keyOf(path)]!;
}

const SERVE = `
import fcntl, os, sys
sys.stdout.write('ready\\n'); sys.stdout.flush()
for line in sys.stdin:
    mode, h = line.split()
    try:
        fd = os.open(bytes.fromhex(h), os.O_RDWR)
    except OSError as e:
        r = 'error:' + (e.strerror or str(e))
    else:
        try:
            fcntl.lockf(fd, (fcntl.LOCK_EX if mode == 'write' else fcntl.LOCK_SH) | fcntl.LOCK_NB, 1, 0)
            r = 'free'
        except OSError:
            r = 'held'
        os.close(fd)
    sys.stdout.write(r + '\\n'); sys.stdout.flush()
`;

/**
 * probeOne from one long-lived separate process: a probe costs a round trip
 * instead of a python start (which takes a second or more on a loaded
 * host), and does not block this process's event loop.
 */
export class Prober {
  private readonly waiting: Array<(r: ProbeResult) => void> = [];
  private buffered = '';

  private constructor(private readonly child: ChildProcessWithoutNullStreams) {
    // A prober that dies answers every probe still waiting, so no test waits out its timeout.
    child.stdin.on('error', () => {}); // EPIPE after an exit: answered below
    child.once('exit', (code, sig) => {
      for (const w of this.waiting.splice(0)) w(`error:prober exited (${code ?? sig})`);
    });
    child.stdout.on('data', (d: Buffer) => {
      this.buffered += d.toString('utf8');
      let nl: number;
      while ((nl = this.buffered.indexOf('\n')) >= 0) {
        const line = this.buffered.slice(0, nl);
        this.buffered = this.buffered.slice(nl + 1);
        this.waiting.shift()?.(line as ProbeResult);
      }
    });
  }

  static start(): Promise<Prober> {
    const child = spawn('python3', ['-c', SERVE]);
    return new Promise((resolve, reject) => {
      child.once('error', reject);
      child.stdout.once('data', () => resolve(new Prober(child)));
      child.once('exit', (code) => reject(new Error(`prober exited early (${code})`)));
    });
  }

  probe(path: ProbePath, mode: 'write' | 'read' = 'write'): Promise<ProbeResult> {
    const hex = (typeof path === 'string' ? Buffer.from(path, 'utf8') : path).toString('hex');
    if (this.child.exitCode !== null || this.child.signalCode !== null) return Promise.resolve('error:prober exited');
    return new Promise((resolve) => {
      this.waiting.push(resolve);
      this.child.stdin.write(`${mode} ${hex}\n`);
    });
  }

  /** Stops the prober process (by its pid). */
  stop(): void {
    if (this.child.pid && this.child.exitCode === null) this.child.kill('SIGKILL');
  }
}

const HAMMER = `
import fcntl, os, sys, time, json
paths = sys.argv[1:]
fds = []
for p in paths:
    fds.append(os.open(p, os.O_RDWR))
attempts = 0
wins = {}
sys.stdout.write('ready\\n'); sys.stdout.flush()
import select
while True:
    r, _, _ = select.select([sys.stdin], [], [], 0)
    if r:
        break
    for p, fd in zip(paths, fds):
        attempts += 1
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
            wins[p] = wins.get(p, 0) + 1
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, 0)
        except OSError:
            pass
print(json.dumps({'attempts': attempts, 'wins': wins}))
`;

/**
 * A separate process that tries F_SETLK on every path in a tight loop until
 * stopped, counting successes. Used to prove there is no instant at which a
 * lease is free (e.g. across re-execs).
 */
export class Hammer {
  private constructor(private readonly child: ChildProcessWithoutNullStreams) {}

  static start(paths: string[]): Promise<Hammer> {
    const child = spawn('python3', ['-c', HAMMER, ...paths]);
    return new Promise((resolve, reject) => {
      child.once('error', reject);
      child.stdout.once('data', () => resolve(new Hammer(child)));
      child.once('exit', (code) => reject(new Error(`hammer exited early (${code})`)));
    });
  }

  /** Stops the loop and returns how often it tried and won. */
  stop(): Promise<{ attempts: number; wins: Record<string, number> }> {
    return new Promise((resolve, reject) => {
      let out = '';
      this.child.stdout.on('data', (d) => (out += d));
      this.child.once('exit', () => {
        try {
          resolve(JSON.parse(out.trim().split('\n').pop()!));
        } catch (e) {
          reject(e);
        }
      });
      this.child.stdin.end('stop\n');
    });
  }

  kill(): void {
    if (this.child.pid && this.child.exitCode === null) this.child.kill('SIGKILL');
  }
}
