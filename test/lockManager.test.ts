// Bookkeeping of the lock manager on its own, with an in-memory FileLocker.
// (The kernel side is proven with real processes in the integration tests.)
import type { StorageClassifier } from '../src/locks/storageClass.js';
import t from 'tap';
import type { Test } from 'tap';
import { pino } from 'pino';
import { LockManager, LockSpace } from '../src/locks/lockManager.js';
import { dirname } from 'node:path';
import type { FileLocker, LockRequest, ReleaseRequest } from '../src/locks/fileLocker.js';
import { StorageGate } from '../src/locks/storageGate.js';
import { ProtocolError } from '../src/util/errors.js';

class MemLocker implements FileLocker {
  files = new Set<string>(['/img/a', '/img/b']);
  dirs = new Set<string>(['/img']);
  locks = new Map<number, { path: string; shared: boolean }>();
  foreign = new Map<string, 'read' | 'write'>();
  next = 100;
  delayMs = 0;
  hang = false;
  log: string[] = [];
  private waiters: Array<() => void> = [];
  /** Ends a hang: every call blocked so far continues. */
  resume() {
    this.hang = false;
    for (const w of this.waiters.splice(0)) w();
  }
  private wait() {
    if (this.hang) return new Promise<void>((r) => this.waiters.push(r));
    return new Promise<void>((r) => setTimeout(r, this.delayMs));
  }
  async lock(path: string, req: LockRequest) {
    await this.wait();
    if (!this.files.has(path)) {
      if (!req.create) throw Object.assign(new Error('ENOENT'), { code: 'ENOENT', errno: 2, stage: 'open' });
      this.files.add(path);
    }
    const f = this.foreign.get(path);
    const mine = [...this.locks.values()].filter((l) => l.path === path);
    if ((f && (f === 'write' || !req.shared)) || mine.some((l) => !l.shared || !req.shared))
      throw Object.assign(new Error('EAGAIN'), { code: 'EAGAIN', errno: 11, stage: 'lock' });
    const fd = this.next++;
    this.locks.set(fd, { path, shared: req.shared });
    this.log.push(`lock ${path} ${fd}`);
    return { fd, dev: 1, ino: fd };
  }
  async release(fd: number, req: ReleaseRequest) {
    await this.wait();
    const l = this.locks.get(fd)!;
    let unlinked = false;
    if (req.unlinkPath && (!req.onlyIfExclusive || !this.foreign.has(l.path))) {
      this.files.delete(req.unlinkPath);
      unlinked = true;
    }
    this.locks.delete(fd);
    this.log.push(`close ${fd}${unlinked ? ' unlinked' : ''}`);
    return { unlinked };
  }
  lockSync(): never { throw new Error('inline storage is not used without a classifier'); }
  releaseSync(): never { throw new Error('inline storage is not used without a classifier'); }
  async touch(p: string) { this.files.add(p); }
  async unlink(p: string) { this.files.delete(p); }
  async kind(p: string) { return this.dirs.has(p) ? 'dir' as const : this.files.has(p) ? 'other' as const : 'missing' as const; }
  async mkdirp(p: string) { this.dirs.add(p); }
  async identity(p: string) { return this.files.has(p) ? { dev: 1, ino: p.length } : null; }
}

const owner = (pid: number) => ({ uuid: '00112233-4455-6677-8899-aabbccddeeff', name: `vm${pid}`, id: 1, pid });
function setup(timeoutMs = 5000) {
  const locker = new MemLocker();
  const m = new LockManager({ locker, gate: new StorageGate({ timeoutMs, perKeyConcurrency: 4 }), log: pino({ level: 'silent' }) });
  return { locker, m };
}
async function rejectsWith(t: Test, fn: () => unknown, code: number, domain: number, msg: string) {
  try {
    await fn();
    t.fail(`expected error ${msg}`);
  } catch (e) {
    t.ok(e instanceof ProtocolError, 'a protocol error');
    const pe = e as ProtocolError;
    t.same([pe.code, pe.domain, pe.message], [code, domain, msg]);
  }
}

t.test('exclusive acquire, refusal even for the same owner, release', async (t) => {
  const { m, locker } = setup();
  await m.acquire('', '/img/a', 0, owner(1));
  await rejectsWith(t, () => m.acquire('', '/img/a', 0, owner(1)), 87, 51, "resource busy: Lockspace resource '/img/a' is locked");
  await rejectsWith(t, () => m.acquire('', '/img/a', 1, owner(2)), 87, 51, "resource busy: Lockspace resource '/img/a' is locked");
  await rejectsWith(t, () => m.release('', '/img/a', owner(2)), 1, 51, 'internal error: owner 2 does not hold the resource lock');
  await m.release('', '/img/a', owner(1));
  t.equal(locker.locks.size, 0);
  await rejectsWith(t, () => m.release('', '/img/a', owner(1)), 87, 51, "resource busy: Lockspace resource '/img/a' is not locked");
});

