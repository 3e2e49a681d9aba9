// The fd store's parts that need no systemd: the state slots (a torn write
// falls back to the other slot), the names, the activation split, and a real
// relockd talking to an emulated PID 1 (test/lib/fdstoreEmulator.ts): it
// stores each lease fd and connection by name and removes them when they
// end; without FDSTORE= it sends nothing of the kind. The crash itself is
// proven under a real systemd in fdstore-crash.test.ts.

import t from 'tap';
import { mkdtempSync, openSync, closeSync, ftruncateSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { StateSlots, newestSlot, readSlot } from '../src/fdstore/stateSlots.js';
import { fdNames, fdStoreConfig, isStoredFdName, kindOfName } from '../src/fdstore/fdStore.js';
import { takeActivation } from '../src/daemon/activation.js';
import { passedStoredFds } from '../src/daemon/crashStore.js';
import { startRelockd } from './lib/relockd.js';
import { FdStoreEmulator } from './lib/fdstoreEmulator.js';
import { NotifyReceiver } from './lib/notify.js';
import { LockspaceClient } from '../src/protocol/lockspaceClient.js';
import { probeOne } from './lib/probe.js';
import { waitFor, matchLog } from './lib/wait.js';

const dir = mkdtempSync(join(tmpdir(), 'relockd-fdstore-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

t.test('state slots: newest complete slot wins; a torn write falls back to the other', async (t) => {
  const slots = new StateSlots();
  slots.write(JSON.stringify({ n: 1 }));
  slots.write(JSON.stringify({ n: 2, pad: 'x'.repeat(5000) }));
  t.same(JSON.parse(newestSlot(slots.fds)!.text), { n: 2, pad: 'x'.repeat(5000) }, 'the later write is read');
  // Tear the newer slot (slot 1): its header promises more than it holds.
  ftruncateSync(slots.fds[1], 100);
  t.equal(readSlot(slots.fds[1]), null, 'a torn slot is not read');
  t.same(JSON.parse(newestSlot(slots.fds)!.text), { n: 1 }, 'the other slot is used');
  slots.write(JSON.stringify({ n: 3 })); // into slot 0
  slots.write(JSON.stringify({ n: 4 })); // slot 1 again: shorter than what is left there
  t.same(JSON.parse(newestSlot(slots.fds)!.text), { n: 4 }, 'a shorter document over a longer one reads back exactly');
  const before = readSlot(slots.fds[1])!.alive;
  await sleep(5);
  slots.heartbeat();
  t.ok(readSlot(slots.fds[1])!.alive > before, 'heartbeat refreshes the alive stamp');
  const junk = openSync(join(dir, 'junk'), 'w+');
  writeFileSync(junk, 'not a slot at all');
  t.equal(readSlot(junk), null, 'not ours: null');
  closeSync(junk);
  for (const fd of slots.fds) closeSync(fd);
});

t.test('names, configuration and the split from socket activation', async (t) => {
  t.equal(fdNames.lease(2049, 77), 'store.lease.2049.77');
  t.equal(kindOfName(fdNames.client('9')), 'client');
  t.equal(kindOfName(fdNames.state(1)), 'state');
  t.equal(kindOfName('store.other'), 'unknown');
  t.notOk(isStoredFdName('relockd.socket'), 'activation names are never store names');
  t.equal(fdStoreConfig({ NOTIFY_SOCKET: '/run/x' }), null, 'no FDSTORE=: off');
  t.equal(fdStoreConfig({ FDSTORE: '10' }), null, 'no NOTIFY_SOCKET: off');
  t.same(fdStoreConfig({ NOTIFY_SOCKET: '/run/x', FDSTORE: '10' }), { socket: '/run/x', max: 10 });
  const env = { LISTEN_PID: '42', LISTEN_FDS: '3', LISTEN_FDNAMES: 'virtlockd.socket:store.lease.1.2:store.state0' };
  t.same(passedStoredFds({ ...env }, 42), [{ fd: 4, name: 'store.lease.1.2' }, { fd: 5, name: 'store.state0' }], 'stored fds by name and number');
  t.same(takeActivation({ ...env }, 42), { main: [3], admin: [] }, 'activation takes only its sockets (stored fds are not "unclaimed")');
});

t.test('a real relockd with an emulated fd store: every lease and connection stored by name, removed when it ends', async (t) => {
  const emu = await FdStoreEmulator.start(join(dir, 'notify.sock'));
  t.teardown(() => emu.stop());
  const d = await startRelockd({ dir: join(dir, 'd1'), env: { NOTIFY_SOCKET: emu.path, FDSTORE: '64' }, logLevel: 'info' });
  t.teardown(() => d.stop());
  const img = join(dir, 'disk.img');
  writeFileSync(img, '');
  // The store is filled once the daemon is ready, which can be after its socket appears.
  let c!: Awaited<ReturnType<FdStoreEmulator['counts']>>;
  await waitFor(async () => (c = await emu.counts()).names.some((n) => n.startsWith('store.listen.')), 30_000, 50);
  t.ok(c.names.includes('store.state0') && c.names.includes('store.state1'), 'the state memfds are stored');
  t.ok(c.names.some((n) => n.startsWith('store.listen.')), 'our listening socket is stored');
  const cl = await LockspaceClient.connect(d.socketPath);
  await cl.register({ uuid: '11111111-2222-3333-4444-555555555555', name: 'vm', id: 1, pid: 2_000_000_001 });
  await cl.acquire('', img);
  c = await emu.counts();
  t.ok(c.names.some((n) => n.startsWith('store.client.')), 'the connection is stored');
  t.ok(c.names.some((n) => n.startsWith('store.lease.')), 'the lease fd is stored');
  await cl.release('', img);
  t.equal(probeOne(img), 'free', 'a release frees the lock at once, although the store still had a copy');
  // The removal is sent before the reply (later only if PID 1's queue was full: then retried).
  await waitFor(async () => !(c = await emu.counts()).names.some((n) => n.startsWith('store.lease.')), 30_000, 50);
  t.notOk(c.names.some((n) => n.startsWith('store.lease.')), 'the lease left the store');
  cl.close();
  await waitFor(async () => !(c = await emu.counts()).names.some((n) => n.startsWith('store.client.')), 30_000, 50);
  t.notOk(c.names.some((n) => n.startsWith('store.client.')), 'the connection left the store');
  await matchLog(t, () => d.logs(), /fd store in use/, 'says the fd store is in use');
});

t.test('without FDSTORE= nothing changes: no fd is sent to the notify socket', async (t) => {
  const rx = await NotifyReceiver.start(join(dir, 'plain-notify.sock'));
  t.teardown(() => rx.stop());
  const d = await startRelockd({ dir: join(dir, 'd2'), env: { NOTIFY_SOCKET: rx.path }, logLevel: 'info' });
  t.teardown(() => d.stop());
  const img = join(dir, 'disk2.img');
  writeFileSync(img, '');
  const cl = await LockspaceClient.connect(d.socketPath);
  await cl.register({ uuid: '11111111-2222-3333-4444-555555555556', name: 'vm', id: 1, pid: 2_000_000_002 });
  await cl.acquire('', img);
  await cl.release('', img);
  cl.close();
  await sleep(200);
  t.ok(rx.messages.some((m) => m.includes('READY=1')), 'sd_notify is used');
  t.notOk(rx.messages.some((m) => m.includes('FDSTORE')), 'no FDSTORE message');
  t.notMatch(d.logs(), /fd store/, 'no fd store');
});
