// End-to-end proof with real libvirt: a real libvirtd (lock_manager = "lockd",
// libvirt's own lockd client plugin) starting real QEMU guests against
// relockd, in both of libvirt's lease setups (indirect: file_lockspace_dir,
// sha256-named AUTOCREATE lease files; direct: the disk image itself in the
// default lock space), plus the same timing figures with the real virtlockd.
//
//   npm run test:libvirt            (builds, then runs this file)
//   node --import=@tapjs/typescript/import test/e2e/libvirt.ts [options]
//
// Options: --virtlockd=timing|full|off   real virtlockd: timing figures only (default),
//                                        every step as a reference run, or not at all
//          --modes=indirect,direct       lease setups to run (default both)
//          --timing-runs=N               samples per timing figure (default 5)
//          --keep                        keep the work directory (logs, configs)
//          --time-limit=SECONDS          abort (and clean up) after this long (default 540)
//
// Needs root and: libvirt-daemon libvirt-clients libvirt-daemon-driver-qemu
// qemu-system-x86 libvirt-daemon-system python3 (Debian 12). It installs
// nothing; it says what is missing. See docs/libvirt-e2e.md.

import { existsSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Hammer } from '../lib/probe.js';
import { pingVirtlockd } from '../lib/virtlockd.js';
import { ROOT } from '../lib/relockd.js';
import { createWorkDir, domainXml, leaseOf, Libvirtd, pointLockdLinkAt, PRIVATE_DIRS, LIBVIRTD, VIRSH, QEMU } from './libvirtHost.js';
import type { DiskSpec, Lease, LeaseMode, WorkDir } from './libvirtHost.js';
import { relockdHasLockspaceOption, startRealVirtlockd, startRelockd } from './lockDaemons.js';
import type { DaemonKind, LockDaemon } from './lockDaemons.js';
import { killAndTimeRelease, probeOne, PYTHON } from './leases.js';
import { abort, assertNotAborted, isAborted, killEverything, killEverythingSync, leftovers, median, pidAlive, pidStartTime, run, sleep, stopPid } from './proc.js';

// ------------------------------------------------------------------ options

interface Options {
  virtlockd: 'timing' | 'full' | 'off';
  modes: LeaseMode[];
  timingRuns: number;
  keep: boolean;
  timeLimitS: number;
}

function parseOptions(argv: string[]): Options {
  const o: Options = { virtlockd: 'timing', modes: ['indirect', 'direct'], timingRuns: 5, keep: false, timeLimitS: 540 };
  for (const a of argv) {
    const [k, v] = a.split('=', 2) as [string, string | undefined];
    if (k === '--virtlockd' && (v === 'timing' || v === 'full' || v === 'off')) o.virtlockd = v;
    else if (k === '--modes' && v) {
      const modes = v.split(',');
      if (!modes.every((m) => m === 'indirect' || m === 'direct')) usage(`bad --modes: ${v}`);
      o.modes = modes as LeaseMode[];
    } else if (k === '--timing-runs' && v && Number(v) >= 1) o.timingRuns = Math.floor(Number(v));
    else if (k === '--time-limit' && v && Number(v) > 0) o.timeLimitS = Number(v);
    else if (k === '--keep') o.keep = true;
    else usage(`unknown option ${a}`);
  }
  return o;
}

function usage(msg: string): never {
  process.stderr.write(`${msg}\nusage: libvirt.ts [--virtlockd=timing|full|off] [--modes=indirect,direct] [--timing-runs=N] [--keep] [--time-limit=SECONDS]\n`);
  process.exit(2);
}

// ------------------------------------------------------------------ prerequisites

function libvirtLibDirs(): string[] {
  const out: string[] = [];
  for (const base of ['/usr/lib', '/usr/lib64']) {
    if (!existsSync(base)) continue;
    if (existsSync(join(base, 'libvirt'))) out.push(join(base, 'libvirt'));
    for (const e of readdirSync(base)) if (existsSync(join(base, e, 'libvirt'))) out.push(join(base, e, 'libvirt'));
  }
  return out;
}

