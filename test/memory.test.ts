// Issue 11, memory: the daemon gives memory back once it has settled
// (src/daemon/memorySettle.ts), and the compact lease record
// (HeldResource in src/locks/lockManager.ts) keeps every lease shape —
// one owner, a shared lease of several owners with duplicate entries, a
// lease in a directory lock space — through a re-exec, checked from another
// process. No figure is asserted: memory sizes are the benchmark's job; here
// only that the settle ran, gave file pages back, and nothing was lost.

import t from 'tap';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startRelockd } from './lib/relockd.js';
import { probeOne } from './lib/probe.js';
import { waitFor } from './lib/wait.js';
import { LockspaceClient } from '../src/protocol/lockspaceClient.js';
import { AdminClient } from '../src/protocol/adminClient.js';
import { dropCleanFilePages, mallocTrim, mallopt } from '../src/native.js';

const UUID = '00112233-4455-6677-8899-aabbccddeeff';
const work = mkdtempSync(join(tmpdir(), 'memory-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));

interface Settled {
  why: string;
  gc: boolean;
  fileKbDropped: number;
  rssKb: [number, number];
}

function settles(logs: string): Settled[] {
  return logs
    .split('\n')
    .filter((l) => l.includes('"msg":"memory settled"'))
    .map((l) => JSON.parse(l) as Settled);
}

function rssFileKb(pid: number): number {
  const m = /^RssFile:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : NaN;
}

t.test('native: dropping clean file pages and malloc_trim leave the process working', async (t) => {
  const before = rssFileKb(process.pid);
  const r = dropCleanFilePages();
  t.ok(r.objects > 0, `ELF objects visited: ${r.objects}`);
  t.ok(r.bytes > 0, `dropped ${Math.round(r.bytes / 1024)} kB`);
  t.ok(rssFileKb(process.pid) < before, 'RssFile went down');
  t.type(mallocTrim(), 'boolean');
  // Code and constants of node come back on use: compile and run something new.
  t.equal(new Function('a', 'b', 'return [a, b].map((x) => x * 2).join("-")')(2, 3), '4-6');
  t.equal(JSON.parse(JSON.stringify({ x: [1, 'é'] })).x[1], 'é');
});

t.test('native: mallopt takes the three parameters the daemon sets, by name, and refuses others', async (t) => {
  t.equal(mallopt('arenaMax', 1), true, 'M_ARENA_MAX accepted');
  t.equal(mallopt('trimThreshold', 128 * 1024), true, 'M_TRIM_THRESHOLD accepted');
  t.equal(mallopt('mmapThreshold', 128 * 1024), true, 'M_MMAP_THRESHOLD accepted');
  t.throws(() => mallopt('topPad' as never, 0), /unknown parameter topPad/, 'an unknown name is a TypeError, not a silent no-op');
  t.equal(JSON.parse(JSON.stringify({ big: 'x'.repeat(1 << 20) })).big.length, 1 << 20, 'large blocks still allocate (mmap above the threshold)');
});

t.test('the daemon settles after start and after a re-exec; leases of every shape survive it', async (t) => {
  const d = await startRelockd();
  t.teardown(() => d.stop());
  t.ok(await waitFor(() => settles(d.logs()).length >= 1, 15000), 'settled after start');
  const first = settles(d.logs())[0]!;
  t.equal(first.why, 'started');
  t.equal(first.gc, true, 'a full GC ran');
  t.ok(first.fileKbDropped > 0, `file pages dropped: ${first.fileKbDropped} kB`);
  t.ok(first.rssKb[1] < first.rssKb[0], `RSS ${first.rssKb[0]} -> ${first.rssKb[1]} kB`);

  const dir = mkdtempSync(join(work, 'leases-'));
  const file = (n: string) => {
    const p = join(dir, n);
    writeFileSync(p, '');
    return p;
  };
  const single = file('single.img');
  const shared = file('shared.img');
  const space = join(dir, 'space');
  const a = await LockspaceClient.connect(d.socketPath);
  const b = await LockspaceClient.connect(d.socketPath);
  t.teardown(() => (a.close(), b.close()));
  await a.register({ uuid: UUID, name: 'a', id: 1, pid: 4_100_001 });
  await b.register({ uuid: UUID, name: 'b', id: 2, pid: 4_100_002 });
  await a.createLockspace(space);
  await a.acquire('', single, 0);
  await a.acquire('', shared, 1);
  await b.acquire('', shared, 1);
  await a.acquire('', shared, 1); // a second entry for the same owner
  await b.acquire(space, 'lease-b', 2);

  const listing = async () => {
    const c = await AdminClient.connect(d.adminSocketPath!);
    try {
      const rs = await c.resources();
      return Object.fromEntries(rs.map((r) => [r.name, { lockspace: r.lockspace, path: r.path, flags: r.flags, since: r.since, owners: r.owners.map((o) => o.pid) }]));
    } finally {
      c.close();
    }
  };
  const want = {
    [single]: { lockspace: '', path: single, flags: 0, owners: [4_100_001] },
    [shared]: { lockspace: '', path: shared, flags: 1, owners: [4_100_001, 4_100_002, 4_100_001] },
    'lease-b': { lockspace: space, path: join(space, 'lease-b'), flags: 2, owners: [4_100_002] },
  };
  const before = await listing();
  t.match(before, want, 'the table before the re-exec');
  t.ok(Math.abs(before[single]!.since - Date.now()) < 60_000, 'since is an epoch time in ms');

  await d.reexec!();
  const after = await listing();
  t.match(after, want, 'the same table after the re-exec');
  for (const k of Object.keys(want)) t.equal(after[k]!.since, before[k]!.since, `since of ${k} kept`);
  t.equal(probeOne(single), 'held');
  t.equal(probeOne(shared), 'held');
  t.equal(probeOne(join(space, 'lease-b')), 'held');
  t.ok(await waitFor(() => settles(d.logs()).length >= 2, 15000), 'the new image settled too');

  // A shared lease goes only with its last entry.
  await b.release('', shared);
  t.same((await listing())[shared]!.owners, [4_100_001, 4_100_001], 'b released: its entry gone');
  t.equal(probeOne(shared, 'write'), 'held', 'still held for a');
  await a.release('', shared);
  t.same((await listing())[shared]!.owners, [4_100_001], 'one of a’s two entries released');
  t.equal(probeOne(shared, 'write'), 'held');
  await a.release('', shared);
  t.equal(probeOne(shared, 'write'), 'free', 'free after the last entry');
  await a.release('', single);
  t.equal(probeOne(single), 'free');
  await b.release(space, 'lease-b');
  t.notOk(existsSync(join(space, 'lease-b')), 'the autocreated lease file is unlinked on release (its path and flags came through the re-exec)');
  t.same(await listing(), {}, 'table empty');
});
