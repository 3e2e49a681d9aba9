// End-to-end proof of the libvirt lifecycle ACROSS HOSTS, with real libvirtd
// and QEMU: two libvirtd instances stand for two hypervisor hosts (each in
// its own mount and UTS namespace, with its own host_uuid, /etc/libvirt,
// /var/lib/libvirt, /run and lock daemon), sharing only the disk images and
// the lock-space directory, as two hosts on NFS do. One kernel, so host A's
// lock daemon and host B's conflict exactly as across NFS hosts.
//
//   npm run test:multihost          (builds, then runs this file)
//   node --import=@tapjs/typescript/import test/e2e/multihost.ts [options]
//
// Scenarios, per lease mode (indirect: file_lockspace_dir, sha256 lease
// files, AUTOCREATE; direct: the image in the default lock space), first
// with relockd on both hosts, then with the real virtlockd on both hosts:
//   1. live migration A → B and back (p2p: libvirtd to libvirtd over UNIX
//      sockets; QEMU's stream over a UNIX socket or 127.0.0.1), the lease gap
//      measured by a watcher process
//   2. a cancelled (slowed-down) live migration; 2b. a cancelled non-live one
//   3. disk hotplug (writable and shareable)
//   4. libvirtd restart with guests running
//   5. re-exec (SIGUSR1) of the source daemon during a migration
// Then a mixed cluster (relockd on A, the real virtlockd on B: a site moving
// from one to the other) runs scenario 1 (one round trip) and, indirect, 3. relockd's checks are
// strict; where the real virtlockd (on both hosts) behaves differently, that
// is printed as a NOTE (its result), not as a failure.
//
// Options: --virtlockd=full|off    also run the scenarios against virtlockd and mixed (default full)
//          --modes=indirect,direct lease setups (default both)
//          --migrations=N          A→B→A round trips in scenario 1 (default 2; gap samples = 2N)
//          --keep                  keep the work directory (configs and logs)
//          --time-limit=SECONDS    stop everything and fail after this long (default 600)
//          --only=1,2,2b,3,4,5     run only these scenarios (development)
//          --stream=unix|tcp       QEMU's migration stream over a UNIX socket (default) or 127.0.0.1
// See docs/libvirt-e2e.md ("Across hosts").

