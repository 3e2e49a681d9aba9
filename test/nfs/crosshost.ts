// Cross-host proof over NFS: relockd on one host and relockd, or the REAL
// virtlockd, on another host, sharing an NFS export, exclude each other — over
// NFSv4.2 and over NFSv3 (NLM) — and a lease released (or its holder's relockd
// killed, or re-exec'd) on one host behaves as it must on the other.
//
// The "hosts" are the User-Mode Linux guests of the multi-host NFS lab
// (test/nfs/lab/multihost-setup.sh): srv (kernel nfsd), c1 and c2
// (kernel NFS clients, each its own kernel, lockd and NFSv4 client id), the
// export mounted on /mnt/nfs4 (vers=4.2) and /mnt/nfs3 (vers=3, NLM) in each.
// A driver in each guest (test/nfs/guest-driver.mjs) starts the lock daemons
// there and speaks the lock-space protocol to them as libvirt's lockd plugin
// does; the one on srv reads the server's own view (the export's ext4 and
// /proc/locks), which no client cache can distort. See docs/nfs-crosshost.md.
//
//   node --import=@tapjs/typescript/import test/nfs/crosshost.ts [options]
//
// Options: --setup                 let the lab's `up` apt-get install its Debian packages when
//                                  missing (without it they are listed and the run fails)
//          --lab=WORKDIR           use a lab that is already up (and leave it up)
//          --lab-dir=DIR           bring this run's own lab up in DIR (new or empty; purged afterwards)
//          --lab-script=PATH       multihost-setup.sh (default test/nfs/lab/, or $RELOCKD_NFS_LAB_SCRIPT)
//          --protocols=4,3         NFS versions to run (default both)
//          --samples=N             handovers per direction and lease kind (default 60)
//          --direct-samples=N      … for direct leases only (default: --samples)
//          --kills=N               kill -9 samples, relockd vs relockd (default 3)
//          --reexecs=N             re-execs while the other host hammers (default 3)
//          --tolerate-stale        relockd's first ACQUIRE after a cross-host release failing with
//                                  "Stale file handle" (then granted on a retry) is a note, not a FAIL
//          --keep                  keep logs (and the lab running, when this run created it)
//          --time-limit=SECONDS    stop everything and fail after this long (default 900)
//
// Needs root, a built relockd (npm run build), /usr/sbin/virtlockd, python3,
// and the lab's packages (user-mode-linux nfs-kernel-server nfs-common rpcbind
// kmod e2fsprogs iproute2). It installs nothing unless --setup is given.

import { accessSync, constants as fsConstants, existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join, resolve as resolvePath } from 'node:path';
import { ROOT } from '../lib/relockd.js';
import { abort, isAborted, killEverything, killEverythingSync, leftovers, median, pidAlive, sleep } from '../e2e/proc.js';
import { DEFAULT_LAB_SCRIPT, Guest, GUEST_DRIVER, Lab, LAB_BINARIES, netnsExists } from './lab.js';
import type { AcquireResult, FcntlHammerStats, LoopStats, ReexecResult } from './lab.js';

// ------------------------------------------------------------------ options

interface Options {
  lab?: string;
  /** where to bring this run's own lab up (must not exist yet, or be empty) */
  labDir?: string;
  setup: boolean;
  labScript: string;
  protocols: Array<4 | 3>;
  samples: number;
  directSamples: number;
  kills: number;
  reexecs: number;
  tolerateStale: boolean;
  keep: boolean;
  timeLimitS: number;
}

function parseOptions(argv: string[]): Options {
  const o: Options = {
    setup: false,
    labScript: process.env.RELOCKD_NFS_LAB_SCRIPT || DEFAULT_LAB_SCRIPT,
    protocols: [4, 3],
    samples: DEFAULT_SAMPLES,
    directSamples: NaN,
    kills: 3,
    reexecs: 3,
    tolerateStale: false,
    keep: false,
    timeLimitS: 900,
  };
  const count = (v: string | undefined, min: number) => (v !== undefined && /^\d+$/.test(v) && Number(v) >= min ? Number(v) : NaN);
  for (const a of argv) {
    const [k, v] = a.split('=', 2) as [string, string | undefined];
    if (k === '--setup' && v === undefined) o.setup = true;
    else if (k === '--keep' && v === undefined) o.keep = true;
    else if (k === '--tolerate-stale' && v === undefined) o.tolerateStale = true;
    else if (k === '--lab' && v) o.lab = resolvePath(v);
    else if (k === '--lab-dir' && v) o.labDir = resolvePath(v);
    else if (k === '--lab-script' && v) o.labScript = resolvePath(v);
    else if (k === '--protocols' && v) {
      const ps = v.split(',');
      if (!ps.length || !ps.every((p) => p === '4' || p === '3')) usage(`bad --protocols: ${v}`);
      o.protocols = [...new Set(ps.map((p) => Number(p) as 4 | 3))];
    } else if (k === '--samples' && !Number.isNaN(count(v, 1))) o.samples = count(v, 1);
    else if (k === '--direct-samples' && !Number.isNaN(count(v, 1))) o.directSamples = count(v, 1);
    else if (k === '--kills' && !Number.isNaN(count(v, 1))) o.kills = count(v, 1);
    else if (k === '--reexecs' && !Number.isNaN(count(v, 1))) o.reexecs = count(v, 1);
    else if (k === '--time-limit' && v && Number(v) > 0) o.timeLimitS = Number(v);
    else usage(`unknown option ${a}`);
  }
  if (Number.isNaN(o.directSamples)) o.directSamples = o.samples;
  if (o.lab && o.labDir) usage('--lab (a lab that is up) and --lab-dir (where to bring one up) exclude each other');
  if (o.labDir && existsSync(o.labDir) && readdirSync(o.labDir).length > 0) usage(`--lab-dir=${o.labDir}: exists and is not empty (the run purges it afterwards)`);
  return o;
}

/**
 * Handovers per direction, lease kind, protocol and pair in the release ->
 * available steps: 60, so that a race hitting 1 handover in 20 shows in each
 * such cell with probability 1 - 0.95^60 = 95% (16 cells, 960 handovers; about
 * 0.1–0.25 s each in the lab). See docs/nfs-crosshost.md for the timing.
 */
const DEFAULT_SAMPLES = 60;

function usage(msg: string): never {
  process.stderr.write(`${msg}\nusage: crosshost.ts [--setup] [--lab=WORKDIR] [--lab-script=PATH] [--protocols=4,3] [--lab-dir=DIR] [--samples=N] [--direct-samples=N] [--kills=N] [--reexecs=N] [--tolerate-stale] [--keep] [--time-limit=SECONDS]\n`);
  process.exit(2);
}

// ------------------------------------------------------------------ prerequisites

/** Paths a guest cannot see: it mounts its own tmpfs there over the host's root. */
const GUEST_TMPFS = ['/tmp', '/run', '/mnt', '/var/tmp', '/proc', '/sys', '/dev'];
const underGuestTmpfs = (p: string) => GUEST_TMPFS.some((d) => p === d || p.startsWith(`${d}/`));

function executable(p: string): boolean {
  try {
    accessSync(p, fsConstants.X_OK);
    return true;
  } catch {
    return false;
  }
}

async function missingPrerequisites(o: Options): Promise<{ missing: string[]; packages: string[] }> {
  const missing: string[] = [];
  const packages: string[] = [];
  if (process.getuid?.() !== 0) missing.push('root: the lab creates a network namespace, tap devices and UML guests; the daemons run as root in the guests');
  if (!existsSync(o.labScript)) missing.push(`the lab script ${o.labScript} (test/nfs/lab/multihost-setup.sh; or --lab-script=PATH / RELOCKD_NFS_LAB_SCRIPT)`);
  for (const f of ['dist/src/cli/main.js', 'dist/src/protocol/lockspaceClient.js', 'dist/test/lib/relockd.js']) {
    if (!existsSync(join(ROOT, f))) missing.push(`a built relockd (${f}): run \`npm run build\``);
  }
  if (!existsSync(GUEST_DRIVER)) missing.push(`the guest driver ${GUEST_DRIVER}`);
  for (const p of [process.execPath, ROOT]) {
    if (underGuestTmpfs(p)) missing.push(`${p} must be visible inside the guests, which see the host's root read-only but have their own ${GUEST_TMPFS.join(', ')}`);
  }
  const need: Array<[string, string]> = [
    ['/usr/sbin/virtlockd', 'libvirt-daemon'],
    ['/usr/bin/python3', 'python3'],
    ['/usr/bin/setpriv', 'util-linux'],
    ['/usr/bin/env', 'coreutils'],
    ['/bin/bash', 'bash'],
  ];
  for (const [p, pkg] of need) if (!executable(p)) missing.push(`${p} (Debian package ${pkg})`);
  if (!existsSync('/dev/net/tun')) missing.push('/dev/net/tun (the lab connects the guests with tap devices)');
  if (!o.lab) {
    for (const [p, pkg] of LAB_BINARIES) {
      if (!executable(p)) {
        packages.push(pkg);
        if (!o.setup) missing.push(`${p} (Debian package ${pkg}; the lab's \`up\` installs it when this runs with --setup)`);
      }
    }
  } else {
    const lab = new Lab(o.labScript, o.lab);
    if (!lab.exists) missing.push(`no lab in ${o.lab} (bring one up: ${o.labScript} up ${o.lab} 2)`);
    else if (lab.env().nclients < 2) missing.push(`the lab in ${o.lab} has fewer than 2 clients`);
    else if (!(await netnsExists(lab.env().ns))) missing.push(`the lab's network namespace ${lab.env().ns} is gone (is the lab up?)`);
  }
  return { missing, packages };
}

