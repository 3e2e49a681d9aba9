// relockctl takeover / handback with the real virtlockd (test/lib/virtlockd.ts:
// its own private mount namespace with a tmpfs on /run, so the bind mount
// over /usr/sbin/virtlockd and the state files never touch the host), real
// owner processes, real locks checked from another process.

import t from 'tap';
import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, readlinkSync, existsSync, rmSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { ROOT } from './lib/relockd.js';
import { spawnOwner } from './lib/targets.js';
import { Hammer, probeOne } from './lib/probe.js';
import { startVirtlockd, virtlockdAvailable, virtlockdUnavailableReason, visibleTmpDir } from './lib/virtlockd.js';
import type { StartedDaemon } from './lib/virtlockd.js';
import { waitFor, matchLog } from './lib/wait.js';
import { LockspaceClient } from '../src/protocol/lockspaceClient.js';
import { AdminClient } from '../src/protocol/adminClient.js';
import { AcquireFlags } from '../src/locks/lockManager.js';

const RELOCKCTL = join(ROOT, 'bin', 'relockctl.cjs');
// Real daemons switching programs several times: allow for a loaded machine (tap's default is 180 s).
t.setTimeout(600_000);

if (!virtlockdAvailable()) {
  t.skip(`real virtlockd unavailable: ${virtlockdUnavailableReason()}`, async () => {});
} else {
  run();
}

interface CtlResult {
  code: number | null;
  stdout: string;
  stderr: string;
  json: any;
}