t.test('shared owner lists keep repeats; the last owner frees', async (t) => {
  const { m, locker } = setup();
  await m.acquire('', '/img/a', 1, owner(1));
  await m.acquire('', '/img/a', 1, owner(2));
  await m.acquire('', '/img/a', 1 | 2, owner(1));
  t.same(m.defaultSpace.resources.get('/img/a')!.owners, [1, 2, 1]);
  t.equal(m.defaultSpace.resources.get('/img/a')!.flags, 1, 'flags of the first acquirer');
  await rejectsWith(t, () => m.acquire('', '/img/a', 0, owner(3)), 87, 51, "resource busy: Lockspace resource '/img/a' is locked");
  await m.release('', '/img/a', owner(1));
  t.same(m.defaultSpace.resources.get('/img/a')!.owners, [2, 1], 'first matching entry removed');
  t.equal(m.heldBy(1), 1);
  t.equal(await m.releaseOwner(1), 1);
  await m.release('', '/img/a', owner(2));
  t.equal(locker.locks.size, 0);
});

t.test('lock spaces: creation, lookup by exact string, bad names', async (t) => {
  const { m, locker } = setup();
  await rejectsWith(t, () => m.acquire('/ls', 'x', 2, owner(1)), 1, 7, 'internal error: Lockspace for path /ls does not exist');
  await m.createLockSpace('/ls');
  t.ok(locker.dirs.has('/ls'));
  await m.createLockSpace('/ls');
  await rejectsWith(t, () => m.acquire('/ls/', 'x', 2, owner(1)), 1, 7, 'internal error: Lockspace for path /ls/ does not exist');
  await rejectsWith(t, () => m.newLockSpace('/ls'), 1, 7, 'internal error: Lockspace for path /ls already exists');
  await rejectsWith(t, () => m.newLockSpace(''), 55, 7, 'Requested operation is not valid: the default lockspace already exists');
  await rejectsWith(t, () => m.createLockSpace('/img/a'), 1, 51, 'internal error: Lockspace location /img/a exists, but is not a directory');
  for (const rel of ['relative/name', 'x', './ls', '../ls']) {
    await rejectsWith(t, () => m.createLockSpace(rel), 8, 51, `invalid argument: Lockspace path '${rel}' is not an absolute path`);
    await rejectsWith(t, () => m.newLockSpace(rel), 8, 51, `invalid argument: Lockspace path '${rel}' is not an absolute path`);
  }
  t.notOk([...locker.dirs].some((d) => !d.startsWith('/')), 'no relative directory created');
  for (const bad of ['..', '.', '', 'a/b', '../x']) {
    try {
      await m.acquire('/ls', bad, 2, owner(1));
      t.fail(`accepted ${bad}`);
    } catch (e) {
      t.equal((e as ProtocolError).code, 8, `refused '${bad}'`);
    }
  }
  try {
    await m.acquire('', 'relative/path', 0, owner(1));
    t.fail('accepted a relative path');
  } catch (e) {
    t.equal((e as ProtocolError).code, 8);
  }
});

t.test('autocreate: created, unlinked on exclusive free; shared unlinked only when exclusive possible', async (t) => {
  const { m, locker } = setup();
  await m.createLockSpace('/ls');
  await m.acquire('/ls', 'lease', 2, owner(1));
  t.ok(locker.files.has('/ls/lease'));
  await m.release('/ls', 'lease', owner(1));
  t.notOk(locker.files.has('/ls/lease'));
  await m.acquire('/ls', 'sh', 3, owner(1));
  locker.foreign.set('/ls/sh', 'read');
  await m.release('/ls', 'sh', owner(1));
  t.ok(locker.files.has('/ls/sh'), 'another host still shares it: kept');
});

