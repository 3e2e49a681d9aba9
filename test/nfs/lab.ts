// The multi-host NFS lab (test/nfs/lab/multihost-setup.sh: User-Mode
// Linux guests srv, c1, c2 in a private network namespace; see
// docs/nfs-crosshost.md) and the runner's connection to the guest driver
// (test/nfs/guest-driver.mjs) on each client.
//
// The host cannot reach a guest's UNIX sockets, and the guests' network lives
// in the lab's namespace only. So each guest runs a driver listening on TCP,
// and the runner talks to it through a tiny relay started with
// `ip netns exec <lab netns> node -e <netcat>`: JSON lines over the relay's
// stdin/stdout. Every host-side process is tracked by pid (../e2e/proc.ts);
// the guest-side processes are the driver's, which SIGKILLs them by pid when
// its control connection closes.

import { spawn } from 'node:child_process';
import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { cleanEnv, ENV_PREFIX, ROOT } from '../lib/relockd.js';
import { run, signalPid, sleep, trackPid, untrackPid } from '../e2e/proc.js';
import type { RunResult } from '../e2e/proc.js';

export const DEFAULT_LAB_SCRIPT = join(ROOT, 'test', 'nfs', 'lab', 'multihost-setup.sh');
export const GUEST_DRIVER = join(ROOT, 'test', 'nfs', 'guest-driver.mjs');
const IP = existsSync('/usr/sbin/ip') ? '/usr/sbin/ip' : existsSync('/sbin/ip') ? '/sbin/ip' : '/usr/bin/ip';

/** What the lab's `up` needs, as its ensure_pkgs checks it: [path, Debian package]. */
export const LAB_BINARIES: Array<[string, string]> = [
  ['/usr/bin/linux.uml', 'user-mode-linux'],
  ['/usr/sbin/rpc.nfsd', 'nfs-kernel-server'],
  ['/usr/sbin/mount.nfs', 'nfs-common'],
  ['/usr/sbin/rpcbind', 'rpcbind'],
  [IP, 'iproute2'],
  ['/usr/sbin/mkfs.ext4', 'e2fsprogs'],
  ['/usr/sbin/modprobe', 'kmod'],
  ['/usr/bin/python3', 'python3'],
];

export interface LabEnv {
  ns: string;
  subnet: string;
  nclients: number;
}

export class Lab {
  constructor(
    readonly script: string,
    readonly dir: string,
  ) {}

  get exists(): boolean {
    return existsSync(join(this.dir, 'state', 'env'));
  }

  env(): LabEnv {
    const text = readFileSync(join(this.dir, 'state', 'env'), 'utf8');
    const get = (k: string) => new RegExp(`^${k}=(.*)$`, 'm').exec(text)?.[1]?.trim() ?? '';
    return { ns: get('MH_NS'), subnet: get('MH_SUBNET') || '10.250.0', nclients: Number(get('MH_NCLIENTS') || '0') };
  }

  ip(host: string): string {
    const { subnet } = this.env();
    if (host === 'srv') return `${subnet}.10`;
    const m = /^c(\d+)$/.exec(host);
    if (!m) throw new Error(`unknown lab host ${host}`);
    return `${subnet}.${10 + Number(m[1])}`;
  }

