// Process bookkeeping for the libvirt end-to-end test: run commands with a
// time limit, remember every pid and every mount namespace we create, and
// stop all of it by pid — on success, on a failed step, on SIGINT/SIGTERM,
// and (synchronously, as a last resort) when the runner exits.

import { spawn } from 'node:child_process';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** Wall time from spawn() to exit, in ms. */
  ms: number;
  timedOut: boolean;
}

/** pid → description of every process we started that may still run. */
const trackedPids = new Map<number, string>();
/** Mount namespaces (readlink of /proc/PID/ns/mnt) we created; everything in them is ours. */
const trackedNamespaces = new Set<string>();

let aborted = false;
/** After abort() nothing new is started: run() fails at once and the start functions throw. */
export function abort(): void {
  aborted = true;
}
export function isAborted(): boolean {
  return aborted;
}
export function assertNotAborted(what: string): void {
  if (aborted) throw new Error(`aborted: not starting ${what}`);
}

export function trackPid(pid: number, what: string): void {
  trackedPids.set(pid, what);
}
export function untrackPid(pid: number): void {
  trackedPids.delete(pid);
}
/**
 * A mount namespace's id is an inode number, and the kernel hands a dead
 * namespace's number to the next one created — possibly by another program.
 * So a process counts as ours only if its /proc/PID/mountinfo also mentions
 * `marker` (our work directory, bind-mounted into every namespace we make).
 */
const namespaceMarkers = new Map<string, string>();
export function trackNamespace(ns: string, marker?: string): void {
  trackedNamespaces.add(ns);
  if (marker !== undefined) namespaceMarkers.set(ns, marker);
}

/**
 * Mounts whose processes are ours: [mount point, source path], e.g.
 * ['/run', W/host-a/run] for a simulated host's private /run. Unlike a
 * namespace id this cannot be reused by someone else.
 */
const trackedMounts = new Map<string, [string, string]>();
export function trackMount(mountPoint: string, root: string): void {
  trackedMounts.set(`${mountPoint}\0${root}`, [mountPoint, root]);
}

