// Storage failure, for real: a lock space on a FUSE mount (bindfs) whose
// server is frozen with SIGSTOP stands in for a hung NFS server. Its probes
// fail past lockspace_failure_timeout, relockd marks it failed and applies
// lock_failure_action to a real owner process (holding its own connection,
// like QEMU): killpath, pause (fake virsh), terminate, ignore. A local lock
// space is served meanwhile. After SIGCONT, recovery re-acquires the
// released lease and resumes the owner, or terminates it when another
// client took the lease during the failure.

import t from 'tap';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { ROOT } from './lib/relockd.js';
import { probeOne } from './lib/probe.js';
import { bindfsAvailable } from './lib/fuse.js';
import { OWNER_UUID, childrenOf, healthLog, localStillServed, setUp, spawnThief } from './lib/lockfailure.js';
import { readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { KILL_GRACE_MS } from './lib/lockfailure.js';
import { waitFor, matchLog } from './lib/wait.js';
import { NotifyReceiver } from './lib/notify.js';

const skip = bindfsAvailable();
if (skip) {
  t.fail(`${skip}: the storage-failure suite needs a FUSE mount (CI installs bindfs and fuse3)`);
} else {
  t.test('killpath: the program runs once with the owner, releases; recovery re-acquires and resumes', async (t) => {
    const s = await setUp(t, { action: 'killpath' });
    t.equal(probeOne(s.lease), 'held', 'the owner holds its lease on the FUSE lock space');
    const t0 = Date.now();
    s.fuse.freeze();
    await s.waitState('failing');
    await localStillServed(t, s);
    const failed = await s.waitState('failed');
    const tFailed = Date.now() - t0;
    t.ok(tFailed >= 2500, `failed after the failure timeout (${tFailed} ms after SIGSTOP, timeout 3 s from the last good probe)`);
    t.ok(await waitFor(async () => (await s.holders()).length === 0, 10000, 50), 'the killpath program released the lease through relockctl release-leases');
    const calls = s.calls().filter((l) => l.startsWith('killpath'));
    t.equal(calls.length, 1, 'killpath ran once');
    t.match(calls[0], `killpath first-arg fail ${OWNER_UUID} uuid=${OWNER_UUID} name=vm1 pid=${s.owner.pid} lockspace=${s.ls} resources=disk1`, 'with the owner, lock space and resources');
    t.match(failed.owners[0]?.action, 'killpath');
    await new Promise((r) => setTimeout(r, KILL_GRACE_MS + 500)); // past kill_grace
    t.equal(s.owner.exitCode, null, 'the owner was not killed: it released in time');
    await matchLog(t, () => s.d.logs(), /"msg":"lock space failed"/, 'transition logged');
    s.fuse.thaw();
    await s.waitState('healthy');
    const holders = await s.holders();
    if (holders[0] !== s.owner.pid) console.error(healthLog(s.d.logs()));
    t.same(holders, [s.owner.pid], 'recovery re-acquired the lease for the owner');
    t.equal(probeOne(s.lease), 'held', 'and another process cannot take it');
    t.ok(s.calls().some((l) => l.startsWith(`killpath first-arg resume ${OWNER_UUID}`)), 'resume ran');
    t.equal(s.calls().filter((l) => l.includes(' fail ')).length, 1, 'fail still ran only once');
    await matchLog(t, () => s.d.logs(), /"msg":"recovery: owner resumed"/);
  });

  t.test('pause: virsh suspend, leases released; virsh resume after recovery', async (t) => {
    const s = await setUp(t, { action: 'pause' });
    s.fuse.freeze();
    await s.waitState('failed');
    t.ok(await waitFor(() => s.calls().some((l) => l === `virsh -c test:///fake suspend ${OWNER_UUID}`), 10000), 'virsh -c URI suspend UUID');
    t.ok(await waitFor(async () => (await s.holders()).length === 0, 10000, 50), 'the lease was released');
    await new Promise((r) => setTimeout(r, KILL_GRACE_MS + 500));
    t.equal(s.owner.exitCode, null, 'the paused owner is not killed');
    s.fuse.thaw();
    await s.waitState('healthy');
    t.ok(s.calls().includes(`virsh -c test:///fake resume ${OWNER_UUID}`), 'virsh -c URI resume UUID');
    t.same(await s.holders(), [s.owner.pid], 'lease re-acquired');
    t.equal(s.calls().filter((l) => l.includes('suspend')).length, 1, 'suspended once');
  });

  t.test('terminate: SIGTERM to the owner through its pidfd, then release', async (t) => {
    const notify = await NotifyReceiver.start(`${process.env.TMPDIR ?? '/tmp'}/lf-notify-${process.pid}.sock`);
    t.teardown(() => notify.stop());
    const s = await setUp(t, { action: 'terminate', env: { NOTIFY_SOCKET: notify.path } });
    s.fuse.freeze();
    await s.waitState('failed');
    t.match(await notify.waitFor((m) => /STATUS=.*lock space .* failed/.test(m)), /lock space .* failed/, 'sd_notify STATUS= says the lock space failed');
    const exit = await Promise.race([s.ownerExit, new Promise((r) => setTimeout(() => r(null), 8000))]);
    t.same(exit, { code: null, signal: 'SIGTERM' }, 'the owner got SIGTERM');
    t.equal(s.calls().length, 0, 'no killpath program, no virsh');
    await localStillServed(t, s);
    s.fuse.thaw();
    await s.waitState('healthy');
    t.same(await s.holders(), [], 'its lease is released');
    const free = await waitFor(() => probeOne(s.lease) !== 'held', 5000);
    if (!free) console.error(s.d.logs().split('\n').filter((l) => /lease|fd|storage/.test(l)).slice(-30).join('\n'));
    t.ok(free, 'and free for another process');
  });

  t.test('ignore: logged and reported only; the owner keeps its lease', async (t) => {
    const s = await setUp(t, { action: 'ignore' });
    s.fuse.freeze();
    const h = await s.waitState('failed');
    t.equal(h.owners[0]?.phase, 'ignored');
    const ctl = (...args: string[]) => spawnSync(process.execPath, [join(ROOT, 'bin', 'relockctl.cjs'), '--admin-socket', s.d.adminSocketPath!, ...args], { encoding: 'utf8' });
    const st = ctl('status');
    t.match(st.stdout, /STORAGE:\s+\S+ FAILED \(see relockctl health\)/, 'relockctl status shows the failed lock space');
    t.match(ctl('leases').stdout, /disk1 .*\[lock space failed\]/, 'relockctl leases marks the lease');
    const hl = ctl('health', '--json');
    t.match(JSON.parse(hl.stdout), [{ dir: s.ls, state: 'failed', owners: [{ action: 'ignore', phase: 'ignored', owner: { pid: s.owner.pid } }] }], 'relockctl health --json');
    t.match(ctl('health').stdout, /FAILED/);
    const metrics = ctl('metrics').stdout;
    const series = (state: string) => new RegExp(`relockd_lockspace_health\\{[^}]*lockspace="${s.ls}"[^}]*state="${state}"[^}]*\\} 1\\b|relockd_lockspace_health\\{[^}]*state="${state}"[^}]*lockspace="${s.ls}"[^}]*\\} 1\\b`);
    t.match(metrics, series('failed'), 'relockd_lockspace_health says failed');
    t.notMatch(metrics, series('healthy'), 'and not healthy');
    await new Promise((r) => setTimeout(r, KILL_GRACE_MS + 500));
    t.equal(s.owner.exitCode, null, 'owner untouched');
    t.same(await s.holders(), [s.owner.pid], 'lease kept');
    await matchLog(t, () => s.d.logs(), /action ignore, the owner keeps running/);
    s.fuse.thaw();
    await s.waitState('healthy');
    t.equal(probeOne(s.lease), 'held');
    t.equal(s.calls().length, 0);
  });

  t.test('a lease taken by someone else during the failure: the owner is terminated, not resumed', async (t) => {
    const s = await setUp(t, { action: 'killpath' });
    const thief = spawnThief(s.lease);
    t.teardown(() => void thief.child.kill('SIGKILL'));
    s.fuse.freeze();
    await s.waitState('failed');
    t.ok(await waitFor(async () => (await s.holders()).length === 0, 10000, 50), 'released by the killpath program');
    thief.go();
    s.fuse.thaw();
    await thief.got;
    t.pass('the other client took the lease once the storage answered');
    const exit = await Promise.race([s.ownerExit, new Promise((r) => setTimeout(() => r(null), 10000))]);
    t.same(exit, { code: null, signal: 'SIGTERM' }, 'the owner was terminated');
    t.notOk(s.calls().some((l) => l.includes(' resume ')), 'resume never ran');
    await matchLog(t, () => s.d.logs(), /lease was taken by someone else during the failure; the owner must never run again/);
    await s.waitState('healthy');
  });

  t.test('acquisitions in a failed lock space are refused with a clear error', async (t) => {
    const s = await setUp(t, { action: 'ignore' });
    s.fuse.freeze();
    await s.waitState('failed');
    const { LockspaceClient } = await import('../src/protocol/lockspaceClient.js');
    const c = await LockspaceClient.connect(s.d.socketPath);
    t.teardown(() => c.close());
    await c.register({ uuid: '33334444-5555-6666-7777-888899990000', name: 'late', id: 3, pid: process.pid });
    await t.rejects(c.acquire(s.ls, 'disk2', 2), /lock space '.*' has failed/);
    s.fuse.thaw();
    await s.waitState('healthy');
  });

  t.test('the action runner: started before any lease fd, holds none, spawns the programs; if it dies, owners are terminated through the pidfd', async (t) => {
    const s = await setUp(t, { action: 'killpath' });
    const runners = childrenOf(s.d.pid);
    t.equal(runners.length, 1, `relockd has one child, the action runner (${runners.join(' ')})`);
    const runner = runners[0]!;
    const fds = readdirSync(`/proc/${runner}/fd`).map((f) => { try { return readlinkSync(`/proc/${runner}/fd/${f}`); } catch { return ''; } });
    t.notOk(fds.some((p) => p.startsWith(s.fuse.mnt) || p.startsWith(s.local)), `the runner holds no storage fd (${fds.filter((p) => p.startsWith('/')).join(', ')})`);
    s.fuse.freeze();
    await s.waitState('failed');
    t.ok(await waitFor(async () => (await s.holders()).length === 0, 10000, 50), 'the killpath program released');
    t.match(readFileSync(join(s.work, 'calls.log.ppid'), 'utf8'), `parent ${runner}`, "the program is the runner's child, not relockd's");
    t.same(childrenOf(s.d.pid), [runner], 'relockd forked nothing while it held a lease on the frozen mount');
    s.fuse.thaw();
    await s.waitState('healthy');
    t.same(await s.holders(), [s.owner.pid], 'resumed');

    // The runner dies. relockd holds a lease: it must not fork a new one.
    process.kill(runner, 'SIGKILL');
    t.ok(await waitFor(() => /ACTION RUNNER GONE/.test(s.d.logs()), 5000), 'the runner\'s death is logged loudly');
    await new Promise((r) => setTimeout(r, 1000));
    t.same(childrenOf(s.d.pid).filter((p) => p !== runner), [], 'no new runner while a lease is held');
    const calls = s.calls().length;
    s.fuse.freeze();
    await s.waitState('failed');
    const exit = await Promise.race([s.ownerExit, new Promise((r) => setTimeout(() => r(null), 8000))]);
    t.same(exit, { code: null, signal: 'SIGTERM' }, 'no program can run: the owner is terminated through its pidfd at once');
    t.equal(s.calls().length, calls, 'and no program ran');
    await matchLog(t, () => s.d.logs(), /the killpath program could not run \(no action runner\)/);
    await localStillServed(t, s);
    s.fuse.thaw();
    await s.waitState('healthy');
    t.ok(await waitFor(() => childrenOf(s.d.pid).length === 1, 8000, 100), 'with no lease left, a new runner is started');
    t.equal((s.d.logs().match(/"msg":"action runner started/g) ?? []).length, 2, 'logged');
  });
}