import { closeSync, existsSync, ftruncateSync, mkdirSync, mkdtempSync, openSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { Hammer } from '../lib/probe.js';
import { pingVirtlockd, visibleTmpDir } from '../lib/virtlockd.js';
import { ROOT } from '../lib/relockd.js';
import { LIBVIRTD, PRIVATE_DIRS, QEMU, VIRSH, sha256, writeEmulatorWrapper } from './libvirtHost.js';
import type { LeaseMode } from './libvirtHost.js';
import { startRealVirtlockd, startRelockd } from './lockDaemons.js';
import type { DaemonKind, LockDaemon } from './lockDaemons.js';
import { probeOne, PYTHON } from './leases.js';
import { finalState, freeIntervals, LeaseWatch, lockHolders, pollResolution } from './leaseWatch.js';
import type { WatchResult } from './leaseWatch.js';
import { SimHost } from './simHost.js';
import { abort, isAborted, killEverything, killEverythingSync, leftovers, median, pidAlive, pidStartTime, run, sleep, stopPid } from './proc.js';
import type { RunResult } from './proc.js';

// ------------------------------------------------------------------ options

interface Options {
  virtlockd: 'full' | 'off';
  modes: LeaseMode[];
  migrations: number;
  keep: boolean;
  timeLimitS: number;
  /** Scenario numbers to run (default all): 1, 2, 2b, 3, 4, 5. */
  only: string[] | undefined;
  /** QEMU's migration stream: a UNIX socket in the work directory, or TCP on 127.0.0.1. */
  stream: 'unix' | 'tcp';
}

function usage(msg: string): never {
  process.stderr.write(`${msg}\nusage: multihost.ts [--virtlockd=full|off] [--modes=indirect,direct] [--migrations=N] [--keep] [--time-limit=SECONDS] [--only=1,2,2b,3,4,5] [--stream=unix|tcp]\n`);
  process.exit(2);
}

function parseOptions(argv: string[]): Options {
  const o: Options = { virtlockd: 'full', modes: ['indirect', 'direct'], migrations: 2, keep: false, timeLimitS: 600, only: undefined, stream: 'unix' };
  for (const a of argv) {
    const [k, v] = a.split('=', 2) as [string, string | undefined];
    if (k === '--virtlockd' && (v === 'full' || v === 'off')) o.virtlockd = v;
    else if (k === '--modes' && v) {
      const modes = v.split(',');
      if (!modes.every((m) => m === 'indirect' || m === 'direct')) usage(`bad --modes: ${v}`);
      o.modes = modes as LeaseMode[];
    } else if (k === '--migrations' && v && Number(v) >= 1) o.migrations = Math.floor(Number(v));
    else if (k === '--time-limit' && v && Number(v) > 0) o.timeLimitS = Number(v);
    else if (k === '--keep') o.keep = true;
    else if (k === '--only' && v) o.only = v.split(',');
    else if (k === '--stream' && (v === 'unix' || v === 'tcp')) o.stream = v;
    else usage(`unknown option ${a}`);
  }
  return o;
}

async function missingPrerequisites(): Promise<string[]> {
  const miss: string[] = [];
  if (process.getuid?.() !== 0) miss.push('root: each libvirtd runs as root in private mount and UTS namespaces');
  const need: Array<[string, string]> = [
    [LIBVIRTD, 'libvirt-daemon'],
    [VIRSH, 'libvirt-clients'],
    [QEMU, 'qemu-system-x86'],
    ['/usr/sbin/virtlockd', 'libvirt-daemon'],
    ['/usr/bin/unshare', 'util-linux'],
    ['/usr/bin/nsenter', 'util-linux'],
    ['/usr/bin/setpriv', 'util-linux'],
    ['/bin/mount', 'mount'],
    ['/bin/hostname', 'hostname'],
    ['/bin/bash', 'bash'],
  ];
  for (const [p, pkg] of need) if (!existsSync(p)) miss.push(`${p} (Debian package ${pkg})`);
  for (const [, dir] of PRIVATE_DIRS) if (!existsSync(dir)) miss.push(`${dir} (bind-mount target; Debian packages libvirt-daemon, libvirt-daemon-system)`);
  const py = await run(PYTHON, ['-c', 'import fcntl'], { timeoutMs: 20_000 });
  if (py.code !== 0) miss.push('python3 (Debian package python3): lock probes from a separate process');
  if (!existsSync(join(ROOT, 'dist', 'src', 'cli', 'main.js'))) miss.push('a built relockd (dist/src/cli/main.js): run `npm run build`');
  if (process.getuid?.() === 0 && existsSync('/usr/bin/unshare')) {
    const r = await run('/usr/bin/unshare', ['-m', '-u', '--propagation', 'private', '--', '/bin/sh', '-c', '/bin/hostname relockd-e2e-probe && /bin/mount -n -t tmpfs tmpfs /run'], { timeoutMs: 10_000 });
    if (r.code !== 0) miss.push(`private mount + UTS namespaces (unshare -m -u failed: ${r.stderr.trim() || `exit ${r.code}`}); containers need CAP_SYS_ADMIN`);
  }
  return miss;
}

// ------------------------------------------------------------------ reporting

let passed = 0;
let failed = 0;
let notes = 0;
const failures: string[] = [];
const t0 = performance.now();

function say(line: string): void {
  process.stdout.write(`${line}\n`);
}
function secs(ms: number): string {
  return `${(ms / 1000).toFixed(2)} s`;
}
function oneLine(s: string): string {
  return s.trim().replace(/\r/g, '').replace(/\s*\n\s*/g, ' | ');
}
function tail(text: string, lines: number, width = 600): string {
  const ls = text.split('\n').filter((l) => l.length > 0);
  const cut = ls.slice(-lines).map((l) => (l.length > width ? `${l.slice(0, width)}…` : l));
  return (ls.length > lines ? `  … ${ls.length - lines} earlier lines\n` : '') + cut.map((l) => `  ${l}`).join('\n');
}

class Fail extends Error {}

function recordFail(label: string, detail: string): void {
  if (isAborted()) return;
  failed++;
  failures.push(label);
  say(`FAIL  ${label}: ${detail}`);
}

// ------------------------------------------------------------------ the two hosts

const HOST_UUIDS = { a: '5d1c0a8e-0000-4000-8000-00000000000a', b: '5d1c0a8e-0000-4000-8000-00000000000b' } as const;
/** Guest RAM filled with random bytes (loaded by the emulator wrapper), so a bandwidth-limited migration is slow for real. */
const BALLAST_MIB = 8;
const BALLAST_ADDR = 0x1000000; // 16 MiB into the 64 MiB guest, clear of the firmware

interface Work {
  root: string;
  images: string;
  lockspace: string;
  emulator: string;
  xml: string;
}

function createWork(): Work {
  const root = mkdtempSync(join(visibleTmpDir(), 'relockd-multihost-e2e-'));
  const w: Work = { root, images: join(root, 'images'), lockspace: join(root, 'lockspace'), emulator: join(root, 'bin', 'qemu-system-x86_64'), xml: join(root, 'xml') };
  for (const d of [w.images, w.xml, join(root, 'bin'), join(root, 'mig')]) mkdirSync(d, { recursive: true });
  for (const img of Object.values(IMAGES)) {
    const f = openSync(join(w.images, img), 'w');
    ftruncateSync(f, 1 << 20);
    closeSync(f);
  }
  const ballast = join(root, 'ballast.bin');
  writeFileSync(ballast, randomBytes(BALLAST_MIB << 20));
  writeEmulatorWrapper(w.emulator, ['-device', `loader,file=${ballast},addr=0x${BALLAST_ADDR.toString(16)},force-raw=on`]);
  writeFileSync(join(root, 'not-an-emulator'), '');
  return w;
}

const IMAGES = { m: 'm.img', h: 'h.img', hp: 'hotplug.img', sh: 'shared.img' } as const;

/** Guests: on A `m` (migrates), `h` (hotplug target); on B `n` (m's disk), `k` (the hotplug disk), `hs`/`hx` (the shareable disk). */
interface GuestDef {
  name: string;
  host: 'a' | 'b';
  disk: keyof typeof IMAGES;
  shareable?: boolean;
  scsi?: boolean;
}
const GUESTS: GuestDef[] = [
  { name: 'm', host: 'a', disk: 'm' },
  { name: 'h', host: 'a', disk: 'h', scsi: true },
  { name: 'n', host: 'b', disk: 'm' },
  { name: 'k', host: 'b', disk: 'hp' },
  { name: 'hs', host: 'b', disk: 'sh', shareable: true },
  { name: 'hx', host: 'b', disk: 'sh' },
];

function domainXml(w: Work, g: GuestDef): string {
  const u = sha256(`relockd-multihost-${g.name}`);
  const uuid = `${u.slice(0, 8)}-${u.slice(8, 12)}-4${u.slice(13, 16)}-8${u.slice(17, 20)}-${u.slice(20, 32)}`;
  return `<domain type='qemu'>
  <name>${g.name}</name>
  <uuid>${uuid}</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>${w.emulator}</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='${join(w.images, IMAGES[g.disk])}'/>
      <target dev='vda' bus='virtio'/>${g.shareable ? '\n      <shareable/>' : ''}
    </disk>${g.scsi ? "\n    <controller type='scsi' model='virtio-scsi'/>" : ''}
    <video><model type='none'/></video>
    <memballoon model='none'/>
  </devices>
</domain>
`;
}

interface Lease {
  disk: string;
  name: string;
  path: string;
}

function leaseOf(w: Work, mode: LeaseMode, img: keyof typeof IMAGES): Lease {
  const disk = join(w.images, IMAGES[img]);
  if (mode === 'direct') return { disk, name: disk, path: disk };
  const name = sha256(disk);
  return { disk, name, path: join(w.lockspace, name) };
}

interface Ctx {
  /** 'relockd', 'virtlockd', or 'relockd+virtlockd' (A runs relockd, B the real virtlockd). */
  label: string;
  mode: LeaseMode;
  w: Work;
  A: SimHost;
  B: SimHost;
  dA: LockDaemon;
  dB: LockDaemon;
  stream: 'unix' | 'tcp';
  /** m's and n's disk */
  Lm: Lease;
  Lhp: Lease;
  Lsh: Lease;
}

type Side = 'A' | 'B';

function hostOf(c: Ctx, s: Side): SimHost {
  return s === 'A' ? c.A : c.B;
}
function daemonOf(c: Ctx, s: Side): LockDaemon {
  return s === 'A' ? c.dA : c.dB;
}
function other(s: Side): Side {
  return s === 'A' ? 'B' : 'A';
}

// ------------------------------------------------------------------ checks

async function virshOk(h: SimHost, args: string[], timeoutMs?: number): Promise<RunResult> {
  const r = await h.virsh(args, timeoutMs);
  if (r.code !== 0) throw new Fail(`${h.hostname}: virsh ${args.join(' ')} failed: ${oneLine(r.stderr)}`);
  return r;
}

async function expectState(h: SimHost, name: string, want: string): Promise<void> {
  const st = await h.domState(name);
  if (st !== want) throw new Fail(`${h.hostname}: ${name} is "${st}", expected "${want}"`);
}

/** Running on `h`, with a live QEMU in that host's namespaces, and not active on the other host. */
async function expectRunsOn(c: Ctx, s: Side, name: string): Promise<number> {
  const h = hostOf(c, s);
  await expectState(h, name, 'running');
  const pid = h.qemuPid(name);
  if (!pid) throw new Fail(`${h.hostname}: ${name} is "running" but has no live QEMU`);
  const o = hostOf(c, other(s));
  const st = await o.domState(name);
  if (st !== 'shut off' && st !== 'undefined') throw new Fail(`${name} runs on ${h.hostname} and is also "${st}" on ${o.hostname}`);
  if (o.qemuPid(name)) throw new Fail(`${name} runs on ${h.hostname} and a QEMU for it still lives on ${o.hostname}`);
  return pid;
}

function busyMessage(l: Lease): string {
  return `resource busy: Lockspace resource '${l.name}' is locked`;
}

function short(l: Lease): string {
  return l.name.startsWith('/') ? l.name.replace(/.*\//, '') : `${l.name.slice(0, 12)}…`;
}

async function refused(h: SimHost, args: string[], l: Lease): Promise<void> {
  const r = await h.virsh(args);
  const want = busyMessage(l);
  if (r.code === 0) throw new Fail(`${h.hostname}: virsh ${args.join(' ')} succeeded; expected "${want}"`);
  if (!r.stderr.includes(want)) throw new Fail(`${h.hostname}: virsh ${args.join(' ')} failed, but not with "${want}": ${oneLine(r.stderr)}`);
}

async function startRefused(h: SimHost, name: string, l: Lease): Promise<void> {
  await refused(h, ['start', name], l);
  await expectState(h, name, 'shut off');
}

/**
 * Held, seen from another process (python lockf: exclusive = even a read lock
 * is refused; shared = a read lock is granted, a write lock refused), and by
 * exactly the daemons of `by` (their fdinfo lists a lock on byte 0 of the file).
 */
async function expectHeldBy(c: Ctx, l: Lease, by: Side[], how: 'exclusive' | 'shared', why: string): Promise<void> {
  const w = await probeOne(l.path, 'write');
  const r = await probeOne(l.path, 'read');
  const ok = how === 'exclusive' ? w === 'held' && r === 'held' : w === 'held' && r === 'free';
  if (!ok) throw new Fail(`${why}: lease ${short(l)} should be held ${how} (another process: write lock ${w}, read lock ${r}; ${l.path})`);
  const holders = lockHolders(l.path, [c.dA.pid, c.dB.pid]);
  const want = how === 'exclusive' ? 'WRITE' : 'READ';
  for (const s of ['A', 'B'] as Side[]) {
    const got = holders.get(daemonOf(c, s).pid);
    const should = by.includes(s);
    if (should && got !== want) throw new Fail(`${why}: host ${s}'s ${daemonOf(c, s).kind} (pid ${daemonOf(c, s).pid}) should hold lease ${short(l)} (${want}) but its fds show ${got ?? 'no lock'}`);
    if (!should && got) throw new Fail(`${why}: host ${s}'s ${daemonOf(c, s).kind} (pid ${daemonOf(c, s).pid}) holds lease ${short(l)} (${got}); only ${by.join('+')} should`);
  }
}

async function expectFree(c: Ctx, l: Lease, why: string, timeoutMs = 5000): Promise<void> {
  const t = performance.now();
  for (;;) {
    const p = await probeOne(l.path, 'write');
    if (p === 'free' || p === 'missing') {
      const holders = [...lockHolders(l.path, [c.dA.pid, c.dB.pid]).entries()].filter(([, v]) => v);
      if (holders.length) throw new Fail(`${why}: lease ${short(l)} is free but pid ${holders.map(([p]) => p).join(',')} still lists a lock on it`);
      return;
    }
    if (performance.now() - t > timeoutMs) throw new Fail(`${why}: lease ${short(l)} still ${p} after ${timeoutMs} ms (${l.path})`);
    await sleep(20);
  }
}

async function activeGuests(h: SimHost): Promise<string[]> {
  const r = await h.virsh(['list', '--name']);
  if (r.code !== 0) throw new Error(`${h.hostname}: virsh list failed: ${oneLine(r.stderr)}`);
  return r.stdout.split('\n').map((s) => s.trim()).filter(Boolean);
}

/** Back to "no guest runs anywhere, no lease held": abort jobs, destroy what runs, kill stray QEMUs by pid. */
async function resetGuests(c: Ctx): Promise<string[]> {
  const did: string[] = [];
  for (const h of [c.A, c.B]) {
    if (!h.isRunning()) continue;
    const end = Date.now() + 20_000;
    for (;;) {
      const active = await activeGuests(h);
      if (active.length === 0) break;
      if (Date.now() > end) throw new Error(`${h.hostname}: guests still active after 20 s: ${active.join(', ')}`);
      for (const g of active) {
        await h.virsh(['domjobabort', g]);
        const r = await h.virsh(['destroy', g]);
        if (r.code === 0) did.push(`destroyed ${g} on ${h.hostname}`);
        else if (!/not running|not found/.test(r.stderr)) did.push(`destroy ${g} on ${h.hostname} failed: ${oneLine(r.stderr)}`);
      }
      await sleep(200);
    }
  }
  for (const h of [c.A, c.B]) {
    for (const pid of h.qemuPids()) {
      did.push(`killed stray QEMU ${pid} on ${h.hostname}`);
      await stopPid(pid, 'SIGKILL', 5000);
    }
  }
  for (const l of [c.Lm, c.Lhp, c.Lsh]) await expectFree(c, l, 'no guest runs', 10_000);
  return did;
}

// ------------------------------------------------------------------ step runner

let currentCtx: Ctx | undefined;

/**
 * One scenario. relockd: PASS or FAIL. virtlockd is the reference: a
 * scenario it fails is printed as NOTE (virtlockd's result) and not counted
 * as a failure of this suite.
 */
async function step(c: Ctx, label: string, fn: () => Promise<string>): Promise<boolean> {
  const tag = `${c.label}/${c.mode}`;
  const marks = { dA: c.dA.logMark(), dB: c.dB.logMark(), A: c.A.mark(), B: c.B.mark() };
  const ts = performance.now();
  let ok = true;
  let detail = '';
  try {
    for (const s of ['A', 'B'] as Side[]) {
      if (!daemonOf(c, s).isRunning()) throw new Fail(`host ${s}'s ${daemonOf(c, s).kind} (pid ${daemonOf(c, s).pid}) is not running`);
      if (!hostOf(c, s).isRunning()) throw new Fail(`libvirtd on ${hostOf(c, s).hostname} is not running`);
    }
    detail = await fn();
  } catch (e) {
    ok = false;
    detail = e instanceof Fail ? e.message : `${(e as Error).stack ?? e}`;
  }
  if (isAborted()) return false;
  const took = secs(performance.now() - ts);
  if (ok) {
    passed++;
    say(`PASS  ${tag}  ${label}: ${detail} [${took}]`);
  } else if (c.label === 'virtlockd') {
    notes++;
    say(`NOTE  ${tag}  ${label}: virtlockd's result: ${detail} [${took}]`);
  } else {
    failed++;
    failures.push(`${tag}  ${label}`);
    say(`FAIL  ${tag}  ${label}: ${detail} [${took}]`);
  }
  if (!ok) {
    for (const s of ['A', 'B'] as Side[]) {
      say(`  --- host ${s}: ${daemonOf(c, s).kind} log during this step (pid ${daemonOf(c, s).pid}) ---`);
      say(tail(daemonOf(c, s).logSince(s === 'A' ? marks.dA : marks.dB), 25) || '  (empty)');
      say(`  --- host ${s}: libvirtd log during this step ---`);
      say(tail(hostOf(c, s).logSince(s === 'A' ? marks.A : marks.B), 25) || '  (empty)');
    }
  }
  try {
    const did = await resetGuests(c);
    if (!ok && did.length) say(`  (reset: ${did.join('; ')})`);
    if (ok && did.length) {
      passed--;
      failed++;
      failures.push(`${tag}  ${label} (left guests running)`);
      say(`FAIL  ${tag}  ${label}: left guests running: ${did.join('; ')}`);
      ok = false;
    }
  } catch (e) {
    say(`  (reset after this step failed: ${(e as Error).message})`);
  }
  return ok;
}

// ------------------------------------------------------------------ migration

const MIGRATE_FLAGS = [
  '--live',
  '--p2p', // the source libvirtd talks to the destination's UNIX socket itself
  '--unsafe', // the images are on a local filesystem (shared by being one machine); libvirt cannot tell
];

let streamSeq = 0;

function migrateArgs(c: Ctx, to: Side, name: string, extra: string[] = [], live = true): string[] {
  const flags = live ? MIGRATE_FLAGS : MIGRATE_FLAGS.filter((f) => f !== '--live');
  // QEMU's stream. qemu.conf's migration_address / migration_host refuse
  // loopback addresses, and without a URI libvirt sends the destination's
  // hostname (unresolvable here): so the URI is given per migration.
  const stream = c.stream === 'unix' ? [`unix://${join(c.w.root, 'mig', `${++streamSeq}.sock`)}`] : ['tcp://127.0.0.1', '--listen-address', '127.0.0.1'];
  return ['migrate', ...flags, ...extra, name, hostOf(c, to).uri, ...stream];
}

interface Timing {
  migrate: number[];
  gap: number[];
  resolution: number[];
  restart: number[];
}
const timings = new Map<string, Timing>();

function timingOf(c: Ctx): Timing {
  const k = `${c.label}/${c.mode}`;
  let t = timings.get(k);
  if (!t) timings.set(k, (t = { migrate: [], gap: [], resolution: [], restart: [] }));
  return t;
}

let activeWatch: LeaseWatch | undefined;
let activeHammer: Hammer | undefined;

async function watch(path: string, opts: { signalPidOnFree?: number } = {}): Promise<LeaseWatch> {
  const w = await LeaseWatch.start(path, opts);
  activeWatch = w;
  return w;
}

async function stopWatch(w: LeaseWatch): Promise<WatchResult> {
  try {
    return await Promise.race([w.stop(), sleep(10_000).then(() => Promise.reject(new Fail('the lease watcher did not report')))]);
  } finally {
    w.kill();
    activeWatch = undefined;
  }
}

function describeFree(r: WatchResult): string {
  return freeIntervals(r).map((i) => `${i.ms.toFixed(1)} ms`).join(', ') || 'never free';
}

/**
 * Live-migrates `name` from → to, watching its lease from a separate
 * process; checks that it then runs on `to`, held by to's daemon only, with
 * exactly one free interval (source release → destination acquire).
 */
async function migrateWatched(c: Ctx, from: Side, to: Side, name: string): Promise<{ ms: number; gap: number; res: number }> {
  const w = await watch(c.Lm.path);
  let r: RunResult;
  let res: WatchResult;
  try {
    await sleep(20);
    r = await hostOf(c, from).virsh(migrateArgs(c, to, name), 120_000);
    await sleep(50);
  } finally {
    res = await stopWatch(w);
  }
  if (r.code !== 0) throw new Fail(`migration ${from} → ${to} failed: ${oneLine(r.stderr)}`);
  await expectRunsOn(c, to, name);
  await expectHeldBy(c, c.Lm, [to], 'exclusive', `after migration ${from} → ${to}`);
  const free = freeIntervals(res);
  if (res.transitions[0]![1] !== 'held') throw new Fail(`migration ${from} → ${to}: the lease was ${res.transitions[0]![1]} when the watch began`);
  if (finalState(res) !== 'held') throw new Fail(`migration ${from} → ${to}: the watch ended with the lease ${finalState(res)}`);
  if (free.length !== 1) throw new Fail(`migration ${from} → ${to}: expected exactly one interval without a holder (release on ${from}, acquire on ${to}), saw ${free.length}: ${describeFree(res)}`);
  return { ms: r.ms, gap: free[0]!.ms, res: pollResolution(res) };
}

// ------------------------------------------------------------------ scenarios

async function scenarioMigrate(c: Ctx, migrations: number): Promise<string> {
  await virshOk(c.A, ['start', 'm']);
  await expectRunsOn(c, 'A', 'm');
  await expectHeldBy(c, c.Lm, ['A'], 'exclusive', 'm runs on A');
  await startRefused(c.B, 'n', c.Lm);
  const t = timingOf(c);
  const gaps: string[] = [];
  for (let i = 0; i < migrations; i++) {
    const ab = await migrateWatched(c, 'A', 'B', 'm');
    t.migrate.push(ab.ms);
    t.gap.push(ab.gap);
    t.resolution.push(ab.res);
    gaps.push(`A→B ${ab.gap.toFixed(1)}`);
    if (i === 0) {
      // A still has m's persistent definition: starting it there must be refused while it runs on B
      await startRefused(c.A, 'm', c.Lm);
      await expectRunsOn(c, 'B', 'm');
      await expectHeldBy(c, c.Lm, ['B'], 'exclusive', 'after the refused start on A');
    }
    const ba = await migrateWatched(c, 'B', 'A', 'm');
    t.migrate.push(ba.ms);
    t.gap.push(ba.gap);
    t.resolution.push(ba.res);
    gaps.push(`B→A ${ba.gap.toFixed(1)}`);
    const bState = await c.B.domState('m');
    if (bState !== 'undefined') throw new Fail(`after migrating back, B still has m (${bState}); it came as a transient guest`);
  }
  await virshOk(c.A, ['destroy', 'm']);
  await expectFree(c, c.Lm, 'm destroyed');
  return `m held by A's daemon, n on B refused; ${migrations}× live A→B→A: each time held by the destination's daemon only (fdinfo), m running there, exactly one holder-less interval per migration (ms: ${gaps.join(', ')}; watcher poll every ${(median(t.resolution) ?? 0).toFixed(3)} ms); start of m on A refused while it ran on B`;
}

/** Polls the source's job until it has moved `bytes` (the migration is under way). */
async function waitMigrating(h: SimHost, name: string, timeoutMs = 20_000): Promise<string> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const r = await h.virsh(['domjobinfo', name]);
    const m = /Data processed:\s+([\d.]+ \w+)/.exec(r.stdout);
    if (r.code === 0 && /Job type:\s+Unbounded/.test(r.stdout) && m && !/^0(\.0+)? /.test(m[1]!)) return m[1]!;
    if (Date.now() > end) throw new Fail(`${h.hostname}: the migration job of ${name} did not get under way within ${timeoutMs} ms: ${oneLine(r.stdout + r.stderr)}`);
    await sleep(100);
  }
}

