// End-to-end proof of `relockctl takeover` and `relockctl handback` with real
// libvirt: a real libvirtd (lock_manager = "lockd", indirect leases) runs
// real QEMU guests whose leases a lock daemon holds; that daemon's process
// switches between the real virtlockd and relockd in place while another
// process hammers F_SETLK on every lease (it must never win), the guests keep
// running, and libvirtd keeps working (refusal, suspend/resume, destroy,
// kill -9) after every switch.
//
//   npm run test:takeover
//   node --import=@tapjs/typescript/import test/e2e/takeover.ts [--keep] [--time-limit=SECONDS]
//
// Scenarios (one pid each, the daemon in its own private mount namespace):
//   A  virtlockd first (sockets passed as systemd would): takeover, handback
//   B  relockd first (test:libvirt's setup):              handback, takeover
//   C  virtlockd under systemd-socket-activate:           takeover, handback
// Needs what test:libvirt needs plus systemd-socket-activate (package systemd).

import { existsSync, mkdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { Hammer } from '../lib/probe.js';
import { ROOT } from '../lib/relockd.js';
import { createWorkDir, domainXml, leaseOf, Libvirtd, pointLockdLinkAt, LIBVIRTD, VIRSH, QEMU } from './libvirtHost.js';
import type { DiskSpec, Lease, WorkDir } from './libvirtHost.js';
import { probeOne } from './leases.js';
import { abort, isAborted, killEverything, killEverythingSync, leftovers, run, sleep, stopPid } from './proc.js';
import { startActivatedVirtlockd, startPlainVirtlockd, startRelockdInNamespace, VIRTLOCKD } from './switchDaemons.js';
import type { SwitchingDaemon } from './switchDaemons.js';

const RELOCKCTL = join(ROOT, 'bin', 'relockctl.cjs');

let passed = 0;
let failed = 0;
const failures: string[] = [];
const t0 = performance.now();
const say = (l: string) => process.stdout.write(`${l}\n`);
const secs = (ms: number) => `${(ms / 1000).toFixed(2)} s`;
const oneLine = (s: string) => s.trim().replace(/\s*\n\s*/g, ' | ');
class Fail extends Error {}

function tail(text: string, lines: number): string {
  const ls = text.split('\n').filter((l) => l.length > 0);
  return ls.slice(-lines).map((l) => `  ${l.length > 400 ? `${l.slice(0, 400)}…` : l}`).join('\n');
}

// ------------------------------------------------------------------ guests

const GUESTS = ['a', 'b', 's1', 's2'] as const;
type Guest = (typeof GUESTS)[number];

interface Ctx {
  w: WorkDir;
  host: Libvirtd;
  daemon: SwitchingDaemon;
  L1: Lease; // a, b: exclusive
  L2: Lease; // s1, s2: shareable
}

function disks(w: WorkDir): Record<Guest, DiskSpec> {
  const d1 = join(w.images, 'd1.img');
  const d2 = join(w.images, 'd2.img');
  return { a: { path: d1 }, b: { path: d1 }, s1: { path: d2, shareable: true }, s2: { path: d2, shareable: true } };
}

async function virshOk(c: Ctx, args: string[]): Promise<void> {
  const r = await c.host.virsh(args);
  if (r.code !== 0) throw new Fail(`virsh ${args.join(' ')} failed: ${oneLine(r.stderr)}`);
}

async function state(c: Ctx, g: Guest, want: string): Promise<void> {
  const s = await c.host.domState(g);
  if (s !== want) throw new Fail(`${g} is "${s}", expected "${want}"`);
}

async function held(l: Lease, how: 'exclusive' | 'shared', why: string): Promise<void> {
  const w = await probeOne(l.path, 'write');
  const r = await probeOne(l.path, 'read');
  if (!(w === 'held' && (how === 'exclusive' ? r === 'held' : r === 'free'))) throw new Fail(`${why}: lease ${l.name.slice(0, 12)}… should be held ${how} (another process: write ${w}, read ${r})`);
}

async function free(l: Lease, why: string, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const p = await probeOne(l.path, 'write');
    if (p === 'free' || p === 'missing') return;
    if (Date.now() > end) throw new Fail(`${why}: lease ${l.name.slice(0, 12)}… still ${p}`);
    await sleep(20);
  }
}

async function refusedStart(c: Ctx, g: Guest, l: Lease): Promise<void> {
  const r = await c.host.virsh(['start', g]);
  const want = `resource busy: Lockspace resource '${l.name}' is locked`;
  if (r.code === 0) throw new Fail(`virsh start ${g} succeeded; expected "${want}"`);
  if (!r.stderr.includes(want)) throw new Fail(`virsh start ${g} failed, but not with "${want}": ${oneLine(r.stderr)}`);
  await state(c, g, 'shut off');
}