// ------------------------------------------------------------------ reporting

let passed = 0;
let failed = 0;
const failures: string[] = [];
const t0 = performance.now();

function say(line: string): void {
  process.stdout.write(`${line}\n`);
}
function secs(ms: number): string {
  return `${(ms / 1000).toFixed(2)} s`;
}
function ms(x: number, d = 1): string {
  return `${x.toFixed(d)} ms`;
}
function oneLine(s: string): string {
  return s.trim().replace(/\s*\n\s*/g, ' | ');
}
function tail(text: string, lines: number, width = 500): string {
  const ls = text.split('\n').filter((l) => l.length > 0);
  const cut = ls.slice(-lines).map((l) => (l.length > width ? `${l.slice(0, width)}…` : l));
  return (ls.length > lines ? `  … ${ls.length - lines} earlier lines\n` : '') + cut.map((l) => `  ${l}`).join('\n');
}

class Fail extends Error {}
class LabUpFailed extends Fail {}

function pass(label: string, detail: string, took?: number): void {
  passed++;
  say(`PASS  ${label}: ${detail}${took !== undefined ? ` [${secs(took)}]` : ''}`);
}

function fail(label: string, detail: string, took?: number): void {
  if (isAborted()) return; // interrupted: the cleanup reports
  failed++;
  failures.push(label);
  say(`FAIL  ${label}: ${detail}${took !== undefined ? ` [${secs(took)}]` : ''}`);
}

function errText(e: unknown): string {
  return e instanceof Fail ? e.message : `${(e as Error).stack ?? e}`;
}

// ------------------------------------------------------------------ figures

/** `${proto}|${row}` -> samples (ms) */
const figures = new Map<string, number[]>();
const rowOrder: string[] = [];

function record(proto: Proto | 'all', row: string, value: number): void {
  if (!rowOrder.includes(row)) rowOrder.push(row);
  const key = `${proto === 'all' ? 'all' : proto.label}|${row}`;
  const xs = figures.get(key) ?? [];
  xs.push(value);
  figures.set(key, xs);
}

function figureTable(protos: Proto[]): string {
  if (rowOrder.length === 0) return '';
  const cols = protos.map((p) => p.label);
  const cell = (col: string, row: string) => {
    const xs = figures.get(`${col}|${row}`) ?? figures.get(`all|${row}`);
    if (!xs || xs.length === 0) return '—';
    const s = [...xs].sort((a, b) => a - b);
    return `${median(s)!.toFixed(1)} (${s[0]!.toFixed(1)}–${s[s.length - 1]!.toFixed(1)}, n=${s.length})`;
  };
  const w0 = Math.max(...rowOrder.map((r) => r.length)) + 2;
  const wc = Math.max(32, ...rowOrder.flatMap((r) => cols.map((c) => cell(c, r).length))) + 2;
  const lines = ['Timings in ms, median (min–max, n) — measured inside the guests (UML: every syscall costs ~30 µs, so these are relative figures):', ' '.repeat(w0) + cols.map((c) => c.padStart(wc)).join('')];
  for (const r of rowOrder) lines.push(r.padEnd(w0) + cols.map((c) => cell(c, r).padStart(wc)).join(''));
  return lines.join('\n');
}

// ------------------------------------------------------------------ model

const SHARED = 1;
const AUTOCREATE = 2;

type Kind = 'relockd' | 'virtlockd';

interface Proto {
  v: 4 | 3;
  label: string;
  /** this run's directory on the export, through this protocol's mount */
  base: string;
  /** the directory lock space */
  ls: string;
  images: string;
}

/** A host's lock daemon as one owner (one registered connection) sees it. */
interface Side {
  g: Guest;
  kind: Kind;
  /** the driver's name for the daemon, also its log file's suffix */
  daemon: string;
  conn: string;
  /** e.g. "relockd@c1" */
  label: string;
}

interface Lease {
  proto: Proto;
  direct: boolean;
  /** lock space path: the directory, or '' (the default lock space: direct leases) */
  path: string;
  name: string;
  /** the file that carries the lock */
  file: string;
}