async function scenarioCancel(c: Ctx, live: boolean): Promise<string> {
  await virshOk(c.A, ['start', 'm']);
  const pid = await expectRunsOn(c, 'A', 'm');
  await expectHeldBy(c, c.Lm, ['A'], 'exclusive', 'm runs on A');
  const w = await watch(c.Lm.path);
  let mig: RunResult;
  let res: WatchResult;
  let processed = '';
  try {
    // 1 MiB/s against BALLAST_MIB MiB of random guest RAM: the stream alone would take BALLAST_MIB seconds
    const migP = c.A.virsh(migrateArgs(c, 'B', 'm', ['--bandwidth', '1'], live), 120_000);
    try {
      processed = await waitMigrating(c.A, 'm');
      if (!live) {
        const st = await c.A.domState('m');
        if (st !== 'paused') throw new Fail(`non-live migration under way but m is "${st}" on A, expected "paused"`);
      }
      await virshOk(c.A, ['domjobabort', 'm']);
    } finally {
      mig = await migP;
    }
    await sleep(300);
  } finally {
    res = await stopWatch(w);
  }
  if (mig.code === 0) throw new Fail('the migration succeeded although it was aborted');
  if (!/cancel|abort/i.test(mig.stderr)) throw new Fail(`the migration failed, but not as cancelled: ${oneLine(mig.stderr)}`);
  const end = Date.now() + 10_000;
  while ((await c.A.domState('m')) !== 'running' && Date.now() < end) await sleep(50);
  const pidAfter = await expectRunsOn(c, 'A', 'm');
  if (pidAfter !== pid) throw new Fail(`m's QEMU on A changed from ${pid} to ${pidAfter}`);
  if (c.B.qemuPids().length) throw new Fail(`a QEMU is left on B: ${c.B.qemuPids().join(', ')}`);
  await expectHeldBy(c, c.Lm, ['A'], 'exclusive', 'after the cancelled migration');
  const free = freeIntervals(res);
  if (finalState(res) !== 'held') throw new Fail(`the watch ended with the lease ${finalState(res)}`);
  let how: string;
  if (live) {
    // the guest never paused: the lease must never have been free
    if (free.length !== 0) throw new Fail(`the lease was free during a cancelled LIVE migration (the guest never paused): ${describeFree(res)}`);
    how = 'the lease was never free (watched from another process)';
  } else {
    // non-live: the source paused (released), the abort resumed it (re-acquired on A)
    if (free.length !== 1) throw new Fail(`non-live: expected one free interval (paused → resumed on A), saw ${free.length}: ${describeFree(res)}`);
    how = `free while paused for ${free[0]!.ms.toFixed(0)} ms, re-acquired by A's daemon when the abort resumed m`;
  }
  await virshOk(c.A, ['destroy', 'm']);
  await expectFree(c, c.Lm, 'm destroyed');
  return `${live ? 'live' : 'non-live'} migration at 1 MiB/s aborted (domjobabort) after ${processed}: virsh migrate failed "${oneLine(mig.stderr).slice(0, 90)}"; m running on A (same QEMU pid), held by A's daemon only, no QEMU left on B; ${how}`;
}