async function guestsUp(c: Ctx): Promise<void> {
  for (const g of ['a', 's1', 's2'] as const) {
    await virshOk(c, ['start', g]);
    await state(c, g, 'running');
  }
  await held(c.L1, 'exclusive', 'a runs');
  await held(c.L2, 'shared', 's1, s2 run');
}

/** libvirtd and the guests, through a daemon that just switched: everything works as before, then no guest runs. */
async function libvirtKeepsWorking(c: Ctx, who: string): Promise<string> {
  for (const g of ['a', 's1', 's2'] as const) await state(c, g, 'running');
  await held(c.L1, 'exclusive', `after the switch to ${who}`);
  await held(c.L2, 'shared', `after the switch to ${who}`);
  await refusedStart(c, 'b', c.L1);
  await virshOk(c, ['suspend', 'a']);
  await free(c.L1, 'a suspended');
  await virshOk(c, ['start', 'b']);
  await held(c.L1, 'exclusive', 'b runs');
  await virshOk(c, ['destroy', 'b']);
  await free(c.L1, 'b destroyed');
  await virshOk(c, ['resume', 'a']);
  await held(c.L1, 'exclusive', 'a resumed');
  await virshOk(c, ['destroy', 'a']);
  await free(c.L1, 'a destroyed');
  if (existsSync(c.L1.path)) throw new Fail(`a destroyed: its autocreated lease file ${c.L1.path} is still there`);
  const q = c.host.qemuPid('s1');
  if (!q) throw new Fail('no QEMU pid for s1');
  await stopPid(q, 'SIGKILL', 5000);
  await sleep(300);
  await held(c.L2, 'shared', 's1 killed (-9), s2 still runs');
  await virshOk(c, ['destroy', 's2']);
  await free(c.L2, 's2 destroyed');
  for (let i = 0; i < 100 && (await c.host.domState('s1')) !== 'shut off'; i++) await sleep(50);
  return `${who}: guests kept running; b refused with the daemon's "resource busy" message; suspend freed, start b, destroy b, resume a, destroy a (lease file removed); kill -9 s1 kept s2's shared lease; destroy s2 freed it`;
}

function relockctl(args: string[]) {
  return run('/usr/bin/env', ['-u', 'NODE_OPTIONS', process.execPath, RELOCKCTL, ...args], { timeoutMs: 120_000 });
}

const exeOf = (pid: number) => {
  try {
    return readlinkSync(`/proc/${pid}/exe`);
  } catch {
    return '(gone)';
  }
};

/** One switch while the hammer runs; returns what relockctl reported. */
async function switchDaemon(c: Ctx, how: 'takeover' | 'handback'): Promise<string> {
  const d = c.daemon;
  const before = exeOf(d.pid);
  const hammer = await Hammer.start([c.L1.path, c.L2.path]);
  activeHammer = hammer;
  let r;
  try {
    await sleep(200);
    const common = ['--systemd', 'no', '--json', '--admin-socket', d.adminSocketPath];
    r =
      how === 'takeover'
        ? await relockctl(['takeover', '--pid', String(d.pid), '--socket', d.socketPath, ...common, `--relockd-arg=--lockspace=${c.w.lockspace}`, '--relockd-arg=--log-level=info'])
        : await relockctl(['handback', ...common, '--', '-f', d.configPath]);
    await sleep(200);
  } finally {
    const h = await hammer.stop();
    activeHammer = undefined;
    const wins = Object.values(h.wins).reduce((a, b) => a + b, 0);
    // eslint-disable-next-line no-unsafe-finally -- a lease won during the switch fails the run, whatever the try did
    if (wins) throw new Fail(`a lease was free during the ${how}: another process won ${wins} of ${h.attempts} F_SETLK attempts (${JSON.stringify(h.wins)})`);
    hammerNote = `${h.attempts} F_SETLK attempts by another process during the switch, zero wins`;
  }
  if (r.code !== 0) throw new Fail(`relockctl ${how} exited ${r.code}: ${oneLine(r.stdout + r.stderr)}`);
  const rep = JSON.parse(r.stdout) as { ok: boolean; pid: number; execMs: number; totalMs: number };
  if (!rep.ok || rep.pid !== d.pid) throw new Fail(`relockctl ${how} reported ${r.stdout}`);
  const now = exeOf(d.pid);
  const want = how === 'takeover' ? /\/node[^/]*$/ : /\/virtlockd$/;
  if (!want.test(now)) throw new Fail(`after the ${how} pid ${d.pid} runs ${now}`);
  const mounted = readFileSync(`/proc/${d.pid}/mountinfo`, 'utf8').split('\n').some((l) => l.split(' ')[4] === VIRTLOCKD);
  if (mounted) throw new Fail(`a mount over ${VIRTLOCKD} is left in the daemon's namespace`);
  return `pid ${d.pid}: ${basename(before)} -> ${basename(now)}, exec ${rep.execMs} ms after the request, ${rep.totalMs} ms in all; ${hammerNote}`;
}

