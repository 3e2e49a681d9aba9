// The state document's on-disk formats (src/state/documentFormat.ts): relockd
// writes format 2 (every lease in the columns of relockd.leases) and reads
// it back into the in-memory document exactly; format 1 (one object per
// lease, an older relockd) and virtlockd's documents pass unchanged; every
// column is checked by the schema, and what the schema cannot say (equal
// lengths, index ranges) by the decoder, with the path of what is wrong.
// Restoring format 2 with real fds: test/state-examples.test.ts (the format 2
// examples) and test/reexec*.test.ts (the real writer).

import t from 'tap';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { encodeState, leaseColumnsOf, parseStateDocument, parseStateForRestore, serialiseState } from '../src/state/documentFormat.js';
import { resourceEntry, tableColumns } from '../src/state/snapshot.js';
import { toDocText } from '../src/byteString.js';
import { LockManager } from '../src/locks/lockManager.js';
import type { LockSpace } from '../src/locks/lockManager.js';
import { NativeFileLocker } from '../src/locks/fileLocker.js';
import { StorageGate } from '../src/locks/storageGate.js';
import type { StateDocument } from '../src/state/document.js';
import { validateState } from '../src/state/validate.js';
import { ValidationError } from '../src/util/validator.js';
import { ROOT } from './lib/relockd.js';

const EXAMPLES = join(ROOT, 'state-examples');
const raw = (name: string) => JSON.parse(readFileSync(join(EXAMPLES, name), 'utf8')) as Record<string, any>;
const clone = <T>(x: T): T => JSON.parse(JSON.stringify(x)) as T;

/** An in-memory document with every case a lease can be: lock spaces, owners 0/1/3, classic, a path that is not derived, byte names. */
function sample(): StateDocument {
  const doc = parseStateDocument(raw('relockd-directory-lockspaces.json'));
  const d = clone(doc);
  d.defaultLockspace.resources = [
    { name: '/var/lib/libvirt/images/a.qcow2', path: '/var/lib/libvirt/images/a.qcow2', fd: 40, lockHeld: true, flags: 0, owners: [100] },
    { name: '/var/lib/libvirt/images/disk-\udcff.raw', path: '/var/lib/libvirt/images/disk-\udcff.raw', fd: 41, lockHeld: true, flags: 1, owners: [100, 200, 100] },
    { name: '/var/lib/libvirt/images/orphaned.raw', path: '/var/lib/libvirt/images/orphaned.raw', fd: 42, lockHeld: true, flags: 0, owners: [] },
  ];
  d.lockspaces[0]!.resources.push({ name: 'odd', path: '/var/lib/libvirt/lockd//files/odd', fd: 43, lockHeld: true, flags: 3, owners: [300] });
  const ext = d.relockd!;
  ext.resources = [...ext.resources, ...[40, 41, 42, 43].map((fd) => ({ fd, since: 1765000000000 + fd, dev: '64768', ino: String(9007199254740000 + fd), ...(fd === 42 ? { classic: true } : {}) }))];
  // The writer's order: the extras follow the lock spaces' order.
  const order = [d.defaultLockspace, ...d.lockspaces].flatMap((ls) => ls.resources.map((r) => r.fd));
  ext.resources.sort((a, b) => order.indexOf(a.fd) - order.indexOf(b.fd));
  for (const r of ext.resources) {
    r.dev ??= '64768';
    r.ino ??= String(1000 + r.fd);
  }
  return d;
}

