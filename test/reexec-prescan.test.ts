// The new image's background fstat of its lease fds (src/state/fdPrescan.ts,
// native fdInfoStart/fdInfoTake), against the real daemon: the old image
// names the fds, the new one checks them while it loads, every lease is
// still held (probed from another process) and every lease fd is
// close-on-exec again in the new image.

import t from 'tap';
import { mkdtempSync, readFileSync, readlinkSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startRelockd } from './lib/relockd.js';
import { probe } from './lib/probe.js';
import { LockspaceClient } from '../src/protocol/lockspaceClient.js';

const UUID = '00112233-4455-6677-8899-aabbccddeeff';
const O_CLOEXEC = 0o2000000;

/** The daemon's fds open on `paths`, each with whether it is close-on-exec. */
function leaseFds(pid: number, paths: Set<string>): Map<number, boolean> {
  const out = new Map<number, boolean>();
  for (const name of readdirSync(`/proc/${pid}/fd`)) {
    let target: string;
    try {
      target = readlinkSync(`/proc/${pid}/fd/${name}`);
    } catch {
      continue;
    }
    if (!paths.has(target)) continue;
    const flags = /^flags:\s+([0-7]+)$/m.exec(readFileSync(`/proc/${pid}/fdinfo/${name}`, 'utf8'))![1]!;
    out.set(Number(name), (parseInt(flags, 8) & O_CLOEXEC) !== 0);
  }
  return out;
}

t.test('a re-exec hands the lease fds over for a background check: all held, all close-on-exec again', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'reexec-prescan-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const d = await startRelockd({ logLevel: 'info' });
  t.teardown(() => d.stop());
  const images = Array.from({ length: 40 }, (_, i) => {
    const p = join(dir, `disk${i}.img`);
    writeFileSync(p, '');
    return p;
  });
  const space = join(dir, 'leases');
  const c = await LockspaceClient.connect(d.socketPath);
  t.teardown(() => c.close());
  await c.createLockspace(space);
  await c.register({ uuid: UUID, name: 'vm', id: 1, pid: process.pid });
  for (const p of images) await c.acquire('', p, 0);
  for (let i = 0; i < 5; i++) await c.acquire(space, `lease${i}`, 2); // AUTOCREATE
  const all = [...images, ...Array.from({ length: 5 }, (_, i) => join(space, `lease${i}`))];

  for (let round = 1; round <= 2; round++) {
    await d.reexec!();
    const line = d
      .logs()
      .split('\n')
      .filter((l) => l.includes('"msg":"re-exec complete"'))
      .at(-1)!;
    t.same(JSON.parse(line).fdPrescan, { fds: all.length }, `re-exec ${round}: the new image checked every lease fd in the background`);
    const res = probe(all);
    t.same(Object.values(res).filter((r) => r !== 'held'), [], `re-exec ${round}: every lease held, probed from another process`);
    const fds = leaseFds(d.pid, new Set(all));
    t.equal(fds.size, all.length, 'one fd per lease in the new image');
    t.same([...fds.values()].filter((cloexec) => !cloexec), [], 'every lease fd is close-on-exec again');
  }
  // The daemon still serves, on the same connection.
  await c.release('', images[0]!);
  t.equal(probe([images[0]!])[images[0]!], 'free', 'a release after the re-execs frees the lease');
});