  /** Without `install`, a missing Debian package makes `up` fail with the list (MH_NO_INSTALL=1) instead of running apt-get. */
  up(nclients: number, install = true, timeoutMs = 900_000): Promise<RunResult> {
    return run('/bin/bash', [this.script, 'up', this.dir, String(nclients)], { timeoutMs, env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive', MH_NO_INSTALL: install ? '0' : '1' } });
  }

  /** A shell command inside a guest (the lab's file-drop agent; ~40 ms overhead). */
  exec(host: string, cmd: string, timeoutS = 60): Promise<RunResult> {
    return run('/bin/bash', [this.script, 'exec', this.dir, host, cmd, String(timeoutS)], { timeoutMs: (timeoutS + 15) * 1000 });
  }

  status(): Promise<RunResult> {
    return run('/bin/bash', [this.script, 'status', this.dir], { timeoutMs: 30_000 });
  }

  /**
   * SIGKILL of one guest's whole UML process group (the lab's `crash`). Before
   * a `down --purge` this saves the ~10 s per guest that down's clean
   * shutdown waits (its poweroff never answers); nothing of the guest is kept.
   */
  crash(host: string): Promise<RunResult> {
    return runEvenIfAborted('/bin/bash', [this.script, 'crash', this.dir, host], 60_000);
  }

  /**
   * Also after an interrupt (proc.ts's run() refuses to start anything once
   * aborted): the guests must go. `hard`: SIGKILL of each guest's process group
   * without down's clean poweroff (which never answers and costs ~10 s per
   * guest); then whatever still runs in the lab's netns is SIGKILLed by pid, and
   * down fails if anything survives.
   */
  down(purge: boolean, hard = false): Promise<RunResult> {
    return runEvenIfAborted('/bin/bash', [this.script, 'down', this.dir, ...(purge ? ['--purge'] : []), ...(hard ? ['--hard'] : [])], 300_000);
  }

  /** The UML kernels' process-group leaders recorded by the lab (host pids). */
  umlPids(): number[] {
    const out: number[] = [];
    for (const h of ['srv', ...Array.from({ length: 8 }, (_, i) => `c${i + 1}`)]) {
      const f = join(this.dir, 'run', `${h}.pid`);
      if (existsSync(f)) {
        const pid = Number(readFileSync(f, 'utf8').trim());
        if (pid > 1) out.push(pid);
      }
    }
    return out;
  }
}

/** Like proc.ts's run(), minus its refusal after abort(): for tearing the lab down on SIGINT or the time limit. */
function runEvenIfAborted(cmd: string, args: string[], timeoutMs: number): Promise<RunResult> {
  return new Promise((resolve) => {
    const t0 = performance.now();
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    if (child.pid) trackPid(child.pid, `${cmd} ${args.join(' ')}`);
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => {
      timedOut = true;
      signalPid(child.pid, 'SIGKILL');
    }, timeoutMs);
    child.once('error', (e) => {
      clearTimeout(timer);
      resolve({ code: 127, signal: null, stdout, stderr: `${stderr}spawn ${cmd}: ${e.message}`, ms: performance.now() - t0, timedOut });
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      if (child.pid) untrackPid(child.pid);
      resolve({ code, signal, stdout, stderr, ms: performance.now() - t0, timedOut });
    });
  });
}

export async function netnsExists(ns: string): Promise<boolean> {
  const r = await run(IP, ['netns', 'list'], { timeoutMs: 10_000 });
  return r.stdout.split('\n').some((l) => l.split(/\s+/)[0] === ns);
}

// ------------------------------------------------------------------ guest driver connection

/** stdin -> TCP, TCP -> stdout; retries the connect while the driver starts. */
const NETCAT = `
const net = require('net');
const [addr, port] = process.argv.slice(1);
let tries = 0;
function go() {
  const s = net.connect(Number(port), addr);
  let connected = false;
  s.once('connect', () => {
    connected = true;
    s.setNoDelay(true);
    process.stdin.pipe(s);
    s.pipe(process.stdout);
    s.on('close', () => process.exit(0));
  });
  s.on('error', (e) => {
    if (connected) process.exit(1);
    if (++tries > 300) { process.stderr.write('relay: ' + e.message + '\\n'); process.exit(1); }
    setTimeout(go, 100);
  });
}
go();
process.stdin.on('end', () => process.exit(0));
`;

export interface AcquireResult {
  ok: boolean;
  ms: number;
  /** epoch ms (guest clock) right before the request was sent / when the reply arrived */
  t0: number;
  t1: number;
  error?: string;
}

export interface LoopStats {
  attempts: number;
  wins: number;
  busy: number;
  other: number;
  otherErrors: string[];
  first: AcquireResult | null;
  tStart: number;
  tOk: number | null;
  okAttemptT0?: number;
  lastAttemptMs: number | null;
  maxGapMs: number;
  tEnd: number;
}

export interface FcntlHammerStats {
  attempts: number;
  wins: Record<string, number>;
  errors: Record<string, number>;
}

export interface ReexecResult {
  ms: number;
  blackoutMs: number;
  resources: number;
  clients: number;
}

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
  op: string;
}

export class GuestError extends Error {}

export class Guest {
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private buf = '';
  private closed = false;
  /** The driver's pid inside the guest. */
  driverPid = 0;
  /** This guest's clock minus the host's (ms), measured by clockOffset(); guest timestamps are corrected with it. */
  offsetMs = 0;

  private constructor(
    readonly lab: Lab,
    readonly name: string,
    readonly logDir: string,
    private readonly relay: ChildProcessWithoutNullStreams,
  ) {
    relay.stdout.setEncoding('utf8').on('data', (d: string) => this.onData(d));
    relay.stderr.setEncoding('utf8').on('data', () => {});
    relay.once('exit', () => this.onClose());
  }