t.test('autocreated lease files are unlinked only on host-local storage', async (t) => {
  const locker = new MemLocker();
  const local = new Set(['/local']);
  const asked: string[] = [];
  const classifier = {
    mode: () => 'offload' as const,
    observe: () => {},
    isHostLocal: (dir: string) => (asked.push(dir), local.has(dir)),
  } as unknown as StorageClassifier;
  const m = new LockManager({ locker, gate: new StorageGate({ timeoutMs: 5000, perKeyConcurrency: 4 }), log: pino({ level: 'silent' }), classifier });
  for (const dir of ['/local', '/nfs']) {
    await m.createLockSpace(dir);
    await m.acquire(dir, 'x', 2, owner(1));
    await m.release(dir, 'x', owner(1));
    await m.acquire(dir, 'sh', 3, owner(1));
    await m.release(dir, 'sh', owner(1));
  }
  t.notOk(locker.files.has('/local/x'), 'host-local: exclusive lease file unlinked');
  t.notOk(locker.files.has('/local/sh'), 'host-local: shared lease file unlinked by the last sharer');
  t.ok(locker.files.has('/nfs/x'), 'shared storage: exclusive lease file kept');
  t.ok(locker.files.has('/nfs/sh'), 'shared storage: shared lease file kept');
  t.ok(asked.includes('/nfs') && asked.includes('/local'), 'the classifier was asked (and asked early, at CREATE_LOCKSPACE)');
});

t.test('operations on one name are ordered: acquire waits for the previous close', async (t) => {
  const { m, locker } = setup();
  locker.delayMs = 20;
  await m.acquire('', '/img/a', 0, owner(1));
  const rel = m.release('', '/img/a', owner(1));
  const acq = m.acquire('', '/img/a', 0, owner(2));
  await Promise.all([rel, acq]);
  t.same(m.defaultSpace.resources.get('/img/a')!.owners, [2]);
  const i = locker.log.findIndex((l) => l.startsWith('close'));
  t.ok(i >= 0 && locker.log.slice(i + 1).some((l) => l.startsWith('lock /img/a')), 'lock after close');
  // two concurrent exclusive acquires: exactly one wins
  const r = await Promise.allSettled([m.acquire('', '/img/b', 0, owner(3)), m.acquire('', '/img/b', 0, owner(4))]);
  t.equal(r.filter((x) => x.status === 'fulfilled').length, 1);
});

t.test('a hung storage call times out, then fails fast, and a late lock is released', async (t) => {
  const { m, locker } = setup(100);
  locker.hang = true;
  await rejectsWith(t, () => m.acquire('', '/img/a', 0, owner(1)), 38, 51, "Unable to acquire lock on '/img/a': storage for '/img' did not answer within 0.1 s");
  const started = Date.now();
  try {
    await m.acquire('', '/img/b', 0, owner(1));
    t.fail('should fail');
  } catch (e) {
    t.match((e as Error).message, /not responding/);
    t.ok(Date.now() - started < 50, 'fails fast while the earlier call is stuck');
  }
});

t.test('late results while the storage stays stuck: every late lock and every release still closes its fd', async (t) => {
  const { m, locker } = setup(100);
  await m.createLockSpace('/ls');
  await m.acquire('/ls', 'held', 2, owner(9));
  locker.hang = true;
  // several late calls on one directory, more than its concurrency (4)
  // eslint-disable-next-line @typescript-eslint/await-thenable -- acquire is void | Promise<void>; these all go async
  const acq = await Promise.allSettled(['a', 'b', 'c', 'd', 'e'].map((n, i) => m.acquire('/ls', n, 2, owner(i + 1))));
  t.same(acq.map((r) => r.status), Array(5).fill('rejected'), 'all refused');
  t.match((acq[4] as PromiseRejectedResult).reason.message, /not responding/, 'the queued fifth gets an answer within the deadline');
  // a release while stuck: the caller hears the timeout, the call goes on
  await rejectsWith(t, () => m.release('/ls', 'held', owner(9)), 38, 51, "Unable to release lock on '/ls/held': storage for '/ls' did not answer within 0.1 s");
  t.equal(m.defaultSpace.resources.size + m.lookup('/ls').resources.size, 0, 'nothing in the table');
  locker.resume();
  t.ok(await waitUntil(() => locker.locks.size === 0), `every fd closed once the storage answers (open: ${[...locker.locks.keys()]})`);
  t.same([...locker.files].filter((f) => f.startsWith('/ls/')), [], 'late autocreated files unlinked');
  await m.acquire('/ls', 'a', 2, owner(1));
  t.equal(locker.locks.size, 1, 'and the storage is usable again');
});

t.test('a release is never refused by a stuck key and waits in memory beyond its slots', async (t) => {
  const gate = new StorageGate({ timeoutMs: 50, perKeyConcurrency: 1 });
  let release: () => void = () => {};
  const stuck = new Promise<void>((r) => (release = r));
  await t.rejects(gate.run('/k', () => stuck), /did not answer/);
  t.same(gate.stuckKeys(), ['/k']);
  let running = 0;
  let maxRunning = 0;
  const done: number[] = [];
  const releases = [1, 2, 3, 4, 5].map((i) =>
    gate.runRelease('/k', async () => {
      running++;
      maxRunning = Math.max(maxRunning, running);
      await stuck;
      running--;
      done.push(i);
    }),
  );
  const outcome = await Promise.allSettled(releases);
  t.ok(outcome.every((o) => o.status === 'rejected'), 'callers hear the deadline');
  t.ok(maxRunning <= 2, `at most RELEASES_PER_KEY in flight (${maxRunning})`);
  release();
  t.ok(await waitUntil(() => done.length === 5), 'every release ran once the storage answered');
  t.same(gate.stuckKeys(), [], 'and the key is no longer stuck');
});