async function missingPrerequisites(o: Options): Promise<string[]> {
  const miss: string[] = [];
  if (process.getuid?.() !== 0) miss.push('root: libvirtd runs as root in a private mount namespace (unshare -m, tmpfs on /run, bind mounts)');
  const need: Array<[string, string]> = [
    [LIBVIRTD, 'libvirt-daemon'],
    [VIRSH, 'libvirt-clients'],
    [QEMU, 'qemu-system-x86'],
    ['/usr/bin/unshare', 'util-linux'],
    ['/usr/bin/setpriv', 'util-linux'],
    ['/bin/mount', 'mount'],
    ['/bin/bash', 'bash'],
  ];
  if (o.virtlockd !== 'off') need.push(['/usr/sbin/virtlockd', 'libvirt-daemon']);
  for (const [p, pkg] of need) if (!existsSync(p)) miss.push(`${p} (Debian package ${pkg})`);
  const libs = libvirtLibDirs();
  if (!libs.some((d) => existsSync(join(d, 'lock-driver', 'lockd.so')))) miss.push("libvirt's lockd client plugin lock-driver/lockd.so (Debian package libvirt-daemon)");
  if (!libs.some((d) => existsSync(join(d, 'connection-driver', 'libvirt_driver_qemu.so')))) miss.push("libvirt's QEMU driver connection-driver/libvirt_driver_qemu.so (Debian package libvirt-daemon-driver-qemu)");
  for (const [, dir] of PRIVATE_DIRS) if (!existsSync(dir)) miss.push(`${dir} (bind-mount target; Debian packages libvirt-daemon, libvirt-daemon-system)`);
  const py = await run(PYTHON, ['-c', 'import fcntl'], { timeoutMs: 20_000 });
  if (py.code !== 0) miss.push('python3 (Debian package python3): lock probes from a separate process');
  if (!existsSync(join(ROOT, 'dist', 'src', 'cli', 'main.js'))) miss.push('a built relockd (dist/src/cli/main.js): run `npm run build`');
  if (process.getuid?.() === 0 && existsSync('/usr/bin/unshare')) {
    const r = await run('/usr/bin/unshare', ['-m', '--propagation', 'private', '--', '/bin/sh', '-c', '/bin/mount -n -t tmpfs tmpfs /run && test -z "$(ls -A /run)"'], { timeoutMs: 10_000 });
    if (r.code !== 0) miss.push(`a private mount namespace with a tmpfs on /run (unshare -m failed: ${r.stderr.trim() || `exit ${r.code}`}); containers need CAP_SYS_ADMIN`);
  }
  return miss;
}

// ------------------------------------------------------------------ reporting

let passed = 0;
let failed = 0;
const failures: string[] = [];
const t0 = performance.now();

function secs(ms: number): string {
  return `${(ms / 1000).toFixed(2)} s`;
}
function oneLine(s: string): string {
  return s.trim().replace(/\s*\n\s*/g, ' | ');
}
function say(line: string): void {
  process.stdout.write(`${line}\n`);
}
function tail(text: string, lines: number, width = 600): string {
  const ls = text.split('\n').filter((l) => l.length > 0);
  const cut = ls.slice(-lines).map((l) => (l.length > width ? `${l.slice(0, width)}…` : l));
  return (ls.length > lines ? `  … ${ls.length - lines} earlier lines\n` : '') + cut.map((l) => `  ${l}`).join('\n');
}

class Fail extends Error {}

/** Refused starts cost ~2 s each (QEMU is started paused, then killed): fewer samples. */
const REFUSED_SAMPLES = 3;

// ------------------------------------------------------------------ guests

const GUESTS = ['a', 'b', 's1', 's2', 'x', 'r', 'e'] as const;
type Guest = (typeof GUESTS)[number];

function guestDisks(w: WorkDir): Record<Guest, DiskSpec> {
  const d1 = join(w.images, 'd1.img'); // a, b: exclusive
  const d2 = join(w.images, 'd2.img'); // s1, s2 shareable; x exclusive
  const d3 = join(w.images, 'd3.img'); // r readonly; e exclusive
  return {
    a: { path: d1 },
    b: { path: d1 },
    s1: { path: d2, shareable: true },
    s2: { path: d2, shareable: true },
    x: { path: d2 },
    r: { path: d3, readonly: true },
    e: { path: d3 },
  };
}

interface Timing {
  start: number[];
  refused: number[];
  killRelease: number[];
  startAfterKill: number[];
}

interface Ctx {
  kind: DaemonKind;
  mode: LeaseMode;
  w: WorkDir;
  host: Libvirtd;
  daemon: LockDaemon;
  /** a/b's disk, s1/s2/x's disk, r/e's disk */
  L1: Lease;
  L2: Lease;
  L3: Lease;
}

async function virshOk(c: Ctx, args: string[]): Promise<number> {
  const r = await c.host.virsh(args);
  if (r.code !== 0) throw new Fail(`virsh ${args.join(' ')} failed: ${oneLine(r.stderr)}`);
  return r.ms;
}

async function expectState(c: Ctx, name: Guest, want: string): Promise<void> {
  const st = await c.host.domState(name);
  if (st !== want) throw new Fail(`${name} is "${st}", expected "${want}"`);
}

async function startOk(c: Ctx, name: Guest): Promise<number> {
  const ms = await virshOk(c, ['start', name]);
  await expectState(c, name, 'running');
  return ms;
}

function busyMessage(l: Lease): string {
  return `resource busy: Lockspace resource '${l.name}' is locked`;
}

/** `virsh <args>` must fail with the daemon's "resource busy" message for `l`. */
async function refused(c: Ctx, args: string[], l: Lease): Promise<number> {
  const r = await c.host.virsh(args);
  const want = busyMessage(l);
  if (r.code === 0) throw new Fail(`virsh ${args.join(' ')} succeeded; expected "${want}"`);
  if (!r.stderr.includes(want)) throw new Fail(`virsh ${args.join(' ')} failed, but not with "${want}": ${oneLine(r.stderr)}`);
  return r.ms;
}

async function startRefused(c: Ctx, name: Guest, l: Lease): Promise<number> {
  const ms = await refused(c, ['start', name], l);
  await expectState(c, name, 'shut off');
  return ms;
}