let hammerNote = '';
let activeHammer: Hammer | undefined;

async function stepRun(c: Ctx | undefined, tag: string, label: string, fn: () => Promise<string>): Promise<boolean> {
  const dMark = c?.daemon.logMark() ?? 0;
  const hMark = c?.host.mark();
  const ts = performance.now();
  try {
    if (c && !c.daemon.isRunning()) throw new Fail(`the lock daemon (pid ${c.daemon.pid}) is not running`);
    const detail = await fn();
    passed++;
    say(`PASS  ${tag}  ${label}: ${detail} [${secs(performance.now() - ts)}]`);
    return true;
  } catch (e) {
    if (isAborted()) return false;
    failed++;
    failures.push(`${tag} ${label}`);
    say(`FAIL  ${tag}  ${label}: ${e instanceof Fail ? e.message : ((e as Error).stack ?? e)} [${secs(performance.now() - ts)}]`);
    if (c) {
      say(`  --- lock daemon log (pid ${c.daemon.pid}) ---\n${tail(c.daemon.logSince(dMark), 40) || '  (empty)'}`);
      if (hMark) say(`  --- libvirtd log ---\n${tail(c.host.logSince(hMark), 30) || '  (empty)'}`);
      // leave no guest running
      const r = await c.host.virsh(['list', '--name']);
      for (const g of r.stdout.split('\n').map((s) => s.trim()).filter(Boolean)) await c.host.virsh(['destroy', g]);
    }
    return false;
  }
}

type Start = (dir: string, lockspaces: string[]) => Promise<SwitchingDaemon>;

/** One scenario: start the daemon, libvirtd, guests; two switches with checks after each. */
async function scenario(tag: string, title: string, start: Start, first: 'takeover' | 'handback', w: WorkDir, host: Libvirtd): Promise<void> {
  say('');
  say(`== ${tag}: ${title} ==`);
  let c: Ctx | undefined;
  const dir = join(w.root, `daemon-${tag}`);
  const ok = await stepRun(undefined, tag, 'setup', async () => {
    rmSync(w.lockspace, { recursive: true, force: true });
    const daemon = await start(dir, [w.lockspace]);
    liveDaemons.add(daemon);
    pointLockdLinkAt(w, daemon.socketPath);
    if (host.isRunning()) await host.stop();
    await host.start('indirect');
    for (const g of GUESTS) {
      const f = join(w.xml, `${g}.xml`);
      writeFileSync(f, domainXml(w, g, disks(w)[g]));
      const r = await host.virsh(['define', f]);
      if (r.code !== 0) throw new Fail(`virsh define ${g}: ${oneLine(r.stderr)}`);
    }
    const dk = disks(w);
    c = { w, host, daemon, L1: leaseOf(w, 'indirect', dk.a.path), L2: leaseOf(w, 'indirect', dk.s1.path) };
    await guestsUp(c);
    return `${basename(daemon.exe())} pid ${daemon.pid} in its own mount namespace; libvirtd up; a, s1, s2 running, leases held`;
  });
  if (!ok || !c) return;
  const second = first === 'takeover' ? 'handback' : 'takeover';
  const whoAfter = (how: string) => (how === 'takeover' ? 'relockd' : 'virtlockd');
  if (!(await stepRun(c, tag, `${first} with 3 guests running`, () => switchDaemon(c!, first)))) return;
  if (!(await stepRun(c, tag, `libvirt after the ${first}`, () => libvirtKeepsWorking(c!, whoAfter(first))))) return;
  if (!(await stepRun(c, tag, 'guests up again', async () => (await guestsUp(c!), 'a, s1, s2 running')))) return;
  if (!(await stepRun(c, tag, `${second} with 3 guests running`, () => switchDaemon(c!, second)))) return;
  if (!(await stepRun(c, tag, `libvirt after the ${second}`, () => libvirtKeepsWorking(c!, whoAfter(second))))) return;
  await stepRun(c, tag, 'teardown', async () => {
    await host.stop();
    await c!.daemon.stop();
    if (c!.daemon.isRunning()) throw new Fail('the lock daemon did not exit on SIGTERM with no lease held');
    liveDaemons.delete(c!.daemon);
    return 'libvirtd stopped; the lock daemon exited on SIGTERM';
  });
}

