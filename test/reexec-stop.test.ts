// A stop asked for while a re-exec waits for requests in flight is not
// forgotten. The old image handles that SIGTERM (it starts draining), but the
// state document does not carry "stopping": had the exec gone ahead, the new
// image would have served new acquisitions again. The re-exec is refused and
// the old image keeps draining.
//
// The request in flight is real: an acquisition in a lock space on a FUSE
// mount (bindfs) whose server is stopped with SIGSTOP, so the re-exec's
// quiesce waits for it until the mount is thawed.

import t from 'tap';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startRelockd } from './lib/relockd.js';
import { mountBindfs } from './lib/bindfsMount.js';
import { probeOne } from './lib/probe.js';
import { matchLog, waitFor } from './lib/wait.js';
import { LockspaceClient } from '../src/protocol/lockspaceClient.js';

const owner = (n: number) => ({ uuid: `0badc0de-0000-4000-8000-00000000010${n}`, name: `vm-stop-${n}`, id: n, pid: process.pid });

t.test('SIGTERM while a re-exec quiesces: no exec, the daemon keeps draining, no lock dropped', async (t) => {
  const work = mkdtempSync(join(tmpdir(), 'relockd-reexec-stop-'));
  t.teardown(() => rmSync(work, { recursive: true, force: true }));
  const src = join(work, 'src');
  const mnt = join(work, 'mnt');
  mkdirSync(join(src, 'leases'), { recursive: true });
  mkdirSync(mnt);
  for (const n of ['held', 'slow', 'warm']) writeFileSync(join(src, 'leases', n), '');
  const m = await mountBindfs(src, mnt);
  t.teardown(() => m.cleanup()); // before the rmSync above (LIFO)
  const space = join(mnt, 'leases');
  const local = join(work, 'local.img');
  writeFileSync(local, '');

  const d = await startRelockd({ logLevel: 'info' });
  t.teardown(() => d.kill('SIGKILL'));
  const alive = () => d.child.exitCode === null && d.child.signalCode === null;
  const connect = async (n: number) => {
    const c = await LockspaceClient.connect(d.socketPath);
    await c.register(owner(n));
    return c;
  };
  const holder = await connect(1);
  const slow = await connect(2);
  const late = await connect(3);
  t.teardown(() => [holder, slow, late].forEach((c) => c.close()));
  await holder.createLockspace(space);
  await holder.acquire(space, 'warm', 0);
  await holder.release(space, 'warm', 0);
  await holder.acquire(space, 'held', 0);
  t.equal(probeOne(join(space, 'held')), 'held', 'a lease is held on the FUSE lock space');

  m.freeze();
  const inFlight = slow.acquire(space, 'slow', 0).then(
    () => 'granted',
    (e: Error) => e.message,
  );
  await new Promise((r) => setTimeout(r, 200));
  process.kill(d.pid, 'SIGUSR1');
  await matchLog(t, d.logs, /"msg":"re-exec requested: quiescing"/, 'the re-exec waits for the acquisition in flight');
  process.kill(d.pid, 'SIGTERM');
  await matchLog(t, d.logs, /"signal":"SIGTERM","owners":\d+,"msg":"draining/, 'SIGTERM handled by the old image: draining');
  m.thaw();
  t.equal(await inFlight, 'granted', 'the acquisition in flight completes once the storage answers');
  await matchLog(t, d.logs, /the daemon began stopping \(drain\) during the re-exec, which was therefore not done/, 'the re-exec is refused');
  await new Promise((r) => setTimeout(r, 300));
  t.notMatch(d.logs(), /"msg":"re-exec complete"/, 'no new image');
  t.ok(alive(), 'the daemon runs');
  t.equal(probeOne(join(space, 'held')), 'held', 'the lease is still held (probed from another process)');
  let refused = '';
  try {
    await late.acquire('', local, 0);
  } catch (e) {
    refused = (e as Error).message;
  }
  t.not(refused, '', `still draining: a new acquisition is refused (${refused.slice(0, 100)})`);

  await slow.release(space, 'slow', 0);
  await holder.release(space, 'held', 0);
  t.ok(await waitFor(() => !alive(), 10_000), 'the last lease released: the daemon exits');
  t.equal(d.child.exitCode, 0, 'cleanly');
});
