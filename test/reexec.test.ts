// Live re-exec against real processes: no instant at which a lease is free,
// connections survive, requests in flight are answered exactly once, an
// upgraded build takes over, and every failure before execve leaves the old
// image serving with every lock.

import t from 'tap';
import { mkdtempSync, writeFileSync, rmSync, mkdirSync, copyFileSync, cpSync, symlinkSync, readFileSync, existsSync, unlinkSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { startRelockd, ROOT } from './lib/relockd.js';
import { targets, spawnOwner } from './lib/targets.js';
import { Hammer, probeOne } from './lib/probe.js';
import { LockspaceClient } from '../src/protocol/lockspaceClient.js';
import { RpcClient } from '../src/rpc/client.js';
import { LOCKSPACE_PROGRAM, Proc, codec } from '../src/protocol/lockspace.js';
import { encodePacket } from '../src/rpc/packet.js';
import { XdrWriter } from '../src/rpc/xdr.js';
import { waitFor, matchLog } from './lib/wait.js';

const UUID = '00112233-4455-6677-8899-aabbccddeeff';
const REEXECS = Number(process.env.RELOCKD_REEXECS ?? 20);

const work = mkdtempSync(join(tmpdir(), 'reexec-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));

for (const target of targets) {
  t.test(`zero gap across ${REEXECS} re-execs: ${target.name}`, { skip: target.available ? false : target.why }, async (t) => {
    const d = await target.start();
    t.teardown(() => d.stop());
    const dir = mkdtempSync(join(work, `gap-${target.name}-`));
    const f = (n: string) => {
      const p = join(dir, n);
      writeFileSync(p, '');
      return p;
    };
    const exclusive = f('exclusive.img');
    const shared = f('shared.img');
    const delegated = f('delegated.img');
    const restricted = f('restricted.img');
    const space = join(dir, 'leases');

    // exclusive + shared with several owners, on long-lived registered connections
    const a = await LockspaceClient.connect(d.socketPath);
    const b = await LockspaceClient.connect(d.socketPath);
    t.teardown(() => (a.close(), b.close()));
    await a.createLockspace(space);
    await a.register({ uuid: UUID, name: 'a', id: 1, pid: 50001 });
    await b.register({ uuid: UUID, name: 'b', id: 2, pid: 50002 });
    await a.acquire('', exclusive, 0);
    await a.acquire('', shared, 1);
    await b.acquire('', shared, 1);
    await a.acquire(space, 'autocreated', 2);
    // delegated ownership: libvirtd-style short connection for another pid
    const sleeper = spawn('sleep', ['600']);
    t.teardown(() => sleeper.kill('SIGKILL'));
    const lv = await LockspaceClient.connect(d.socketPath);
    await lv.register({ uuid: UUID, name: 'delegated', id: 3, pid: sleeper.pid! });
    await lv.acquire('', delegated, 0);
    lv.close();
    // a QEMU-style owner on its own restricted connection
    const q = spawnOwner(d.socketPath, [{ path: '', name: restricted, flags: 0 }], { restrict: true, name: 'qemu' });
    t.teardown(() => q.child.kill('SIGKILL'));
    await q.ready;

    const leaseFiles = [exclusive, shared, delegated, restricted, join(space, 'autocreated')];
    for (const p of leaseFiles) t.equal(probeOne(p), 'held', `held before: ${p}`);
    const hammer = await Hammer.start(leaseFiles);
    t.teardown(() => hammer.kill());
    const pid = d.pid;
    for (let i = 0; i < REEXECS; i++) await d.reexec!();
    const { attempts, wins } = await hammer.stop();
    t.comment(`${target.name}: ${REEXECS} re-execs, ${attempts} F_SETLK attempts on ${leaseFiles.length} lease files, ${Object.keys(wins).length ? JSON.stringify(wins) : 'no'} successes`);
    t.same(wins, {}, 'no lease was free at any instant');
    t.ok(attempts > REEXECS * 10, 'the hammer really hammered');
    t.equal(readFileSync(`/proc/${pid}/stat`, 'utf8').split(' ')[0], String(pid), 'same pid');

    // connections from before still work
    await a.ping();
    await b.release('', shared, 0);
    await a.release('', exclusive, 0);
    t.equal(probeOne(exclusive), 'free', 'release after the re-execs');
    await a.acquire('', exclusive, 0);
    t.equal(probeOne(exclusive), 'held', 'acquire after the re-execs');
    const fresh = await LockspaceClient.connect(d.socketPath);
    await fresh.register({ uuid: UUID, name: 'new', id: 9, pid: 50009 });
    await fresh.ping();
    fresh.close();
    // the pre-re-exec QEMU-style owner still releases on kill -9
    q.child.kill('SIGKILL');
    t.ok(await waitFor(() => probeOne(restricted) === 'free'), 'kill -9 of a pre-re-exec holder releases its lease');
    t.equal(probeOne(delegated), 'held', 'delegated lease unaffected');
  });
}

t.test('requests in flight across a re-exec are answered exactly once', async (t) => {
  const d = await startRelockd({ logLevel: 'info' });
  t.teardown(() => d.stop());
  const img = join(work, 'inflight.img');
  writeFileSync(img, '');
  const w = (f: (x: XdrWriter) => void) => {
    const x = new XdrWriter();
    f(x);
    return Buffer.from(x.bytes());
  };
  // A: half of a REGISTER frame sent before SIGUSR1, the rest after.
  const half = await RpcClient.connect(d.socketPath);
  t.teardown(() => half.close());
  const reg = encodePacket({ prog: LOCKSPACE_PROGRAM, vers: 1, proc: Proc.REGISTER, type: 0, serial: 0, status: 0 }, w((x) => codec.register.encode(x, { owner: { uuid: UUID, name: 'half', id: 1, pid: 60001 }, flags: 0 })));
  const replies: number[] = [];
  half.socket.on('data', (b: Buffer) => replies.push(b.length));
  half.writeRaw(reg.subarray(0, 30));
  // B: many pipelined requests.
  const pipe = await RpcClient.connect(d.socketPath);
  t.teardown(() => pipe.close());
  const calls: Array<Promise<import('../src/rpc/packet.js').Packet>> = [];
  calls.push(pipe.callRaw(LOCKSPACE_PROGRAM, 1, Proc.REGISTER, w((x) => codec.register.encode(x, { owner: { uuid: UUID, name: 'pipe', id: 1, pid: 60002 }, flags: 0 }))));
  for (let i = 0; i < 100; i++) {
    calls.push(pipe.callRaw(LOCKSPACE_PROGRAM, 1, Proc.ACQUIRE_RESOURCE, w((x) => codec.resource.encode(x, { path: '', name: img, flags: 1 }))));
    calls.push(pipe.callRaw(LOCKSPACE_PROGRAM, 1, Proc.RELEASE_RESOURCE, w((x) => codec.resource.encode(x, { path: '', name: img, flags: 0 }))));
  }
  await new Promise((r) => setTimeout(r, 5)); // let some of them be in flight
  await d.reexec!();
  half.writeRaw(reg.subarray(30));
  const all = await Promise.all(calls);
  t.same(all.map((r) => r.header.serial), all.map((_, i) => i), 'every pipelined reply, in order');
  t.ok(all.every((r) => r.header.status === 0), 'all succeeded');
  await pipe.ping();
  t.equal(pipe.unmatched.length, 0, 'no duplicate replies');
  t.ok(await waitFor(() => replies.reduce((a, b) => a + b, 0) >= 28), 'the half-sent request was answered');
  await new Promise((r) => setTimeout(r, 100));
  t.equal(replies.reduce((a, b) => a + b, 0), 28, 'exactly once (28 bytes)');
  t.equal(probeOne(img), 'free');
});

t.test('upgrade: re-exec into a different build on disk keeps all state', async (t) => {
  // An install tree of our own whose package.json we can change, as a package upgrade would.
  const inst = join(work, 'install');
  mkdirSync(inst);
  for (const p of ['bin', 'dist', 'build']) cpSync(join(ROOT, p), join(inst, p), { recursive: true });
  symlinkSync(join(ROOT, 'node_modules'), join(inst, 'node_modules'));
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'));
  writeFileSync(join(inst, 'package.json'), JSON.stringify({ ...pkg, version: '0.0.1-old' }));
  const d = await startRelockd({ bin: join(inst, 'bin', 'relockd.cjs'), logLevel: 'info' });
  t.teardown(() => d.stop());
  const img = join(work, 'upgrade.img');
  writeFileSync(img, '');
  const c = await LockspaceClient.connect(d.socketPath);
  t.teardown(() => c.close());
  await c.register({ uuid: UUID, name: 'u', id: 1, pid: 61000 });
  await c.acquire('', img, 0);
  writeFileSync(join(inst, 'package.json'), JSON.stringify({ ...pkg, version: '9.9.9-new' }));
  await d.reexec!();
  await matchLog(t, () => d.logs(), /"fromVersion":"0.0.1-old","toVersion":"9.9.9-new"/, 'the new build is running');
  t.equal(probeOne(img), 'held');
  await c.release('', img, 0);
  t.equal(probeOne(img), 'free', 'and serves the old client');
});

t.test('failures before execve: the old image keeps serving, no lock lost', async (t) => {
  t.test('state file cannot be written', async (t) => {
    const blocker = join(work, 'not-a-dir');
    writeFileSync(blocker, '');
    const d = await startRelockd({ args: ['--state-file', join(blocker, 'state.json')], logLevel: 'info' });
    t.teardown(() => d.stop());
    const img = join(work, 'wfail.img');
    writeFileSync(img, '');
    const c = await LockspaceClient.connect(d.socketPath);
    t.teardown(() => c.close());
    await c.register({ uuid: UUID, name: 'w', id: 1, pid: 62000 });
    await c.acquire('', img, 0);
    await t.rejects(d.reexec!(), /re-exec failed/);
    await matchLog(t, () => d.logs(), /ENOTDIR/);
    t.equal(probeOne(img), 'held', 'lock held');
    await c.ping();
    await c.release('', img, 0);
    await c.acquire('', img, 0);
    t.pass('the same connection keeps working in the old image');
  });

  t.test('exec of a missing binary', async (t) => {
    const nodeCopy = join(work, 'node-copy');
    copyFileSync(process.execPath, nodeCopy);
    chmodSync(nodeCopy, 0o755);
    const d = await startRelockd({ node: nodeCopy, logLevel: 'info' });
    t.teardown(() => d.stop());
    const img = join(work, 'efail.img');
    writeFileSync(img, '');
    const c = await LockspaceClient.connect(d.socketPath);
    t.teardown(() => c.close());
    await c.register({ uuid: UUID, name: 'e', id: 1, pid: 63000 });
    await c.acquire('', img, 0);
    unlinkSync(nodeCopy); // the upgrade removed the binary we run from
    await t.rejects(d.reexec!(), /re-exec failed/);
    await matchLog(t, () => d.logs(), /ENOENT/);
    t.equal(probeOne(img), 'held', 'lock held');
    t.notOk(existsSync(join(d.dir, 'relockd-restart-exec.json')), 'state file removed again');
    await c.release('', img, 0);
    t.equal(probeOne(img), 'free', 'still serving');
    copyFileSync(process.execPath, nodeCopy); // binary back: a later SIGUSR1 succeeds
    await d.reexec!();
    await c.acquire('', img, 0);
    t.equal(probeOne(img), 'held');
  });
});

t.test('SIGUSR1 while the new image boots neither kills it nor opens the inspector', async (t) => {
  const d = await startRelockd({ logLevel: 'info' });
  t.teardown(() => d.stop());
  const img = join(work, 'boot-signal.img');
  writeFileSync(img, '');
  const c = await LockspaceClient.connect(d.socketPath);
  t.teardown(() => c.close());
  await c.register({ uuid: UUID, name: 'b', id: 1, pid: 64000 });
  await c.acquire('', img, 0);
  const completes = () => (d.logs().match(/"msg":"re-exec complete"/g) ?? []).length;
  for (const delayMs of [0, 2, 5, 10, 20, 40, 60, 80, 120]) {
    const before = completes();
    process.kill(d.pid, 'SIGUSR1');
    await new Promise((r) => setTimeout(r, delayMs));
    process.kill(d.pid, 'SIGUSR1'); // lands in the old image's last ms or the new image's boot
    t.ok(await waitFor(() => completes() >= before + 1, 15000), `first re-exec done (second signal after ${delayMs} ms)`);
    await new Promise((r) => setTimeout(r, 400));
    t.equal(d.child.exitCode, null, `alive (second signal after ${delayMs} ms)`);
    t.equal(d.child.signalCode, null);
  }
  t.notMatch(d.logs(), /Debugger listening/i, 'no inspector message');
  const tcp = readFileSync('/proc/net/tcp', 'utf8') + (existsSync('/proc/net/tcp6') ? readFileSync('/proc/net/tcp6', 'utf8') : '');
  t.notMatch(tcp, /:2411 [0-9A-F:]+ 0A/, 'nothing listens on port 9229');
  t.equal(probeOne(img), 'held', 'lease held throughout');
  await c.release('', img, 0);
});