  /** Starts the driver in the guest and connects to it through a relay in the lab's namespace. */
  static async start(lab: Lab, name: string, logDir: string, port = 7391): Promise<Guest> {
    const out = join(logDir, `${name}-driver.out`);
    const cmd = `setsid ${process.execPath} ${GUEST_DRIVER} --name ${name} --port ${port} --log-dir ${logDir} > ${out} 2>&1 < /dev/null & echo $!`;
    const r = await lab.exec(name, cmd, 60);
    const driverPid = Number(r.stdout.trim().split('\n').pop());
    if (r.code !== 0 || !(driverPid > 1)) throw new Error(`starting the guest driver on ${name} failed (exit ${r.code}): ${r.stdout}${r.stderr}`);
    const { ns } = lab.env();
    // `ip netns exec` execs in place: the pid we track is the relay's.
    const relay = spawn(IP, ['netns', 'exec', ns, '/usr/bin/env', ...ENV_PREFIX, process.execPath, '-e', NETCAT, lab.ip(name), String(port)], { stdio: ['pipe', 'pipe', 'pipe'], env: cleanEnv() });
    if (!relay.pid) throw new Error(`cannot spawn the relay to ${name}`);
    trackPid(relay.pid, `relay to ${name}`);
    relay.once('exit', () => untrackPid(relay.pid!));
    const g = new Guest(lab, name, logDir, relay);
    g.driverPid = driverPid;
    try {
      const hello = await g.call<{ host: string; pid: number }>('hello', {}, 45_000);
      if (hello.host !== name) throw new Error(`driver on ${name} says it runs on ${hello.host}`);
    } catch (e) {
      let text = '';
      try {
        text = readFileSync(out, 'utf8').slice(-2000);
      } catch {
        /* none */
      }
      g.kill();
      throw new Error(`guest driver on ${name} not reachable: ${(e as Error).message}\n${text}`);
    }
    return g;
  }

  get relayPid(): number {
    return this.relay.pid!;
  }

  private onData(d: string): void {
    this.buf += d;
    let i: number;
    while ((i = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, i);
      this.buf = this.buf.slice(i + 1);
      let msg: { id: number; ok: boolean; result?: unknown; error?: string };
      try {
        msg = JSON.parse(line);
      } catch {
        continue;
      }
      const p = this.pending.get(msg.id);
      if (!p) continue;
      this.pending.delete(msg.id);
      clearTimeout(p.timer);
      if (msg.ok) p.resolve(msg.result);
      else p.reject(new GuestError(`${this.name} ${p.op}: ${msg.error}`));
    }
  }

  private onClose(): void {
    this.closed = true;
    for (const [, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new GuestError(`${this.name} ${p.op}: connection to the guest driver closed`));
    }
    this.pending.clear();
  }

  call<T>(op: string, args: Record<string, unknown> = {}, timeoutMs = 60_000): Promise<T> {
    if (this.closed) return Promise.reject(new GuestError(`${this.name} ${op}: connection to the guest driver is closed`));
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new GuestError(`${this.name} ${op}: no answer from the guest driver within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, timer, op });
      this.relay.stdin.write(`${JSON.stringify({ id, op, ...args })}\n`);
    });
  }

  /**
   * Guest clock minus host clock (ms), from the round trip with the smallest
   * delay. UML guests keep their own clock: offsets of ~10 ms between guests
   * were seen, so cross-host intervals are corrected with these.
   */
  async clockOffset(rounds = 7): Promise<{ offsetMs: number; rttMs: number }> {
    let best = { offsetMs: NaN, rttMs: Infinity };
    for (let i = 0; i < rounds; i++) {
      const a = performance.timeOrigin + performance.now();
      const r = await this.call<{ now: number }>('now', {}, 10_000);
      const b = performance.timeOrigin + performance.now();
      if (b - a < best.rttMs) best = { offsetMs: r.now - (a + b) / 2, rttMs: b - a };
    }
    this.offsetMs = best.offsetMs;
    return best;
  }

  /** Asks the driver to SIGKILL everything it started and exit; then the relay ends. */
  async shutdown(): Promise<{ left: Array<{ pid: number; what: string }> } | undefined> {
    if (this.closed) return undefined;
    try {
      return await this.call('shutdown', {}, 20_000);
    } catch {
      return undefined;
    } finally {
      this.relay.stdin.end();
      const end = Date.now() + 5000;
      while (!this.closed && Date.now() < end) await sleep(20);
      if (!this.closed) this.kill();
    }
  }

  /** The relay, by pid (the driver then sees its control connection close and cleans up). */
  kill(): void {
    signalPid(this.relay.pid, 'SIGKILL');
  }

  /** Host-side size of a log the driver writes (for "log since" on failures). */
  logMark(file: string): number {
    try {
      return statSync(join(this.logDir, file)).size;
    } catch {
      return 0;
    }
  }

  logSince(file: string, mark: number): string {
    try {
      return readFileSync(join(this.logDir, file)).subarray(mark).toString('utf8');
    } catch {
      return '';
    }
  }
}