async function scenarioHotplug(c: Ctx): Promise<string> {
  await virshOk(c.A, ['start', 'h']);
  await expectRunsOn(c, 'A', 'h');
  await expectFree(c, c.Lhp, 'before attach-disk');
  // writable disk, SCSI (virtio-scsi unplugs without guest cooperation; the guest has no OS)
  await virshOk(c.A, ['attach-disk', 'h', c.Lhp.disk, 'sda', '--targetbus', 'scsi', '--live']);
  await expectHeldBy(c, c.Lhp, ['A'], 'exclusive', 'after attach-disk');
  await startRefused(c.B, 'k', c.Lhp);
  await virshOk(c.A, ['detach-disk', 'h', 'sda', '--live']);
  const blk = await virshOk(c.A, ['domblklist', 'h']);
  if (blk.stdout.includes(c.Lhp.disk)) throw new Fail(`detach-disk: h still lists ${c.Lhp.disk}`);
  await expectFree(c, c.Lhp, 'after detach-disk');
  await virshOk(c.B, ['start', 'k']);
  await expectHeldBy(c, c.Lhp, ['B'], 'exclusive', 'k runs on B after the detach');
  // ... and now the attach on A is refused
  await refused(c.A, ['attach-disk', 'h', c.Lhp.disk, 'sda', '--targetbus', 'scsi', '--live'], c.Lhp);
  await virshOk(c.B, ['destroy', 'k']);
  await expectFree(c, c.Lhp, 'k destroyed');
  // shareable disk: a shared lease, shared with a guest on B; an exclusive one refused
  await virshOk(c.A, ['attach-disk', 'h', c.Lsh.disk, 'sdb', '--targetbus', 'scsi', '--mode', 'shareable', '--live']);
  await expectHeldBy(c, c.Lsh, ['A'], 'shared', 'after attach-disk --mode shareable');
  await virshOk(c.B, ['start', 'hs']);
  await expectHeldBy(c, c.Lsh, ['A', 'B'], 'shared', 'h (A) and hs (B) share the disk');
  await startRefused(c.B, 'hx', c.Lsh);
  await virshOk(c.B, ['destroy', 'hs']);
  await expectHeldBy(c, c.Lsh, ['A'], 'shared', 'hs gone');
  await virshOk(c.A, ['detach-disk', 'h', 'sdb', '--live']);
  await expectFree(c, c.Lsh, 'after detach-disk of the shareable disk');
  await expectRunsOn(c, 'A', 'h');
  await virshOk(c.A, ['destroy', 'h']);
  return "attach-disk (scsi) took the lease on A's daemon, k on B refused; detach-disk released it, then k on B ran and a second attach on A was refused; attach --mode shareable took a SHARED lease, shared with hs on B (both daemons hold a read lock), exclusive hx refused; detach released";
}

