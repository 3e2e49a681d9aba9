// Phantom locks after a storage hang (issue 9 §1): a lock space on a FUSE
// mount whose server (bindfs) is frozen with SIGSTOP, several calls on the
// same directory overrunning the storage deadline. Every lock that arrives
// late, and every release made during the hang, must be dropped once the
// storage answers again: checked from another process, and no fd may be
// left behind. (A release that itself blocks is covered by the gate tests in
// lockManager.test.ts: on this mount unlock is local, close does not wait
// for bindfs, and lease files on shared storage are not unlinked.)

import t from 'tap';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startRelockd } from './lib/relockd.js';
import { probe } from './lib/probe.js';
import { waitFor } from './lib/wait.js';
import { mountBindfs } from './lib/bindfsMount.js';
import { LockspaceClient } from '../src/protocol/lockspaceClient.js';

const AUTOCREATE = 2;
const owner = (n: number) => ({ uuid: `00112233-4455-6677-8899-${String(n).padStart(12, '0')}`, name: `vm${n}`, id: 1, pid: 990000 + n });
const fdCount = (pid: number) => readdirSync(`/proc/${pid}/fd`).length;
/** The promise's outcome as text, or 'no answer' after `ms` (never hangs the test). */
const within = (p: Promise<unknown>, ms: number) =>
  Promise.race([p.then(() => 'ok', (e: Error) => e.message), new Promise<string>((r) => setTimeout(() => r(`no answer within ${ms} ms`), ms))]);

t.test('locks that arrive after the deadline on a frozen FUSE mount are all released; no fd leaks', async (t) => {
  const work = mkdtempSync(join(tmpdir(), 'storage-hang-'));
  t.teardown(() => rmSync(work, { recursive: true, force: true }));
  const src = join(work, 'src');
  const mnt = join(work, 'mnt');
  mkdirSync(join(src, 'leases'), { recursive: true });
  mkdirSync(mnt);
  const m = await mountBindfs(src, mnt);
  t.teardown(() => m.cleanup()); // runs before the rmSync above (LIFO)
  const names = ['l1', 'l2', 'l3', 'l5', 'held', 'warm'];
  for (const n of names) writeFileSync(join(src, 'leases', n), '');
  const local = join(work, 'local');

  const d = await startRelockd({ args: ['--storage-timeout', '0.5'] });
  t.teardown(() => d.stop());
  const space = join(mnt, 'leases');
  const connect = async (n: number) => {
    const c = await LockspaceClient.connect(d.socketPath);
    await c.register(owner(n));
    return c;
  };
  const acquirers = await Promise.all([1, 2, 3, 4].map(connect));
  const holder = await connect(5);
  const latecomer = await connect(7);
  const bystander = await connect(8);
  t.teardown(() => [...acquirers, holder, latecomer, bystander].forEach((c) => c.close()));
  await holder.createLockspace(space);
  await bystander.createLockspace(local);
  // Warm up the paths the daemon opens lazily (and FUSE's lock fallback).
  await holder.acquire(space, 'warm', 0);
  await holder.release(space, 'warm', 0);
  await holder.acquire(space, 'held', 0);
  await holder.acquire(space, 'hauto', AUTOCREATE); // its release blocks where it must unlink
  t.equal(probe([join(space, 'held')])[join(space, 'held')], 'held');
  const baseline = fdCount(d.pid);

  m.freeze();
  const acquires = Promise.allSettled([
    acquirers[0]!.acquire(space, 'l1', 0),
    acquirers[1]!.acquire(space, 'l2', 0),
    acquirers[2]!.acquire(space, 'l3', 0),
    acquirers[3]!.acquire(space, 'auto', AUTOCREATE),
  ]);
  // One call more than the per-directory concurrency (4): it queues, and
  // must still get an answer within the deadline, not wait for the storage.
  const queued = within(latecomer.acquire(space, 'l5', 0), 3000);
  const release = within(holder.release(space, 'held', 0), 6000);
  const blockedRelease = within(holder.release(space, 'hauto', 0), 6000);
  const results = await acquires;
  for (const [i, r] of results.entries()) {
    t.equal(r.status, 'rejected', `acquire ${i + 1} failed`);
    if (r.status === 'rejected') t.match((r.reason as Error).message, /did not answer within 0\.5 s/, `acquire ${i + 1}: the storage-timeout error`);
  }
  t.match(await queued, /not responding \(an earlier call has not returned\)/, 'the queued call fails once the others overran the deadline');
  const t0 = Date.now();
  t.match(await within(latecomer.acquire(space, 'l1', 0), 3000), /not responding/, 'a new call on the stuck storage fails fast');
  t.ok(Date.now() - t0 < 300, 'fails fast');
  await bystander.acquire(local, 'x', AUTOCREATE);
  await bystander.release(local, 'x', 0);
  t.pass('another lock space is served meanwhile');

  const hautoRelease = await blockedRelease;
  t.match(hautoRelease, /^ok$|did not answer within 0\.5 s/, 'the autocreated lease\'s release succeeds or reports the timeout');
  m.thaw();
  // Awaited only now: without a deadline of its own it would wait for the storage.
  t.match(await release, /^ok$|did not answer within 0\.5 s/, 'the release during the hang succeeds or reports the timeout');
  const leaseFiles = ['l1', 'l2', 'l3', 'held'].map((n) => join(space, n));
  const allFree = () => Object.values(probe(leaseFiles)).every((r) => r === 'free');
  t.ok(await waitFor(allFree, 10000, 50), 'every lease file is free after SIGCONT');
  t.same(probe(leaseFiles), Object.fromEntries(leaseFiles.map((f) => [f, 'free'])), 'probed from another process');
  const auto = join(space, 'auto');
  t.ok(await waitFor(() => !existsSync(auto) || probe([auto])[auto] === 'free', 5000, 50), 'the late autocreated lease is free (or unlinked)');
  const hauto = join(space, 'hauto');
  t.ok(await waitFor(() => !existsSync(hauto) || probe([hauto])[hauto] === 'free', 5000, 50), 'its lock is dropped (lease files on shared storage are kept, elsewhere unlinked)');
  // the two lease fds held at baseline are gone too
  const expected = baseline - 2;
  t.ok(await waitFor(() => fdCount(d.pid) === expected, 5000, 20), `daemon fds back to baseline (${fdCount(d.pid)}, expected ${expected})`);
  await new Promise((r) => setTimeout(r, 100)); // log lines
  const logs = d.logs();
  t.equal((logs.match(/lock arrived after the storage deadline/g) ?? []).length, 4, 'four late locks logged');
  t.notMatch(logs, /"msg":"late release failed"/);
  if (hautoRelease !== 'ok') t.match(logs, /"resource":"hauto"[^\n]*"msg":"late release completed: lock dropped"/, 'the late release is logged');

  // The leases can be taken again, by anyone.
  for (const n of ['l1', 'l2', 'l3', 'held']) await latecomer.acquire(space, n, 0);
  await latecomer.acquire(space, 'auto', AUTOCREATE);
  t.same(Object.values(probe([...leaseFiles, auto])), Array(5).fill('held'), 'acquirable again');
  for (const n of ['l1', 'l2', 'l3', 'held', 'auto']) await latecomer.release(space, n, 0);
  t.ok(await waitFor(() => fdCount(d.pid) === expected, 5000, 20), 'and released without a leak');
});