function short(l: Lease): string {
  return l.name.startsWith('/') ? l.name.replace(/.*\//, '') : `${l.name.slice(0, 12)}…`;
}

/** Held, as seen from another process: exclusive = even a read lock is refused; shared = read lock granted, write lock refused. */
async function expectHeld(c: Ctx, l: Lease, how: 'exclusive' | 'shared', why: string): Promise<void> {
  const w = await probeOne(l.path, 'write');
  const r = await probeOne(l.path, 'read');
  const ok = how === 'exclusive' ? w === 'held' && r === 'held' : w === 'held' && r === 'free';
  if (!ok) throw new Fail(`${why}: lease ${short(l)} should be held ${how} (another process: write lock ${w}, read lock ${r}; lease file ${l.path})`);
}

/** Free (or, for an AUTOCREATE lease, its file gone), polled: release on QEMU's exit is asynchronous. Returns ms waited. */
async function expectFree(c: Ctx, l: Lease, why: string, timeoutMs = 5000): Promise<number> {
  const t = performance.now();
  for (;;) {
    const p = await probeOne(l.path, 'write');
    if (p === 'free' || p === 'missing') return performance.now() - t;
    if (performance.now() - t > timeoutMs) throw new Fail(`${why}: lease ${short(l)} still ${p} after ${timeoutMs} ms (${l.path})`);
    await sleep(20);
  }
}

async function activeGuests(c: Ctx): Promise<string[]> {
  const r = await c.host.virsh(['list', '--name']);
  if (r.code !== 0) throw new Error(`virsh list failed: ${oneLine(r.stderr)}`);
  return r.stdout.split('\n').map((s) => s.trim()).filter(Boolean);
}

/** Back to "no guest runs, no lease held": destroy what runs, kill stray QEMUs by pid. */
async function resetGuests(c: Ctx): Promise<string[]> {
  const did: string[] = [];
  if (c.host.isRunning()) {
    const end = Date.now() + 15_000;
    for (;;) {
      const active = await activeGuests(c);
      if (active.length === 0) break;
      if (Date.now() > end) throw new Error(`guests still active after 15 s: ${active.join(', ')}`);
      for (const g of active) {
        const r = await c.host.virsh(['destroy', g]);
        // "domain is not running": its QEMU just died and libvirt is catching up
        if (r.code === 0) did.push(`destroyed ${g}`);
        else if (!/not running/.test(r.stderr)) did.push(`destroy ${g} failed: ${oneLine(r.stderr)}`);
      }
      await sleep(100);
    }
  }
  for (const pid of c.host.qemuPids()) {
    did.push(`killed stray QEMU ${pid}`);
    await stopPid(pid, 'SIGKILL', 5000);
  }
  for (const l of [c.L1, c.L2, c.L3]) await expectFree(c, l, 'no guest runs', 10_000);
  return did;
}

// ------------------------------------------------------------------ step runner

let currentCtx: Ctx | undefined;

async function step(c: Ctx, label: string, fn: () => Promise<string>): Promise<boolean> {
  const tag = `${c.kind}/${c.mode}`;
  const dMark = c.daemon.logMark();
  const daemonAtStart = c.daemon;
  const hMark = c.host.mark();
  const ts = performance.now();
  let ok = true;
  let detail = '';
  try {
    if (!c.daemon.isRunning()) throw new Fail(`${c.kind} (pid ${c.daemon.pid}) is not running`);
    if (!c.host.isRunning()) throw new Fail(`libvirtd (pid ${c.host.pid}) is not running`);
    detail = await fn();
  } catch (e) {
    ok = false;
    detail = e instanceof Fail ? e.message : `${(e as Error).stack ?? e}`;
  }
  if (isAborted()) return false; // interrupted: cleanup reports
  const took = secs(performance.now() - ts);
  if (ok) {
    passed++;
    say(`PASS  ${tag}  ${label}: ${detail} [${took}]`);
  } else {
    failed++;
    failures.push(`${tag}  ${label}`);
    say(`FAIL  ${tag}  ${label}: ${detail} [${took}]`);
    const dLog = c.daemon === daemonAtStart ? c.daemon.logSince(dMark) : c.daemon.logSince(c.kind === 'relockd' ? dMark : 0);
    say(`  --- ${c.kind} log during this step (pid ${c.daemon.pid}) ---`);
    say(tail(dLog, 60) || '  (empty)');
    say('  --- libvirtd log during this step ---');
    say(tail(c.host.logSince(hMark), 60) || '  (empty)');
  }
  try {
    const did = await resetGuests(c);
    if (!ok && did.length) say(`  (reset: ${did.join('; ')})`);
    if (ok && did.length) {
      // a passing step must leave no guest behind
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

function recordFail(label: string, detail: string): void {
  if (isAborted()) return; // interrupted: cleanup reports
  failed++;
  failures.push(label);
  say(`FAIL  ${label}: ${detail}`);
}

// ------------------------------------------------------------------ the steps

async function step1(c: Ctx): Promise<string> {
  const ms = await startOk(c, 'a');
  await expectHeld(c, c.L1, 'exclusive', 'a runs');
  if (c.mode === 'indirect' && !existsSync(c.L1.path)) throw new Fail(`no lease file ${c.L1.path}`);
  await virshOk(c, ['destroy', 'a']);
  return `virsh start a ok (${secs(ms)}); lease ${short(c.L1)} held exclusive, seen from another process${c.mode === 'indirect' ? ' (autocreated sha256 lease file)' : ' (the disk image itself)'}`;
}

async function step2(c: Ctx): Promise<string> {
  await startOk(c, 'a');
  const ms = await startRefused(c, 'b', c.L1);
  await expectState(c, 'a', 'running');
  await expectHeld(c, c.L1, 'exclusive', 'after b was refused');
  await virshOk(c, ['destroy', 'a']);
  return `b refused in ${secs(ms)} with "error: ${busyMessage(c.L1).replace(c.L1.name, short(c.L1))}"; a still running, lease still held`;
}

async function step3(c: Ctx): Promise<string> {
  await startOk(c, 'a');
  await virshOk(c, ['suspend', 'a']);
  await expectState(c, 'a', 'paused');
  await expectFree(c, c.L1, 'a suspended', 0);
  await startOk(c, 'b');
  await expectHeld(c, c.L1, 'exclusive', 'b runs');
  await refused(c, ['resume', 'a'], c.L1);
  await expectState(c, 'a', 'paused');
  await virshOk(c, ['destroy', 'b']);
  await expectFree(c, c.L1, 'b destroyed');
  await virshOk(c, ['resume', 'a']);
  await expectState(c, 'a', 'running');
  await expectHeld(c, c.L1, 'exclusive', 'a resumed');
  await virshOk(c, ['destroy', 'a']);
  return 'suspend a freed the lease; b started; resume a refused (busy) while b ran; after destroy b, resume a worked and holds the lease again';
}

async function step4(c: Ctx): Promise<string> {
  await startOk(c, 'a');
  await virshOk(c, ['destroy', 'a']);
  const waited = await expectFree(c, c.L1, 'a destroyed');
  if (c.mode === 'indirect' && existsSync(c.L1.path)) throw new Fail(`autocreated lease file ${c.L1.path} still exists after destroy`);
  await startOk(c, 'a');
  const pid = c.host.qemuPid('a');
  if (!pid) throw new Fail("cannot find a's QEMU pid");
  const ms = await killAndTimeRelease(pid, c.L1.path);
  if (c.mode === 'indirect' && existsSync(c.L1.path)) throw new Fail(`autocreated lease file ${c.L1.path} still exists after kill -9 of a's QEMU`);
  const bms = await startOk(c, 'b');
  await expectHeld(c, c.L1, 'exclusive', 'b runs after kill -9 of a');
  await waitShutOff(c, 'a');
  await virshOk(c, ['destroy', 'b']);
  await expectFree(c, c.L1, 'b destroyed');
  const removed = c.mode === 'indirect' ? ', lease file removed' : '';
  return `destroy a: lease free${waited > 1 ? ` (after ${waited.toFixed(0)} ms)` : ''}${removed}; kill -9 of a's QEMU: lease free after ${ms.toFixed(1)} ms${removed}, then b started (${secs(bms)})`;
}

async function step5(c: Ctx): Promise<string> {
  await startOk(c, 's1');
  await startOk(c, 's2');
  await expectHeld(c, c.L2, 'shared', 's1 and s2 run');
  await startRefused(c, 'x', c.L2);
  await virshOk(c, ['destroy', 's1']);
  await expectHeld(c, c.L2, 'shared', 's2 still runs');
  await startRefused(c, 'x', c.L2);
  await virshOk(c, ['destroy', 's2']);
  await expectFree(c, c.L2, 's1 and s2 gone');
  await startOk(c, 'x');
  await expectHeld(c, c.L2, 'exclusive', 'x runs');
  await startRefused(c, 's1', c.L2);
  await virshOk(c, ['destroy', 'x']);
  await expectFree(c, c.L2, 'x destroyed');
  return 's1+s2 share the disk (read lock: another process gets a read lock, not a write lock); x refused until both were gone; then s1 refused while x ran';
}

async function step5b(c: Ctx): Promise<string> {
  await startOk(c, 'r');
  const p = await probeOne(c.L3.path, 'write');
  if (p !== 'free' && p !== 'missing') throw new Fail(`readonly guest r runs and lease ${short(c.L3)} is ${p}; expected no lease`);
  if (c.mode === 'indirect' && existsSync(c.L3.path)) throw new Fail(`readonly guest r created a lease file ${c.L3.path}`);
  await startOk(c, 'e');
  await expectHeld(c, c.L3, 'exclusive', 'e runs');
  await virshOk(c, ['destroy', 'e']);
  await expectFree(c, c.L3, 'e destroyed');
  await expectState(c, 'r', 'running');
  await virshOk(c, ['destroy', 'r']);
  return 'readonly guest r took no lease (disk free from another process, no lease file); exclusive e started beside it';
}

async function step6(c: Ctx): Promise<string> {
  await startOk(c, 'a');
  await startOk(c, 's1');
  await startOk(c, 's2');
  await expectHeld(c, c.L1, 'exclusive', 'before re-exec');
  await expectHeld(c, c.L2, 'shared', 'before re-exec');
  const pid = c.daemon.pid;
  const st = pidStartTime(pid);
  assertNotAborted('the lock hammer');
  const hammer = await Hammer.start([c.L1.path, c.L2.path]);
  activeHammer = hammer;
  let h: { attempts: number; wins: Record<string, number> };
  const reexecMs: number[] = [];
  try {
    await sleep(100);
    for (let i = 0; i < 2; i++) {
      const t = performance.now();
      await c.daemon.reexec();
      reexecMs.push(performance.now() - t);
      await sleep(100);
    }
  } finally {
    h = await Promise.race([hammer.stop(), sleep(10_000).then(() => ({ attempts: -1, wins: {} }))]);
    hammer.kill();
    activeHammer = undefined;
  }
  if (h.attempts <= 0) throw new Fail('the lock hammer did not report');
  const wins = Object.values(h.wins).reduce((a, b) => a + b, 0);
  if (wins > 0) throw new Fail(`a separate process got a lease during the re-execs: ${JSON.stringify(h.wins)}`);
  if (!pidAlive(pid) || pidStartTime(pid) !== st) throw new Fail(`${c.kind} pid ${pid} is not the same process after re-exec`);
  // QEMU's inherited, restricted connections and libvirtd's requests after the re-exec
  await expectHeld(c, c.L1, 'exclusive', 'after re-exec');
  await expectHeld(c, c.L2, 'shared', 'after re-exec');
  await startRefused(c, 'b', c.L1);
  await startRefused(c, 'x', c.L2);
  await virshOk(c, ['suspend', 'a']);
  await expectFree(c, c.L1, 'a suspended after re-exec', 0);
  await startOk(c, 'b');
  await refused(c, ['resume', 'a'], c.L1);
  await virshOk(c, ['destroy', 'b']);
  await expectFree(c, c.L1, 'b destroyed');
  await virshOk(c, ['resume', 'a']);
  await expectHeld(c, c.L1, 'exclusive', 'a resumed after re-exec');
  await virshOk(c, ['destroy', 'a']);
  await expectFree(c, c.L1, 'a destroyed after re-exec (its inherited connection closed)');
  const s1 = c.host.qemuPid('s1');
  if (!s1) throw new Fail("cannot find s1's QEMU pid");
  await stopPid(s1, 'SIGKILL', 5000);
  await waitShutOff(c, 's1');
  await expectHeld(c, c.L2, 'shared', 's1 killed, s2 still runs');
  await virshOk(c, ['destroy', 's2']);
  await expectFree(c, c.L2, 's2 destroyed after re-exec');
  return `2 re-execs (${reexecMs.map((m) => secs(m)).join(', ')}) with a, s1, s2 running: ${h.attempts} lock attempts from another process, none won; same pid ${pid}; afterwards b and x refused, suspend/resume/destroy of a, kill -9 of s1 and destroy of s2 released as before`;
}

async function startDaemon(kind: DaemonKind, w: WorkDir, lockspaces: string[] = []): Promise<LockDaemon> {
  const d = kind === 'relockd' ? await startRelockd({ runtimeDir: join(w.root, 'relockd'), logPath: join(w.logs, 'relockd.log'), lockspaces }) : await startRealVirtlockd(join(w.root, 'virtlockd'));
  liveDaemons.add(d);
  pointLockdLinkAt(w, d.socketPath);
  return d;
}

async function stopDaemonCleanly(c: Ctx): Promise<string> {
  const ex = await c.daemon.terminate(15_000);
  if (ex === 'timeout') throw new Fail(`${c.kind} did not exit on SIGTERM within 15 s although no guest runs`);
  if (ex.code !== 0) throw new Fail(`${c.kind} exited with code ${ex.code}, signal ${ex.signal} on SIGTERM (expected 0: no lease held)`);
  return 'exit 0';
}

/** start a → held; b refused; destroy a → free. */
async function guestCycle(c: Ctx): Promise<void> {
  await startOk(c, 'a');
  await expectHeld(c, c.L1, 'exclusive', 'a runs after the restart');
  await startRefused(c, 'b', c.L1);
  await virshOk(c, ['destroy', 'a']);
  await expectFree(c, c.L1, 'a destroyed after the restart');
}

async function step7(c: Ctx): Promise<string> {
  if ((await activeGuests(c)).length) throw new Fail('a guest runs');
  const oldPid = c.daemon.pid;
  await stopDaemonCleanly(c);
  c.daemon = await startDaemon(c.kind, c.w);
  if (c.daemon.pid === oldPid) throw new Fail('the restarted daemon has the old pid');
  if (c.mode === 'direct') {
    await guestCycle(c);
    return `SIGTERM → exit 0, new ${c.kind} pid ${c.daemon.pid}; libvirtd (not restarted) starts a, refuses b, destroy releases`;
  }
  // indirect: libvirtd sent CREATE_LOCKSPACE only when it started.
  const r = await c.host.virsh(['start', 'a']);
  if (r.code === 0) {
    await expectHeld(c, c.L1, 'exclusive', 'a runs after a plain restart');
    await startRefused(c, 'b', c.L1);
    await virshOk(c, ['destroy', 'a']);
    await expectFree(c, c.L1, 'a destroyed');
    return `SIGTERM → exit 0, new pid ${c.daemon.pid}; the lock space ${c.w.lockspace} is still known after a plain restart; start/refuse/destroy work`;
  }
  const plain = oneLine(r.stderr);
  say(`NOTE  ${c.kind}/${c.mode}  plain restart (no lock-space configuration): virsh start a → ${plain}`);
  if (c.kind === 'virtlockd') {
    return `reference: after a restart virtlockd no longer knows the lock space until libvirtd restarts ("${plain}")`;
  }
  if (!relockdHasLockspaceOption()) throw new Fail(`after a restart relockd does not know ${c.w.lockspace} ("${plain}") and this relockd has no --lockspace option to configure it`);
  await resetGuests(c);
  await stopDaemonCleanly(c);
  c.daemon = await startDaemon(c.kind, c.w, [c.w.lockspace]);
  await guestCycle(c);
  return `plain restart: lock space unknown ("${plain}"); restarted with --lockspace ${c.w.lockspace} (as a host configures it): libvirtd (not restarted) starts a, refuses b, destroy releases`;
}

/** Until the daemon answers a keepalive PING (its event loop is free), so "virsh start" is timed against an idle daemon. */
async function waitIdle(d: LockDaemon): Promise<void> {
  const end = Date.now() + 10_000;
  while (!(await pingVirtlockd(d.socketPath, 2000))) {
    if (Date.now() > end) throw new Fail(`${d.kind} does not answer a keepalive PING`);
    await sleep(20);
  }
}

/** One timing sample: virsh start of a (daemon idle), optionally a refused start of b, kill -9 of a's QEMU, then start of b at once. */
async function timingSample(c: Ctx, t: Timing, withRefusal: boolean): Promise<void> {
  await waitIdle(c.daemon);
  t.start.push(await startOk(c, 'a'));
  await expectHeld(c, c.L1, 'exclusive', 'a runs');
  if (withRefusal) t.refused.push(await startRefused(c, 'b', c.L1));
  const pid = c.host.qemuPid('a');
  if (!pid) throw new Fail("cannot find a's QEMU pid");
  t.killRelease.push(await killAndTimeRelease(pid, c.L1.path));
  t.startAfterKill.push(await startOk(c, 'b'));
  await expectHeld(c, c.L1, 'exclusive', 'b runs');
  await waitShutOff(c, 'a');
  await virshOk(c, ['destroy', 'b']);
  await expectFree(c, c.L1, 'b destroyed');
}

async function waitShutOff(c: Ctx, name: Guest): Promise<void> {
  const end = Date.now() + 10_000;
  while ((await c.host.domState(name)) !== 'shut off') {
    if (Date.now() > end) throw new Fail(`libvirt still shows ${name} as active 10 s after its QEMU was killed`);
    await sleep(50);
  }
}

// ------------------------------------------------------------------ segments

const timings = new Map<string, Timing>();
let work: WorkDir | undefined;
let host: Libvirtd | undefined;
const liveDaemons = new Set<LockDaemon>();

async function defineGuests(h: Libvirtd, w: WorkDir): Promise<void> {
  const disks = guestDisks(w);
  for (const g of GUESTS) {
    const f = join(w.xml, `${g}.xml`);
    writeFileSync(f, domainXml(w, g, disks[g]));
    const r = await h.virsh(['define', f]);
    if (r.code !== 0) throw new Error(`virsh define ${g}: ${oneLine(r.stderr)}`);
  }
}

function modeTitle(w: WorkDir, mode: LeaseMode): string {
  return mode === 'indirect' ? `indirect leases (file_lockspace_dir ${w.lockspace}, sha256 names, AUTOCREATE)` : 'direct leases (the disk image itself, default lock space)';
}

function makeCtx(kind: DaemonKind, mode: LeaseMode, w: WorkDir, h: Libvirtd, daemon: LockDaemon): Ctx {
  const disks = guestDisks(w);
  return { kind, mode, w, host: h, daemon, L1: leaseOf(w, mode, disks.a.path), L2: leaseOf(w, mode, disks.s1.path), L3: leaseOf(w, mode, disks.r.path) };
}

/** Steps 1-7 against one daemon in one lease mode. */
async function segment(kind: DaemonKind, mode: LeaseMode, w: WorkDir, h: Libvirtd): Promise<void> {
  const tag = `${kind}/${mode}`;
  say('');
  say(`== ${kind}, ${modeTitle(w, mode)} ==`);
  let c: Ctx;
  const ts = performance.now();
  const hMark = h.mark();
  let daemon: LockDaemon | undefined;
  try {
    if (mode === 'indirect') rmSync(w.lockspace, { recursive: true, force: true });
    daemon = await startDaemon(kind, w);
    const ms = await h.start(mode);
    await defineGuests(h, w);
    c = makeCtx(kind, mode, w, h, daemon);
    if (mode === 'indirect' && !statSync(w.lockspace, { throwIfNoEntry: false })?.isDirectory()) throw new Fail(`libvirtd's CREATE_LOCKSPACE did not create ${w.lockspace}`);
    passed++;
    say(`PASS  ${tag}  setup: ${kind} pid ${daemon.pid}; libvirtd answered after ${secs(ms)}${mode === 'indirect' ? `; its CREATE_LOCKSPACE created ${w.lockspace}` : ''}; ${GUESTS.length} guests defined [${secs(performance.now() - ts)}]`);
  } catch (e) {
    recordFail(`${tag}  setup`, e instanceof Fail ? e.message : `${(e as Error).stack ?? e}`);
    if (daemon) say(`  --- ${kind} log ---\n${tail(daemon.logSince(0), 40)}`);
    say(`  --- libvirtd log ---\n${tail(h.logSince(hMark), 40)}`);
    await h.stop();
    await daemon?.kill();
    return;
  }
  currentCtx = c;
  await step(c, '1. virsh start a: lease held', () => step1(c));
  await step(c, '2. second guest b on the same disk refused', () => step2(c));
  await step(c, '3. suspend releases, resume refused while b runs', () => step3(c));
  await step(c, '4. destroy and kill -9 of QEMU release the lease', () => step4(c));
  await step(c, '5. <shareable/> disks share, exclusive refused both ways', () => step5(c));
  await step(c, '5b. <readonly/> disks take no lease', () => step5b(c));
  await step(c, `6. re-exec ${kind} (SIGUSR1) with guests running`, () => step6(c));
  await step(c, `7. restart ${kind} while no guest runs`, () => step7(c));
  // no guest runs now: libvirtd first (it holds no lease), then the daemon must exit 0 on SIGTERM
  await step(c, 'teardown: libvirtd stopped, nothing left in its namespace, daemon exits 0 on SIGTERM', async () => {
    const killed = await h.stop();
    if (killed.length) throw new Fail(`had to kill: ${killed.join('; ')}`);
    return `libvirtd stopped; ${kind} ${await stopDaemonCleanly(c)}`;
  });
  if (c.daemon.isRunning()) await c.daemon.kill();
  currentCtx = undefined;
}

/**
 * The comparison figures: relockd and the real virtlockd run side by side
 * and the samples alternate between them (W/lockd.sock is retargeted while no
 * guest runs), so load on the machine hits both alike. In indirect mode
 * libvirtd is started once per daemon so that each gets libvirt's
 * CREATE_LOCKSPACE; the last libvirtd then serves every sample.
 */
async function timingSegment(mode: LeaseMode, kinds: DaemonKind[], o: Options, w: WorkDir, h: Libvirtd): Promise<void> {
  say('');
  say(`== timing, ${modeTitle(w, mode)}: ${kinds.join(' and ')}, samples interleaved ==`);
  const ctxs: Ctx[] = [];
  const hMark = h.mark();
  const ts = performance.now();
  try {
    if (mode === 'indirect') rmSync(w.lockspace, { recursive: true, force: true });
    for (const kind of kinds) {
      const d = await startDaemon(kind, w);
      const t: Timing = { start: [], refused: [], killRelease: [], startAfterKill: [] };
      timings.set(`${kind}/${mode}`, t);
      ctxs.push(makeCtx(kind, mode, w, h, d));
      // indirect: each daemon needs libvirtd's CREATE_LOCKSPACE, sent only when libvirtd starts
      if (mode === 'direct' && h.isRunning()) continue;
      if (h.isRunning()) {
        const killed = await h.stop();
        if (killed.length) throw new Error(`had to kill: ${killed.join('; ')}`);
      }
      await h.start(mode);
    }
    await defineGuests(h, w);
    passed++;
    say(`PASS  timing/${mode}  setup: ${ctxs.map((c) => `${c.kind} pid ${c.daemon.pid}`).join(', ')}; ${mode === 'indirect' ? 'libvirtd started once per daemon (CREATE_LOCKSPACE to each)' : 'one libvirtd'} [${secs(performance.now() - ts)}]`);
  } catch (e) {
    recordFail(`timing/${mode}  setup`, e instanceof Fail ? e.message : `${(e as Error).stack ?? e}`);
    say(`  --- libvirtd log ---\n${tail(h.logSince(hMark), 40)}`);
    await h.stop();
    for (const c of ctxs) await c.daemon.kill();
    return;
  }
  const errors = new Map<Ctx, string>();
  for (let round = 0; round < o.timingRuns; round++) {
    const order = round % 2 ? [...ctxs].reverse() : ctxs;
    for (const c of order) {
      if (errors.has(c)) continue;
      currentCtx = c;
      pointLockdLinkAt(w, c.daemon.socketPath);
      const dMark = c.daemon.logMark();
      const sMark = h.mark();
      try {
        await timingSample(c, timings.get(`${c.kind}/${mode}`)!, round < REFUSED_SAMPLES);
      } catch (e) {
        errors.set(c, e instanceof Fail ? e.message : `${(e as Error).stack ?? e}`);
        say(`  --- ${c.kind} log during the failed sample ---\n${tail(c.daemon.logSince(dMark), 60)}`);
        say(`  --- libvirtd log during the failed sample ---\n${tail(h.logSince(sMark), 60)}`);
        try {
          await resetGuests(c);
        } catch (e2) {
          say(`  (reset failed: ${(e2 as Error).message})`);
        }
      }
    }
  }
  currentCtx = undefined;
  const f = (xs: number[], d = 0) => `${(median(xs) ?? NaN).toFixed(d)} ms`;
  for (const c of ctxs) {
    const t = timings.get(`${c.kind}/${mode}`)!;
    const err = errors.get(c);
    if (err) recordFail(`timing/${mode}  ${c.kind}`, err);
    else {
      passed++;
      say(`PASS  timing/${mode}  ${c.kind}: medians of ${t.start.length}: virsh start ${f(t.start)}, refused start ${f(t.refused)}, lease free after kill -9 of QEMU ${f(t.killRelease, 1)}, next virsh start ${f(t.startAfterKill)}`);
    }
  }
  try {
    const killed = await h.stop();
    if (killed.length) throw new Fail(`had to kill: ${killed.join('; ')}`);
    const res: string[] = [];
    for (const c of ctxs) res.push(`${c.kind} ${await stopDaemonCleanly(c)}`);
    passed++;
    say(`PASS  timing/${mode}  teardown: libvirtd stopped, nothing left in its namespace; ${res.join(', ')} on SIGTERM`);
  } catch (e) {
    recordFail(`timing/${mode}  teardown`, e instanceof Fail ? e.message : `${(e as Error).stack ?? e}`);
  }
  for (const c of ctxs) if (c.daemon.isRunning()) await c.daemon.kill();
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
  return m;
}

function diffSnapshots(a: Map<string, string>, b: Map<string, string>): string[] {
  const out: string[] = [];
  for (const [k, v] of a) if (b.get(k) !== v) out.push(b.has(k) ? `changed ${k}` : `removed ${k}`);
  for (const k of b.keys()) if (!a.has(k)) out.push(`added ${k}`);
  return out;
}

// ------------------------------------------------------------------ timing table

function timingTable(o: Options): string {
  const cols = [...timings.keys()];
  if (cols.length === 0) return '';
  const rows: Array<[string, (t: Timing) => string]> = [
    ['virsh start (lease acquired)', (t) => fmt(median(t.start), 0)],
    ['virsh start refused (lease busy)', (t) => fmt(median(t.refused), 0)],
    ['lease free after kill -9 of QEMU', (t) => fmt(median(t.killRelease), 1)],
    ['next virsh start on that disk', (t) => fmt(median(t.startAfterKill), 0)],
  ];
  const w0 = Math.max(...rows.map((r) => r[0].length)) + 2;
  const wc = Math.max(...cols.map((c) => c.length)) + 2;
  const lines = [`Timings in ms (medians of ${o.timingRuns} interleaved samples; refused start: of ${Math.min(o.timingRuns, REFUSED_SAMPLES)}):`, ' '.repeat(w0) + cols.map((c) => c.padStart(wc)).join('')];
  for (const [label, f] of rows) lines.push(label.padEnd(w0) + cols.map((c) => f(timings.get(c)!).padStart(wc)).join(''));
  return lines.join('\n');
}

function fmt(x: number | undefined, digits: number): string {
  return x === undefined || Number.isNaN(x) ? '—' : x.toFixed(digits);
}

// ------------------------------------------------------------------ main

let cleaning: Promise<void> | undefined;
let activeHammer: Hammer | undefined;

/**
 * Stops everything by pid. Normal end: libvirtd (SIGTERM), then the daemons.
 * Interrupted (signal, time limit): nothing new may start, everything in
 * our namespaces and every tracked pid gets SIGKILL at once.
 */
function cleanup(o: Options, interrupted: boolean): Promise<void> {
  cleaning ??= (async () => {
    try {
      if (interrupted) abort();
      activeHammer?.kill();
      if (!interrupted) {
        if (host) await host.stop();
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
  say(`relockd end-to-end test with real libvirt (libvirtd + QEMU, lock_manager = "lockd")`);
  const miss = await missingPrerequisites(o);
  if (miss.length) {
    say('Missing prerequisites (this test installs nothing):');
    for (const m of miss) say(`  - ${m}`);
    say('On Debian 12: apt-get install -y --no-install-recommends libvirt-daemon libvirt-clients libvirt-daemon-driver-qemu qemu-system-x86 libvirt-daemon-system python3');
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
    if (currentCtx) {
      say(`  --- ${currentCtx.kind} log (tail) ---\n${tail(currentCtx.daemon.logSince(0), 40)}`);
      say(`  --- libvirtd log (tail) ---\n${tail(currentCtx.host.logSince({ log: 0, out: 0 }), 40)}`);
    }
    void cleanup(o, true).finally(() => {
      say(`${passed} passed, ${failed + 1} failed`);
      process.exit(1);
    });
  }, o.timeLimitS * 1000);
  limit.unref();

  const before = snapshotHost();
  work = createWorkDir();
  host = new Libvirtd(work);
  say(`work directory ${work.root}; relockd ${join(ROOT, 'bin', 'relockd.cjs')}${relockdHasLockspaceOption() ? ' (has --lockspace)' : ''}`);
  try {
    const plan: Array<() => Promise<void>> = [];
    for (const mode of o.modes) plan.push(() => segment('relockd', mode, work!, host!));
    if (o.virtlockd === 'full') for (const mode of o.modes) plan.push(() => segment('virtlockd', mode, work!, host!));
    for (const mode of o.modes) plan.push(() => timingSegment(mode, o.virtlockd === 'off' ? ['relockd'] : ['relockd', 'virtlockd'], o, work!, host!));
    for (const part of plan) if (!isAborted()) await part();
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
    say('PASS  cleanup: every process started (libvirtd, QEMU guests, lock daemons, probes) is gone; the namespaces went with them');
  }
  const changed = diffSnapshots(before, snapshotHost());
  if (changed.length) recordFail('host untouched', `the host's libvirt directories changed: ${changed.slice(0, 10).join('; ')}`);
  else {
    passed++;
    say("PASS  host untouched: /etc/libvirt, /var/lib/libvirt, /var/cache/libvirt, /var/log/libvirt and /run's libvirt entries are as before");
  }
  say('');
  const table = timingTable(o);
  if (table) say(table);
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