async function waitUntil(cond: () => boolean, ms = 2000): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond() && Date.now() < end) await new Promise((r) => setTimeout(r, 5));
  return cond();
}

t.test('the lease record: one owner without a list, several in order, readers get copies', async (t) => {
  const { m } = setup();
  await m.createLockSpace('/img');
  await m.acquire('/img', 'lease', 1 | 2, owner(7));
  const r = m.lookup('/img').resources.get('lease')!;
  t.equal(r.path, '/img/lease', 'path derived from the lock space');
  t.equal(r.ownerCount, 1);
  t.same(r.owners, [7]);
  t.ok(Math.abs(r.since - Date.now()) < 5000, 'since: epoch ms');
  r.owners.push(99); // a reader's copy
  t.same(r.owners, [7], 'the table is not changed through a copy');
  await m.acquire('/img', 'lease', 1, owner(8));
  await m.acquire('/img', 'lease', 1, owner(7));
  t.same(r.owners, [7, 8, 7]);
  t.equal(m.counts().leases, 3);
  await m.release('/img', 'lease', owner(8));
  t.same(r.owners, [7, 7], 'the one entry of 8 removed');
  await m.release('/img', 'lease', owner(7));
  t.same(r.owners, [7], 'back to one owner');
  t.ok(r.hasOwner(7) && !r.hasOwner(8));
  await rejectsWith(t, () => m.release('/img', 'lease', owner(8)), 1, 51, 'internal error: owner 8 does not hold the resource lock');
  await m.release('/img', 'lease', owner(7));
  t.equal(m.lookup('/img').resources.size, 0);
});

t.test('adopted records keep what a document says: owner lists, since, an unusual path, a classic lock', async (t) => {
  const { m } = setup();
  const ls = m.adoptLockSpace('/var/ls');
  m.adoptResource(ls, { name: 'a', path: '/var/ls/a', fd: 10, dev: 1, ino: 2, flags: 1, owners: [5, 6, 5], since: 1_600_000_000_000 });
  m.adoptResource(ls, { name: 'b', path: '/elsewhere/b', fd: 11, dev: 1, ino: 3, flags: 0, owners: [5], since: 1_700_000_000_123 });
  m.adoptResource(m.defaultSpace, { name: '/img/c', path: '/img/c', fd: 12, dev: 1, ino: 4, flags: 0, owners: [6], since: 1_700_000_000_000, classic: true });
  const a = ls.resources.get('a')!;
  const b = ls.resources.get('b')!;
  const c = m.defaultSpace.resources.get('/img/c')!;
  t.same([a.owners, a.since, a.path, a.classic], [[5, 6, 5], 1_600_000_000_000, '/var/ls/a', false]);
  t.same([b.owners, b.since, b.path, b.classic], [[5], 1_700_000_000_123, '/elsewhere/b', false]);
  t.same([c.owners, c.path, c.classic, c.fd, c.dev, c.ino], [[6], '/img/c', true, 12, 1, 4]);
  t.equal(m.heldBy(5), 2);
  t.same(m.counts(), { lockspaces: 2, resources: 3, leases: 5 });
  t.throws(() => m.adoptResource(ls, { name: 'a', path: '/var/ls/a', fd: 13, dev: 1, ino: 5, flags: 0, owners: [1], since: 0 }), /listed twice/);
});

t.test("storage keys: a default-space name's dirname", async (t) => {
  const ls = new LockSpace('');
  const names = ['/img/a', '/img/b', '/img//c', '//x', '/x', '/img/a/', '/img/a//', 'rel/x', 'x', '/', '', '/a/b/c', '/a/bc', '/ab/c', '/img/a'];
  for (let round = 0; round < 2; round++) for (const n of [...names, ...names.slice().reverse()]) t.equal(ls.storageKeyOf(n), dirname(n), JSON.stringify(n));
  t.equal(ls.storageKeyOf('/img/a'), ls.storageKeyOf('/img/zzz'), 'same directory, same key');
  t.equal(new LockSpace('/space').storageKeyOf('name'), '/space', "a directory space's key is its directory");
});
