// reexecbench: how long a SIGUSR1 re-exec blacks a daemon out, relockd
// against the real virtlockd in the same run (issue "re-exec", §5).
//
//   npm run build && node dist/bench/reexecbench.js [--leases 0,1000,10000,50000]
//        [--clients 10,1000] [--runs 5] [--warmup 1] [--targets relockd,virtlockd]
//        [--probe 200] [--json]
//
// Per cell (daemon × L leases × C clients) a fresh daemon holds L leases
// spread over C registered connections of a load generator (a separate
// process, bench/reexec-worker.ts). For each re-exec the generator sends
// SIGUSR1 itself (t0 = just before), and measures, in ms since t0:
//   blackout      the first reply of the new image, to any request sent
//                 after the exec was seen (the ACQUIREs below, or REGISTER on a
//                 NEW connection, also made once the exec is seen);
//   new conn      the reply to that REGISTER: a new client queues behind the
//                 old clients' requests;
//   served again  per old client, the reply to an ACQUIRE sent once the exec
//                 is seen (only the new image can answer it): max and median
//                 over the clients;
//   early PING    per old client, the PONG to a keepalive PING sent right
//                 after SIGUSR1 (it lands in the quiesce): max, and how many
//                 were never answered;
//   exec seen     when /proc/<pid>/stat shows the new image (polled every
//                 1 ms): the old image's share (quiesce, save state, execve);
//   errors        error replies, disconnects, lost requests: must stay 0.
// After each re-exec a sample of leases is probed from another process
// (python3 fcntl.lockf, test/lib/probe.ts): every one must still be held.
// relockd's own log line ("re-exec complete": blackoutMs, bootMs) gives the
// breakdown of its blackout. The daemons of a cell are re-exec'd alternately
// (relockd, virtlockd, virtlockd, relockd, …), so drift hits both alike.
// See bench/README.md.

import { execFileSync } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, statfsSync } from 'node:fs';
import { cpus } from 'node:os';
import { dirname, join, resolve as resolvePath } from 'node:path';
import { parseArgs } from 'node:util';
import { NODE_FLAGS, startRelockd } from '../test/lib/relockd.js';
import { startVirtlockd, virtlockdAvailable, virtlockdUnavailableReason, visibleTmpDir } from '../test/lib/virtlockd.js';
import { probe } from '../test/lib/probe.js';
import { statTicks } from './worker.js';
import type { CellRunMsg, CellSetupMsg, FromReexecWorker, RunResult, ToReexecWorker } from './reexec-worker.js';
import { fmt1, fmtMs, hostJiffies, median, table } from './stats.js';
import { Generator } from './generator.js';
import { fmtMb, procMem } from './procmem.js';
import type { ProcMem } from './procmem.js';


// ---- options -------------------------------------------------------------------

const USAGE = `usage: node dist/bench/reexecbench.js [options]
  --leases LIST      leases held during the re-exec (default 0,1000,10000,50000)
  --clients LIST     registered connections holding them (default 10,1000)
  --runs N           measured re-execs per cell; medians are reported (default 5)
  --warmup N         re-execs per cell before the measured ones (default 1)
  --targets LIST     relockd,virtlockd (default both; virtlockd is skipped, with the
                     reason, when test/lib/virtlockd.ts says it is unavailable)
  --probe N          leases probed from another process after every re-exec (default
                     200, spread over all; 0: none)
  --max-clients N    max_clients of both daemons (default 5000; both default to 1024)
  --state-dir DIR    where relockd's --runtime-dir (socket, state file) goes (default: a temp
                     dir in /dev/shm when it is a tmpfs, as /run is in production; virtlockd's
                     state goes to the private tmpfs on /run its harness mounts)
  --log-level L      relockd's --log-level (default info: its "re-exec complete" line,
                     which has the breakdown, is at info)
  --raw-env          start relockd with this environment as it is; by default
                     NODE_EXTRA_CA_CERTS is removed from it: with it, every Node start-up
                     (so every re-exec) builds an OpenSSL root certificate store first
                     (+30-60 ms here); relockd.service does not set it
  --alt PATH         also measure another relockd build as 'relockd-alt' (PATH = its
                     bin/relockd.cjs, with its dist/ and build/ beside it)
  --boot-profile DIR every re-exec'd relockd image writes a CPU profile of its first 250 ms
                     to DIR (bin/relockd.cjs's RELOCKD_BOOT_PROFILE; relockd then runs without
                     Node's permission model, which refuses the inspector): for
                     node dist/bench/profsummary.js; the profiler adds its own cost to every phase
  --timeout S        per re-exec, until every request is answered (default 60)
  --json             results as JSON on stdout (the tables go to stderr)
  -h, --help`;

interface Opts {
  leases: number[];
  clients: number[];
  runs: number;
  warmup: number;
  targets: string[];
  probe: number;
  maxClients: number;
  logLevel: string;
  stateDir?: string;
  rawEnv: boolean;
  alt?: string;
  bootProfile?: string;
  timeoutMs: number;
  json: boolean;
}