async function scenarioLibvirtdRestart(c: Ctx): Promise<string> {
  await virshOk(c.A, ['start', 'm']);
  await virshOk(c.A, ['start', 'h']);
  await virshOk(c.A, ['attach-disk', 'h', c.Lhp.disk, 'sda', '--targetbus', 'scsi', '--live']);
  const pid = await expectRunsOn(c, 'A', 'm');
  const hpid = await expectRunsOn(c, 'A', 'h');
  await expectHeldBy(c, c.Lm, ['A'], 'exclusive', 'before the restart');
  await expectHeldBy(c, c.Lhp, ['A'], 'exclusive', 'before the restart');
  const hammer = await Hammer.start([c.Lm.path, c.Lhp.path]);
  activeHammer = hammer;
  let h: { attempts: number; wins: Record<string, number> };
  let restartMs = 0;
  try {
    await sleep(100);
    const t = performance.now();
    await c.A.stopDaemonOnly();
    if (!pidAlive(pid) || !pidAlive(hpid)) throw new Fail('a guest died with libvirtd');
    await sleep(300);
    await c.A.start(c.mode);
    restartMs = performance.now() - t;
    await sleep(200);
  } finally {
    h = await Promise.race([hammer.stop(), sleep(10_000).then(() => ({ attempts: -1, wins: {} }))]);
    hammer.kill();
    activeHammer = undefined;
  }
  timingOf(c).restart.push(restartMs);
  if (h.attempts <= 0) throw new Fail('the lock hammer did not report');
  const wins = Object.values(h.wins).reduce((a, b) => a + b, 0);
  if (wins > 0) throw new Fail(`a separate process got a lease while libvirtd restarted: ${JSON.stringify(h.wins)}`);
  if ((await expectRunsOn(c, 'A', 'm')) !== pid) throw new Fail("m's QEMU changed across the libvirtd restart");
  await expectRunsOn(c, 'A', 'h');
  await expectHeldBy(c, c.Lm, ['A'], 'exclusive', 'after the libvirtd restart');
  await expectHeldBy(c, c.Lhp, ['A'], 'exclusive', 'after the libvirtd restart');
  await startRefused(c.B, 'k', c.Lhp);
  // the restarted libvirtd still drives the lock manager: unplug releases, destroy releases
  await virshOk(c.A, ['detach-disk', 'h', 'sda', '--live']);
  await expectFree(c, c.Lhp, 'detach-disk after the restart');
  await virshOk(c.A, ['destroy', 'm']);
  await expectFree(c, c.Lm, 'm destroyed after the restart');
  await virshOk(c.A, ['destroy', 'h']);
  return `libvirtd on A restarted (${secs(restartMs)}) with m and h (+ hotplugged disk) running: ${h.attempts} F_SETLK attempts from another process, none won; same QEMU pids, still running, leases held by A's daemon; k on B refused; afterwards detach-disk and destroy released`;
}

