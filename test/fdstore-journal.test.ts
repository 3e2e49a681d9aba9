// The fd store's state journal (src/fdstore/stateSlots.ts, journal.ts,
// stateJournal.ts): framed records after a base, a torn tail or a bad
// checksum ignored, compaction into the other slot; then a real relockd
// with an emulated PID 1 (test/lib/fdstoreEmulator.ts): after a random
// sequence of real acquisitions, releases, registrations and closes, the
// old slot's base plus its journal replays to exactly the full document the
// compaction wrote; relockd SIGKILLed right after many appends comes back
// (started by the emulator with the stored fds, as PID 1 does) holding
// exactly the granted leases, checked from another process; and a journal
// record that passes its checksum but cannot be read means safe mode with
// every lease kept, never a drop.

import t from 'tap';
import { closeSync, ftruncateSync, fstatSync, mkdtempSync, openSync, readFileSync, readdirSync, readlinkSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { StateSlots, frame, newestSlot, readSlot } from '../src/fdstore/stateSlots.js';
import { JournalError, replayJournal } from '../src/fdstore/journal.js';
import type { StateDocument } from '../src/state/document.js';
import { ENV_PREFIX, NODE_FLAGS, RELOCKD_BIN, cleanEnv, startRelockd, waitForSocket } from './lib/relockd.js';
import { FdStoreEmulator } from './lib/fdstoreEmulator.js';
import { LockspaceClient } from '../src/protocol/lockspaceClient.js';
import { probe } from './lib/probe.js';

const dir = mkdtempSync(join(tmpdir(), 'relockd-journal-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const rec = (o: unknown) => Buffer.from(JSON.stringify(o));

t.test('frames: a torn tail, a bad checksum and a frame of an older generation end the journal; what came before is kept', async (t) => {
  const slots = new StateSlots();
  t.teardown(() => slots.fds.forEach((fd) => closeSync(fd)));
  slots.write(JSON.stringify({ base: 1 }));
  for (let i = 0; i < 3; i++) slots.append(rec([{ n: i }]));
  const fd = slots.fds[0];
  let s = readSlot(fd)!;
  t.same(s.records.map((r) => JSON.parse(r.toString())), [[{ n: 0 }], [{ n: 1 }], [{ n: 2 }]], 'three records after the base');
  t.equal(s.tornBytes, 0, 'nothing torn');
  const size = fstatSync(fd).size;

  ftruncateSync(fd, size - 3); // a crash in the middle of the last append
  s = readSlot(fd)!;
  t.equal(s.records.length, 2, 'a torn last record is ignored');
  t.equal(s.tornBytes, rec([{ n: 2 }]).length + 8 - 3, 'and reported as torn bytes');
  t.same(JSON.parse(s.text), { base: 1 }, 'the base is intact');

  ftruncateSync(fd, size);
  const third = size - (rec([{ n: 2 }]).length + 8);
  writeSync(fd, frame(rec([{ n: 2 }]), 1), 0, undefined, third); // (the first base is generation 1) // restore it, then corrupt the second
  t.equal(readSlot(fd)!.records.length, 3, 'restored');
  const second = third - (rec([{ n: 1 }]).length + 8);
  writeSync(fd, Buffer.from('X'), 0, 1, second + 8 + 2);
  s = readSlot(fd)!;
  t.equal(s.records.length, 1, 'a checksum mismatch ends the journal there (nothing after it is trusted)');

  // A frame written for another generation (seq) never passes as this base's.
  const fresh = new StateSlots();
  t.teardown(() => fresh.fds.forEach((f) => closeSync(f)));
  fresh.write('{}');
  fresh.append(rec(['ok']));
  const end = fstatSync(fresh.fds[0]).size;
  writeSync(fresh.fds[0], frame(rec(['stale']), 7), 0, undefined, end);
  t.same(readSlot(fresh.fds[0])!.records.map((r) => JSON.parse(r.toString())), [['ok']], 'a frame of an older generation is not read');
});

t.test('compaction: the new base goes into the other slot; a torn base falls back to the old slot and its whole journal', async (t) => {
  const slots = new StateSlots();
  t.teardown(() => slots.fds.forEach((fd) => closeSync(fd)));
  slots.write(JSON.stringify({ gen: 1 }));
  slots.append(rec(['a']));
  slots.append(rec(['b']));
  t.ok(slots.journalBytes > 0, 'journal bytes counted');
  slots.write(JSON.stringify({ gen: 2, pad: 'x'.repeat(3000) }));
  t.equal(slots.journalBytes, 0, 'a new base starts an empty journal');
  slots.append(rec(['c']));
  let n = newestSlot(slots.fds)!;
  t.equal(n.index, 1, 'the second base is in slot 1');
  t.same(JSON.parse(n.text).gen, 2);
  t.same(n.records.map((r) => JSON.parse(r.toString())), [['c']], 'with its own journal');
  ftruncateSync(slots.fds[1], 200); // a crash in the middle of writing that base
  n = newestSlot(slots.fds)!;
  t.equal(n.index, 0, 'a torn base is not used');
  t.same(n.records.map((r) => JSON.parse(r.toString())), [['a'], ['b']], 'the old slot keeps its whole journal');
  // A third base after a recovery from slot 0 goes into slot 1, never over the slot it restored from.
  const again = new StateSlots([slots.fds[0], slots.fds[1]], n.seq, n.index);
  again.write(JSON.stringify({ gen: 3 }));
  t.same(JSON.parse(readSlot(slots.fds[0])!.text), { gen: 1 }, 'the restored slot is untouched');
  t.same(JSON.parse(newestSlot(slots.fds)!.text), { gen: 3 }, 'the new base is the newest');
  // A base overwritten in place (not torn, just different bytes) fails its checksum.
  writeSync(slots.fds[1], Buffer.from('Z'), 0, 1, fstatSync(slots.fds[1]).size - 3);
  t.equal(readSlot(slots.fds[1]), null, 'a base whose bytes changed is not read');
  t.throws(() => replayJournal({ defaultLockspace: { resources: [] }, lockspaces: [], magic: '1' }, [Buffer.from('not json')]), JournalError, 'a record that is not JSON throws (recovery goes to safe mode)');
});

// ---- a real relockd ------------------------------------------------------------------

const OWNER_BASE = 2_000_000_100;

/** The state memfds of process `pid` (slot 0, slot 1), opened again through /proc (root). */
function stateMemfds(pid: number, mode = 'r'): number[] {
  const out: Array<[string, number]> = [];
  for (const n of readdirSync(`/proc/${pid}/fd`)) {
    let l = '';
    try {
      l = readlinkSync(`/proc/${pid}/fd/${n}`);
    } catch {
      continue;
    }
    if (l.startsWith('/memfd:relockd-state')) out.push([l, openSync(`/proc/${pid}/fd/${n}`, mode)]);
  }
  return out.sort((a, b) => (a[0] < b[0] ? -1 : 1)).map((x) => x[1]);
}

function readLog(p: string): string {
  try {
    return readFileSync(p, 'utf8');
  } catch {
    return '';
  }
}

/** A document with what differs between any two snapshots of the same state left out, and every list in one order. */
function normalised(doc: StateDocument): unknown {
  const d = JSON.parse(JSON.stringify(doc));
  // Refreshed with the skeleton (at most a second late), not journalled per
  // operation: metrics, and the storage verdicts of directories first used since.
  delete d.relockd.metrics;
  delete d.relockd.storage;
  delete d.relockd.requestedAtNs;
  const by = (k: (x: any) => string) => (a: any, b: any) => (k(a) < k(b) ? -1 : k(a) > k(b) ? 1 : 0);
  for (const ls of [d.defaultLockspace, ...d.lockspaces]) ls.resources.sort(by((r) => r.name));
  d.lockspaces.sort(by((l) => l.directory));
  for (const st of Object.values(d.daemon.servers) as any[]) st.clients.sort(by((c) => String(c.id).padStart(8, '0')));
  d.relockd.resources.sort(by((r) => String(r.fd).padStart(8, '0')));
  d.relockd.clients.sort(by((c) => `${c.server}:${String(c.id).padStart(8, '0')}`));
  d.relockd.fds.sort(by((f) => `${f.kind}:${String(f.fd).padStart(8, '0')}`));
  return d;
}

interface Cli {
  c: LockspaceClient;
  pid: number;
  open: boolean;
}

t.test('a real relockd: replay of base + journal equals the full document, and a SIGKILL right after many appends keeps exactly the granted leases', async (t) => {
  const emu = await FdStoreEmulator.start(join(dir, 'notify.sock'));
  t.teardown(() => emu.stop());
  const ddir = join(dir, 'd');
  const env = { NOTIFY_SOCKET: emu.path, FDSTORE: '4096' };
  const d = await startRelockd({ dir: ddir, env, logLevel: 'info' });
  let pid = d.pid;
  t.teardown(() => {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  });
  const space = join(dir, 'space');
  const files = Array.from({ length: 8 }, (_, i) => join(dir, `disk${i}.img`));
  for (const f of files) writeFileSync(f, '');
  const spaceNames = ['lease-a', 'lease-b', 'lease-c', 'lease-d'];
  const target = (k: number) => (k < files.length ? { path: '', name: files[k]! } : { path: space, name: spaceNames[k - files.length]! });
  const fileOf = (k: number) => (k < files.length ? files[k]! : join(space, spaceNames[k - files.length]!));
  const nTargets = files.length + spaceNames.length;

  const clients: Cli[] = [];
  let nextOwner = OWNER_BASE;
  const connect = async (): Promise<Cli> => {
    const c = await LockspaceClient.connect(d.socketPath);
    const pid = nextOwner++;
    // Owners registered on behalf of another pid (as libvirtd does): closing the connection leaves their leases.
    await c.register({ uuid: `11111111-2222-3333-4444-${String(pid).padStart(12, '0')}`, name: `vm${pid}`, id: pid - OWNER_BASE + 1, pid });
    const cl = { c, pid, open: true };
    clients.push(cl);
    return cl;
  };
  t.teardown(() => clients.forEach((c) => c.open && c.c.close()));
  const first = await connect();
  await first.c.createLockspace(space);

  /** Granted leases: target → owner pids (shared leases have several). */
  const granted = new Map<number, number[]>();
  const unexpected: string[] = [];
  let rnd = 12345;
  const random = (n: number) => {
    rnd = (rnd * 1103515245 + 12345) % 2 ** 31;
    return rnd % n;
  };

  /** One random operation; its reply has arrived when this returns. */
  const step = async () => {
    const live = clients.filter((c) => c.open);
    const roll = random(100);
    if (roll < 6 || live.length === 0) return void (await connect());
    const cl = live[random(live.length)]!;
    if (roll < 9 && live.length > 1) {
      cl.c.close(); // its owner's leases stay (an owner on its own connection would be released)
      cl.open = false;
      await sleep(20);
      return;
    }
    const k = random(nTargets);
    const held = granted.get(k) ?? [];
    const mine = held.includes(cl.pid);
    const { path, name } = target(k);
    if (mine && roll < 40) {
      await cl.c.release(path, name);
      held.splice(held.indexOf(cl.pid), 1);
      if (held.length) granted.set(k, held);
      else granted.delete(k);
      return;
    }
    const shared = k % 3 === 0 ? 1 : 0; // some targets are always taken shared
    try {
      await cl.c.acquire(path, name, shared | (k >= files.length ? 2 : 0));
      granted.set(k, [...held, cl.pid]);
    } catch (err) {
      if (!(held.length > 0 && !shared)) unexpected.push(`target ${k}: ${(err as Error).message}`);
    }
  };

  // Until two compactions were seen: each time, the old slot's base + journal must replay
  // to exactly the new base (the full document written at that moment).
  let compared = 0;
  let lastSeq = 0;
  let steps = 0;
  while (compared < 2 && steps < 4000) {
    await step();
    steps++;
    const fds = stateMemfds(pid);
    try {
      const newest = newestSlot(fds);
      if (!newest || newest.seq === lastSeq) continue;
      const old = readSlot(fds[1 - newest.index]!);
      if (!old || old.seq !== newest.seq - 1) continue;
      lastSeq = newest.seq;
      if (old.records.length === 0) continue; // the first base after start: nothing journalled yet
      const replayed = replayJournal(JSON.parse(old.text), old.records);
      t.same(normalised(replayed), normalised(JSON.parse(newest.text)), `base ${old.seq} + ${old.records.length} journal records replay to exactly base ${newest.seq} (after ${steps} operations)`);
      compared++;
    } finally {
      fds.forEach((fd) => closeSync(fd));
    }
  }
  t.equal(compared, 2, `two compactions compared (${steps} operations)`);
  t.same(unexpected, [], 'only exclusive leases already held were refused');

  // Many more appends after the last compaction, then SIGKILL at once.
  let journalled = 0;
  for (let i = 0; i < 1000 && journalled < 40; i++) {
    await step();
    const fds = stateMemfds(pid);
    journalled = newestSlot(fds)?.records.length ?? 0;
    fds.forEach((fd) => closeSync(fd));
  }
  t.ok(journalled >= 40, `the current slot holds ${journalled} journal records after its base`);
  const expectHeld = (label: string) => {
    const res = probe(Array.from({ length: nTargets }, (_, k) => fileOf(k)));
    const wrong = Array.from({ length: nTargets }, (_, k) => k).filter((k) => (res[fileOf(k)] === 'held') !== granted.has(k));
    t.same(wrong.map((k) => `${fileOf(k)}: ${res[fileOf(k)]}, granted to ${JSON.stringify(granted.get(k) ?? [])}`), [], `${label}: exactly the granted leases are held (${granted.size} of ${nTargets})`);
  };
  expectHeld('before the crash');
  process.kill(pid, 'SIGKILL');
  await sleep(200);
  expectHeld('while relockd is down (the emulated store keeps the fds)');

  const log = join(dir, 'restarted.log');
  pid = await emu.spawnWithStore(['/usr/bin/env', ...ENV_PREFIX, process.execPath, ...NODE_FLAGS, RELOCKD_BIN, '--runtime-dir', ddir, '--socket', d.socketPath, '--log-level', 'info'], { ...cleanEnv(env) }, log);
  t.ok(pid > 0, `restarted under pid ${pid} with the stored fds`);
  for (let i = 0; i < 300 && !/recovered from a crash/.test(readLog(log)); i++) await sleep(100);
  t.match(readLog(log), /recovered from a crash/, 'relockd recovered from the crash');
  t.notMatch(readLog(log), /SAFE MODE|safe mode/, 'not in safe mode');
  await waitForSocket(d.socketPath, 15000);
  expectHeld('after the restart');

  // The same connections are served: each live client releases what it holds and takes a free lease.
  let released = 0;
  for (const cl of clients.filter((c) => c.open)) {
    for (const k of [...granted.keys()]) {
      const held = granted.get(k)!;
      while (held.includes(cl.pid)) {
        await cl.c.release(target(k).path, target(k).name);
        held.splice(held.indexOf(cl.pid), 1);
        released++;
      }
      if (held.length === 0) granted.delete(k);
    }
    const free = Array.from({ length: nTargets }, (_, k) => k).find((k) => !granted.has(k));
    if (free !== undefined) {
      await cl.c.acquire(target(free).path, target(free).name, free >= files.length ? 2 : 0);
      granted.set(free, [cl.pid]);
    }
  }
  t.ok(released > 0, `${released} leases released on connections adopted from the store`);
  expectHeld('after releases on the adopted connections');

  // ---- a record that passes its checksum but cannot be read: safe mode, every lease kept ----
  process.kill(pid, 'SIGSTOP'); // no append of its own can race ours
  const fds2 = stateMemfds(pid, 'r+');
  const cur = newestSlot(fds2)!;
  const w = fds2[cur.index]!;
  writeSync(w, frame(Buffer.from('{"not": "a list"}'), cur.seq), 0, undefined, fstatSync(w).size);
  fds2.forEach((fd) => closeSync(fd));
  process.kill(pid, 'SIGKILL');
  await sleep(200);
  const log2 = join(dir, 'restarted2.log');
  pid = await emu.spawnWithStore(['/usr/bin/env', ...ENV_PREFIX, process.execPath, ...NODE_FLAGS, RELOCKD_BIN, '--runtime-dir', ddir, '--socket', d.socketPath, '--log-level', 'info'], { ...cleanEnv(env) }, log2);
  for (let i = 0; i < 300 && !/relockd ready/.test(readLog(log2)); i++) await sleep(100);
  t.match(readLog(log2), /not a list of changes/, 'the unreadable record is named');
  t.match(readLog(log2), /SAFE MODE|safe mode/i, 'relockd is in safe mode');
  expectHeld('in safe mode after an unreadable journal');
});