function parseOpts(): Opts {
  const { values } = parseArgs({
    options: {
      leases: { type: 'string', default: '0,1000,10000,50000' },
      clients: { type: 'string', default: '10,1000' },
      runs: { type: 'string', default: '5' },
      warmup: { type: 'string', default: '1' },
      targets: { type: 'string', default: 'relockd,virtlockd' },
      probe: { type: 'string', default: '200' },
      'max-clients': { type: 'string', default: '5000' },
      'log-level': { type: 'string', default: 'info' },
      'state-dir': { type: 'string' },
      'raw-env': { type: 'boolean', default: false },
      alt: { type: 'string' },
      'boot-profile': { type: 'string' },
      timeout: { type: 'string', default: '60' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    process.exit(0);
  }
  const int = (s: string, what: string, min: number) => {
    const n = Number(s);
    if (!Number.isInteger(n) || n < min) throw new Error(`bad ${what}: ${s}`);
    return n;
  };
  const list = (s: string) => s.split(',').map((x) => x.trim()).filter(Boolean);
  const targets = list(values.targets!);
  for (const t of targets) if (!['relockd', 'virtlockd'].includes(t)) throw new Error(`unknown target ${t}`);
  const clients = list(values.clients!).map((c) => int(c, '--clients', 1));
  const maxClients = int(values['max-clients']!, '--max-clients', 1);
  if (Math.max(...clients) + 1 > maxClients) throw new Error(`--clients ${Math.max(...clients)} needs --max-clients above it`);
  return {
    leases: list(values.leases!).map((l) => int(l, '--leases', 0)),
    clients,
    runs: int(values.runs!, '--runs', 1),
    warmup: int(values.warmup!, '--warmup', 0),
    targets,
    probe: int(values.probe!, '--probe', 0),
    maxClients,
    logLevel: values['log-level']!,
    stateDir: values['state-dir'] ? resolvePath(values['state-dir']) : undefined,
    rawEnv: values['raw-env']!,
    alt: values.alt ? resolvePath(values.alt) : undefined,
    bootProfile: values['boot-profile'] ? resolvePath(values['boot-profile']) : undefined,
    timeoutMs: Number(values.timeout) * 1000,
    json: values.json!,
  };
}

// ---- daemons ---------------------------------------------------------------------

interface Daemon {
  label: string;
  kind: 'relockd' | 'virtlockd';
  pid: number;
  socketPath: string;
  logs(): string;
  alive(): boolean;
  stop(): Promise<void>;
}

interface Target {
  label: string;
  kind: 'relockd' | 'virtlockd';
  start(dir: string): Promise<Daemon>;
}

function relockdTarget(label: string, opts: Opts, bin?: string): Target {
  return {
    label,
    kind: 'relockd',
    start: async (dir) => {
      const d = await startRelockd({
        dir,
        bin,
        logLevel: opts.logLevel,
        args: ['--max-clients', String(opts.maxClients)],
        // undefined: dropped by spawn()
        env: { ...(opts.rawEnv ? {} : { NODE_EXTRA_CA_CERTS: undefined }), ...(opts.bootProfile ? { RELOCKD_BOOT_PROFILE: opts.bootProfile } : {}) },
        ...(opts.bootProfile ? { nodeFlags: NODE_FLAGS.filter((f) => f !== '--experimental-permission' && !f.startsWith('--allow-')) } : {}),
      });
      return {
        label,
        kind: 'relockd',
        pid: d.pid,
        socketPath: d.socketPath,
        logs: d.logs,
        alive: () => d.child.exitCode === null && d.child.signalCode === null,
        stop: d.stop,
      };
    },
  };
}

function virtlockdTarget(opts: Opts): Target {
  return {
    label: 'virtlockd',
    kind: 'virtlockd',
    start: async (dir) => {
      const d = await startVirtlockd({ dir, maxClients: opts.maxClients });
      return { label: 'virtlockd', kind: 'virtlockd', pid: d.pid, socketPath: d.socketPath, logs: d.logs, alive: d.isRunning, stop: () => d.stop() };
    },
  };
}

/**
 * One fd per lease and per client, in the daemons and in the generator:
 * raise this process's RLIMIT_NOFILE (soft and hard; root may) before any
 * child is started, so that all of them inherit it. Returns the soft limit.
 */
function raiseFdLimit(need: number, err: (s: string) => void): number {
  const read = () => {
    const line = readFileSync('/proc/self/limits', 'utf8').split('\n').find((l) => l.startsWith('Max open files'))!;
    const [s, h] = line.replace('Max open files', '').trim().split(/\s+/);
    return { soft: s === 'unlimited' ? Infinity : Number(s), hard: h === 'unlimited' ? Infinity : Number(h) };
  };
  const cur = read();
  if (cur.soft >= need) return cur.soft;
  let nrOpen = 1048576;
  try {
    nrOpen = Number(readFileSync('/proc/sys/fs/nr_open', 'utf8'));
  } catch {
    /* default */
  }
  const soft = Math.min(need, nrOpen);
  const hard = Math.max(soft, Math.min(cur.hard, nrOpen));
  try {
    execFileSync('prlimit', ['--pid', String(process.pid), `--nofile=${soft}:${hard}`], { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (e) {
    err(`cannot raise RLIMIT_NOFILE to ${need} (prlimit: ${((e as { stderr?: Buffer }).stderr ?? '').toString().trim() || (e as Error).message})`);
  }
  return read().soft;
}

// ---- the generator process ----------------------------------------------------------

type Gen = Generator<ToReexecWorker, FromReexecWorker>;

// ---- cells and runs --------------------------------------------------------------------

/** relockd's "re-exec complete" line. */
interface ReexecLine {
  blackoutMs?: number;
  bootMs?: Record<string, number>;
  clients?: number;
  resources?: number;
  /**
   * Old image, from the "time" of its "re-exec requested" and "re-exec:
   * state written, executing" lines (ms resolution): quiesce, snapshot,
   * validate, write + fsync, clear FD_CLOEXEC.
   */
  saveMs?: number;
  /** Old image, from its "state written" line: quiesce (from the request), snapshot, serialise, write, cloexec (each step's ms). */
  savePhases?: Record<string, number>;
}

interface Run {
  warmup: boolean;
  result: RunResult;
  /** Daemon CPU (utime + stime, all threads, both images) over the run, ms. */
  cpuMs: number;
  /** CPU used by everything but the daemon and the generator during the run, in cores (noise). */
  otherCores: number;
  daemonLine: ReexecLine | null;
  probed: number;
  notHeld: string[];
  /** Problems found by the bench itself (daemon gone, lease count wrong). */
  problems: string[];
}

interface Cell {
  id: string;
  target: Target;
  leases: number;
  clients: number;
  leaseDir: string;
  daemon: Daemon | null;
  setupMs: number;
  runs: Run[];
  /** Why the cell stopped early. */
  aborted?: string;
  /** Daemon memory once every lease is held (fresh image), and after the last re-exec (re-exec'd image). */
  memSetup?: ProcMem | null;
  memFinal?: ProcMem | null;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Waits for the next "re-exec complete" line after `from` in relockd's output. */
/** The JSON log line after `from` in `s` whose msg starts with `msg`. */
function findLine<T>(s: string, from: number, msg: string): T | null | undefined {
  const at = s.indexOf(`"msg":"${msg}`, from);
  if (at < 0) return undefined;
  const start = s.lastIndexOf('\n', at) + 1;
  const stop = s.indexOf('\n', at);
  if (stop < 0) return undefined;
  try {
    return JSON.parse(s.slice(start, stop)) as T;
  } catch {
    return null;
  }
}

/**
 * Waits for the next "re-exec complete" line after `from` in relockd's
 * output; adds saveMs from the old image's two lines before it.
 */
async function waitReexecLine(d: Daemon, from: number, timeoutMs: number): Promise<ReexecLine | null> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const s = d.logs();
    const line = findLine<ReexecLine>(s, from, 're-exec complete');
    if (line !== undefined) {
      if (line) {
        type Timed = { time?: string; saveMs?: Record<string, number> };
        const req = findLine<Timed>(s, from, 're-exec requested');
        const wrote = findLine<Timed>(s, from, 're-exec: state written');
        if (req?.time && wrote?.time) line.saveMs = Date.parse(wrote.time) - Date.parse(req.time);
        if (wrote?.saveMs) line.savePhases = wrote.saveMs;
      }
      return line;
    }
    if (Date.now() > end || !d.alive()) return null;
    await sleep(5);
  }
}

function sampleLeases(cell: Cell, n: number): string[] {
  const L = cell.leases;
  if (L === 0 || n === 0) return [];
  const idx = new Set<number>([0, L - 1]);
  for (let k = 0; k < n && idx.size < Math.min(n, L); k++) idx.add(Math.floor((k * L) / n));
  return [...idx].map((j) => join(cell.leaseDir, `lease-${j}.img`));
}

async function runOnce(cell: Cell, gen: Gen, opts: Opts, clk: number, warmup: boolean, seq: number): Promise<Run> {
  const d = cell.daemon!;
  const logFrom = d.logs().length;
  const ticks0 = statTicks(`/proc/${d.pid}/stat`);
  const host0 = hostJiffies();
  const wall0 = process.hrtime.bigint();
  const msg: CellRunMsg = {
    type: 'run',
    id: cell.id,
    pid: d.pid,
    newOwnerPid: 20_000_000 + seq,
    timeoutMs: opts.timeoutMs,
    graceMs: 300,
  };
  const r = await gen.request(msg);
  if (r.type !== 'result') throw new Error(`unexpected ${r.type}`);
  const host1 = hostJiffies();
  const wallS = Number(process.hrtime.bigint() - wall0) / 1e9;
  let ticks1 = NaN;
  try {
    ticks1 = statTicks(`/proc/${d.pid}/stat`);
  } catch {
    /* gone */
  }
  const otherCores = Math.max(0, ((host1.busy - host0.busy) - (ticks1 - ticks0)) / clk - r.result.genCpuMs / 1000) / wallS;
  const problems: string[] = [];
  let line: ReexecLine | null = null;
  if (d.kind === 'relockd' && (opts.logLevel === 'info' || opts.logLevel === 'debug' || opts.logLevel === 'trace')) {
    line = await waitReexecLine(d, logFrom, 10_000);
    if (!line) problems.push('no "re-exec complete" line');
    else if (line.resources !== undefined && line.resources !== cell.leases) problems.push(`relockd reports ${line.resources} leases after the re-exec, not ${cell.leases}`);
  }
  if (!d.alive()) problems.push(`${d.label} exited`);
  let cpuMs = NaN;
  try {
    cpuMs = ((statTicks(`/proc/${d.pid}/stat`) - ticks0) * 1000) / clk;
  } catch {
    /* gone */
  }
  const paths = d.alive() ? sampleLeases(cell, opts.probe) : [];
  const notHeld: string[] = [];
  if (paths.length) {
    const res = probe(paths);
    for (const p of paths) if (res[p] !== 'held') notHeld.push(`${p}: ${res[p]}`);
  }
  return { warmup, result: r.result, cpuMs, otherCores, daemonLine: line, probed: paths.length, notHeld, problems };
}

// ---- summaries ----------------------------------------------------------------------

interface Summary {
  n: number;
  newConn: number;
  blackout: number;
  blackoutMin: number;
  blackoutMax: number;
  servedMax: number;
  servedMedian: number;
  execSeen: number;
  newImage: number;
  earlyBeforeExec: number;
  earlyMax: number;
  lostPings: number;
  cpuMs: number;
  otherCores: number;
  genCpuMs: number;
  sendEarlyMs: number;
  errors: number;
  notHeld: number;
  probed: number;
  problems: number;
  /** relockd only, from its log line. */
  daemonBlackout: number;
  breakdown: Record<string, number> | null;
}

const BREAKDOWN_KEYS = ['to exec', '(save)', 'exec→node', 'node start', 'modules', 'args+config', 'read state', 'validation', 'adoption', 'rest'] as const;

/**
 * Where relockd's blackout went, from its log line and the client's view
 * (bootMs are ms since Node's performance.timeOrigin in the new image, which
 * Node takes in a static initialiser: after execve and the dynamic loader):
 *   to exec     SIGUSR1 → execve as seen from outside (/proc polled every
 *               1 ms): signal delivery, quiesce, snapshot, validate, write
 *               and fsync the state file, execve itself
 *   (save)      part of 'to exec': "re-exec requested" → "state written" log
 *               lines (ms resolution): quiesce … clearing FD_CLOEXEC
 *   exec→node   ≈ blackoutMs − bootMs.adopted − to exec: the kernel's execve
 *               of the node binary and the dynamic loader, up to Node's time
 *               origin (± 1 ms: polling, signal delivery, the bookkeeping
 *               after 'adopted')
 *   node start  bootMs.entry: Node's own start-up → first line of bin/relockd.cjs
 *   modules     entry → 'modules' (the ESM graph of dist/: pino, yargs, ajv
 *               validators, the addon)
 *   args+config 'modules' → 'config'
 *   read state  'config' → 'read' (logger, Daemon, read + JSON.parse of the state file)
 *   validation  'read' → 'validated' (state schema)
 *   adoption    'validated' → 'adopted' (listeners, clients, lease fds)
 *   rest        client-side blackout − blackoutMs: after the line until the
 *               first reply (resuming the clients, dispatching, replying, the
 *               generator's read), and the signal's delivery, which blackoutMs
 *               does not include.
 */
function breakdown(r: RunResult, line: ReexecLine | null): Record<string, number> | null {
  const b = line?.bootMs;
  if (!line || line.blackoutMs === undefined || !b || b.adopted === undefined || r.firstReplyMs < 0) return null;
  const g = (k: string) => b[k] ?? NaN;
  const toExec = r.execSeenMs >= 0 ? r.execSeenMs : NaN;
  return {
    'to exec': toExec,
    '(save)': line.saveMs ?? NaN,
    'exec→node': line.blackoutMs - g('adopted') - toExec,
    'node start': g('entry'),
    modules: g('modules') - g('entry'),
    'args+config': g('config') - g('modules'),
    'read state': g('read') - g('config'),
    validation: g('validated') - g('read'),
    adoption: g('adopted') - g('validated'),
    rest: r.firstReplyMs - line.blackoutMs,
  };
}

function summarize(cell: Cell): Summary {
  const runs = cell.runs.filter((r) => !r.warmup);
  const ok = (x: number) => x >= 0;
  const m = (f: (r: Run) => number) => median(runs.map(f).filter((x) => !Number.isNaN(x)));
  const bd = runs.map((r) => breakdown(r.result, r.daemonLine));
  let breakdownMed: Record<string, number> | null = null;
  if (bd.some((x) => x)) {
    breakdownMed = {};
    for (const k of BREAKDOWN_KEYS) breakdownMed[k] = median(bd.filter((x) => x).map((x) => x![k]!));
  }
  const blackouts = runs.map((r) => r.result.firstReplyMs).filter(ok);
  return {
    n: runs.length,
    newConn: m((r) => (r.result.newConnMs >= 0 ? r.result.newConnMs : NaN)),
    blackout: median(blackouts),
    blackoutMin: blackouts.length ? Math.min(...blackouts) : NaN,
    blackoutMax: blackouts.length ? Math.max(...blackouts) : NaN,
    servedMax: m((r) => (r.result.late.every(ok) ? Math.max(...r.result.late) : NaN)),
    servedMedian: m((r) => median(r.result.late.filter(ok))),
    execSeen: m((r) => (r.result.execSeenMs >= 0 ? r.result.execSeenMs : NaN)),
    newImage: m((r) => (r.result.execSeenMs >= 0 && r.result.firstReplyMs >= 0 ? r.result.firstReplyMs - r.result.execSeenMs : NaN)),
    earlyBeforeExec: m((r) => r.result.earlyBeforeExec),
    earlyMax: m((r) => (r.result.early.every(ok) ? Math.max(...r.result.early) : NaN)),
    lostPings: cell.runs.reduce((a, r) => a + r.result.lostPings, 0),
    cpuMs: m((r) => r.cpuMs),
    otherCores: m((r) => r.otherCores),
    genCpuMs: m((r) => r.result.genCpuMs),
    sendEarlyMs: m((r) => r.result.sendEarlyMs),
    errors: cell.runs.reduce((a, r) => a + r.result.errors.length, 0),
    notHeld: cell.runs.reduce((a, r) => a + r.notHeld.length, 0),
    probed: cell.runs.reduce((a, r) => a + r.probed, 0),
    problems: cell.runs.reduce((a, r) => a + r.problems.length, 0),
    daemonBlackout: m((r) => r.daemonLine?.blackoutMs ?? NaN),
    breakdown: breakdownMed,
  };
}

// ---- main ---------------------------------------------------------------------------------

async function main(): Promise<void> {
  const opts = parseOpts();
  const err = (s: string) => process.stderr.write(`${s}\n`);
  const out = opts.json ? err : (s: string) => process.stdout.write(`${s}\n`);
  const clk = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());

  const targets: Target[] = [];
  if (opts.targets.includes('relockd')) targets.push(relockdTarget('relockd', opts));
  if (opts.alt) targets.push(relockdTarget('relockd-alt', opts, opts.alt));
  if (opts.targets.includes('virtlockd')) {
    if (virtlockdAvailable()) targets.push(virtlockdTarget(opts));
    else err(`virtlockd skipped: ${virtlockdUnavailableReason()}`);
  }
  if (!targets.length) throw new Error('no daemon to measure');

  const maxL = Math.max(...opts.leases);
  const maxC = Math.max(...opts.clients);
  const need = maxL + 2 * maxC + 1024;
  const fdLimit = raiseFdLimit(Math.max(need, targets.length * maxC + 1024), err);

  // Lease files live under a temp dir virtlockd can see (never under /run).
  // relockd's runtime dir (its state file, fsync'd on every re-exec) on a
  // tmpfs, like /run in production and like virtlockd's private /run here.
  const root = mkdtempSync(join(visibleTmpDir(), 'reexecbench-'));
  const TMPFS_MAGIC = 0x01021994;
  let stateBase = opts.stateDir;
  if (!stateBase) {
    try {
      if (statfsSync('/dev/shm').type === TMPFS_MAGIC) stateBase = '/dev/shm';
    } catch {
      /* no /dev/shm */
    }
  }
  const stateRoot = stateBase ? mkdtempSync(join(stateBase, 'reexecbench-')) : join(root, 'state');
  let stateFs = 'unknown';
  try {
    stateFs = statfsSync(stateRoot).type === TMPFS_MAGIC ? 'tmpfs' : 'not tmpfs';
  } catch {
    /* unknown */
  }
  let gen: Gen | null = null;
  const live = new Set<Daemon>();
  let cleaning: Promise<void> | null = null;
  const cleanup = () =>
    (cleaning ??= (async () => {
      if (gen) await gen.stop().catch(() => {});
      for (const d of live) await d.stop().catch((e: Error) => err(`stopping ${d.label} (pid ${d.pid}): ${e.message}`));
      live.clear();
      rmSync(root, { recursive: true, force: true });
      rmSync(stateRoot, { recursive: true, force: true });
    })());
  let interrupted = false;
  const onSignal = (sig: NodeJS.Signals) => {
    interrupted = true;
    err(`\n${sig}: stopping daemons and removing ${root} and ${stateRoot}`);
    void cleanup().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  if (!opts.rawEnv && process.env.NODE_EXTRA_CA_CERTS && targets.some((t) => t.kind === 'relockd')) {
    err('NODE_EXTRA_CA_CERTS is set here: removed from relockd\'s environment (it costs every Node start-up a root certificate store; --raw-env keeps it)');
  }
  const cells: Cell[] = [];
  const started = Date.now();
  try {
    gen = Generator.start<ToReexecWorker, FromReexecWorker>('reexec-worker.js');
    err(
      `reexecbench: ${cpus().length} CPUs; targets ${targets.map((t) => t.label).join(', ')}; leases ${opts.leases.join(',')} × clients ${opts.clients.join(',')}; ` +
        `${opts.warmup} warm-up + ${opts.runs} measured re-execs per cell; RLIMIT_NOFILE ${fdLimit}; generator pid ${gen.child.pid}; leases in ${root}; relockd state in ${stateRoot} (${stateFs})`,
    );
    let seq = 0;
    for (const L of opts.leases) {
      for (const C of opts.clients) {
        if (interrupted || gen.dead) break;
        if (L + 2 * C + 64 > fdLimit) {
          err(`skipping ${L} leases × ${C} clients: the daemons need about ${L + 2 * C + 64} fds, RLIMIT_NOFILE is ${fdLimit} (raising the hard limit needs CAP_SYS_RESOURCE; or run under prlimit --nofile=N:N)`);
          continue;
        }
        const group: Cell[] = targets.map((t) => ({
          id: `${t.label}/L${L}/C${C}`,
          target: t,
          leases: L,
          clients: C,
          leaseDir: join(root, `L${L}-C${C}`, t.label, 'leases'),
          daemon: null,
          setupMs: 0,
          runs: [],
        }));
        try {
          for (const cell of group) {
            mkdirSync(cell.leaseDir, { recursive: true });
            for (let j = 0; j < L; j++) closeSync(openSync(join(cell.leaseDir, `lease-${j}.img`), 'w'));
            for (let i = 0; i < C; i++) closeSync(openSync(join(cell.leaseDir, `spare-${i}.img`), 'w'));
            const d = await cell.target.start(cell.target.kind === 'relockd' ? join(stateRoot, `L${L}-C${C}`, cell.target.label) : join(dirname(cell.leaseDir), 'run'));
            live.add(d);
            cell.daemon = d;
            const setup: CellSetupMsg = {
              type: 'setup',
              id: cell.id,
              socket: d.socketPath,
              clients: C,
              leaseDir: cell.leaseDir,
              leases: L,
              ownerPidBase: 10_000_000 + seq * 10_000,
            };
            seq++;
            const r = await gen.request(setup);
            if (r.type !== 'ready') throw new Error(`unexpected ${r.type}`);
            cell.setupMs = r.setupMs;
            // Let the daemon go idle: as long as after the last re-exec, and
            // past relockd's idle memory settle (1 s periods, src/daemon/memorySettle.ts).
            await sleep(3000);
            cell.memSetup = procMem(d.pid);
            err(`${cell.id}: ${L} leases over ${C} clients set up in ${fmtMs(r.setupMs)} ms (pid ${d.pid})`);
          }
          const total = opts.warmup + opts.runs;
          for (let k = 0; k < total; k++) {
            // Alternate the order: relockd, virtlockd, virtlockd, relockd, …
            const order = k % 2 === 0 ? group : [...group].reverse();
            for (const cell of order) {
              if (cell.aborted || interrupted) continue;
              const run = await runOnce(cell, gen, opts, clk, k < opts.warmup, seq++);
              cell.runs.push(run);
              const res = run.result;
              const late = res.late.filter((x) => x >= 0);
              const early = res.early.filter((x) => x >= 0);
              err(
                `${k < opts.warmup ? 'warm-up' : `run ${k - opts.warmup + 1}/${opts.runs}`} ${cell.id.padEnd(24)} ` +
                  `blackout ${fmtMs(res.firstReplyMs).padStart(6)}  new conn ${fmtMs(res.newConnMs).padStart(6)}  served max ${fmtMs(late.length === res.late.length ? Math.max(...late) : -1).padStart(6)} ` +
                  `med ${fmtMs(median(late)).padStart(6)}  PING max ${fmtMs(early.length === res.early.length ? Math.max(...early) : -1).padStart(6)} ` +
                  `(${res.earlyBeforeExec} by old)  exec seen ${fmtMs(res.execSeenMs).padStart(5)}` +
                  `${run.daemonLine?.blackoutMs !== undefined ? `  daemon says ${fmtMs(run.daemonLine.blackoutMs)}` : ''}` +
                  `  CPU ${fmt1(run.cpuMs)} ms  gen CPU ${fmt1(res.genCpuMs)} ms  others ${Math.round(run.otherCores * 100)}%` +
                  `${res.errors.length ? `  ERRORS ${res.errors.length}: ${res.errors.slice(0, 3).join('; ')}` : ''}` +
                  `${run.notHeld.length ? `  NOT HELD ${run.notHeld.length}/${run.probed}: ${run.notHeld.slice(0, 2).join('; ')}` : ''}` +
                  `${run.problems.length ? `  PROBLEMS: ${run.problems.join('; ')}` : ''}`,
              );
              if (!cell.daemon!.alive()) {
                cell.aborted = `${cell.daemon!.label} exited during the re-exec`;
                err(`${cell.id}: ${cell.aborted}\n${cell.daemon!.logs().slice(-2000)}`);
              }
              await sleep(200);
            }
          }
        } catch (e) {
          for (const cell of group) cell.aborted ??= (e as Error).message;
          err(`L${L}/C${C}: ${(e as Error).message}`);
        } finally {
          // After the last re-exec, idle: V8 collects the parsed state document's garbage.
          await sleep(3000);
          for (const cell of group) if (cell.daemon) cell.memFinal = procMem(cell.daemon.pid);
          for (const cell of group) {
            await gen.request({ type: 'teardown', id: cell.id }).catch(() => {});
            if (cell.daemon) {
              await cell.daemon.stop().catch((e: Error) => err(`stopping ${cell.daemon!.label}: ${e.message}`));
              live.delete(cell.daemon);
            }
          }
          rmSync(join(root, `L${L}-C${C}`), { recursive: true, force: true });
          rmSync(join(stateRoot, `L${L}-C${C}`), { recursive: true, force: true });
          cells.push(...group);
        }
      }
    }
    if (interrupted) return;
    if (gen.dead) err('the generator died: the results are incomplete');
    err(`done in ${Math.round((Date.now() - started) / 1000)} s`);
    report(cells, opts, out);
  } finally {
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
    await cleanup();
  }
}

function report(cells: Cell[], opts: Opts, out: (s: string) => void): void {
  const sum = new Map(cells.map((c) => [c.id, summarize(c)]));
  const rows = cells.map((c) => {
    const s = sum.get(c.id)!;
    return [
      String(c.leases),
      String(c.clients),
      c.target.label,
      fmtMs(s.blackout),
      `${fmtMs(s.blackoutMin)}–${fmtMs(s.blackoutMax)}`,
      fmtMs(s.newConn),
      fmtMs(s.servedMax),
      fmtMs(s.servedMedian),
      fmtMs(s.earlyMax),
      `${s.earlyBeforeExec}`,
      fmtMs(s.execSeen),
      fmtMs(s.newImage),
      fmt1(s.cpuMs),
      `${Math.round(s.otherCores * 100)}%`,
      `${s.errors}${s.lostPings ? ` (${s.lostPings} lost PINGs)` : ''}`,
      s.probed ? `${s.probed - s.notHeld}/${s.probed}` : '-',
      c.aborted ? `ABORTED: ${c.aborted.slice(0, 60)}` : s.problems ? `${s.problems} problems` : '',
    ];
  });
  out('');
  out(`Medians of ${opts.runs} re-execs per cell (after ${opts.warmup} warm-up); times in ms since SIGUSR1.`);
  out(
    table(rows, ['leases', 'clients', 'daemon', 'blackout', 'range', 'new conn', 'served max', 'served med', 'PING max', 'by old', 'exec seen', 'new image', 'CPU ms', 'others', 'errors', 'held', '']),
  );
  out(
    '  blackout: the new image\'s first reply (to an ACQUIRE of an old client or the REGISTER of a new one, both sent once the exec is seen);\n' +
      '  new conn: the reply to REGISTER on a new connection made once the exec is seen; served max/med: over the old clients, the reply to\n' +
      '  an ACQUIRE sent once the exec is seen; PING max: the slowest PONG to the keepalive PINGs every old client sent right after SIGUSR1;\n' +
      '  by old: how many of those the old image answered; exec seen: the new image observed in /proc (1 ms polling) = the old image\'s\n' +
      '  quiesce + save + execve; new image: blackout − exec seen; CPU ms: daemon utime+stime over the re-exec, both images (10 ms ticks);\n' +
      '  others: CPU of all other processes on the host during the re-exec, in % of one core (noise; compare only numbers of one run);\n' +
      '  errors: error replies, disconnects, lost or unanswered requests, all runs incl. warm-up (must be 0);\n' +
      '  held: probed leases still locked after the re-exec (python3 fcntl.lockf from another process), all runs.',
  );

  // Ratios relockd / virtlockd.
  const byKey = new Map(cells.map((c) => [`${c.target.label}/${c.leases}/${c.clients}`, sum.get(c.id)!]));
  const ratioRows: string[][] = [];
  for (const c of cells) {
    if (c.target.kind !== 'relockd') continue;
    const v = byKey.get(`virtlockd/${c.leases}/${c.clients}`);
    if (!v) continue;
    const s = sum.get(c.id)!;
    const b = s.blackout / v.blackout;
    const sv = s.servedMax / v.servedMax;
    const nc = s.newConn / v.newConn;
    const aim = c.leases < 10000 ? '(n/a below 10k)' : Number.isNaN(b) || Number.isNaN(sv) ? 'no data' : b <= 1 && sv <= 1 ? 'met' : 'NOT met';
    ratioRows.push([String(c.leases), String(c.clients), c.target.label, `${fmt1(s.blackout)} / ${fmt1(v.blackout)}`, `${b.toFixed(2)}×`, `${nc.toFixed(2)}×`, `${sv.toFixed(2)}×`, `${(s.execSeen / v.execSeen).toFixed(2)}×`, `${(s.newImage / v.newImage).toFixed(2)}×`, aim]);
  }
  if (ratioRows.length) {
    out('');
    out('relockd / virtlockd, ratios of the medians (aim: ≤ 1× at 10k leases and above):');
    out(table(ratioRows, ['leases', 'clients', 'daemon', 'blackout ms', 'blackout', 'new conn', 'served max', 'old image', 'new image', 'aim']));
  }

  // relockd's breakdown.
  const bdRows: string[][] = [];
  for (const c of cells) {
    const s = sum.get(c.id)!;
    if (!s.breakdown) continue;
    bdRows.push([String(c.leases), String(c.clients), c.target.label, fmtMs(s.blackout), fmtMs(s.daemonBlackout), ...BREAKDOWN_KEYS.map((k) => fmt1(s.breakdown![k]!))]);
  }
  if (bdRows.length) {
    out('');
    out('Where relockd\'s blackout goes (medians, ms; from its "re-exec complete" line: blackoutMs and bootMs):');
    out(table(bdRows, ['leases', 'clients', 'daemon', 'blackout', 'daemon says', ...BREAKDOWN_KEYS]));
    out(
      '  to exec: quiesce + snapshot + validate + write state + execve (seen from outside, ±1 ms), of which (save): quiesce … FD_CLOEXEC\n' +
        '  cleared, from the old image\'s log lines (ms resolution); exec→node: execve + dynamic loader\n' +
        '  (≈ blackoutMs − bootMs.adopted − to exec); node start: Node\'s start-up → bin/relockd.cjs (bootMs.entry); modules: ESM import of\n' +
        '  dist/ (entry → modules); read state: logger + Daemon + read and parse the state file; validation: state schema check;\n' +
        '  adoption: listeners, clients, lease fds; rest: client-side blackout − blackoutMs (after the log line until the first reply).',
    );
  } else if (cells.some((c) => c.target.kind === 'relockd')) {
    out('');
    out(
      ['info', 'debug', 'trace'].includes(opts.logLevel)
        ? '(no relockd breakdown: no measured re-exec logged "re-exec complete")'
        : `(no relockd breakdown: its "re-exec complete" line is logged at info; --log-level is ${opts.logLevel})`,
    );
  }

  // The old image's own phases (builds that log them).
  const SAVE_KEYS = ['quiesce', 'snapshot', 'serialise', 'write', 'cloexec'] as const;
  const saveRows: string[][] = [];
  for (const c of cells) {
    const lines = c.runs.filter((r) => !r.warmup && r.daemonLine?.savePhases).map((r) => r.daemonLine!.savePhases!);
    if (lines.length) saveRows.push([String(c.leases), String(c.clients), c.target.label, ...SAVE_KEYS.map((k) => fmt1(median(lines.map((l) => l[k] ?? NaN).filter((x) => !Number.isNaN(x)))))]);
  }
  if (saveRows.length) {
    out('');
    out('The old image\'s save (medians, ms; from its "state written" line): quiesce = request → nothing in flight; then each step:');
    out(table(saveRows, ['leases', 'clients', 'daemon', ...SAVE_KEYS]));
    out('  snapshot: live objects → document; serialise: encode, validate, JSON.stringify; write: temp file, fsync, rename; cloexec: FD_CLOEXEC cleared on every fd kept.');
  }

  reportScale(cells, sum, out);

  if (opts.json) {
    const json = {
      options: opts,
      cpus: cpus().length,
      cells: cells.map((c) => ({
        daemon: c.target.label,
        leases: c.leases,
        clients: c.clients,
        setupMs: c.setupMs,
        aborted: c.aborted,
        summary: sum.get(c.id),
        memSetup: c.memSetup,
        memFinal: c.memFinal,
        runs: c.runs.map((r) => {
          // -1 = never answered: a max over the clients only when all were.
          const all = (xs: number[]) => (xs.every((x) => x >= 0) ? Math.max(...xs) : null);
          const { early, late, ...rest } = r.result;
          return { ...r, result: { ...rest, earlyMax: all(early), lateMax: all(late), lateMedian: median(late.filter((x) => x >= 0)) } };
        }),
      })),
    };
    process.stdout.write(`${JSON.stringify(json, null, 2)}\n`);
  }
}

/** Least-squares line through (x, y); null with fewer than two distinct x. */
function fitLine(pts: Array<[number, number]>): { slope: number; at: (x: number) => number } | null {
  const ok = pts.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
  if (new Set(ok.map(([x]) => x)).size < 2) return null;
  const n = ok.length;
  const mx = ok.reduce((a, [x]) => a + x, 0) / n;
  const my = ok.reduce((a, [, y]) => a + y, 0) / n;
  const slope = ok.reduce((a, [x, y]) => a + (x - mx) * (y - my), 0) / ok.reduce((a, [x]) => a + (x - mx) ** 2, 0);
  return { slope, at: (x) => my + slope * (x - mx) };
}

/**
 * Memory per cell, growth per lease, the projection to 100k leases, and the
 * issue's figures with their goals.
 */
function reportScale(cells: Cell[], sum: Map<string, Summary>, out: (s: string) => void): void {
  const key = (label: string, L: number, C: number) => `${label}/${L}/${C}`;
  const byKey = new Map(cells.map((c) => [key(c.target.label, c.leases, c.clients), c]));
  const perLease = (c: Cell, which: 'memSetup' | 'memFinal'): number => {
    const base = byKey.get(key(c.target.label, 0, c.clients))?.[which];
    const m = c[which];
    if (!base || !m || c.leases === 0) return NaN;
    return ((m.rssKb - base.rssKb) * 1024) / c.leases;
  };
  const memRows = cells.map((c) => [
    String(c.leases),
    String(c.clients),
    c.target.label,
    fmtMb(c.memSetup?.rssKb ?? -1),
    fmtMb(c.memSetup?.anonKb ?? -1),
    fmtMb(c.memFinal?.rssKb ?? -1),
    fmtMb(c.memFinal?.anonKb ?? -1),
    fmtMb(c.memFinal?.pssKb ?? -1),
    Number.isFinite(perLease(c, 'memSetup')) ? String(Math.round(perLease(c, 'memSetup'))) : '-',
    Number.isFinite(perLease(c, 'memFinal')) ? String(Math.round(perLease(c, 'memFinal'))) : '-',
  ]);
  out('');
  out('Memory (MB; one sample each: 1 s after every lease is held, and 3 s after the last re-exec):');
  out(table(memRows, ['leases', 'clients', 'daemon', 'RSS held', 'anon held', 'RSS re-exec\'d', 'anon re-exec\'d', 'PSS re-exec\'d', 'B/lease held', 'B/lease re-exec\'d']));
  out(
    '  RSS: VmRSS (includes the clean, shared pages of the executable and libraries: for relockd ~40 MB of the node binary);\n' +
      '  anon: RssAnon (private heap, stacks, JIT); PSS: shared pages divided among their users; B/lease: (RSS − RSS of the\n' +
      '  same daemon with 0 leases and as many clients) / leases.',
  );

  // Growth per lease and the projection to 100k (fit over cells with ≥ 1000 leases).
  const scaleRows: string[][] = [];
  const labels = [...new Set(cells.map((c) => c.target.label))];
  const clientCounts = [...new Set(cells.map((c) => c.clients))];
  for (const C of clientCounts) {
    for (const label of labels) {
      const cs = cells.filter((c) => c.target.label === label && c.clients === C && c.leases >= 1000);
      const bl = fitLine(cs.map((c) => [c.leases, sum.get(c.id)!.blackout]));
      const rss = fitLine(cs.filter((c) => c.memFinal).map((c) => [c.leases, c.memFinal!.rssKb * 1024]));
      if (!bl && !rss) continue;
      scaleRows.push([
        String(C),
        label,
        cs.map((c) => c.leases).join(','),
        bl ? (bl.slope * 1000).toFixed(1) : '-',
        bl ? fmtMs(bl.at(100_000)) : '-',
        rss ? String(Math.round(rss.slope)) : '-',
        rss ? fmtMb(rss.at(100_000) / 1024) : '-',
      ]);
    }
  }
  if (scaleRows.length) {
    out('');
    out('Growth per lease (least squares over the cells with ≥ 1000 leases) and projection to 100k leases:');
    out(table(scaleRows, ['clients', 'daemon', 'leases fitted', 'blackout µs/lease', 'blackout @100k ms', 'RSS B/lease', 'RSS @100k MB']));
  }

  // The issue's figures this bench measures.
  const C0 = Math.min(...clientCounts);
  const figure = (L: number) => {
    const r = byKey.get(key('relockd', L, C0));
    const v = byKey.get(key('virtlockd', L, C0));
    return { r, v, rs: r && sum.get(r.id), vs: v && sum.get(v.id) };
  };
  const rows: string[][] = [];
  const add = (name: string, rv: number, vv: number, unit: string, goal: string, ok: (ratio: number, rv: number) => boolean) => {
    const ratio = rv / vv;
    const f = (x: number) => (Number.isFinite(x) ? `${unit === 'MB' ? fmtMb(x) : unit === 'B' ? Math.round(x) : fmtMs(x)} ${unit}` : '-');
    rows.push([name, f(rv), f(vv), Number.isFinite(ratio) ? `${ratio.toFixed(2)}×` : '-', goal, Number.isFinite(rv) ? (ok(ratio, rv) ? 'met' : 'NOT met') : '-']);
  };
  const leaseCounts = [...new Set(cells.map((c) => c.leases))].sort((a, b) => a - b);
  for (const L of leaseCounts) {
    if (L === 0) continue;
    const { rs, vs } = figure(L);
    const goal = L >= 10000 ? '≤ 1.0×' : L >= 1000 ? '≤ 3×' : '';
    add(`re-exec blackout, ${L} leases, ${C0} clients`, rs?.blackout ?? NaN, vs?.blackout ?? NaN, 'ms', goal, (q) => (L >= 10000 ? q <= 1 : L >= 1000 ? q <= 3 : true));
  }
  const idle = figure(0);
  add(`RSS idle (0 leases, ${C0} clients registered)`, idle.r?.memSetup?.rssKb ?? NaN, idle.v?.memSetup?.rssKb ?? NaN, 'MB', '≤ 45 MB', (_q, rv) => rv <= 45 * 1024);
  add(`  private anon of that`, idle.r?.memSetup?.anonKb ?? NaN, idle.v?.memSetup?.anonKb ?? NaN, 'MB', '', () => true);
  const Lmem = leaseCounts.includes(10000) ? 10000 : leaseCounts[leaseCounts.length - 1]!;
  const m = figure(Lmem);
  if (m.r && m.v) add(`RSS per held lease (${Lmem} leases, re-exec'd image)`, perLease(m.r, 'memFinal'), perLease(m.v, 'memFinal'), 'B', '≤ 1.0×', (q) => q <= 1);
  if (m.r && m.v) add(`RSS per held lease (${Lmem} leases, fresh image)`, perLease(m.r, 'memSetup'), perLease(m.v, 'memSetup'), 'B', '≤ 1.0×', (q) => q <= 1);
  out('');
  out(`The issue's figures (medians of this run; relockd / virtlockd):`);
  out(table(rows, ['figure', 'relockd', 'virtlockd', 'ratio', 'goal', '']));
}

main().catch((e: Error) => {
  process.stderr.write(`reexecbench: ${e.stack ?? e.message}\n`);
  process.exitCode = 1;
});