/** Waits until the daemon serves again after a SIGUSR1 sent by someone else (the watcher). */
async function waitReexecDone(d: LockDaemon, mark: number, startTime: string | undefined): Promise<void> {
  const end = Date.now() + 20_000;
  for (;;) {
    if (!d.isRunning()) throw new Fail(`${d.kind} exited during its re-exec`);
    if (d.kind === 'relockd') {
      const s = d.logSince(mark);
      if (/"msg":"re-exec failed[^"]*"/.test(s)) throw new Fail(`relockd: re-exec failed: ${tail(s, 5)}`);
      if (/"msg":"re-exec complete"/.test(s)) break;
    } else if (await pingVirtlockd(d.socketPath, 1000)) break;
    if (Date.now() > end) throw new Fail(`${d.kind} did not serve again within 20 s of SIGUSR1`);
    await sleep(20);
  }
  if (pidStartTime(d.pid) !== startTime) throw new Fail(`${d.kind} pid ${d.pid} is another process after the re-exec`);
}

/** After a migration that may have completed or failed: exactly one side runs m and holds its lease. */
async function oneSideHolds(c: Ctx, r: RunResult): Promise<Side> {
  const end = Date.now() + 15_000;
  let states: [string, string];
  for (;;) {
    states = [await c.A.domState('m'), await c.B.domState('m')];
    const settled = (states[0] === 'running' && (states[1] === 'undefined' || states[1] === 'shut off')) || (states[1] === 'running' && states[0] === 'shut off');
    if (settled) break;
    if (Date.now() > end) throw new Fail(`15 s after the migration (${r.code === 0 ? 'completed' : `failed: ${oneLine(r.stderr)}`}) m is "${states[0]}" on A and "${states[1]}" on B`);
    await sleep(100);
  }
  const side: Side = states[0] === 'running' ? 'A' : 'B';
  if (r.code === 0 && side !== 'B') throw new Fail('virsh migrate succeeded but m runs on A');
  if (r.code !== 0 && side !== 'A') throw new Fail(`virsh migrate failed (${oneLine(r.stderr)}) but m runs on B`);
  await expectRunsOn(c, side, 'm');
  await expectHeldBy(c, c.Lm, [side], 'exclusive', `m runs on ${side} after the migration with a re-exec`);
  return side;
}