// ------------------------------------------------------------------ main

const liveDaemons = new Set<SwitchingDaemon>();
let work: WorkDir | undefined;
let host: Libvirtd | undefined;
let cleaning: Promise<void> | undefined;

function cleanup(keep: boolean, interrupted: boolean): Promise<void> {
  cleaning ??= (async () => {
    try {
      if (interrupted) abort();
      activeHammer?.kill();
      if (!interrupted && host) await host.stop();
      for (const d of liveDaemons) if (d.isRunning()) await d.stop(5000);
      for (let i = 0; i < 3; i++) {
        const killed = await killEverything();
        if (killed.length) say(`cleanup: killed ${killed.join('; ')}`);
        if (!leftovers().length) break;
      }
    } finally {
      if (work && !keep) rmSync(work.root, { recursive: true, force: true });
      else if (work) say(`work directory kept: ${work.root}`);
    }
  })();
  return cleaning;
}

async function main(): Promise<number> {
  const argv = process.argv.slice(2);
  const keep = argv.includes('--keep');
  const lim = argv.find((a) => a.startsWith('--time-limit='));
  const timeLimitS = lim ? Number(lim.split('=')[1]) : 540;
  say('relockctl takeover / handback end-to-end test (real libvirtd + QEMU, real virtlockd and relockd)');
  const miss: string[] = [];
  if (process.getuid?.() !== 0) miss.push('root');
  for (const [p, pkg] of [[LIBVIRTD, 'libvirt-daemon'], [VIRSH, 'libvirt-clients'], [QEMU, 'qemu-system-x86'], [VIRTLOCKD, 'libvirt-daemon'], ['/usr/bin/systemd-socket-activate', 'systemd'], ['/usr/bin/nsenter', 'util-linux'], ['/usr/bin/ss', 'iproute2'], ['/usr/bin/python3', 'python3']] as const) {
    if (!existsSync(p)) miss.push(`${p} (Debian package ${pkg})`);
  }
  if (!existsSync(join(ROOT, 'dist', 'relockctl.mjs'))) miss.push('a built relockd: npm run build');
  if (miss.length) {
    say(`Missing prerequisites (this test installs nothing): ${miss.join('; ')}`);
    say('0 passed, 1 failed');
    return 1;
  }
  process.on('exit', killEverythingSync);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      say(`\n${sig}: stopping everything`);
      void cleanup(keep, true).finally(() => {
        say(`${passed} passed, ${failed + 1} failed`);
        process.exit(130);
      });
    });
  }
  const limit = setTimeout(() => {
    say(`\nFAIL  time limit of ${timeLimitS} s exceeded; stopping everything`);
    void cleanup(keep, true).finally(() => {
      say(`${passed} passed, ${failed + 1} failed`);
      process.exit(1);
    });
  }, timeLimitS * 1000);
  limit.unref();

  work = createWorkDir();
  host = new Libvirtd(work);
  mkdirSync(work.xml, { recursive: true });
  say(`work directory ${work.root}`);
  try {
    await scenario('A', 'virtlockd first (sockets passed in), takeover then handback', (d) => startPlainVirtlockd(d), 'takeover', work, host);
    await scenario('B', "relockd first (test:libvirt's setup), handback then takeover", (d, ls) => startRelockdInNamespace(d, ls), 'handback', work, host);
    await scenario('C', 'virtlockd under systemd-socket-activate, takeover then handback', (d) => startActivatedVirtlockd(d), 'takeover', work, host);
  } catch (e) {
    failed++;
    say(`FAIL  harness: ${(e as Error).stack ?? e}`);
  } finally {
    await cleanup(keep, false);
  }
  const left = leftovers();
  if (left.length) {
    failed++;
    say(`FAIL  cleanup: still alive: ${left.join('; ')}`);
  } else {
    passed++;
    say('PASS  cleanup: every process started (libvirtd, QEMU, lock daemons, probes) is gone');
  }
  say(`total ${secs(performance.now() - t0)}`);
  if (failures.length) say(`failed: ${failures.join(', ')}`);
  say(`${passed} passed, ${failed} failed`);
  return failed ? 1 : 0;
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