function mountInfo(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/mountinfo`, 'utf8');
  } catch {
    return '';
  }
}

/** Every live process that has `root` (a path on the host) mounted at `mountPoint` (mountinfo fields 4 and 5). */
export function pidsWithMount(mountPoint: string, root: string): number[] {
  // mountinfo's root is relative to its filesystem: all of `root` when /tmp is on /, less when not
  const tail3 = root.split('/').slice(-3).join('/');
  const ours = (line: string) => {
    const f = line.split(' ');
    return f[4] === mountPoint && f[3] !== undefined && f[3].endsWith(tail3) && root.endsWith(f[3]);
  };
  const out: number[] = [];
  for (const n of readdirSync('/proc')) {
    if (!/^\d+$/.test(n)) continue;
    const pid = Number(n);
    if (pid === process.pid) continue;
    const info = mountInfo(pid);
    if (info.includes(tail3) && info.split('\n').some(ours) && pidAlive(pid)) out.push(pid);
  }
  return out;
}

function trackedMountPids(): number[] {
  const out = new Set<number>();
  for (const [mp, root] of trackedMounts.values()) for (const p of pidsWithMount(mp, root)) out.add(p);
  return [...out];
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export function signalPid(pid: number | undefined, sig: NodeJS.Signals | number): boolean {
  if (!pid || pid <= 1) return false;
  try {
    process.kill(pid, sig);
    return true;
  } catch {
    return false;
  }
}

/**
 * Runs a command to completion (stdin closed unless `input` is given),
 * collecting its output; SIGKILLs it (by pid) after `timeoutMs`.
 */
export function run(cmd: string, args: string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv; input?: string } = {}): Promise<RunResult> {
  if (aborted) return Promise.resolve({ code: null, signal: null, stdout: '', stderr: `aborted: not running ${cmd}`, ms: 0, timedOut: false });
  return new Promise((resolve) => {
    const t0 = performance.now();
    let exitMs = -1;
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    let done = false;
    const child = spawn(cmd, args, { env: opts.env ?? process.env, stdio: [opts.input !== undefined ? 'pipe' : 'ignore', 'pipe', 'pipe'] });
    const pid = child.pid;
    if (pid) trackPid(pid, `${cmd} ${args.join(' ')}`.slice(0, 200));
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => {
      timedOut = true;
      signalPid(pid, 'SIGKILL');
    }, opts.timeoutMs ?? 60_000);
    const finish = (code: number | null, signal: NodeJS.Signals | null) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (pid) untrackPid(pid);
      resolve({ code, signal, stdout, stderr, ms: (exitMs >= 0 ? exitMs : performance.now()) - t0, timedOut });
    };
    child.once('exit', () => (exitMs = performance.now()));
    child.once('error', (e) => {
      stderr += `spawn ${cmd}: ${e.message}`;
      finish(127, null);
    });
    child.once('close', (code, signal) => finish(code, signal));
    if (opts.input !== undefined) child.stdin!.end(opts.input);
  });
}

/** The process state letter from /proc/PID/stat (R, S, D, Z, ...), undefined when there is no such process. */
export function procState(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
  } catch {
    return undefined;
  }
}

/** Running (a zombie counts as gone: it holds no fds and no locks). */
export function pidAlive(pid: number): boolean {
  const s = procState(pid);
  return s !== undefined && s !== 'Z' && s !== 'X';
}

/** Field 22 of /proc/PID/stat: start time in clock ticks since boot — identifies a process beyond its pid. */
export function pidStartTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

export function mountNamespace(pid: number | 'self'): string | undefined {
  try {
    return readlinkSync(`/proc/${pid}/ns/mnt`);
  } catch {
    return undefined;
  }
}

/** Every live process whose mount namespace is `ns`. */
export function pidsInNamespace(ns: string): number[] {
  const out: number[] = [];
  for (const n of readdirSync('/proc')) {
    if (!/^\d+$/.test(n)) continue;
    const pid = Number(n);
    if (pid === process.pid) continue;
    if (mountNamespace(pid) !== ns || !pidAlive(pid)) continue;
    const marker = namespaceMarkers.get(ns);
    if (marker !== undefined && !mountInfo(pid).includes(marker)) continue; // a reused namespace id: not ours
    out.push(pid);
  }
  return out;
}

export async function waitGone(pid: number, timeoutMs: number): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (pidAlive(pid)) {
    if (Date.now() > end) return false;
    await sleep(10);
  }
  return true;
}

/** `sig`, wait up to `graceMs`, then SIGKILL and wait again. Resolves true when the process is gone. */
export async function stopPid(pid: number, sig: NodeJS.Signals = 'SIGTERM', graceMs = 10_000): Promise<boolean> {
  if (!pidAlive(pid)) return true;
  signalPid(pid, sig);
  if (await waitGone(pid, graceMs)) return true;
  signalPid(pid, 'SIGKILL');
  return waitGone(pid, 10_000);
}

/** SIGKILLs everything left in our namespaces (QEMU guests first) and every tracked pid; returns what was still alive. */
export async function killEverything(): Promise<string[]> {
  const killed: string[] = [];
  for (const ns of trackedNamespaces) {
    for (const pid of pidsInNamespace(ns)) {
      killed.push(`${pid} (${cmdline(pid)}) in ${ns}`);
      signalPid(pid, 'SIGKILL');
    }
  }
  for (const pid of trackedMountPids()) {
    killed.push(`${pid} (${cmdline(pid)})`);
    signalPid(pid, 'SIGKILL');
  }
  for (const [pid, what] of trackedPids) {
    if (pidAlive(pid)) {
      killed.push(`${pid} (${what})`);
      signalPid(pid, 'SIGKILL');
    }
  }
  for (const ns of trackedNamespaces) for (const pid of pidsInNamespace(ns)) await waitGone(pid, 5000);
  for (const pid of trackedMountPids()) await waitGone(pid, 5000);
  for (const pid of trackedPids.keys()) await waitGone(pid, 5000);
  return killed;
}

/** Processes of ours still alive (after cleanup this must be empty). */
export function leftovers(): string[] {
  const out: string[] = [];
  for (const ns of trackedNamespaces) for (const pid of pidsInNamespace(ns)) out.push(`${pid} (${cmdline(pid)}) in ${ns}`);
  for (const pid of trackedMountPids()) out.push(`${pid} (${cmdline(pid)})`);
  for (const [pid, what] of trackedPids) if (pidAlive(pid)) out.push(`${pid} (${what})`);
  return out;
}

/** Synchronous last resort for process.on('exit'): SIGKILL by pid, no waiting. */
export function killEverythingSync(): void {
  for (const ns of trackedNamespaces) {
    try {
      for (const pid of pidsInNamespace(ns)) signalPid(pid, 'SIGKILL');
    } catch {
      /* /proc unreadable: nothing more we can do */
    }
  }
  try {
    for (const pid of trackedMountPids()) signalPid(pid, 'SIGKILL');
  } catch {
    /* /proc unreadable */
  }
  for (const pid of trackedPids.keys()) if (pidAlive(pid)) signalPid(pid, 'SIGKILL');
}

export function cmdline(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ').trim().slice(0, 120);
  } catch {
    return '?';
  }
}

export function median(xs: number[]): number | undefined {
  if (xs.length === 0) return undefined;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1]! + s[m]!) / 2;
}