async function scenarioReexec(c: Ctx): Promise<string> {
  const out: string[] = [];
  // (a) while the stream flows: a slowed-down migration (~2 s of stream), SIGUSR1 to A's daemon in the middle
  {
    await virshOk(c.A, ['start', 'm']);
    await expectHeldBy(c, c.Lm, ['A'], 'exclusive', 'm runs on A');
    const migP = c.A.virsh(migrateArgs(c, 'B', 'm', ['--bandwidth', String(Math.ceil(BALLAST_MIB / 2))]), 120_000);
    let r: RunResult;
    let reexecMs = 0;
    try {
      await waitMigrating(c.A, 'm');
      const t = performance.now();
      await c.dA.reexec();
      reexecMs = performance.now() - t;
    } finally {
      r = await migP;
    }
    const side = await oneSideHolds(c, r);
    out.push(`(a) re-exec in mid-stream (${secs(reexecMs)}): migration ${r.code === 0 ? 'completed' : 'failed cleanly'}, m runs on ${side}, held by ${side}'s daemon only`);
    await virshOk(hostOf(c, side), ['destroy', 'm']);
    await expectFree(c, c.Lm, 'm destroyed');
  }
  // (b) at the switchover: the watcher SIGUSR1s A's daemon the instant the source releases the lease
  {
    await virshOk(c.A, ['start', 'm']);
    await expectHeldBy(c, c.Lm, ['A'], 'exclusive', 'm runs on A');
    const mark = c.dA.logMark();
    const st = pidStartTime(c.dA.pid);
    const w = await watch(c.Lm.path, { signalPidOnFree: c.dA.pid });
    let r: RunResult;
    let res: WatchResult;
    try {
      r = await c.A.virsh(migrateArgs(c, 'B', 'm'), 120_000);
      await sleep(50);
    } finally {
      res = await stopWatch(w);
    }
    if (res.signalled === null) throw new Fail(`the lease was never free during the migration, so no re-exec was sent (${oneLine(r.stderr) || 'migration ok'})`);
    await waitReexecDone(c.dA, mark, st);
    const side = await oneSideHolds(c, r);
    out.push(`(b) SIGUSR1 at the release (${res.signalled.toFixed(0)} ms into the watch): migration ${r.code === 0 ? 'completed' : `failed cleanly (${oneLine(r.stderr).slice(0, 80)})`}, m runs on ${side}, held by ${side}'s daemon only`);
    await virshOk(hostOf(c, side), ['destroy', 'm']);
    await expectFree(c, c.Lm, 'm destroyed');
  }
  return out.join('; ');
}

// ------------------------------------------------------------------ segments

let work: Work | undefined;
let hostA: SimHost | undefined;
let hostB: SimHost | undefined;
const liveDaemons = new Set<LockDaemon>();

async function startDaemon(kind: DaemonKind, h: SimHost): Promise<LockDaemon> {
  const d =
    kind === 'relockd'
      ? await startRelockd({ runtimeDir: join(h.dir, 'relockd'), logPath: join(h.dir, 'logs', 'relockd.log') })
      : await startRealVirtlockd(join(h.dir, 'virtlockd'));
  liveDaemons.add(d);
  h.pointLockdAt(d.socketPath);
  return d;
}

async function stopDaemonCleanly(d: LockDaemon): Promise<string> {
  const ex = await d.terminate(15_000);
  if (ex === 'timeout') throw new Fail(`${d.kind} (pid ${d.pid}) did not exit on SIGTERM within 15 s although no guest runs`);
  if (ex.code !== 0) throw new Fail(`${d.kind} (pid ${d.pid}) exited with code ${ex.code}, signal ${ex.signal} on SIGTERM (expected 0)`);
  return 'exit 0';
}

/**
 * Every scenario with `kinds[0]` on host A and `kinds[1]` on host B. `only`:
 * the scenarios to run (the mixed relockd/virtlockd pair runs a subset).
 */
async function segment(kinds: [DaemonKind, DaemonKind], mode: LeaseMode, o: Options, w: Work, A: SimHost, B: SimHost, only?: string[], migrations = o.migrations): Promise<void> {
  const label = kinds[0] === kinds[1] ? kinds[0] : kinds.join('+');
  const tag = `${label}/${mode}`;
  say('');
  say(`== ${kinds[0] === kinds[1] ? `${label} on both hosts` : `${kinds[0]} on host A, the real ${kinds[1]} on host B (a mixed cluster)`}, ${mode === 'indirect' ? `indirect leases (file_lockspace_dir ${w.lockspace}, sha256 names, AUTOCREATE)` : 'direct leases (the disk image itself, default lock space)'} ==`);
  const ts = performance.now();
  const daemons: LockDaemon[] = [];
  let c: Ctx;
  try {
    if (mode === 'indirect') rmSync(w.lockspace, { recursive: true, force: true });
    daemons.push(await startDaemon(kinds[0], A), await startDaemon(kinds[1], B));
    const msA = await A.start(mode);
    const msB = await B.start(mode);
    c = { label, mode, stream: o.stream, w, A, B, dA: daemons[0]!, dB: daemons[1]!, Lm: leaseOf(w, mode, 'm'), Lhp: leaseOf(w, mode, 'hp'), Lsh: leaseOf(w, mode, 'sh') };
    if (mode === 'indirect' && !statSync(w.lockspace, { throwIfNoEntry: false })?.isDirectory()) throw new Fail(`libvirtd's CREATE_LOCKSPACE did not create ${w.lockspace}`);
    for (const g of GUESTS) {
      const f = join(w.xml, `${g.name}.xml`);
      writeFileSync(f, domainXml(w, g));
      await virshOk(g.host === 'a' ? A : B, ['define', f]);
    }
    passed++;
    say(`PASS  ${tag}  setup: ${c.dA.kind} pid ${c.dA.pid} (A), ${c.dB.kind} pid ${c.dB.pid} (B); libvirtd ${A.hostname} (host_uuid …${HOST_UUIDS.a.slice(-4)}) answered after ${secs(msA)}, ${B.hostname} (…${HOST_UUIDS.b.slice(-4)}) after ${secs(msB)}; guests defined; migration stream over ${o.stream === 'unix' ? 'UNIX sockets' : '127.0.0.1'} [${secs(performance.now() - ts)}]`);
  } catch (e) {
    recordFail(`${tag}  setup`, e instanceof Fail ? e.message : `${(e as Error).stack ?? e}`);
    for (const h of [A, B]) say(`  --- ${h.hostname} libvirtd log ---\n${tail(h.logSince({ log: 0, out: 0 }), 30)}`);
    await A.stop();
    await B.stop();
    for (const d of daemons) await d.kill();
    return;
  }
  currentCtx = c;
  const scenarios: Array<[string, string, () => Promise<string>]> = [
    ['1', "1. live migration A → B → A: lease moves between the hosts' daemons", () => scenarioMigrate(c, migrations)],
    ['2', '2. cancelled live migration: lease stays on the source', () => scenarioCancel(c, true)],
    ['2b', '2b. cancelled non-live migration: source re-acquires on resume', () => scenarioCancel(c, false)],
    ['3', '3. disk hotplug: attach takes the lease, detach releases, shareable shares', () => scenarioHotplug(c)],
    ['4', '4. libvirtd restart with guests running', () => scenarioLibvirtdRestart(c)],
    ['5', `5. re-exec (SIGUSR1) of the source ${kinds[0]} during a migration`, () => scenarioReexec(c)],
  ];
  for (const [id, what, fn] of scenarios) if ((!o.only || o.only.includes(id)) && (!only || only.includes(id))) await step(c, what, fn);
  await step(c, 'teardown: both libvirtds stopped, nothing left in their namespaces, both daemons exit 0 on SIGTERM', async () => {
    const killed = [...(await A.stop()), ...(await B.stop())];
    if (killed.length) throw new Fail(`had to kill: ${killed.join('; ')}`);
    return `A: ${await stopDaemonCleanly(c.dA)}, B: ${await stopDaemonCleanly(c.dB)}`;
  });
  for (const d of daemons) if (d.isRunning()) await d.kill();
  currentCtx = undefined;
}