t.test('format 2 round trip: encode, validate, JSON, parse, decode gives the in-memory document back', async (t) => {
  const doc = sample();
  const text = serialiseState(doc);
  const wire = JSON.parse(text);
  t.equal(wire.relockd.formatVersion, 2, 'written as format 2');
  t.same(wire.defaultLockspace.resources, [], 'no per-lease objects in the lock spaces');
  t.ok(wire.lockspaces.every((ls: any) => ls.resources.length === 0));
  t.notOk('resources' in wire.relockd, 'nor in the extension');
  const c = wire.relockd.leases;
  t.same(c.counts, [3, 3, 1, 0], 'leases per lock space, default first');
  t.same(c.multiOwners, [[1, 3], [2, 0]], 'only the leases without exactly one owner');
  t.same(c.paths, [[5, '/var/lib/libvirt/lockd//files/odd']], 'only the path that is not directory + / + name');
  t.same(c.classic, [42]);
  const back = parseStateDocument(wire);
  t.same(back, doc, 'decoded exactly');
  t.ok(text.length < JSON.stringify(doc).length, `smaller: ${text.length} vs ${JSON.stringify(doc).length} bytes`);
});

t.test('identity: the decimal text of format 1 and the doubles of format 2 name the same file', async (t) => {
  const doc = sample();
  const back = parseStateDocument(JSON.parse(serialiseState(doc)));
  for (const [i, r] of back.relockd!.resources.entries()) t.equal(Number(r.ino), Number(doc.relockd!.resources[i]!.ino));
});

t.test('format 1 and virtlockd documents pass unchanged', async (t) => {
  for (const f of readdirSync(EXAMPLES).filter((x) => x.endsWith('.json'))) {
    const doc = raw(f);
    if (doc.relockd?.formatVersion === 2) continue;
    t.same(parseStateDocument(clone(doc)), doc, f);
  }
});

t.test('the format 2 examples decode into documents that write back to themselves', async (t) => {
  for (const f of readdirSync(EXAMPLES).filter((x) => x.endsWith('.json'))) {
    const doc = raw(f);
    if (doc.relockd?.formatVersion !== 2) continue;
    const mem = parseStateDocument(clone(doc));
    t.equal(mem.relockd!.resources.length, doc.relockd.leases.fd.length, `${f}: every lease`);
    t.same(encodeState(mem), doc, `${f}: re-encoded as written`);
  }
});

/** The problems a damaged format 2 document is refused with. */
function refusal(mutate: (w: any) => void): string[] {
  const w = JSON.parse(serialiseState(sample()));
  mutate(w);
  try {
    parseStateDocument(w);
  } catch (e) {
    if (e instanceof ValidationError) return e.problems;
    throw e;
  }
  return [];
}

t.test('the schema checks every column', async (t) => {
  t.match(refusal((w) => (w.relockd.leases.fd[1] = -1)), [/\/relockd\/leases\/fd\/1/]);
  t.match(refusal((w) => (w.relockd.leases.flags[0] = 7)), [/\/relockd\/leases\/flags\/0/]);
  t.match(refusal((w) => (w.relockd.leases.name[2] = 5)), [/\/relockd\/leases\/name\/2/]);
  t.match(refusal((w) => (w.relockd.leases.owners[0] = 'x')), [/\/relockd\/leases\/owners\/0/]);
  t.match(refusal((w) => (w.relockd.leases.paths[0] = [5])), [/\/relockd\/leases\/paths\/0/]);
  t.match(refusal((w) => delete w.relockd.leases.since), [/since/]);
  t.match(refusal((w) => (w.relockd.leases.extra = [])), [/unexpected property 'extra'/]);
  t.match(refusal((w) => delete w.relockd.leases), [/leases/], 'format 2 needs its leases');
  t.match(refusal((w) => (w.relockd.resources = [])), [/\/relockd/], 'and has no per-lease records');
  t.match(refusal((w) => w.defaultLockspace.resources.push({ name: 'x', path: 'x', fd: 50, lockHeld: true, flags: 0, owners: [] })), [/\/defaultLockspace\/resources/], 'nor resources in a lock space');
  t.match(refusal((w) => (w.relockd.formatVersion = 3)), [/formatVersion/]);
  const f1 = raw('relockd-restricted-client.json');
  delete f1.relockd.resources;
  t.throws(() => validateState(f1), /resources/, 'format 1 needs its per-lease records');
});

