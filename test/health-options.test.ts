// Lock-failure timing against the NFSv4 lease time, killpath parsing, the
// mount's lease time, the probe's verdicts, and relockd refusing a
// configuration whose timeouts cannot end an owner's writes in time.

import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_HEALTH, effectiveFailureTimeoutMs, parseKillpath, safetyMarginMs, timingProblems, writesEndByMs } from '../src/health/options.js';
import { StorageProber, mountLeaseTimeMs } from '../src/health/probe.js';
import { ENV_PREFIX, NODE_FLAGS, RELOCKD_BIN, cleanEnv } from './lib/relockd.js';

const work = mkdtempSync(join(tmpdir(), 'health-opts-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));

t.test('defaults end every owner before a 90 s NFSv4 lease, with a margin', async (t) => {
  t.same(timingProblems(DEFAULT_HEALTH, 3000), []);
  const end = writesEndByMs(DEFAULT_HEALTH, 3000)!;
  t.equal(end, 78_000, 'failed at 60 s, kill_grace 15 s, SIGKILL 3 s later');
  t.ok(end + safetyMarginMs(90_000) <= 90_000, `margin ${90_000 - end} ms`);
  t.equal(writesEndByMs({ ...DEFAULT_HEALTH, action: 'terminate' }, 3000), 63_000);
  t.equal(writesEndByMs({ ...DEFAULT_HEALTH, action: 'ignore' }, 3000), null, 'ignore promises nothing');
});

t.test('timeouts that cannot meet the lease time are refused, with the sum spelt out', async (t) => {
  const p = timingProblems({ ...DEFAULT_HEALTH, killGraceMs: 40_000 }, 3000);
  t.equal(p.length, 1);
  t.match(p[0], /lockspace_failure_timeout 60 s \+ kill_grace 40 s \+ owner_term_grace 3 s \+ margin 9 s = 112 s exceeds the NFSv4 lease time 90 s/);
  t.same(timingProblems({ ...DEFAULT_HEALTH, killGraceMs: 40_000, nfsLeaseTimeMs: 140_000 }, 3000), [], 'fine against a longer server lease time');
  t.match(timingProblems({ ...DEFAULT_HEALTH, action: 'killpath' }, 3000)[0], /needs killpath/);
  t.match(timingProblems({ ...DEFAULT_HEALTH, checkIntervalMs: 60_000 }, 3000)[0], /must be shorter/);
});

t.test('a mount with a shorter lease time shortens the failure timeout there', async (t) => {
  t.equal(effectiveFailureTimeoutMs(DEFAULT_HEALTH, 3000, null), 60_000);
  t.equal(effectiveFailureTimeoutMs(DEFAULT_HEALTH, 3000, 90_000), 60_000);
  // 45 s lease: 45 - 15 - 3 - 4.5 margin = 22.5 s
  t.equal(effectiveFailureTimeoutMs(DEFAULT_HEALTH, 3000, 45_000), 22_500);
  t.equal(effectiveFailureTimeoutMs(DEFAULT_HEALTH, 3000, 10_000), 10_000, 'never below one check interval');
});

t.test('killpath is split on spaces and must be absolute', async (t) => {
  t.same(parseKillpath('/usr/bin/prog  a b'), ['/usr/bin/prog', 'a', 'b']);
  t.throws(() => parseKillpath('prog a'), /absolute path/);
  t.throws(() => parseKillpath('   '), /empty/);
});

t.test("the NFSv4 lease time from mountstats, for the mount holding the directory", async (t) => {
  const f = join(work, 'mountstats');
  writeFileSync(
    f,
    [
      'device rootfs mounted on / with fstype rootfs',
      'device srv:/export mounted on /mnt/nfs with fstype nfs4 statvers=1.1',
      '\topts:\trw,vers=4.2',
      '\tnfsv4:\tbm0=0xfdffbfff,bm1=0x40f9be3e,bm2=0x60803,acl=0x3,sessions,pnfs=not configured,lease_time=15,lease_expired=0',
      'device srv:/v3 mounted on /mnt/v3 with fstype nfs statvers=1.1',
      '',
    ].join('\n'),
  );
  t.equal(mountLeaseTimeMs('/mnt/nfs/leases', f), 15_000);
  t.equal(mountLeaseTimeMs('/mnt/nfs', f), 15_000);
  t.equal(mountLeaseTimeMs('/mnt/v3/leases', f), null, 'NFSv3 has no lease');
  t.equal(mountLeaseTimeMs('/mnt/nfsx', f), null, 'not a prefix match on names');
  t.equal(mountLeaseTimeMs('/x', join(work, 'missing')), null);
});

t.test('probe verdicts: EIO through a lease fd is a lost lock; a hung call is a timeout', async (t) => {
  const fd = 0; // handed to the stub only
  const eio = Object.assign(new Error('pread: Input/output error'), { code: 'EIO', errno: 5, syscall: 'pread' });
  const stale = Object.assign(new Error('statx: Stale file handle'), { code: 'ESTALE', errno: 116, syscall: 'statx' });
  let settled = 0;
  const lost = new StorageProber(undefined, 1, async (_d, leases) => ({ leases: leases.map(() => ({ error: eio as never, buffered: false })) }));
  const out = await lost.probe('/x', [{ name: 'disk1', fd, shared: false, classic: false }], 1000, () => settled++);
  t.same([out.ok, out.lost, out.timedOut], [false, ['disk1'], false]);
  const dir = new StorageProber(undefined, 1, async () => ({ dirError: stale as never, leases: [] }));
  t.match((await dir.probe('/x', [], 1000, () => settled++)).dirError, /Stale/);
  const hung = new StorageProber(undefined, 1, () => new Promise(() => {}));
  const h = await hung.probe('/x', [], 50, () => settled++);
  t.same([h.ok, h.timedOut], [false, true]);
  t.equal(settled, 2, 'a hung probe has not settled (it keeps its thread)');
  const classic = new StorageProber(undefined, 1, async (_d, leases) => ({ leases: leases.map(() => ({ buffered: false })) }));
  const c = await classic.probe('/x', [{ name: 'v', fd, shared: false, classic: true }], 1000, () => {});
  t.ok(c.ok, 'classic (virtlockd) locks are not probed (a probe must not touch them)');
});

const runRelockd = (args: string[]) => {
  const dir = mkdtempSync(join(work, 'd-'));
  return spawnSync('/usr/bin/env', [...ENV_PREFIX, process.execPath, ...NODE_FLAGS, RELOCKD_BIN, '--runtime-dir', dir, ...args], { encoding: 'utf8', env: cleanEnv(), timeout: 20000 });
};

t.test('relockd refuses to start with timeouts that cannot meet the lease time', async (t) => {
  const r = runRelockd(['--kill-grace', '40']);
  t.equal(r.status, 1, 'exit 1, as for any bad configuration');
  t.match(r.stderr, /kill_grace 40 s .* exceeds the NFSv4 lease time 90 s/);
  const f = join(work, 'relockd.conf');
  writeFileSync(f, 'lock_failure_action = "killpath"\n');
  const r2 = runRelockd(['-f', f]);
  t.equal(r2.status, 1);
  t.match(r2.stderr, /needs killpath/);
  const r3 = runRelockd(['--killpath', 'relative/prog']);
  t.equal(r3.status, 1);
  t.match(r3.stderr, /absolute path/);
  const r4 = runRelockd(['--lock-failure-action', 'reboot']);
  t.equal(r4.status, 1);
  t.match(r4.stderr, /lock-failure-action/);
});