// ------------------------------------------------------------------ host untouched

function snapshotHost(): Map<string, string> {
  const m = new Map<string, string>();
  const walk = (p: string, depth: number) => {
    let st;
    try {
      st = statSync(p, { throwIfNoEntry: false });
    } catch {
      return;
    }
    if (!st) return;
    m.set(p, st.isDirectory() ? `dir ${st.mtimeMs}` : `${st.size} ${st.mtimeMs}`);
    if (st.isDirectory() && depth < 6) for (const e of readdirSync(p)) walk(join(p, e), depth + 1);
  };
  for (const [, d] of PRIVATE_DIRS) walk(d, 0);
  for (const e of existsSync('/run') ? readdirSync('/run') : []) if (/libvirt|virtlock|virtlog|relockd/.test(e)) walk(join('/run', e), 0);
  m.set('hostname', hostname());
  return m;
}

function diffSnapshots(a: Map<string, string>, b: Map<string, string>): string[] {
  const out: string[] = [];
  for (const [k, v] of a) if (b.get(k) !== v) out.push(b.has(k) ? `changed ${k}` : `removed ${k}`);
  for (const k of b.keys()) if (!a.has(k)) out.push(`added ${k}`);
  return out;
}

function timingTable(): string {
  const cols = [...timings.keys()];
  if (cols.length === 0) return '';
  const f = (x: number | undefined, d: number) => (x === undefined ? '—' : x.toFixed(d));
  const rows: Array<[string, (t: Timing) => string]> = [
    ['virsh migrate --live (wall)', (t) => f(median(t.migrate), 0)],
    ['lease without holder in migration', (t) => f(median(t.gap), 1)],
    ['  max of those', (t) => f(t.gap.length ? Math.max(...t.gap) : undefined, 1)],
    ['  watcher poll interval', (t) => f(median(t.resolution), 3)],
    ['libvirtd restart (stop → answers)', (t) => f(median(t.restart), 0)],
  ];
  const w0 = Math.max(...rows.map((r) => r[0].length)) + 2;
  const wc = Math.max(...cols.map((c) => c.length)) + 2;
  const lines = [`Timings in ms (medians; migrations: ${[...timings.values()].map((t) => t.migrate.length).join('/')} samples):`, ' '.repeat(w0) + cols.map((c) => c.padStart(wc)).join('')];
  for (const [label, fn] of rows) lines.push(label.padEnd(w0) + cols.map((c) => fn(timings.get(c)!).padStart(wc)).join(''));
  return lines.join('\n');
}

// ------------------------------------------------------------------ main

let cleaning: Promise<void> | undefined;

function cleanup(o: Options, interrupted: boolean): Promise<void> {
  cleaning ??= (async () => {
    try {
      if (interrupted) abort();
      activeHammer?.kill();
      activeWatch?.kill();
      if (!interrupted) {
        for (const h of [hostA, hostB]) if (h) await h.stop();
        for (const d of liveDaemons) if (d.isRunning()) await d.kill();
      }
      for (let i = 0; i < 3; i++) {
        const killed = await killEverything();
        if (killed.length) say(`cleanup: killed ${killed.join('; ')}`);
        if (leftovers().length === 0) break;
      }
    } finally {
      if (work && !o.keep) rmSync(work.root, { recursive: true, force: true });
      else if (work) say(`work directory kept: ${work.root}`);
    }
  })();
  return cleaning;
}

async function main(): Promise<number> {
  const o = parseOptions(process.argv.slice(2));
  say('relockd multi-host end-to-end test: two libvirtd "hosts" (own mount + UTS namespaces, own host_uuid and lock daemon) sharing images and lock space');
  const miss = await missingPrerequisites();
  if (miss.length) {
    say('Missing prerequisites (this test installs nothing):');
    for (const m of miss) say(`  - ${m}`);
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
    say(`\nFAIL  time limit of ${o.timeLimitS} s exceeded; stopping everything`);
    if (currentCtx) for (const h of [currentCtx.A, currentCtx.B]) say(`  --- ${h.hostname} libvirtd log (tail) ---\n${tail(h.logSince({ log: 0, out: 0 }), 30)}`);
    void cleanup(o, true).finally(() => {
      say(`${passed} passed, ${failed + 1} failed`);
      process.exit(1);
    });
  }, o.timeLimitS * 1000);
  limit.unref();

  const before = snapshotHost();
  work = createWork();
  const w = work;
  hostA = new SimHost({ name: 'a', root: w.root, hostUuid: HOST_UUIDS.a, migrationPort: 49152, lockspace: w.lockspace });
  hostB = new SimHost({ name: 'b', root: w.root, hostUuid: HOST_UUIDS.b, migrationPort: 49160, lockspace: w.lockspace });
  say(`work directory ${w.root}; relockd ${join(ROOT, 'bin', 'relockd.cjs')}`);
  try {
    for (const mode of o.modes) if (!isAborted()) await segment(['relockd', 'relockd'], mode, o, w, hostA, hostB);
    if (o.virtlockd === 'full') {
      for (const mode of o.modes) if (!isAborted()) await segment(['virtlockd', 'virtlockd'], mode, o, w, hostA, hostB);
      // a site moving from virtlockd to relockd: guests migrate between the two kinds of host
      // (one round trip per mode; the hotplug with shared leases across the two kinds in indirect mode, the cross-host setup)
      for (const mode of o.modes) if (!isAborted()) await segment(['relockd', 'virtlockd'], mode, o, w, hostA, hostB, mode === 'indirect' ? ['1', '3'] : ['1'], 1);
    }
  } catch (e) {
    recordFail('harness', `${(e as Error).stack ?? e}`);
  } finally {
    await cleanup(o, false);
  }
  say('');
  const left = leftovers();
  if (left.length) recordFail('cleanup', `processes still alive: ${left.join('; ')}`);
  else {
    passed++;
    say('PASS  cleanup: every process started (both libvirtds, QEMU guests, lock daemons, probes) is gone; the namespaces went with them');
  }
  const changed = diffSnapshots(before, snapshotHost());
  if (changed.length) recordFail('host untouched', `the host's libvirt directories changed: ${changed.slice(0, 10).join('; ')}`);
  else {
    passed++;
    say("PASS  host untouched: /etc/libvirt, /var/lib/libvirt, /var/cache/libvirt, /var/log/libvirt, /run's libvirt entries and the hostname are as before");
  }
  say('');
  const table = timingTable();
  if (table) say(table);
  say(`total ${secs(performance.now() - t0)}`);
  if (notes) say(`${notes} scenario(s) where the real virtlockd behaved differently (NOTE lines above; virtlockd's result, not counted as failures)`);
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