const short = (l: Lease) => (l.direct ? l.file.replace(/.*\//, '') : l.name);
const busyMessage = (l: Lease) => `resource busy: Lockspace resource '${l.name}' is locked`;

let seq = 0;
function indirectLease(p: Proto, tag: string): Lease {
  const name = `${tag}-${++seq}`;
  return { proto: p, direct: false, path: p.ls, name, file: join(p.ls, name) };
}

let lab: Lab | undefined;
let c1: Guest | undefined;
let c2: Guest | undefined;
/** the NFS server guest: the authoritative view of the export (its own ext4) and of the locks on it */
let srv: Guest | undefined;
let logDir = '';
let tolerateStale = false;

async function guestSh(g: Guest, cmd: string, timeoutMs = 30_000): Promise<{ code: number; out: string }> {
  return g.call<{ code: number; out: string }>('sh', { cmd, timeoutMs }, timeoutMs + 5000);
}

async function directLease(p: Proto, tag: string): Promise<Lease> {
  const file = join(p.images, `${tag}-${++seq}.img`);
  try {
    await c1!.call('mkImages', { paths: [file] }, 20_000);
  } catch (e) {
    throw new Fail(`cannot create the disk image ${file}: ${(e as Error).message}`);
  }
  return { proto: p, direct: true, path: '', name: file, file };
}

// held leases, so that a failed step can give back what it took
const holds = new Set<{ s: Side; l: Lease }>();

function forgetHolds(g: Guest, daemon: string): void {
  for (const h of holds) if (h.s.g === g && h.s.daemon === daemon) holds.delete(h);
}

async function acquire(s: Side, l: Lease, shared: boolean): Promise<AcquireResult> {
  const flags = (shared ? SHARED : 0) | (l.direct ? 0 : AUTOCREATE);
  const r = await s.g.call<AcquireResult>('acquire', { conn: s.conn, path: l.path, name: l.name, flags }, 45_000);
  if (r.ok) holds.add({ s, l });
  record(l.proto, `ACQUIRE ${r.ok ? 'granted' : 'refused'}: ${s.label}`, r.ms);
  return r;
}

function what(l: Lease, shared: boolean): string {
  return `${l.direct ? 'direct' : 'indirect'} lease ${short(l)} (${shared ? 'shared' : 'exclusive'})`;
}

async function acqOk(s: Side, l: Lease, shared: boolean, why: string): Promise<AcquireResult> {
  const r = await acquire(s, l, shared);
  if (!r.ok) throw new Fail(`${why}: ${s.label} was refused ${what(l, shared)}: ${r.error}`);
  return r;
}

async function acqBusy(s: Side, l: Lease, shared: boolean, why: string): Promise<AcquireResult> {
  const r = await acquire(s, l, shared);
  if (r.ok) throw new Fail(`${why}: ${s.label} was GRANTED ${what(l, shared)} — two hosts hold it at once`);
  if (r.error !== busyMessage(l)) throw new Fail(`${why}: ${s.label} was refused ${what(l, shared)}, but not with "${busyMessage(l)}": ${r.error}`);
  return r;
}

async function release(s: Side, l: Lease): Promise<AcquireResult> {
  const r = await s.g.call<AcquireResult>('release', { conn: s.conn, path: l.path, name: l.name }, 45_000);
  if (!r.ok) throw new Fail(`${s.label} RELEASE ${short(l)} failed: ${r.error}`);
  for (const h of holds) if (h.s.g === s.g && h.s.conn === s.conn && h.l.name === l.name) {
    holds.delete(h);
    break;
  }
  record(l.proto, `RELEASE: ${s.label}`, r.ms);
  return r;
}

/** Where a client path lives on the server: both mounts are srv:/mnt/disk/export. */
function serverPath(file: string): string {
  const m = /^\/mnt\/nfs[34]\/(.*)$/.exec(file);
  if (!m) throw new Error(`not on the export: ${file}`);
  return `/mnt/disk/export/${m[1]}`;
}

/**
 * The server's own view (no client cache in between): does the file exist,
 * and how many locks does the server hold on the inode that name has NOW
 * (nfsd/lockd turn every client's lock into a POSIX lock on the server)?
 */
async function serverView(file: string): Promise<{ exists: boolean; ino?: number; locks?: number }> {
  const f = serverPath(file);
  const r = await srv!.call<Record<string, { exists: boolean; ino?: number; locks?: number }>>('serverView', { paths: [f] }, 20_000);
  const v = r[f];
  if (!v || (v.exists && (!Number.isFinite(v.ino) || !Number.isFinite(v.locks)))) throw new Fail(`cannot read the server's view of ${f}: ${JSON.stringify(r)}`);
  return v;
}

async function serverExists(file: string): Promise<boolean> {
  return (await serverView(file)).exists;
}

/**
 * After a grant: the name must exist on the server and its inode must carry
 * a lock — not an orphan. When it is an orphan, `other` (the previous holder)
 * tries to acquire it too, to show what that means.
 */
async function serverHeld(s: Side, l: Lease, why: string, other?: Side): Promise<void> {
  const v = await serverView(l.file);
  if (v.exists && v.locks) return;
  finding(orphanClass(s, other, v.exists), l, other, s);
  let msg = !v.exists
    ? `${why}: ${s.label} was granted ${short(l)}, but on the server ${serverPath(l.file)} does not exist: ${s.label}'s lock is on an unlinked (orphaned) file`
    : `${why}: ${s.label} was granted ${short(l)}, but the server holds no lock on inode ${v.ino}, the file that name has now: ${s.label}'s lock is on an orphaned file`;
  if (other) {
    const r = await acquire(other, l, false);
    msg += r.ok ? `; ${other.label} was then GRANTED ${short(l)} as well — both hosts hold the lease` : `; ${other.label} was refused it (${r.error})`;
  }
  throw new Fail(msg);
}

// ------------------------------------------------------------------ findings, classified

/**
 * Every failure is recorded with a class, so the output says which are the
 * known bugs of issue 10 §1 (being fixed in src/), which are new, and which
 * result belongs to the real virtlockd's own algorithm. The class never
 * changes a verdict: a relockd failure is a FAIL whatever its class.
 */
type FindingClass = 'unlink-orphan' | 'acquire-orphan' | 'eloop' | 'estale' | 'virtlockd-estale' | 'virtlockd-error' | 'other';
const CLASS_TEXT: Record<FindingClass, string> = {
  'unlink-orphan': 'KNOWN (issue 10 §1, i10a): double grant after relockd\'s release — relockd unlinked the lease file on shared storage, the other host was granted a lock on the unlinked file, and the lease was then granted again',
  'acquire-orphan': 'KNOWN class (issue 10 §1 "no interleaving may hold a lease twice", i10a): double grant after virtlockd\'s release — relockd was granted a lock on the file virtlockd had just unlinked (relockd\'s acquire-side check missed it)',
  eloop: 'KNOWN (issue 10 §1, i10a): relockd\'s ACQUIRE of a free lease failed with "Too many levels of symbolic links" right after the other host\'s release',
  estale: 'KNOWN (issue 10 §1, i10a): relockd\'s ACQUIRE of a free lease failed with "Stale file handle" right after the other host\'s release',
  'virtlockd-estale': 'VIRTLOCKD\'S OWN RESULT (recorded, not a relockd failure): the real virtlockd\'s ACQUIRE failed with "Stale file handle" right after the other host\'s release, granted on a retry (virtlockd does not retry; after relockd\'s release it is a side effect of relockd unlinking the lease file, and goes with that)',
  'virtlockd-error': 'VIRTLOCKD\'S OWN RESULT: the real virtlockd\'s ACQUIRE of a free lease failed with another error',
  other: 'NEW: not one of the known classes',
};

interface Finding {
  cls: FindingClass;
  where: string;
}
/** `${cls}|${proto} ${direct|indirect} ${releaser} -> ${holder}` -> count */
const findingCounts = new Map<string, number>();
/** classes seen during the current step (a failed step without any is recorded as NEW) */
let stepFindings: Finding[] = [];

function finding(cls: FindingClass, l: Lease | undefined, from: Side | undefined, to: Side | undefined, label?: string): void {
  const where = label ?? `${l ? `${l.proto.label} ${l.direct ? 'direct' : 'indirect'}` : ''} ${from?.label ?? '?'} -> ${to?.label ?? '?'}`.trim();
  const k = `${cls}|${where}`;
  findingCounts.set(k, (findingCounts.get(k) ?? 0) + 1);
  stepFindings.push({ cls, where });
}

/** A grant on an orphaned file: whose half made it possible? */
function orphanClass(holder: Side, releaser: Side | undefined, nameExists: boolean): FindingClass {
  if (releaser?.kind === 'relockd' && !nameExists) return 'unlink-orphan';
  if (holder.kind === 'relockd' && releaser?.kind === 'virtlockd') return 'acquire-orphan';
  return 'other';
}

function errorClass(s: Side, error: string): FindingClass {
  if (s.kind === 'virtlockd') return isStale(error) ? 'virtlockd-estale' : 'virtlockd-error';
  if (/Too many levels of symbolic links/.test(error)) return 'eloop';
  if (isStale(error)) return 'estale';
  return 'other';
}

function findingsTable(): string[] {
  const out: string[] = [];
  for (const cls of Object.keys(CLASS_TEXT) as FindingClass[]) {
    const rows = [...findingCounts].filter(([k]) => k.startsWith(`${cls}|`));
    if (!rows.length) continue;
    out.push(`  ${CLASS_TEXT[cls]}:`);
    for (const [k, n] of rows) out.push(`    ${k.slice(cls.length + 1)}: ${n}`);
  }
  return out;
}

/**
 * NFSv4 quirk (see docs/nfs-crosshost.md): right after host A's RELEASE
 * unlinked an AUTOCREATE lease file, host B — which had looked the file up
 * before (a refused attempt) — may open the old file through its cached
 * dentry and then fail with ESTALE. Both relockd and virtlockd do. For
 * relockd that is a FAIL (it should retry) unless --tolerate-stale.
 */
interface Verdict {
  notes: string[];
  problems: string[];
}
const newVerdict = (): Verdict => ({ notes: [], problems: [] });

interface HandoverCount {
  n: number;
  stale: number;
  error: number;
  orphan: number;
}
/** `${proto}|${direct|indirect}|${releaser} -> ${new holder}` -> counts */
const handoverStats = new Map<string, HandoverCount>();

function countHandover(l: Lease, from: Side, to: Side, o: { stale?: boolean; error?: boolean; orphan?: boolean }): void {
  const k = `${l.proto.label}|${l.direct ? 'direct' : 'indirect'}|${from.label} -> ${to.label}`;
  const c = handoverStats.get(k) ?? { n: 0, stale: 0, error: 0, orphan: 0 };
  c.n++;
  if (o.stale) c.stale++;
  if (o.error) c.error++;
  if (o.orphan) c.orphan++;
  handoverStats.set(k, c);
}

const isStale = (e: string) => /Stale file handle/.test(e);

function staleFinding(s: Side, l: Lease, from: Side, errors: string[], attempt: number, v: Verdict): void {
  finding(errorClass(s, errors[0]!), l, from, s);
  const msg = `${s.label}'s first ACQUIRE of ${short(l)} after the release failed with "${errors[0]}"${errors.length > 1 ? ` (${errors.length} times)` : ''}, granted on attempt ${attempt}`;
  if (s.kind === 'relockd' && !tolerateStale) v.problems.push(msg);
  else v.notes.push(s.kind === 'virtlockd' ? `${msg} (the real virtlockd's own result)` : `${msg} (tolerated: --tolerate-stale)`);
}

/**
 * The other host's ACQUIRE right after a release: must be granted (ESTALE is
 * retried and judged, anything else fails), and on the live file (server
 * view; `other`, the previous holder, then shows what an orphan means).
 */
async function handoverTo(B: Side, l: Lease, v: Verdict, why: string, other: Side): Promise<AcquireResult> {
  const errors: string[] = [];
  for (let attempt = 1; attempt <= 10; attempt++) {
    const r = await acquire(B, l, false);
    if (r.ok) {
      if (errors.length) staleFinding(B, l, other, errors, attempt, v);
      try {
        await serverHeld(B, l, why, other);
      } catch (e) {
        countHandover(l, other, B, { stale: errors.length > 0, orphan: true });
        throw e;
      }
      countHandover(l, other, B, { stale: errors.length > 0 });
      return r;
    }
    if (r.error === busyMessage(l)) throw new Fail(`${why}: ${B.label} was refused ${what(l, false)} with "resource busy" although it had been released`);
    if (!isStale(r.error ?? '')) {
      finding(errorClass(B, r.error ?? ''), l, other, B);
      countHandover(l, other, B, { stale: errors.length > 0, error: true });
      throw new Fail(`${why}: ${B.label} was refused ${what(l, false)}: ${r.error}`);
    }
    errors.push(r.error!);
    await sleep(20);
  }
  countHandover(l, other, B, { stale: true, error: true });
  throw new Fail(`${why}: ${B.label} still could not acquire ${short(l)} after 10 attempts: ${errors[errors.length - 1]}`);
}

function verdictText(detail: string, v: Verdict): string {
  if (v.problems.length) throw new Fail(`${v.problems.join('; ')} — otherwise: ${detail}`);
  return v.notes.length ? `${detail}; NOTE: ${v.notes.join('; ')}` : detail;
}

/** Plain fcntl from another process on `g` (classic F_SETLK and OFD): both must find the lease held. */
async function probeHeld(g: Guest, l: Lease, mode: 'write' | 'read', want: 'held' | 'free', why: string): Promise<void> {
  const r = await g.call<Record<string, Record<string, string>>>('probe', { kinds: ['classic', 'ofd'], mode, paths: [l.file] }, 40_000);
  const classic = r.classic?.[l.file];
  const ofd = r.ofd?.[l.file];
  if (classic !== want || ofd !== want) throw new Fail(`${why}: a plain ${mode} lock on ${g.name} (${l.file}) should find it ${want}: classic F_SETLK ${classic}, F_OFD_SETLK ${ofd}`);
}

// ------------------------------------------------------------------ patterns

/** A holds exclusive; B refused (exclusive and shared); A releases; B gets it at once; A refused. */
async function exclusivePattern(A: Side, B: Side, l: Lease): Promise<string> {
  const v = newVerdict();
  const a = await acqOk(A, l, false, 'first request');
  await probeHeld(B.g, l, 'read', 'held', `${A.label} holds it exclusive`);
  const b = await acqBusy(B, l, false, `${A.label} holds it exclusive`);
  await acqBusy(B, l, true, `${A.label} holds it exclusive (shared request)`);
  const r = await release(A, l);
  const b2 = await handoverTo(B, l, v, `right after ${A.label}'s RELEASE returned`, A);
  await acqBusy(A, l, false, `${B.label} holds it now`);
  await release(B, l);
  let unlink = '';
  if (!l.direct) {
    // tidiness, not safety: reported, never failed (not unlinking on NFS would avoid finding 1)
    unlink = (await serverExists(l.file)) ? '; the last holder left the lease file in place (server)' : '; the last holder unlinked the lease file (server)';
  }
  return verdictText(`${A.label} acquired (${ms(a.ms)}); plain classic+OFD read locks on ${B.g.name} refused; ${B.label} refused exclusive (${ms(b.ms)}) and shared with "resource busy"; ${A.label} released (${ms(r.ms)}); ${B.label} acquired (${ms(b2.ms)}), the server shows the lock on the live file; ${A.label} then refused${unlink}`, v);
}

/** Shared + shared across hosts; exclusive refused while either shares; the file outlives a release while the other host still shares it. */
async function sharedPattern(A: Side, B: Side, l: Lease): Promise<string> {
  const v = newVerdict();
  await acqOk(A, l, true, 'first request');
  await acqBusy(B, l, false, `${A.label} holds it shared`);
  await acqOk(B, l, true, `${A.label} holds it shared (shared + shared across hosts)`);
  await probeHeld(A.g, l, 'write', 'held', 'both hosts share it');
  await probeHeld(A.g, l, 'read', 'free', 'both hosts share it');
  await release(A, l);
  let files = '';
  if (!l.direct) {
    if (!(await serverExists(l.file))) throw new Fail(`${A.label} unlinked the shared lease file ${l.file} although ${B.label} still shares it`);
    files = `; ${A.label}'s release left the file (${B.label} still shares it)`;
  }
  await acqBusy(A, l, false, `${B.label} still shares it`);
  await release(B, l);
  if (!l.direct) {
    files += (await serverExists(l.file)) ? ', the last holder left it in place' : `, the last holder's release unlinked it`;
  }
  await handoverTo(A, l, v, `${B.label}, the last sharer, released it`, B);
  await acqBusy(B, l, true, `${A.label} holds it exclusive`);
  await release(A, l);
  return verdictText(`${A.label} shared; ${B.label} exclusive refused, shared granted; plain write locks on ${A.g.name} refused, read locks granted; ${A.label} released, exclusive still refused until ${B.label} released${files} (checked on the server); then ${A.label} exclusive, ${B.label} shared refused`, v);
}

/** Poll connection of a side: another owner on the same daemon. */
const pollSide = (s: Side, suffix = 'p'): Side => ({ ...s, conn: `${s.conn}${suffix}` });

let loopSeq = 0;

/** An interval between an event on `from`'s clock and one on `to`'s clock, in host time (each guest's offset removed). */
function crossHost(from: Guest, t0: number, to: Guest, t1: number): number {
  return t1 - to.offsetMs - (t0 - from.offsetMs);
}

/**
 * A holds; B polls ACQUIRE back to back; A releases. Measures the time from
 * A's RELEASE request to B's grant (guest clocks), and checks every handover
 * on the server (B's lock is on the live file) and from A (refused).
 */
async function releaseToAvailable(A: Side, B: Side, p: Proto, n: number, direct: boolean): Promise<string> {
  const v = newVerdict();
  const lat: number[] = [];
  const per: number[] = [];
  const BP = pollSide(B);
  let orphans = 0;
  const orphanMsgs: string[] = [];
  /** samples whose polls failed with an error other than "resource busy" / ESTALE, by error text */
  const errorSamples = new Map<string, number>();
  let stale = 0;
  for (let i = 0; i < n; i++) {
    const l = direct ? await directLease(p, 'rta') : indirectLease(p, 'rta');
    await acqOk(A, l, false, `sample ${i + 1}`);
    const loop = `poll${++loopSeq}`;
    const flags = l.direct ? 0 : AUTOCREATE;
    const started = await B.g.call<{ first: AcquireResult }>('loopStart', { loop, kind: 'poll', conn: BP.conn, path: l.path, name: l.name, flags, timeoutMs: 20_000 }, 45_000);
    if (started.first.ok) {
      holds.add({ s: BP, l });
      throw new Fail(`sample ${i + 1}: ${B.label} was granted ${short(l)} while ${A.label} held it`);
    }
    await sleep(30);
    const r = await release(A, l);
    const st = await B.g.call<LoopStats>('loopWait', { loop, timeoutMs: 30_000 }, 35_000);
    if (st.tOk === null) throw new Fail(`sample ${i + 1}: ${B.label} never got ${short(l)} within 20 s of polling (${st.attempts} attempts; other errors: ${st.otherErrors.join('; ') || 'none'})`);
    holds.add({ s: BP, l });
    // Errors other than "resource busy" before the grant: a FAIL (a free lease must be
    // granted), but keep sampling, so the output says how often it happens.
    const odd = [...new Set(st.otherErrors.filter((e) => !isStale(e)).map((e) => e.replace(l.file, '<lease>').replace(`'${l.name}'`, '<lease>')))];
    for (const e of odd) {
      errorSamples.set(e, (errorSamples.get(e) ?? 0) + 1);
      finding(errorClass(B, e), l, A, B);
    }
    const staleOnly = st.other > 0 && odd.length === 0;
    if (staleOnly) {
      stale++;
      finding(errorClass(B, st.otherErrors[0]!), l, A, B);
    }
    try {
      await serverHeld(BP, l, `handover ${i + 1}`, A);
    } catch (e) {
      // a safety failure: keep sampling to see how often it happens
      orphans++;
      if (orphanMsgs.length < 3) orphanMsgs.push((e as Error).message);
      countHandover(l, A, B, { stale: staleOnly, error: odd.length > 0, orphan: true });
      await giveBack();
      continue;
    }
    countHandover(l, A, B, { stale: staleOnly, error: odd.length > 0 });
    if (st.other === 0) {
      const dt = crossHost(A.g, r.t0, B.g, st.tOk);
      lat.push(dt);
      per.push(st.lastAttemptMs ?? NaN);
      record(p, `release -> available${direct ? ' (direct)' : ''}: ${A.label} -> ${B.label}`, dt);
    }
    await acqBusy(A, l, false, `sample ${i + 1}: ${B.label} got it after the release`);
    await release(BP, l);
  }
  if (orphans) v.problems.push(`DOUBLE GRANT: ${orphans} of ${n} handovers granted ${B.label} a lock on an orphaned (unlinked) lease file; ${orphanMsgs.join('; ')}${orphans > orphanMsgs.length ? '; …' : ''}`);
  for (const [e, k] of errorSamples) v.problems.push(`in ${k} of ${n} handovers ${B.label}'s polls of the released lease failed with "${e}" before the grant`);
  if (stale) {
    const msg = `in ${stale} of ${n} handovers ${B.label}'s polls failed with "Stale file handle" before the grant`;
    if (B.kind === 'relockd' && !tolerateStale) v.problems.push(msg);
    else v.notes.push(B.kind === 'virtlockd' ? `${msg} (the real virtlockd's own result)` : `${msg} (tolerated: --tolerate-stale)`);
  }
  const s = lat.length ? [...lat].sort((a, b) => a - b) : [NaN];
  return verdictText(`${n} handovers of ${direct ? 'direct leases (disk images: never unlinked)' : 'indirect leases (AUTOCREATE)'}: from ${A.label}'s RELEASE request to ${B.label}'s granted ACQUIRE median ${ms(median(s)!)} (min ${ms(s[0]!)}, max ${ms(s[s.length - 1]!)}, ${lat.length} clean handovers), ${B.label} polling back to back (one ACQUIRE ≈ ${ms(median(per) ?? NaN)}); every grant on the live file (server) and ${A.label} refused afterwards`, v);
}

// ------------------------------------------------------------------ daemons

const OWNER_BASE = 70000; // pids no guest has (pid_max 32768): no daemon may ever signal a real process
let ownerSeq = 0;

function owner(host: string): { uuid: string; name: string; id: number; pid: number } {
  const n = ++ownerSeq;
  return { uuid: `00000000-0000-4000-8000-${String(n).padStart(12, '0')}`, name: `crosshost-${host}-${n}`, id: n, pid: OWNER_BASE + n };
}

async function connectSide(s: Side, protos: Proto[]): Promise<void> {
  await s.g.call('connect', { conn: s.conn, daemon: s.daemon, owner: owner(s.g.name), lockspaces: protos.map((p) => p.ls) }, 60_000);
}

async function startRelockdOn(g: Guest, protos: Proto[]): Promise<{ side: Side; readyMs: number; pid: number }> {
  const r = await g.call<{ pid: number; readyMs: number }>('startRelockd', { name: 'relockd', runtimeDir: '/run/relockd-crosshost', lockspaces: protos.map((p) => p.ls) }, 90_000);
  const side: Side = { g, kind: 'relockd', daemon: 'relockd', conn: `${g.name}-relockd-${++ownerSeq}`, label: `relockd@${g.name}` };
  await connectSide(side, protos);
  await connectSide(pollSide(side), protos);
  return { side, readyMs: r.readyMs, pid: r.pid };
}

async function startVirtlockdOn(g: Guest, protos: Proto[]): Promise<{ side: Side; readyMs: number; pid: number }> {
  const r = await g.call<{ pid: number; readyMs: number }>('startVirtlockd', { name: 'virtlockd', dir: '/run/virtlockd-crosshost' }, 60_000);
  const side: Side = { g, kind: 'virtlockd', daemon: 'virtlockd', conn: `${g.name}-virtlockd-${++ownerSeq}`, label: `virtlockd@${g.name}` };
  await connectSide(side, protos);
  await connectSide(pollSide(side), protos);
  return { side, readyMs: r.readyMs, pid: r.pid };
}

async function daemonRunning(s: Side): Promise<boolean> {
  try {
    return (await s.g.call<{ running: boolean }>('daemonInfo', { name: s.daemon }, 20_000)).running;
  } catch {
    return false;
  }
}

// ------------------------------------------------------------------ steps

const logFile = (s: Side) => `${s.g.name}-${s.daemon}.log`;

async function step(tag: string, label: string, sides: Side[], fn: () => Promise<string>): Promise<boolean> {
  if (isAborted()) return false;
  const marks = sides.map((s) => s.g.logMark(logFile(s)));
  const ts = performance.now();
  stepFindings = [];
  runningStep = `${tag}  ${label}`;
  let detail: string;
  let ok = true;
  try {
    for (const s of sides) if (!(await daemonRunning(s))) throw new Fail(`${s.label} is not running`);
    detail = await fn();
  } catch (e) {
    ok = false;
    detail = errText(e);
  }
  if (isAborted()) return false;
  const took = performance.now() - ts;
  if (ok) pass(`${tag}  ${label}`, detail, took);
  else {
    fail(`${tag}  ${label}`, detail, took);
    classify(`${tag}  ${label}`);
    sides.forEach((s, i) => {
      say(`  --- ${s.label} log during this step ---`);
      say(tail(s.g.logSince(logFile(s), marks[i]!), 40) || '  (empty)');
    });
  }
  await giveBack();
  return ok;
}

/** One scenario run that yields a verdict per protocol (re-exec, kill -9: both protocols' leases at once). */
async function multiStep(tag: string, label: string, protos: Proto[], sides: Side[], fn: () => Promise<Map<Proto, string | Fail>>): Promise<void> {
  if (isAborted()) return;
  const marks = sides.map((s) => s.g.logMark(logFile(s)));
  const ts = performance.now();
  stepFindings = [];
  runningStep = `${tag}  ${label}`;
  let res: Map<Proto, string | Fail>;
  try {
    for (const s of sides) if (!(await daemonRunning(s))) throw new Fail(`${s.label} is not running`);
    res = await fn();
  } catch (e) {
    const f = new Fail(errText(e));
    res = new Map(protos.map((p) => [p, f]));
  }
  if (isAborted()) return;
  const took = performance.now() - ts;
  let anyFail = false;
  for (const p of protos) {
    const r = res.get(p) ?? new Fail('no result');
    if (r instanceof Fail) {
      anyFail = true;
      fail(`${tag}/${p.label}  ${label}`, r.message, took);
      classify(`${tag}/${p.label}  ${label}`, p);
    } else pass(`${tag}/${p.label}  ${label}`, r, took);
  }
  if (anyFail) {
    sides.forEach((s, i) => {
      say(`  --- ${s.label} log during this step ---`);
      say(tail(s.g.logSince(logFile(s), marks[i]!), 40) || '  (empty)');
    });
  }
  await giveBack();
}

/** The step in progress, for the time-limit message. */
let runningStep = '';

/** Prints the classes of what a failed step found; a failure that matches none is NEW. */
function classify(label: string, p?: Proto): void {
  let fs = stepFindings.filter((f) => !p || f.where.startsWith(`${p.label} `));
  if (!fs.some((f) => !f.cls.startsWith('virtlockd-'))) {
    finding('other', undefined, undefined, undefined, label);
    fs = [...fs, { cls: 'other', where: label }];
  }
  const seen = new Set<string>();
  for (const f of fs) {
    const k = `${f.cls}|${f.where}`;
    if (seen.has(k)) continue;
    seen.add(k);
    say(`  class: ${CLASS_TEXT[f.cls].split(':')[0]} — ${f.cls} (${f.where})`);
  }
}

/** Releases whatever a failed step left held (names are unique per step, so this is only tidiness). */
async function giveBack(): Promise<void> {
  for (const h of [...holds]) {
    try {
      await h.s.g.call('release', { conn: h.s.conn, path: h.l.path, name: h.l.name }, 20_000);
    } catch {
      /* the daemon may be gone */
    }
    holds.delete(h);
  }
}

// ------------------------------------------------------------------ scenarios

async function patternSteps(tag: string, p: Proto, X: Side, Y: Side): Promise<void> {
  const pt = `${tag}/${p.label}`;
  await step(pt, `indirect exclusive ${X.label} -> ${Y.label}`, [X, Y], () => exclusivePattern(X, Y, indirectLease(p, 'ex')));
  await step(pt, `indirect exclusive ${Y.label} -> ${X.label}`, [X, Y], () => exclusivePattern(Y, X, indirectLease(p, 'ex')));
  await step(pt, `indirect shared, ${X.label} first`, [X, Y], () => sharedPattern(X, Y, indirectLease(p, 'sh')));
  await step(pt, `indirect shared, ${Y.label} first`, [X, Y], () => sharedPattern(Y, X, indirectLease(p, 'sh')));
  await step(pt, `direct (disk image, default lock space) exclusive ${X.label} -> ${Y.label}`, [X, Y], async () => exclusivePattern(X, Y, await directLease(p, 'disk')));
  await step(pt, `direct exclusive ${Y.label} -> ${X.label}`, [X, Y], async () => exclusivePattern(Y, X, await directLease(p, 'disk')));
  await step(pt, `direct shared, ${X.label} first`, [X, Y], async () => sharedPattern(X, Y, await directLease(p, 'disk')));
  await step(pt, `direct shared, ${Y.label} first`, [X, Y], async () => sharedPattern(Y, X, await directLease(p, 'disk')));
}

async function timingSteps(tag: string, p: Proto, X: Side, Y: Side, n: number, nd: number): Promise<void> {
  const pt = `${tag}/${p.label}`;
  await step(pt, `release -> available, indirect, ${X.label} -> ${Y.label}`, [X, Y], () => releaseToAvailable(X, Y, p, n, false));
  await step(pt, `release -> available, indirect, ${Y.label} -> ${X.label}`, [X, Y], () => releaseToAvailable(Y, X, p, n, false));
  await step(pt, `release -> available, direct, ${X.label} -> ${Y.label}`, [X, Y], () => releaseToAvailable(X, Y, p, nd, true));
  await step(pt, `release -> available, direct, ${Y.label} -> ${X.label}`, [X, Y], () => releaseToAvailable(Y, X, p, nd, true));
}

/**
 * kill -9 of the holder's daemon while it holds an indirect and a direct
 * lease per protocol; the other host polls each. Then a fresh daemon on the
 * victim's host must see the leases held by the other host.
 */
async function killScenario(victim: Side, poller: Side, protos: Proto[], restart: () => Promise<Side>): Promise<{ res: Map<Proto, string | Fail>; victim: Side }> {
  const leases: Lease[] = [];
  for (const p of protos) leases.push(indirectLease(p, 'k9'), await directLease(p, 'k9'));
  for (const l of leases) await acqOk(victim, l, false, 'before the kill');
  const pollers: Side[] = [];
  for (let i = 0; i < leases.length; i++) {
    const s = pollSide(poller, `k${++loopSeq}`);
    await connectSide(s, protos);
    pollers.push(s);
  }
  const loops = leases.map(() => `kill${++loopSeq}`);
  for (let i = 0; i < leases.length; i++) {
    const l = leases[i]!;
    const st = await poller.g.call<{ first: AcquireResult }>('loopStart', { loop: loops[i], kind: 'poll', conn: pollers[i]!.conn, path: l.path, name: l.name, flags: l.direct ? 0 : AUTOCREATE, timeoutMs: 30_000 }, 45_000);
    if (st.first.ok) throw new Fail(`${poller.label} was granted ${short(l)} while ${victim.label} held it`);
  }
  await sleep(50);
  const k = await victim.g.call<{ pid: number; tKill: number; tExit: number }>('signal', { name: victim.daemon, signal: 'SIGKILL' }, 30_000);
  forgetHolds(victim.g, victim.daemon);
  const res = new Map<Proto, string | Fail>();
  const lat = new Map<Lease, number>();
  const per: number[] = [];
  for (let i = 0; i < leases.length; i++) {
    const l = leases[i]!;
    const st = await poller.g.call<LoopStats>('loopWait', { loop: loops[i], timeoutMs: 40_000 }, 45_000);
    if (st.tOk === null) {
      res.set(l.proto, new Fail(`${poller.label} never got ${short(l)} within 30 s of the kill (${st.attempts} attempts; other errors: ${st.otherErrors.join('; ') || 'none'})`));
      continue;
    }
    holds.add({ s: pollers[i]!, l });
    try {
      await serverHeld(pollers[i]!, l, 'after the kill');
    } catch (e) {
      res.set(l.proto, e as Fail);
      continue;
    }
    const dt = crossHost(victim.g, k.tKill, poller.g, st.tOk);
    lat.set(l, dt);
    per.push(st.lastAttemptMs ?? NaN);
    record(l.proto, `kill -9 -> available: ${victim.label} killed, ${poller.label} polls`, dt);
  }
  // the victim's host, with a fresh daemon, must see the other host's leases
  const fresh = await restart();
  for (const l of leases) {
    if (!lat.has(l)) continue;
    try {
      await acqBusy(fresh, l, false, `${poller.label} took it after the kill`);
    } catch (e) {
      res.set(l.proto, e as Fail);
    }
  }
  for (let i = 0; i < leases.length; i++) if (lat.has(leases[i]!)) await release(pollers[i]!, leases[i]!);
  for (const s of pollers) await s.g.call('close', { conn: s.conn }, 10_000);
  for (const p of protos) {
    if (res.has(p)) continue;
    const [ind, dir] = leases.filter((l) => l.proto === p);
    res.set(p, `${victim.label} (pid ${k.pid}) killed holding ${short(ind!)} and ${short(dir!)}; gone after ${ms(k.tExit - k.tKill)}; ${poller.label} granted them ${ms(lat.get(ind!)!)} and ${ms(lat.get(dir!)!)} after kill(2) (${leases.length} polls in parallel, one ACQUIRE ≈ ${ms(median(per) ?? NaN)}; locks on the live files, server); a fresh ${fresh.label} is refused both`);
  }
  return { res, victim: fresh };
}

/**
 * The holder re-execs (SIGUSR1) n times while the other host hammers every
 * held lease with exclusive ACQUIREs (and, optionally, plain fcntl locks from
 * separate processes): nothing may ever be granted. Afterwards the holder
 * releases over the connection it had before the re-execs.
 */
async function reexecScenario(holder: Side, hammer: Side, protos: Proto[], n: number, fcntl: boolean): Promise<Map<Proto, string | Fail>> {
  const items: Array<{ l: Lease; shared: boolean }> = [];
  for (const p of protos) items.push({ l: indirectLease(p, 'rx'), shared: false }, { l: await directLease(p, 'rx'), shared: false }, { l: indirectLease(p, 'rxs'), shared: true });
  for (const it of items) await acqOk(holder, it.l, it.shared, 'before the re-execs');
  const hs: Side[] = [];
  const loops: string[] = [];
  for (const it of items) {
    const s = pollSide(hammer, `h${++loopSeq}`);
    await connectSide(s, protos);
    hs.push(s);
    const loop = `hammer${++loopSeq}`;
    loops.push(loop);
    await hammer.g.call('loopStart', { loop, kind: 'hammer', conn: s.conn, path: it.l.path, name: it.l.name, flags: it.l.direct ? 0 : AUTOCREATE }, 45_000);
  }
  const fl: string[] = [];
  if (fcntl) {
    for (const kind of ['classic', 'ofd']) {
      const loop = `fcntl${++loopSeq}`;
      await hammer.g.call('fcntlHammerStart', { loop, kind, paths: items.map((it) => it.l.file) }, 45_000);
      fl.push(loop);
    }
  }
  await sleep(500);
  const rx: ReexecResult[] = [];
  let reexecError: string | undefined;
  for (let i = 0; i < n && !reexecError; i++) {
    try {
      const r = await holder.g.call<ReexecResult>('reexec', { name: holder.daemon }, 120_000);
      rx.push(r);
      record('all', `re-exec blackout: ${holder.label} (SIGUSR1 -> serving; both protocols at once)`, r.blackoutMs);
      if (r.resources !== items.length) reexecError = `re-exec ${i + 1} restored ${r.resources} resources, expected ${items.length}`;
    } catch (e) {
      reexecError = `re-exec ${i + 1}: ${(e as Error).message}`;
    }
    await sleep(500);
  }
  const stats: LoopStats[] = [];
  for (const loop of loops) stats.push(await hammer.g.call<LoopStats>('loopStop', { loop }, 60_000));
  const fstats: Array<{ kind: string; st: FcntlHammerStats }> = [];
  for (let i = 0; i < fl.length; i++) fstats.push({ kind: i === 0 ? 'classic' : 'OFD', st: await hammer.g.call<FcntlHammerStats>('loopStop', { loop: fl[i] }, 60_000) });
  const res = new Map<Proto, string | Fail>();
  for (const p of protos) {
    const problems: string[] = [];
    if (reexecError) problems.push(reexecError);
    let attempts = 0;
    items.forEach((it, i) => {
      if (it.l.proto !== p) return;
      const st = stats[i]!;
      attempts += st.attempts;
      if (st.wins > 0) problems.push(`${hammer.label} was GRANTED ${what(it.l, false)} ${st.wins} times while ${holder.label} held it`);
      if (st.attempts < 2) problems.push(`${hammer.label} tried ${short(it.l)} only ${st.attempts} times`);
      if (st.other > 0) problems.push(`${hammer.label}'s ACQUIREs of ${short(it.l)} failed with other errors: ${st.otherErrors.join('; ')}`);
    });
    const fdesc: string[] = [];
    for (const f of fstats) {
      const wins = items.filter((it) => it.l.proto === p).reduce((a, it) => a + (f.st.wins[it.l.file] ?? 0), 0);
      if (wins > 0) problems.push(`a plain ${f.kind} write lock on ${hammer.g.name} was granted ${wins} times`);
      if (Object.keys(f.st.errors).length) problems.push(`${f.kind} fcntl hammer errors: ${JSON.stringify(f.st.errors)}`);
      fdesc.push(`${f.kind} F_SETLK`);
    }
    if (problems.length) res.set(p, new Fail(problems.join('; ')));
    else {
      const tot = fstats.reduce((a, f) => a + f.st.attempts, 0);
      res.set(p, `${rx.length} re-execs of ${holder.label} (blackout ${rx.map((r) => ms(r.blackoutMs, 0)).join(', ')}) while ${hammer.label} tried ${attempts} exclusive ACQUIREs of an exclusive, a direct and a shared lease${fstats.length ? ` and plain ${fdesc.join(' + ')} tried ${tot} times (all leases, both protocols)` : ''}: never granted`);
    }
  }
  // the leases survived on the same connection: the holder releases them, the other host gets them
  const verdicts = new Map(protos.map((p) => [p, newVerdict()]));
  for (const it of items) {
    const p = it.l.proto;
    if (res.get(p) instanceof Fail) continue;
    try {
      await acqBusy(hammer, it.l, false, 'after the re-execs');
      await release(holder, it.l);
      await handoverTo(hammer, it.l, verdicts.get(p)!, `${holder.label} released it (over the connection it had before the re-execs)`, holder);
      await release(hammer, it.l);
    } catch (e) {
      res.set(p, e as Fail);
    }
  }
  for (const s of hs) await s.g.call('close', { conn: s.conn }, 10_000);
  for (const p of protos) {
    const r = res.get(p);
    if (typeof r !== 'string') continue;
    try {
      res.set(p, verdictText(`${r}; afterwards still refused to ${hammer.label}, released by ${holder.label} over its pre-re-exec connection, then granted to ${hammer.label}`, verdicts.get(p)!));
    } catch (e) {
      res.set(p, e as Fail);
    }
  }
  return res;
}

// ------------------------------------------------------------------ main

let cleaning: Promise<void> | undefined;
let ownLab = false;
let labDir = '';
let runTag = '';
let protosAll: Proto[] = [];
const guestLeftovers: string[] = [];
/** what `down --purge` must have stopped / deleted (own lab only) */
let labNs = '';
let labUmlPids: number[] = [];
let labDownOk = false;
let labDownMs = 0;

function cleanup(o: Options, interrupted: boolean): Promise<void> {
  cleaning ??= (async () => {
    if (interrupted) abort();
    // this run's files on the export (from a guest: the host cannot mount NFS)
    if (c1 && !o.keep && !interrupted) {
      try {
        await guestSh(c1, `rm -rf ${protosAll.map((p) => p.base).join(' ')}`, 60_000);
      } catch {
        /* the lab is going away anyway, or keeps a directory with a unique name */
      }
    }
    for (const g of [c1, c2, srv]) {
      if (!g) continue;
      const r = interrupted ? undefined : await g.shutdown();
      if (interrupted) g.kill();
      if (r?.left.length) guestLeftovers.push(...r.left.map((x) => `${g.name}: ${x.pid} (${x.what})`));
    }
    // guest drivers still alive (an existing lab is left up, so check there)
    if (lab && !ownLab && !interrupted) {
      for (const g of [c1, c2, srv]) {
        if (!g?.driverPid) continue;
        const r = await lab.exec(g.name, `for i in $(seq 50); do kill -0 ${g.driverPid} 2>/dev/null || exit 0; sleep 0.1; done; kill -9 ${g.driverPid}; echo still running`, 30);
        if (r.stdout.includes('still running')) guestLeftovers.push(`${g.name}: guest driver ${g.driverPid} had to be killed`);
      }
    }
    for (let i = 0; i < 3; i++) {
      const killed = await killEverything();
      if (killed.length) say(`cleanup: killed ${killed.join('; ')}`);
      if (leftovers().length === 0) break;
    }
    if (lab && !ownLab && interrupted) say(`the lab in ${labDir} is left up (its guest drivers SIGKILL their daemons when the relays die); this run's files on the export are under ${protosAll.map((p) => p.base).join(', ')}`);
    if (lab && ownLab && (!o.keep || interrupted)) {
      if (lab.exists) {
        labNs = lab.env().ns;
        labUmlPids = lab.umlPids();
      }
      // purging anyway: SIGKILL the guests (down's clean shutdown costs ~10 s per guest);
      // interrupted with --keep: a clean down, the files (logs, disk image) stay
      const r = await lab.down(!o.keep, !o.keep);
      labDownOk = r.code === 0;
      labDownMs = r.ms;
      if (r.code !== 0) say(`cleanup: lab down failed (${r.timedOut ? `timed out after ${secs(r.ms)}, killed` : `exit ${r.code ?? r.signal}`}): ${oneLine(r.stdout + r.stderr) || 'no output'}`);
      else if (o.keep) say(`lab stopped, files kept: ${labDir} (remove: ${o.labScript} down ${labDir} --purge)`);
    } else if (lab && ownLab) say(`lab kept running: ${labDir} (stop it: ${o.labScript} down ${labDir} --purge)`);
    if (logDir && existsSync(logDir)) {
      if (o.keep) say(`logs kept: ${logDir}`);
      else rmSync(logDir, { recursive: true, force: true });
    }
  })();
  return cleaning;
}

/**
 * What a lab could leave behind on the host, looked up independently of the
 * lab's own bookkeeping: a process whose command line names the lab's work
 * directory (every UML kernel gets mh_work=DIR), a mount under it or of its
 * netns (/run/netns/NAME). The tap devices and the bridge live in the netns.
 */
function labTraces(dir: string, ns: string): string[] {
  const out: string[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d) || Number(d) === process.pid) continue;
    let cmd = '';
    try {
      cmd = readFileSync(`/proc/${d}/cmdline`, 'utf8');
    } catch {
      continue;
    }
    if (cmd.includes(`mh_work=${dir}\0`)) out.push(`process ${d} (${cmd.replace(/\0/g, ' ').slice(0, 120)})`);
  }
  try {
    for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
      const mp = line.split(' ')[4];
      if (mp && (mp === dir || mp.startsWith(`${dir}/`) || (ns && mp === `/run/netns/${ns}`))) out.push(`mount ${mp}`);
    }
  } catch {
    /* no /proc/self/mountinfo: nothing to check */
  }
  return out;
}