t.test('the decoder checks what the schema cannot: lengths and index ranges', async (t) => {
  t.match(refusal((w) => w.relockd.leases.name.pop()), [/\/relockd\/leases: column 'name' has 6 entries, 'fd' has 7/]);
  t.match(refusal((w) => (w.relockd.leases.counts = [3, 3, 1])), [/'counts' has 3 entries for 4 lock spaces/]);
  t.match(refusal((w) => (w.relockd.leases.counts = [3, 3, 1, 1])), [/'counts' adds up to 8, 'fd' has 7/]);
  t.match(refusal((w) => w.relockd.leases.owners.pop()), [/the owner counts add up to 8, 'owners' has 7/]);
  t.match(refusal((w) => w.relockd.leases.multiOwners.push([9, 2])), [/multiOwners: lease 9 does not exist/]);
  t.match(refusal((w) => w.relockd.leases.multiOwners.push([1, 2])), [/multiOwners: lease 1 is listed twice/]);
  t.match(refusal((w) => w.relockd.leases.paths.push([5, '/elsewhere'])), [/paths: lease 5 is listed twice/]);
});

t.test('a lease without a recorded identity is never written (the new image could not check its fd)', async (t) => {
  const doc = sample();
  delete doc.relockd!.resources[0]!.dev;
  t.throws(() => serialiseState(doc), /lease fd 40 has no recorded identity/);
});

/** A lock manager holding every case a lease can be (records only: fds need not be open). */
function tables(): LockManager {
  const log = pino({ level: 'silent' });
  const m = new LockManager({ locker: new NativeFileLocker(), gate: new StorageGate({ timeoutMs: 1000, perKeyConcurrency: 4 }), log });
  m.adoptResource(m.defaultSpace, { name: '/img/a.qcow2', path: '/img/a.qcow2', fd: 40, dev: 64768, ino: 9007199254740000, flags: 0, owners: [100], since: 1765000000040 });
  // A name that is not UTF-8 (byte 0xff), three owner entries, a classic lock, no owner left.
  m.adoptResource(m.defaultSpace, { name: '/img/disk-\xff.raw', path: '/img/disk-\xff.raw', fd: 41, dev: 64768, ino: 41, flags: 1, owners: [100, 200, 100], since: 1765000000041 });
  m.adoptResource(m.defaultSpace, { name: '/img/c.raw', path: '/img/c.raw', fd: 42, dev: 64768, ino: 42, flags: 0, owners: [300], since: 1765000000042, classic: true });
  m.adoptResource(m.defaultSpace, { name: '/img/orphaned.raw', path: '/img/orphaned.raw', fd: 44, dev: 64768, ino: 44, flags: 0, owners: [], since: 1765000000044 });
  const ls = m.adoptLockSpace('/var/lib/libvirt/lockd/files');
  m.adoptResource(ls, { name: 'lease-a', path: '/var/lib/libvirt/lockd/files/lease-a', fd: 45, dev: 2049, ino: 45, flags: 3, owners: [300], since: 1765000000045 });
  m.adoptResource(ls, { name: 'odd', path: '/var/lib/libvirt/lockd//files/odd', fd: 46, dev: 2049, ino: 46, flags: 2, owners: [300], since: 1765000000046 });
  m.adoptLockSpace('/var/lib/libvirt/lockd/empty');
  return m;
}

/** The same tables through format 1's objects (what the fd store's journal records per lease). */
function viaFormat1(m: LockManager): StateDocument {
  const doc = clone(sample());
  const extras: NonNullable<StateDocument['relockd']>['resources'] = [];
  const list = (ls: LockSpace) =>
    [...ls.resources.values()].map((r) => {
      const e = resourceEntry(r);
      extras.push(e.extra);
      return e.state;
    });
  doc.defaultLockspace = { resources: list(m.defaultSpace) };
  doc.lockspaces = [...m.spaces.values()].map((ls) => ({ directory: toDocText(ls.dir), resources: list(ls) }));
  doc.relockd!.resources = extras;
  return doc;
}

