// Names are bytes, end to end, on a real relockd: lock-space paths and
// resource names that are not UTF-8 reach the filesystem byte for byte
// (probed from another process), are logged and shown by relockctl with
// unambiguous \xHH escapes, survive a real SIGUSR1 re-exec (the state
// document carries them as \udcXX escapes), and are released exactly.
// The same calls against the real virtlockd are in protocol.test.ts; the
// representation itself is unit-tested in byteString.test.ts.

import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cleanEnv, ENV_PREFIX, ROOT, startRelockd } from './lib/relockd.js';
import { probeOne } from './lib/probe.js';
import { waitFor, matchLog } from './lib/wait.js';
import { LockspaceClient } from '../src/protocol/lockspaceClient.js';

const work = mkdtempSync(join(tmpdir(), 'bytenames-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));
const d = await startRelockd();
t.teardown(() => d.stop());

const bytes = (...parts: Array<string | number[]>) => Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p) : Buffer.from(p))));
const space = bytes(join(work, 'lease-space-'), [0xe9]);
const lease = bytes('lease-', [0xfe]);
const leaseFile = Buffer.concat([space, Buffer.from('/'), lease]);
const img = bytes(join(work, 'disk-'), [0xff], '.raw');
// A valid UTF-8 name with a backslash: shown as text, the backslash doubled.
const odd = join(work, 'disk-é\\x41.raw');
writeFileSync(img, '');
writeFileSync(odd, '');

