// Restore from format 2's columns (src/state/restore.ts): the lock tables a
// re-exec rebuilds, with no object per lease in between, hold exactly what
// the old image's tables held: names (bytes), paths, fds, identities, flags,
// owner lists (one, several with repeats, none), since, the lock flavour, in
// the default and in directory lock spaces. A lease whose fd is no longer the
// file recorded is a problem and its fd is kept, never adopted. Real fds of
// real files in this process; the whole daemon across real re-execs:
// test/reexec*.test.ts.

import t from 'tap';
import { mkdtempSync, openSync, closeSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { LockManager } from '../src/locks/lockManager.js';
import type { HeldResource } from '../src/locks/lockManager.js';
import { NativeFileLocker } from '../src/locks/fileLocker.js';
import { StorageGate } from '../src/locks/storageGate.js';
import { parseStateForRestore, serialiseState } from '../src/state/documentFormat.js';
import { restoreState } from '../src/state/restore.js';
import type { RestoreTarget } from '../src/state/restore.js';
import { tableColumns } from '../src/state/snapshot.js';
import type { StateDocument } from '../src/state/document.js';
import * as native from '../src/native.js';

const dir = mkdtempSync(join(tmpdir(), 'restore-columns-'));
const fds: number[] = [];
t.teardown(() => {
  for (const fd of fds) closeSync(fd);
  rmSync(dir, { recursive: true, force: true });
});
const manager = () => new LockManager({ locker: new NativeFileLocker(), gate: new StorageGate({ timeoutMs: 1000, perKeyConcurrency: 4 }), log: pino({ level: 'silent' }) });

/** A real open file: its fd and identity. */
function file(name: string): { path: string; fd: number; dev: number; ino: number } {
  const path = join(dir, name);
  writeFileSync(path, '');
  const fd = openSync(path, 'r+');
  fds.push(fd);
  const id = native.fdInfo(Int32Array.of(fd), 0);
  return { path, fd, dev: id[0]!, ino: id[1]! };
}

/** A document whose server has no sockets (only the lock spaces are restored), with relockd's extension. */
function docFor(m: LockManager): StateDocument {
  const server = { min_workers: 0, max_workers: 0, priority_workers: 0, max_clients: 1, max_anonymous_clients: 1, keepaliveInterval: 4294967295, keepaliveCount: 0, next_client_id: 1, services: [{ auth: 0, readonly: false, nrequests_client_max: 1, socks: [] }], clients: [] };
  return {
    daemon: { servers: { virtlockd: server } },
    defaultLockspace: { resources: [] },
    lockspaces: [...m.spaces.values()].map((ls) => ({ directory: ls.dir, resources: [] })),
    magic: String(process.pid),
    relockd: { formatVersion: 1, version: 'test', requestedAtNs: '0', trigger: 'test', settings: {}, listeners: [], clients: [], resources: [], terminations: [], fds: [], orphans: [], safeMode: false, history: [] },
  };
}

const view = (r: HeldResource) => ({ name: r.name, path: r.path, fd: r.fd, dev: r.dev, ino: r.ino, flags: r.flags, owners: r.owners, since: r.since, classic: r.classic });
const tablesOf = (m: LockManager) => [m.defaultSpace, ...m.spaces.values()].map((ls) => ({ dir: ls.dir, leases: [...ls.resources.values()].map(view) }));

async function restore(text: string): Promise<{ m: LockManager; report: Awaited<ReturnType<typeof restoreState>> }> {
  const { doc, leases } = parseStateForRestore(JSON.parse(text));
  const m = manager();
  const target = { lockServer: null, adminServer: null, manager: m, socketPath: '', adminSocketPath: null, restoreLockContext: () => {}, openProcessHandle: () => null } as unknown as RestoreTarget;
  return { m, report: await restoreState(doc, target, leases) };
}

t.test('the tables come back as they were', async (t) => {
  const src = manager();
  const a = file('a.qcow2');
  const b = file('disk-\xff.raw'.replace('\xff', 'x')); // the name below is bytes; the file is any file with its identity
  const c = file('c.raw');
  const e = file('orphaned.raw');
  src.adoptResource(src.defaultSpace, { name: a.path, path: a.path, fd: a.fd, dev: a.dev, ino: a.ino, flags: 0, owners: [100], since: 1765000000001 });
  src.adoptResource(src.defaultSpace, { name: `${dir}/disk-\xff.raw`, path: `${dir}/disk-\xff.raw`, fd: b.fd, dev: b.dev, ino: b.ino, flags: 1, owners: [100, 200, 100], since: 1765000000002 });
  src.adoptResource(src.defaultSpace, { name: c.path, path: c.path, fd: c.fd, dev: c.dev, ino: c.ino, flags: 0, owners: [300], since: 1765000000003, classic: true });
  src.adoptResource(src.defaultSpace, { name: e.path, path: e.path, fd: e.fd, dev: e.dev, ino: e.ino, flags: 0, owners: [], since: 1765000000004 });
  const space = src.adoptLockSpace(join(dir, 'leases'));
  const l1 = file('l1');
  const l2 = file('l2');
  const l3 = file('l3');
  src.adoptResource(space, { name: 'lease-1', path: join(dir, 'leases', 'lease-1'), fd: l1.fd, dev: l1.dev, ino: l1.ino, flags: 3, owners: [300, 400], since: 1765000000005 });
  src.adoptResource(space, { name: 'odd', path: l2.path, fd: l2.fd, dev: l2.dev, ino: l2.ino, flags: 2, owners: [400], since: 1765000000006 });
  src.adoptResource(space, { name: 'lease-3', path: join(dir, 'leases', 'lease-3'), fd: l3.fd, dev: l3.dev, ino: l3.ino, flags: 2, owners: [500], since: 1765000000007 });
  src.adoptLockSpace(join(dir, 'empty'));

  const { m, report } = await restore(serialiseState(docFor(src), tableColumns(src)));
  t.same(report.problems, [], 'no problem');
  t.equal(report.resources, 7);
  t.equal(report.lockspaces, 2);
  t.same(tablesOf(m), tablesOf(src), 'every lease, field for field, in order');
  t.equal(m.heldBy(100), 2, 'owner index rebuilt');
  t.same(m.counts(), src.counts());
  for (const fd of [a.fd, l3.fd]) t.equal(native.getCloexec(fd), true, `fd ${fd} close-on-exec again`);
});

t.test('a lease whose fd is not the file recorded is a problem, its fd kept; the others are restored', async (t) => {
  const src = manager();
  const a = file('x1');
  const b = file('x2');
  const c = file('x3');
  src.adoptResource(src.defaultSpace, { name: a.path, path: a.path, fd: a.fd, dev: a.dev, ino: a.ino, flags: 0, owners: [1, 2], since: 1 });
  // Recorded with another file's identity: after an exec this fd would be some other file.
  src.adoptResource(src.defaultSpace, { name: b.path, path: b.path, fd: b.fd, dev: c.dev, ino: c.ino, flags: 0, owners: [3], since: 2 });
  src.adoptResource(src.defaultSpace, { name: c.path, path: c.path, fd: c.fd, dev: c.dev, ino: c.ino, flags: 0, owners: [4, 5], since: 3 });
  const { m, report } = await restore(serialiseState(docFor(src), tableColumns(src)));
  t.match(report.problems, [new RegExp(`resource '${b.path}' in lockspace '': fd ${b.fd} \\(resource\\) is not the file it was before the exec`)]);
  t.same(report.orphans.map((o) => o.fd), [b.fd], 'kept as an orphan, never closed');
  t.same([...m.defaultSpace.resources.keys()], [a.path, c.path]);
  t.same(m.defaultSpace.resources.get(c.path)!.owners, [4, 5], 'the owners after the refused lease are still the right ones');
});