t.test('tableColumns: the columns built straight from the lock tables are format 1 encoded', async (t) => {
  const m = tables();
  const cols = tableColumns(m);
  t.same(cols, leaseColumnsOf(viaFormat1(m), true), 'every column, entry for entry');
  t.same(cols.counts, [4, 2, 0]);
  t.same(cols.multiOwners, [[1, 3], [3, 0]]);
  t.same(cols.paths, [[5, '/var/lib/libvirt/lockd//files/odd']], 'only the path that is not directory + / + name');
  t.same(cols.classic, [42]);
  t.equal(cols.name[1], '/img/disk-\udcff.raw', 'names as document text');
  // What a re-exec writes: the leases only in the columns.
  const doc = viaFormat1(m);
  const bare: StateDocument = { ...doc, defaultLockspace: { resources: [] }, lockspaces: doc.lockspaces.map((l) => ({ ...l, resources: [] })), relockd: { ...doc.relockd!, resources: [] } };
  t.same(JSON.parse(serialiseState(bare, cols)), JSON.parse(serialiseState(doc)), 'the same file as from format 1');
});

t.test('parseStateForRestore: format 2 leases stay columns, checked as parseStateDocument checks them', async (t) => {
  const wire = JSON.parse(serialiseState(sample()));
  const { doc, leases } = parseStateForRestore(clone(wire));
  t.same(leases.cols, wire.relockd.leases, 'the columns as written');
  t.same([...leases.ownerCount], wire.relockd.leases.multiOwners);
  t.same([...leases.paths], wire.relockd.leases.paths);
  t.same([...leases.classic], wire.relockd.leases.classic);
  t.ok(leases.flavourRecorded);
  t.same(doc.defaultLockspace.resources, []);
  t.same(doc.relockd!.resources, [], 'no per-lease objects');
  t.equal(doc.relockd!.formatVersion, 1);
  t.notOk('leases' in doc.relockd!);
  const full = parseStateDocument(clone(wire));
  t.same({ ...doc, relockd: { ...doc.relockd, resources: full.relockd!.resources }, defaultLockspace: full.defaultLockspace, lockspaces: full.lockspaces }, full, 'otherwise the document parseStateDocument gives');
  for (const [mutate, why] of [
    [(w: any) => w.relockd.leases.name.pop(), /column 'name' has 6 entries, 'fd' has 7/],
    [(w: any) => (w.relockd.leases.counts = [3, 3, 1, 1]), /'counts' adds up to 8, 'fd' has 7/],
    [(w: any) => w.relockd.leases.owners.pop(), /the owner counts add up to 8, 'owners' has 7/],
    [(w: any) => w.relockd.leases.multiOwners.push([1, 2]), /multiOwners: lease 1 is listed twice/],
    [(w: any) => w.relockd.leases.paths.push([9, '/x']), /paths: lease 9 does not exist/],
  ] as const) {
    const w = clone(wire);
    mutate(w);
    t.throws(() => parseStateForRestore(w), why);
  }
});

t.test('parseStateForRestore: format 1 and virtlockd documents unchanged, their leases as columns', async (t) => {
  for (const f of readdirSync(EXAMPLES).filter((x) => x.endsWith('.json'))) {
    const orig = raw(f);
    if (orig.relockd?.formatVersion === 2) continue;
    const { doc, leases } = parseStateForRestore(clone(orig));
    t.same(doc, orig, `${f}: document unchanged`);
    t.equal(leases.cols.fd.length, [orig.defaultLockspace, ...orig.lockspaces].reduce((n: number, l: any) => n + l.resources.length, 0), `${f}: every lease`);
    t.equal(leases.flavourRecorded, orig.relockd !== undefined, `${f}: lock flavour recorded only by relockd`);
    if (!orig.relockd) t.ok(leases.cols.dev.every((d) => d === -1), `${f}: no identities (restore checks type and path)`);
  }
});