function ctl(...args: string[]) {
  const r = spawnSync('/usr/bin/env', [...ENV_PREFIX, process.execPath, join(ROOT, 'bin', 'relockctl.cjs'), '--runtime-dir', d.dir, '--socket', d.socketPath, ...args], { env: cleanEnv(), encoding: 'utf8' });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

const c = await LockspaceClient.connect(d.socketPath);
t.teardown(() => c.close());
await c.createLockspace(space);
await c.register({ uuid: '00112233-4455-6677-8899-aabbccddeeff', name: 'vm-bytes', id: 1, pid: process.pid });
await c.acquire(space, lease, 2);
await c.acquire('', img, 0);
await c.acquire('', odd, 0);

const held = (what: string) => {
  t.equal(probeOne(leaseFile), 'held', `${what}: lease-\\xfe in lease-space-\\xe9 is locked (another process)`);
  t.equal(probeOne(img), 'held', `${what}: disk-\\xff.raw is locked`);
  t.equal(probeOne(odd), 'held', `${what}: disk-é\\x41.raw is locked`);
};

t.test('exact bytes on the filesystem', async (t) => {
  t.same(readdirSync(space, { encoding: 'buffer' }).map((b) => b.toString('hex')), [lease.toString('hex')], 'the lease file has exactly the bytes sent');
  held('acquired');
});

t.test('logs: UTF-8 when valid, \\xHH escapes otherwise, backslashes doubled', async (t) => {
  // The lines reach us through the daemon's stderr pipe, which this process
  // may read after the replies on the socket: wait until all three are in.
  const acquiredLines = () => d.logs().split('\n').filter((l) => l.includes('"msg":"lease acquired"'));
  await waitFor(() => acquiredLines().length >= 3, 10_000);
  const lines = acquiredLines();
  const fields = lines.map((l) => JSON.parse(l) as { lockspace: string; resource: string });
  t.ok(fields.some((f) => f.resource === 'lease-\\xfe' && f.lockspace === `${work}/lease-space-\\xe9`), 'lease-\\xfe in lease-space-\\xe9');
  t.ok(fields.some((f) => f.resource === `${work}/disk-\\xff.raw`), 'disk-\\xff.raw');
  t.ok(fields.some((f) => f.resource === `${work}/disk-é\\\\x41.raw`), 'disk-é\\\\x41.raw (a literal backslash is doubled, so it cannot be mistaken for an escape)');
  t.notOk(d.logs().includes('\uFFFD'), 'no replacement characters in the log');
});

t.test('relockctl leases shows the names unambiguously', async (t) => {
  const text = ctl('leases');
  t.equal(text.code, 0, text.stderr);
  t.match(text.stdout, `${work}/lease-space-\\xe9`);
  t.match(text.stdout, /lease-\\xfe/);
  t.match(text.stdout, `${work}/disk-\\xff.raw`);
  t.match(text.stdout, `${work}/disk-é\\\\x41.raw`);
  const j = ctl('leases', '--json');
  t.equal(j.code, 0, j.stderr);
  const rows = JSON.parse(j.stdout) as Array<{ name: string; nameHex?: string; lockspace: string; lockspaceHex?: string }>;
  const l = rows.find((r) => r.name === 'lease-\\xfe');
  t.ok(l, 'the lease, by its shown name');
  t.equal(l?.nameHex, lease.toString('hex'), 'with its exact bytes');
  t.equal(l?.lockspaceHex, space.toString('hex'));
  const u = rows.find((r) => r.name === `${work}/disk-é\\\\x41.raw`);
  t.equal(u?.nameHex, Buffer.from(odd).toString('hex'), 'a backslash name carries its bytes too');
  const filtered = ctl('leases', '--lockspace', `${work}/lease-space-\\xe9`, '--json');
  t.same((JSON.parse(filtered.stdout) as unknown[]).length, 1, '--lockspace accepts the shown (escaped) form');
});

t.test('the names survive a re-exec, and release exactly', async (t) => {
  await d.reexec!();
  await matchLog(t, () => d.logs(), /"msg":"re-exec complete"/);
  t.notOk(/safe mode/i.test(d.logs().split('"msg":"re-exec complete"').pop()!), 'not in safe mode');
  held('after the re-exec');
  const after = JSON.parse(ctl('leases', '--json').stdout) as Array<{ nameHex?: string }>;
  t.ok(after.some((r) => r.nameHex === lease.toString('hex')), 'relockctl still shows the exact bytes');
  // Over the connection opened before the re-exec.
  await c.release(space, lease, 0);
  await c.release('', img, 0);
  await c.release('', odd, 0);
  t.equal(probeOne(img), 'free', 'disk-\\xff.raw released');
  t.equal(probeOne(odd), 'free', 'disk-é\\x41.raw released');
  t.same(readdirSync(space), [], 'the autocreated lease file is removed (host-local storage)');
  await c.acquire(space, lease, 2);
  t.equal(probeOne(leaseFile), 'held', 'and can be acquired again');
  await c.release(space, lease, 0);
});

// What the real virtlockd 9.0 does with the same name: its state writer
// (yajl, UTF-8 validating) cannot write it, so a SIGUSR1 re-exec ends the
// daemon (status 9) and every lock it held is gone. There is no virtlockd
// 9.0 state document with such a name to restore; relockd reads the raw
// bytes a json-c based libvirt would write (byteString.test.ts).
t.test('the real virtlockd 9.0 exits on a re-exec while holding such a name', async (t) => {
  const { virtlockdAvailable, startVirtlockd } = await import('./lib/virtlockd.js');
  if (!virtlockdAvailable()) {
    t.comment('skipped: needs /usr/sbin/virtlockd (Debian package libvirt-daemon)');
    return;
  }
  const v = await startVirtlockd();
  t.teardown(() => v.stop());
  // The owner must be another process: virtlockd SIGKILLs an owner whose connection closes.
  const standIn = (await import('node:child_process')).spawn('sleep', ['600'], { stdio: 'ignore' });
  t.teardown(() => standIn.kill('SIGKILL'));
  const vimg = bytes(join(work, 'vdisk-'), [0xff], '.raw');
  writeFileSync(vimg, '');
  const vc = await LockspaceClient.connect(v.socketPath);
  t.teardown(() => vc.close());
  await vc.register({ uuid: '00112233-4455-6677-8899-aabbccddeeff', name: 'vm-bytes', id: 1, pid: standIn.pid! });
  await vc.acquire('', vimg, 0);
  t.equal(probeOne(vimg), 'held', 'virtlockd locks disk-\\xff.raw');
  v.kill('SIGUSR1');
  const exit = await Promise.race([v.exited, new Promise((r) => setTimeout(() => r('still running'), 20000))]);
  t.same(exit, { code: 9, signal: null }, 'virtlockd exited with status 9 instead of re-executing');
  await matchLog(t, () => v.logs(), /failed to convert virJSONValue to yajl data/, 'its state writer refused the name');
  t.equal(probeOne(vimg), 'free', 'and the lock is gone with it');
});
