// Which storage runs inline on the event loop: local filesystems by statfs
// type; anything else (here: procfs, standing in for NFS and friends)
// off-thread; a slow inline call demotes its directory; 'never' turns it off.
// And the same daemon serves leases correctly with inlining on and off.

import t from 'tap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { StorageClassifier } from '../src/locks/storageClass.js';
import { startRelockd } from './lib/relockd.js';
import { probeOne } from './lib/probe.js';
import { waitFor } from './lib/wait.js';
import { LockspaceClient } from '../src/protocol/lockspaceClient.js';

const work = mkdtempSync(join(tmpdir(), 'storage-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));
const quiet = pino({ level: 'silent' });

t.test('classifier: local inline, unknown types offloaded, slow calls demote, never means never', async (t) => {
  const c = new StorageClassifier(quiet);
  t.equal(c.mode(work), 'offload', 'unknown until classified (statfs runs off-thread)');
  t.ok(await waitFor(() => c.mode(work) === 'inline'), `${work} (a local filesystem here) becomes inline`);
  c.mode('/proc');
  await new Promise((r) => setTimeout(r, 100));
  t.equal(c.mode('/proc'), 'offload', 'a filesystem type not known to be local stays off-thread');
  c.observe(work, 10);
  t.equal(c.mode(work), 'inline', 'a fast call changes nothing');
  c.observe(work, 500);
  t.equal(c.mode(work), 'offload', 'a slow inline call demotes the directory');
  const never = new StorageClassifier(quiet, 'never');
  never.mode(work);
  await new Promise((r) => setTimeout(r, 100));
  t.equal(never.mode(work), 'offload', "policy 'never'");
});

for (const inline of ['local', 'never'] as const) {
  t.test(`leases with --storage-inline ${inline}`, async (t) => {
    const d = await startRelockd({ args: ['--storage-inline', inline] });
    t.teardown(() => d.stop());
    const dir = mkdtempSync(join(work, `${inline}-`));
    const img = join(dir, 'disk.img');
    writeFileSync(img, '');
    const c = await LockspaceClient.connect(d.socketPath);
    t.teardown(() => c.close());
    await c.register({ uuid: '00112233-4455-6677-8899-aabbccddeeff', name: 'vm', id: 1, pid: 91000 });
    await c.createLockspace(join(dir, 'leases'));
    for (let i = 0; i < 3; i++) {
      // the first round classifies the directories, later rounds use the result
      await c.acquire('', img, 0);
      t.equal(probeOne(img), 'held');
      await c.acquire(join(dir, 'leases'), 'lease', 2);
      t.equal(probeOne(join(dir, 'leases', 'lease')), 'held');
      await c.release('', img, 0);
      await c.release(join(dir, 'leases'), 'lease', 0);
      t.equal(probeOne(img), 'free');
      await new Promise((r) => setTimeout(r, 50));
    }
    if (inline === 'local') t.match(d.logs(), /"mode":"inline","msg":"storage classified"/, 'classified inline');
    else t.notMatch(d.logs(), /storage classified/, 'never classified');
  });
}