function relockctl(args: string[], timeoutMs = 90_000): Promise<CtlResult> {
  return new Promise((resolve) => {
    // env -u NODE_OPTIONS: tap's spawn hook would load its instrumentation into relockctl and everything it starts.
    const child = spawn('/usr/bin/env', ['-u', 'NODE_OPTIONS', process.execPath, RELOCKCTL, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('close', (code) => {
      clearTimeout(timer);
      let json: any = null;
      try {
        json = JSON.parse(stdout);
      } catch {
        /* text */
      }
      resolve({ code, stdout, stderr, json });
    });
  });
}

const exe = (pid: number) => readlinkSync(`/proc/${pid}/exe`);
/** Whether anything is mounted on /usr/sbin/virtlockd in pid's mount namespace. */
const bindMounted = (pid: number) => readFileSync(`/proc/${pid}/mountinfo`, 'utf8').split('\n').some((l) => l.split(' ')[4] === '/usr/sbin/virtlockd');

function takeoverArgs(d: StartedDaemon, extra: string[] = []): string[] {
  return ['takeover', '--pid', String(d.pid), '--socket', d.socketPath, '--admin-socket', d.adminSocketPath, '--systemd', 'no', '--json', ...extra];
}
function handbackArgs(d: StartedDaemon, extra: string[] = []): string[] {
  return ['handback', '--admin-socket', d.adminSocketPath, '--systemd', 'no', '--json', ...extra, '--', '-f', d.configPath];
}

function run(): void {
  const work = mkdtempSync(join(visibleTmpDir(), 'relockd-takeover-t-'));
  t.teardown(() => rmSync(work, { recursive: true, force: true }));

  t.test('virtlockd -> relockd -> virtlockd -> relockd, same pid, every lease and connection kept', async (t) => {
    const d = await startVirtlockd({ logLevel: 3 });
    const owners: Array<ReturnType<typeof spawnOwner>> = [];
    t.teardown(async () => {
      for (const o of owners) o.child.kill('SIGKILL');
      await d.stop(5000);
    });
    const dir = join(work, 'rt');
    mkdirSync(dir);
    const img = join(dir, 'disk.img');
    const shared = join(dir, 'shared.img');
    writeFileSync(img, '');
    writeFileSync(shared, '');
    const ls = join(dir, 'lockspace');
    // libvirt's way: CREATE_LOCKSPACE on a short unregistered connection.
    {
      const c = await LockspaceClient.connect(d.socketPath);
      await c.createLockspace(ls);
      c.rpc.close();
    }
    await new Promise((r) => setTimeout(r, 200)); // virtlockd drops the closed connection
    const a = spawnOwner(d.socketPath, [{ path: '', name: img, flags: 0 }, { path: ls, name: 'lease-a', flags: AcquireFlags.AUTOCREATE }], { restrict: true, name: 'vm-a' });
    owners.push(a);
    await a.ready;
    const b = spawnOwner(d.socketPath, [{ path: '', name: shared, flags: AcquireFlags.SHARED }], { restrict: true, name: 'vm-b' });
    const c = spawnOwner(d.socketPath, [{ path: '', name: shared, flags: AcquireFlags.SHARED }, { path: ls, name: 'lease-c', flags: AcquireFlags.SHARED | AcquireFlags.AUTOCREATE }], { restrict: true, name: 'vm-c' });
    owners.push(b, c);
    await Promise.all([b.ready, c.ready]);
    const leaseA = join(ls, 'lease-a');
    const leaseC = join(ls, 'lease-c');
    const exclusive = [img, leaseA];
    const all = [img, leaseA, shared, leaseC];
    for (const p of all) t.equal(probeOne(p), 'held', `virtlockd holds ${basename(p)}`);

    const hammer = await Hammer.start(all);
    t.teardown(() => hammer.kill());

    // ---- takeover
    const r1 = await relockctl(takeoverArgs(d, ['--assume-registered']));
    t.equal(r1.code, 0, `takeover succeeds: ${r1.stderr}${r1.stdout}`);
    if (r1.code !== 0) console.error(d.logs().slice(-5000));
    t.equal(r1.json?.ok, true, 'report says ok');
    t.equal(r1.json?.pid, d.pid, 'same pid');
    t.equal(r1.json?.locksBefore, 4, 'virtlockd held 4 locks');
    t.equal(r1.json?.leasesAdopted, 4, 'relockd adopted 4 leases');
    t.match(basename(exe(d.pid)), /^node/, 'the process now runs node (relockd)');
    t.notOk(bindMounted(d.pid), 'the bind mount over /usr/sbin/virtlockd is gone');
    for (const p of exclusive) t.equal(probeOne(p, 'read'), 'held', `${basename(p)} held exclusive by relockd`);
    for (const p of [shared, leaseC]) t.equal(probeOne(p, 'write'), 'held', `${basename(p)} still held (shared)`);
    // relockd's view (admin socket adopted from virtlockd)
    const adm = await AdminClient.connect(d.adminSocketPath, 10_000);
    const info = await adm.daemonInfo();
    const clients = await adm.clients('virtlockd');
    adm.close();
    t.equal(info.pid, d.pid, 'relockd answers with the same pid');
    t.equal(info.boot, 'restored', 'boot: restored (not safe mode)');
    t.equal(clients.filter((x) => x.ownerConnection).length, 3, "the three owners' connections were kept");

    const h1 = await hammer.stop();
    t.same(h1.wins, {}, `takeover: no lock was ever free (${h1.attempts} attempts by another process, zero wins)`);
    const hammer2 = await Hammer.start([shared, leaseC]);
    t.teardown(() => hammer2.kill());

    // a connection kept across the takeover still works: owner a dies → relockd releases its leases
    a.child.kill('SIGKILL');
    t.ok(await waitFor(() => probeOne(img) === 'free', 10_000), "a's image lease freed when a's kept connection closes");
    t.ok(await waitFor(() => !existsSync(leaseA), 10_000), "a's autocreated lease file removed");

    // ---- handback
    const r2 = await relockctl(handbackArgs(d));
    t.equal(r2.code, 0, `handback succeeds: ${r2.stderr}${r2.stdout}`);
    t.equal(r2.json?.pid, d.pid, 'same pid');
    t.equal(exe(d.pid), '/usr/sbin/virtlockd', 'the process runs virtlockd again');
    t.equal(r2.json?.leases, 2, 'two lease resources handed back');
    t.equal(probeOne(shared, 'write'), 'held', 'shared image held by virtlockd');
    t.equal(probeOne(leaseC, 'write'), 'held', 'shared lease file held by virtlockd');
    // virtlockd can re-exec with what it restored (its own save and restore of relockd's state)
    await d.reexec().catch((e) => {
      console.error(d.logs().slice(-6000));
      throw e;
    });
    t.equal(exe(d.pid), '/usr/sbin/virtlockd', 'virtlockd re-execs itself after the handback');
    t.equal(probeOne(shared, 'write'), 'held', 'still held after virtlockd re-exec');
    // b's kept connection: b dies → virtlockd removes b as an owner; c still holds it
    b.child.kill('SIGKILL');
    await new Promise((r) => setTimeout(r, 500));
    t.equal(probeOne(shared, 'write'), 'held', 'shared image still held for c');

    // ---- takeover again: virtlockd now holds relockd's OFD locks
    const r3 = await relockctl(takeoverArgs(d, ['--assume-registered']));
    t.equal(r3.code, 0, `second takeover succeeds: ${r3.stderr}${r3.stdout}`);
    t.equal(r3.json?.leasesAdopted, 2, 'both leases adopted again');
    const h2 = await hammer2.stop();
    t.same(h2.wins, {}, `handback, virtlockd re-exec, takeover: no lock was ever free (${h2.attempts} attempts, zero wins)`);
    c.child.kill('SIGKILL');
    t.ok(await waitFor(() => probeOne(shared) === 'free', 10_000), 'c dies: relockd frees the shared image');
    t.ok(await waitFor(() => !existsSync(leaseC), 10_000), "c dies: relockd removes c's lease file (it knows the lock is OFD now)");
    await matchLog(t, () => d.logs(), /"msg":"handback to virtlockd requested by admin"/, "relockd logs to virtlockd's log output (its configuration)");
  });

  t.test('takeover refuses while a connection may not have registered; nothing changes', async (t) => {
    const d = await startVirtlockd({ logLevel: 3 });
    const img = join(work, 'refuse.img');
    writeFileSync(img, '');
    const o = spawnOwner(d.socketPath, [{ path: '', name: img, flags: 0 }], { restrict: true, name: 'vm-r' });
    // a connection that never registers (what virtlockd 9.0 cannot save)
    const silent = spawn('python3', ['-c', `import socket,sys,time\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\nprint('ready',flush=True)\ntime.sleep(600)`, d.socketPath], { stdio: ['ignore', 'pipe', 'inherit'] });
    t.teardown(async () => {
      o.child.kill('SIGKILL');
      silent.kill('SIGKILL');
      await d.stop(5000);
    });
    await o.ready;
    await new Promise((r) => silent.stdout.once('data', r));
    const r = await relockctl(takeoverArgs(d, ['--wait', '1']));
    t.equal(r.code, 75, 'refused (EX_TEMPFAIL) after waiting');
    t.match(r.json?.error?.message, /may not have[\s\S]*python3[\s\S]*nothing was changed; virtlockd keeps serving/, `says why, naming the peer: ${r.json?.error?.message}`);
    t.equal(exe(d.pid), '/usr/sbin/virtlockd', 'still virtlockd');
    t.notOk(bindMounted(d.pid), 'no bind mount left');
    t.equal(probeOne(img, 'read'), 'held', 'lease still held');
    silent.kill('SIGKILL');
    // the owner's node process is not QEMU: only with --assume-registered
    await new Promise((r) => setTimeout(r, 300));
    const r2 = await relockctl(takeoverArgs(d, ['--wait', '0']));
    t.equal(r2.code, 75, 'an owner that is neither QEMU nor libvirt needs --assume-registered');
    const r3 = await relockctl(takeoverArgs(d, ['--assume-registered', '--wait', '5']));
    t.equal(r3.code, 0, `then it goes: ${r3.stdout}`);
    t.equal(probeOne(img, 'read'), 'held', 'lease held by relockd');
    o.child.kill('SIGKILL');
    t.ok(await waitFor(() => probeOne(img) === 'free', 10_000), 'freed when the owner dies');
  });

  t.test('handback: refusals leave relockd serving; what virtlockd gets it can save again', async (t) => {
    const d = await startVirtlockd({ logLevel: 3 });
    const dir = join(work, 'hb');
    mkdirSync(dir);
    const img = join(dir, 'disk.img');
    writeFileSync(img, '');
    const ls = join(dir, 'ls');
    const owners: Array<ReturnType<typeof spawnOwner>> = [];
    let late: ReturnType<typeof spawn> | null = null;
    t.teardown(async () => {
      for (const o of owners) o.child.kill('SIGKILL');
      late?.kill('SIGKILL');
      await d.stop(5000);
    });
    const r0 = await relockctl(takeoverArgs(d, ['--assume-registered']));
    t.equal(r0.code, 0, 'relockd took over (no leases yet)');
    // relockd's own leases (OFD locks): one exclusive image, one shared autocreated lease
    {
      const c = await LockspaceClient.connect(d.socketPath);
      await c.createLockspace(ls);
      c.rpc.close();
    }
    const a = spawnOwner(d.socketPath, [{ path: '', name: img, flags: 0 }], { restrict: true, name: 'vm-h1' });
    const b = spawnOwner(d.socketPath, [{ path: ls, name: 'sh', flags: AcquireFlags.SHARED | AcquireFlags.AUTOCREATE }], { restrict: true, name: 'vm-h2' });
    owners.push(a, b);
    await Promise.all([a.ready, b.ready]);
    const lease = join(ls, 'sh');
    // a connected client that registers only after the handback
    late = spawn(process.execPath, ['--input-type=module', '-e', `
      const { LockspaceClient } = await import(${JSON.stringify(`${ROOT}/dist/src/protocol/lockspaceClient.js`)});
      const c = await LockspaceClient.connect(${JSON.stringify(d.socketPath)});
      process.stdout.write('connected\\n');
      process.stdin.once('data', async () => {
        try {
          await c.register({ uuid: '99990000-3333-4444-5555-666677778888', name: 'late', id: 9, pid: 4242 });
          await c.acquire('', ${JSON.stringify(join(dir, 'late.img'))}, 0);
          process.stdout.write('acquired\\n');
        } catch (e) { process.stdout.write('error ' + e.message + '\\n'); }
      });
    `], { stdio: ['pipe', 'pipe', 'inherit'] });
    writeFileSync(join(dir, 'late.img'), '');
    let lateOut = '';
    late.stdout!.on('data', (x) => (lateOut += x));
    t.ok(await waitFor(() => lateOut.includes('connected'), 10_000), 'late client connected, not registered');

    const stillRelockd = async (what: string) => {
      t.match(basename(exe(d.pid)), /^node/, `${what}: still relockd`);
      t.equal(probeOne(img, 'read'), 'held', `${what}: image lease held`);
      const adm = await AdminClient.connect(d.adminSocketPath, 10_000);
      t.equal((await adm.daemonInfo()).resources, 2, `${what}: relockd serves, 2 leases`);
      adm.close();
    };
    const bad = await relockctl(['handback', '--admin-socket', d.adminSocketPath, '--systemd', 'no', '--json', '--virtlockd', join(dir, 'no-such-virtlockd'), '--', '-f', d.configPath]);
    t.equal(bad.code, 1, 'a binary that does not exist: refused');
    t.match(bad.json?.error?.message, /refusing: .*no-such-virtlockd[\s\S]*nothing was changed, relockd keeps serving/);
    await stillRelockd('missing binary');
    const conf = await relockctl(['handback', '--admin-socket', d.adminSocketPath, '--systemd', 'no', '--json', '--', '-f', join(dir, 'no-such.conf')]);
    t.equal(conf.code, 1, 'a configuration virtlockd cannot load: refused by the trial start');
    t.match(conf.json?.error?.message, /exited 1 in a dry run/);
    await stillRelockd('bad configuration');
    const dae = await relockctl(['handback', '--admin-socket', d.adminSocketPath, '--systemd', 'no', '--json', '--no-trial', '--', '-f', d.configPath, '-d']);
    t.equal(dae.code, 1, '-d: refused by relockd');
    t.match(dae.json?.refused, /must not daemonize/);
    await stillRelockd('-d');

    const ok = await relockctl(handbackArgs(d));
    t.equal(ok.code, 0, `handback with a connected, unregistered client: ${ok.stdout}${ok.stderr}`);
    t.equal(exe(d.pid), '/usr/sbin/virtlockd', 'virtlockd again');
    await matchLog(t, () => d.logs(), /shared, autocreated and OFD-locked/, 'relockd logged the lease-file warning');
    // virtlockd 9.0 would exit 9 here with a NULL owner name; relockd wrote "".
    await d.reexec();
    t.equal(exe(d.pid), '/usr/sbin/virtlockd', 'virtlockd re-execs with the unregistered client it was handed');
    late.stdin!.write('go\n');
    t.ok(await waitFor(() => /acquired|error/.test(lateOut), 10_000), 'late client answered');
    t.match(lateOut, /acquired/, 'the late client registers and acquires with virtlockd');
    t.equal(probeOne(join(dir, 'late.img'), 'read'), 'held', 'its lease is held');
    t.equal(probeOne(img, 'read'), 'held', "a's lease (relockd's OFD lock) held by virtlockd");
    t.equal(probeOne(lease, 'write'), 'held', "b's shared lease held by virtlockd");
    // virtlockd releases an OFD-locked shared autocreated lease but keeps its file (docs/takeover.md)
    b.child.kill('SIGKILL');
    t.ok(await waitFor(() => probeOne(lease) === 'free', 10_000), "b dies: virtlockd frees b's lease");
    t.ok(existsSync(lease), 'and leaves its empty lease file behind, as documented');
    a.child.kill('SIGKILL');
    t.ok(await waitFor(() => probeOne(img) === 'free', 10_000), "a dies: virtlockd closes relockd's OFD-locked fd, the image is free");
    late.kill('SIGKILL');
  });
}