async function main(): Promise<number> {
  const o = parseOptions(process.argv.slice(2));
  say('relockd cross-host test over NFS (UML lab: srv = kernel nfsd, c1/c2 = NFS clients; NFSv4.2 and NFSv3/NLM)');
  const { missing, packages } = await missingPrerequisites(o);
  if (missing.length) {
    say('Missing prerequisites (this test installs nothing unless --setup is given):');
    for (const m of missing) say(`  - ${m}`);
    if (packages.length) say(`Either run with --setup (the lab's \`up\` then apt-get installs them) or: apt-get install -y --no-install-recommends ${packages.join(' ')}`);
    say('0 passed, 1 failed');
    return 1;
  }
  process.on('exit', killEverythingSync);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      say(`\n${sig}: stopping everything`);
      void cleanup(o, true).finally(() => {
        say(`${passed} passed, ${failed + 1} failed`);
        process.exit(130);
      });
    });
  }
  const limit = setTimeout(() => {
    say(`\nFAIL  time limit of ${o.timeLimitS} s exceeded${runningStep ? ` during "${runningStep}"` : ''} (a hung NFS mount or guest?); stopping everything`);
    void cleanup(o, true).finally(() => {
      say(`${passed} passed, ${failed + 1} failed`);
      process.exit(1);
    });
  }, o.timeLimitS * 1000);
  limit.unref();

  tolerateStale = o.tolerateStale;
  runTag = `relockd-crosshost-${Date.now().toString(36)}`;
  ownLab = !o.lab;
  labDir = o.lab ?? o.labDir ?? join('/tmp', `${runTag}-lab`);
  lab = new Lab(o.labScript, labDir);
  try {
    // ---------------------------------------------------------------- lab
    if (ownLab) {
      mkdirSync(labDir, { recursive: true });
      const ts = performance.now();
      runningStep = 'lab up';
      const r = await lab.up(2, o.setup);
      if (r.code !== 0) {
        // the guests' consoles say why (they go with the purge, so quote them here)
        const consoles = ['srv', 'c1', 'c2']
          .map((h) => {
            try {
              return `  --- ${h} console (last lines) ---\n${tail(readFileSync(join(labDir, 'log', `${h}.console.log`), 'utf8'), 15) || '  (empty)'}`;
            } catch {
              return '';
            }
          })
          .filter(Boolean);
        throw new LabUpFailed(`the NFS lab did not come up, so no cross-host check ran: ${o.labScript} up ${labDir} 2 failed (exit ${r.code}${r.timedOut ? ', timed out' : ''}):\n${tail(r.stdout + r.stderr, 30)}${consoles.length ? `\n${consoles.join('\n')}` : ''}`);
      }
      pass('lab up', `${labDir}: srv, c1, c2 booted, export mounted on /mnt/nfs4 (vers=4.2) and /mnt/nfs3 (vers=3) in c1 and c2; netns ${lab.env().ns}`, performance.now() - ts);
    }
    logDir = join(labDir, runTag);
    mkdirSync(logDir, { recursive: true });
    protosAll = o.protocols.map((v) => {
      const base = `/mnt/nfs${v}/${runTag}-v${v}`;
      return { v, label: v === 4 ? 'NFSv4.2' : 'NFSv3', base, ls: `${base}/lockspace`, images: `${base}/images` };
    });
    const protos = protosAll;
    {
      const ts = performance.now();
      runningStep = 'guests (drivers in c1, c2, srv)';
      c1 = await Guest.start(lab, 'c1', logDir);
      c2 = await Guest.start(lab, 'c2', logDir);
      srv = await Guest.start(lab, 'srv', logDir);
      const mk = await guestSh(c1, `set -e; for v in ${o.protocols.join(' ')}; do mountpoint -q /mnt/nfs$v; done; mkdir -p ${protos.map((p) => p.images).join(' ')}; grep -E ' /mnt/nfs[34] ' /proc/mounts | awk '{print $2" "$3" "$4}' | sed -E 's/,(rsize|wsize|namlen|timeo|retrans|sec|clientaddr|mountaddr|mountvers|mountport|mountproto|addr)=[^,]*//g'`);
      if (mk.code !== 0) throw new Fail(`the export is not mounted in c1 (or not writable): ${mk.out}`);
      const off1 = await c1.clockOffset();
      const off2 = await c2.clockOffset();
      pass('guests', `drivers on c1, c2 and srv (guest pids ${c1.driverPid}, ${c2.driverPid}, ${srv.driverPid}); mounts: ${oneLine(mk.out)}; guest clock - host clock: c1 ${ms(off1.offsetMs, 2)} (±${ms(off1.rttMs / 2, 2)}), c2 ${ms(off2.offsetMs, 2)} (±${ms(off2.rttMs / 2, 2)}); cross-host intervals below are corrected by these offsets`, performance.now() - ts);
    }

    // ---------------------------------------------------------------- relockd <-> relockd
    let r1: Side;
    let r2: Side | undefined;
    {
      const ts = performance.now();
      const a = await startRelockdOn(c1, protos);
      const b = await startRelockdOn(c2, protos);
      r1 = a.side;
      r2 = b.side;
      pass('relockd<->relockd  start', `relockd on c1 (pid ${a.pid}, ready in ${secs(a.readyMs)}) and on c2 (pid ${b.pid}, ${secs(b.readyMs)}), both with --lockspace ${protos.map((p) => p.ls).join(' --lockspace ')} and CREATE_LOCKSPACE from each client`, performance.now() - ts);
    }
    for (const p of protos) {
      await patternSteps('relockd<->relockd', p, r1, r2);
      await timingSteps('relockd<->relockd', p, r1, r2, o.samples, o.directSamples);
    }
    await multiStep('relockd<->relockd', `re-exec (SIGUSR1) of ${r1.label} x${o.reexecs} while ${r2.label} and plain fcntl on c2 hammer`, protos, [r1, r2], () => reexecScenario(r1, r2!, protos, o.reexecs, true));
    for (let i = 0; i < o.kills; i++) {
      await multiStep('relockd<->relockd', `kill -9 of ${r1.label} while ${r2.label} polls (sample ${i + 1}/${o.kills})`, protos, [r1, r2], async () => {
        const k = await killScenario(r1, r2!, protos, async () => (await startRelockdOn(c1!, protos)).side);
        r1 = k.victim;
        return k.res;
      });
    }
    if (!(await daemonRunning(r1))) r1 = (await startRelockdOn(c1, protos)).side;

    // ---------------------------------------------------------------- relockd <-> virtlockd
    let v2: Side | undefined;
    {
      const ts = performance.now();
      try {
        for (const conn of [r2.conn, pollSide(r2).conn]) await c2.call('close', { conn }, 10_000);
        const t = await c2.call<{ code: number | null; signal: string | null }>('signal', { name: 'relockd', signal: 'SIGTERM' }, 30_000);
        if (t.code !== 0) throw new Fail(`relockd on c2 exited with ${t.code ?? t.signal} on SIGTERM (no lease held)`);
        r2 = undefined;
        const v = await startVirtlockdOn(c2, protos);
        v2 = v.side;
        pass('relockd<->virtlockd  start', `relockd on c2 stopped cleanly (SIGTERM, exit 0); real virtlockd (/usr/sbin/virtlockd, plain start, /run/libvirt/virtlockd-sock in c2's own /run) pid ${v.pid}, serving in ${secs(v.readyMs)}; lock spaces via CREATE_LOCKSPACE`, performance.now() - ts);
      } catch (e) {
        fail('relockd<->virtlockd  start', errText(e), performance.now() - ts);
      }
    }
    if (v2) {
      const v = v2;
      for (const p of protos) {
        await patternSteps('relockd<->virtlockd', p, r1, v);
        await timingSteps('relockd<->virtlockd', p, r1, v, o.samples, o.directSamples);
      }
      const nrx = Math.max(1, Math.min(2, o.reexecs));
      await multiStep('relockd<->virtlockd', `re-exec (SIGUSR1) of ${r1.label} x${nrx} while ${v.label} hammers`, protos, [r1, v], () => reexecScenario(r1, v, protos, nrx, false));
      await multiStep('relockd<->virtlockd', `kill -9 of ${r1.label} while ${v.label} polls`, protos, [r1, v], async () => {
        const k = await killScenario(r1, v, protos, async () => (await startRelockdOn(c1!, protos)).side);
        r1 = k.victim;
        return k.res;
      });
      if (!(await daemonRunning(r1))) r1 = (await startRelockdOn(c1, protos)).side;
      await multiStep('relockd<->virtlockd', `kill -9 of ${v.label} while ${r1.label} polls`, protos, [r1, v], async () => {
        const k = await killScenario(v, r1, protos, async () => (await startVirtlockdOn(c2!, protos)).side);
        v2 = k.victim;
        return k.res;
      });
    }
    if (!isAborted()) {
      const before = [c1.offsetMs, c2.offsetMs];
      const a = await c1.clockOffset();
      const b = await c2.clockOffset();
      pass('clocks', `guest clock offsets drifted by ${ms(a.offsetMs - before[0]!, 2)} (c1) and ${ms(b.offsetMs - before[1]!, 2)} (c2) over the run: the corrections hold`);
    }
  } catch (e) {
    fail(e instanceof LabUpFailed ? 'lab up' : 'harness', errText(e));
  } finally {
    await cleanup(o, false);
  }

  say('');
  const left = leftovers();
  if (left.length || guestLeftovers.length) fail('cleanup', `still alive: ${[...left, ...guestLeftovers].join('; ')}`);
  else if (ownLab && !o.keep) {
    const umlAlive = labUmlPids.filter((pid) => pidAlive(pid));
    const nsLeft = labNs !== '' && (await netnsExists(labNs));
    const traces = labTraces(labDir, labNs);
    if (!labDownOk || umlAlive.length || nsLeft || existsSync(labDir) || traces.length) fail('cleanup', `lab down --purge left: ${[!labDownOk ? 'a failed down' : '', ...umlAlive.map((p) => `UML pid ${p}`), nsLeft ? `netns ${labNs}` : '', existsSync(labDir) ? labDir : '', ...traces].filter(Boolean).join(', ')}`);
    else pass('cleanup', `guest drivers stopped every daemon, poll and probe they started (by pid); relays gone; UML guests (pids ${labUmlPids.join(', ')}) SIGKILLed by process group, lab down --purge --hard (${secs(labDownMs)}): netns ${labNs} (bridge, tap devices) deleted, ${labDir} removed; no process, mount or netns of the lab left (checked in /proc)`);
  } else pass('cleanup', `guest drivers stopped every daemon and probe they started (by pid) and exited; relays gone; ${o.keep ? "this run's files on the export kept (--keep)" : "this run's files on the export removed"}; the lab in ${labDir} is left ${ownLab ? 'running (--keep)' : 'up (it was up before)'}`);
  say('');
  const table = figureTable(protosAll);
  if (table) say(table);
  if (handoverStats.size) {
    say('');
    say('Handovers right after a cross-host RELEASE (the new holder had looked the file up before), by direction:');
    say('  handovers / an ACQUIRE failed with "Stale file handle" before the grant / failed with another error (ELOOP, …) / granted on an orphaned (unlinked) file');
    for (const p of protosAll) {
      for (const kind of ['indirect', 'direct']) {
        const cells = [...handoverStats].filter(([k]) => k.startsWith(`${p.label}|${kind}|`)).map(([k, c]) => `${k.split('|')[2]} ${c.n}/${c.stale}/${c.error}/${c.orphan}`);
        if (cells.length) say(`  ${p.label.padEnd(8)} ${kind.padEnd(9)} ${cells.join(', ')}`);
      }
    }
  }
  if (findingCounts.size) {
    say('');
    say('Findings by class (events; every relockd finding is also a FAIL above, whatever its class):');
    for (const line of findingsTable()) say(line);
  }
  say(`total ${secs(performance.now() - t0)}`);
  if (failures.length) say(`failed: ${failures.join(', ')}`);
  say(`${passed} passed, ${failed} failed`);
  return failed > 0 ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (e) => {
    say(`harness error: ${(e as Error).stack ?? e}`);
    killEverythingSync();
    say(`${passed} passed, ${failed + 1} failed`);
    process.exit(1);
  },
);
