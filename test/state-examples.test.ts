// The re-exec state examples (state-examples/*.json): each one is a valid
// document, and each one, instantiated with real fds by a stand-in old image
// (test/fixtures/exec-with-state.mjs) that execs relockd into it, comes back
// as a working daemon: every lease held (seen from another process),
// releasable through the protocol, clients still connected, half-received
// requests completed, terminations resumed.

import t from 'tap';
import type { Test } from 'tap';
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { waitExit } from './lib/relockd.js';
import { probeOne } from './lib/probe.js';
import { LockspaceClient } from '../src/protocol/lockspaceClient.js';
import { LOCKSPACE_PROGRAM, LOCKSPACE_VERSION, Proc, codec } from '../src/protocol/lockspace.js';
import { FrameReader, MessageStatus, MessageType, encodePacket } from '../src/rpc/packet.js';
import type { Packet } from '../src/rpc/packet.js';
import { KEEPALIVE_PING, KEEPALIVE_PONG, KEEPALIVE_PROGRAM } from '../src/rpc/connection.js';
import { XdrWriter } from '../src/rpc/xdr.js';
import { validateState } from '../src/state/validate.js';
import { serversOf } from '../src/state/restore.js';
import type { LockPrivateData } from '../src/state/document.js';
import { EXAMPLES, exampleFiles, readExample, sleep, waitFor, spawnHelper, instantiate, asOwner, releaseAs, expectRemote, assertAllHeld } from './lib/stateHarness.js';
import type { Resource, Instance } from './lib/stateHarness.js';


/**
 * After the last owner's RELEASE: the lock is gone (another process gets
 * it), and an AUTOCREATE lease file is unlinked as virtlockd does (virLockSpaceResourceFree;
 * a shared one after upgrading to exclusive). An unlinked file cannot be
 * probed; its name is free for the next acquirer.
 */
function assertFreed(t: Test, inst: Instance, r: Resource, what = 'after the last RELEASE'): void {
  const gone = !existsSync(r.path);
  if (gone) t.pass(`lease file gone ${what}: ${r.path.slice(inst.dir.length)}`);
  else t.equal(probeOne(r.path), 'free', `free ${what}: ${r.path.slice(inst.dir.length)}`);
  if ((r.flags & 2) !== 0) {
    // virtlockd's locks are classic POSIX locks; the release upgrades with an
    // OFD lock, which conflicts with our own classic read lock (see report).
    t.ok(gone, `autocreated lease file unlinked ${what}: ${r.name}`);
  }
}

/** Releases every lease of every resource, owner by owner; each resource is free after its last owner. */
async function releaseEverything(t: Test, inst: Instance): Promise<void> {
  for (const r of inst.resources()) {
    const owners = [...r.owners];
    while (owners.length) {
      t.equal(probeOne(r.path), 'held', `still held while ${owners.length} owner(s) remain: ${r.name}`);
      await releaseAs(inst.socketPath, owners.shift()!, r);
    }
    assertFreed(t, inst, r);
  }
}

function packetsOf(bufs: Buffer[]): Packet[] {
  const reader = new FrameReader();
  reader.push(Buffer.concat(bufs));
  const out: Packet[] = [];
  for (let p = reader.next(); p; p = reader.next()) out.push(p);
  return out;
}

const isPong = (p: Packet) => p.header.prog === KEEPALIVE_PROGRAM && p.header.proc === KEEPALIVE_PONG && p.header.type === MessageType.MESSAGE;

// ---------------------------------------------------------------- the documents

t.test('every example is a valid state document', async (t) => {
  t.ok(exampleFiles.length >= 8, `${exampleFiles.length} examples`);
  for (const f of exampleFiles) {
    const doc = readExample(f);
    t.doesNotThrow(() => validateState(doc), `${f} validates`);
  }
  for (const f of ['virtlockd-9.0.json', 'virtlockd-legacy-server.json', 'relockd-directory-lockspaces.json', 'relockd-shared-owners.json', 'relockd-restricted-client.json', 'relockd-byte-names.json', 'relockd-unregistered-client.json', 'relockd-half-received-request.json', 'relockd-termination-in-progress.json']) {
    t.ok(exampleFiles.includes(f), `${f} exists`);
  }
});

t.test('virtlockd-9.0.json is what virtlockd 9.0 writes', async (t) => {
  const text = readFileSync(join(EXAMPLES, 'virtlockd-9.0.json'), 'utf8');
  const doc = JSON.parse(text);
  t.same(Object.keys(doc), ['daemon', 'defaultLockspace', 'lockspaces', 'magic'], 'top-level keys in order');
  t.same(Object.keys(doc.daemon.servers), ['admin', 'virtlockd'], 'servers sorted by name');
  const serverKeys = ['min_workers', 'max_workers', 'priority_workers', 'max_clients', 'max_anonymous_clients', 'keepaliveInterval', 'keepaliveCount', 'next_client_id', 'services', 'clients'];
  for (const s of ['admin', 'virtlockd']) {
    t.same(Object.keys(doc.daemon.servers[s]), serverKeys, `${s}: server keys in order`);
    t.equal(doc.daemon.servers[s].keepaliveInterval, 4294967295, `${s}: keepaliveInterval is -1 written unsigned`);
  }
  const clients = doc.daemon.servers.virtlockd.clients;
  t.equal(clients.length, 1, 'one client');
  t.same(Object.keys(clients[0]), ['id', 'auth', 'auth_pending', 'readonly', 'nrequests_max', 'conn_time', 'sock', 'privateData'], 'client keys in order');
  t.same(Object.keys(clients[0].privateData), ['restricted', 'ownerPid', 'ownerId', 'ownerName', 'ownerUUID'], 'privateData keys in order');
  t.equal(clients[0].privateData.restricted, true, 'the QEMU connection is restricted');
  t.same(Object.keys(doc.defaultLockspace.resources[0]), ['name', 'path', 'fd', 'lockHeld', 'flags', 'owners'], 'resource keys in order');
  const shared = doc.lockspaces[0].resources[0];
  t.equal(shared.flags, 3, 'directory-lockspace resource is SHARED|AUTOCREATE');
  t.equal(shared.owners.length, 2, 'with two owners');
  t.match(text, /"clients": \[\n\n {8}\]/, "yajl's empty-array layout is kept");
});

t.test('virtlockd-legacy-server.json has the older layout', async (t) => {
  const text = readFileSync(join(EXAMPLES, 'virtlockd-legacy-server.json'), 'utf8');
  const doc = JSON.parse(text);
  t.same(Object.keys(doc), ['server', 'defaultLockspace', 'lockspaces', 'magic'], 'top-level `server`, no `daemon`');
  t.equal(doc.server.keepaliveRequired, false, 'has keepaliveRequired');
  for (const k of ['unlinkUNIX', '"id"', 'conn_time', 'auth_pending', 'max_anonymous_clients', 'next_client_id']) t.notOk(text.includes(k), `no ${k}`);
});

// ---------------------------------------------------------------- instantiated

t.test('virtlockd 9.0 document: classic locks adopted, restricted client kept', async (t) => {
  const inst = await instantiate(t, 'virtlockd-9.0.json');
  t.equal(inst.readyLines()[0]!.boot, 'restored', 'boot: restored');
  assertAllHeld(t, inst);
  const qemu = inst.conns[0]!;
  t.equal((serversOf(inst.doc).virtlockd!.clients[0]!.privateData as LockPrivateData).ownerPid, qemu.helper!.pid, 'owner pid rewritten to the helper');
  const c = qemu.lockspace();
  await c.ping();
  await expectRemote(t, c.register(asOwner(1234)), 29, 7, 'restricted after exec: REGISTER');
  await expectRemote(t, c.acquire('', join(inst.dir, 'x'), 0), 29, 7, 'restricted after exec: ACQUIRE');
  // The classic locks are ours: an ACQUIRE of the same file is refused without opening it.
  const disk = inst.resources()[0]!;
  const other = await LockspaceClient.connect(inst.socketPath);
  await other.register(asOwner(4321));
  await expectRemote(t, other.acquire('', disk.name, 0), 87, 51, 'ACQUIRE of an inherited resource');
  other.close();
  t.equal(probeOne(disk.path), 'held', 'still held after the refused ACQUIRE');
  await releaseEverything(t, inst);
});

t.test('virtlockd legacy (top-level server) document', async (t) => {
  const inst = await instantiate(t, 'virtlockd-legacy-server.json');
  t.equal(inst.readyLines()[0]!.boot, 'restored', 'boot: restored');
  assertAllHeld(t, inst);
  const c = inst.conns[0]!.lockspace();
  await c.ping();
  await expectRemote(t, c.createLockspace(inst.dir), 29, 7, 'restricted after exec');
  await releaseEverything(t, inst);
});

t.test('relockd: directory lockspaces', async (t) => {
  const inst = await instantiate(t, 'relockd-directory-lockspaces.json');
  t.equal(inst.readyLines()[0]!.boot, 'restored', 'boot: restored');
  assertAllHeld(t, inst);
  for (const c of inst.conns) await c.lockspace().ping();
  t.pass('both QEMU connections answer PING');
  // The empty lockspace came back too: usable without CREATE_LOCKSPACE.
  const scsi = inst.doc.lockspaces.find((l) => l.resources.length === 0)!.directory!;
  const c = await LockspaceClient.connect(inst.socketPath);
  t.teardown(() => c.close());
  await c.register(asOwner(31001));
  await c.acquire(scsi, 'lun-0001', 2);
  t.equal(probeOne(join(scsi, 'lun-0001')), 'held', 'new lease in the restored empty lockspace');
  await c.release(scsi, 'lun-0001');
  t.notOk(existsSync(join(scsi, 'lun-0001')), 'and released (lease file unlinked)');
  // A restored exclusive resource is known as held.
  const [first] = inst.resources().filter((r) => r.lockspace !== '');
  await expectRemote(t, c.acquire(first!.lockspace, first!.name, 2), 87, 51, 'ACQUIRE of a restored resource');
  await releaseEverything(t, inst);
});

t.test('relockd: shared owners (duplicates included)', async (t) => {
  const inst = await instantiate(t, 'relockd-shared-owners.json');
  t.equal(inst.readyLines()[0]!.boot, 'restored', 'boot: restored');
  assertAllHeld(t, inst);
  const quorum = inst.resources().find((r) => r.lockspace === '')!;
  t.equal(quorum.owners.length, 3, 'three entries, one pid twice');
  t.equal(probeOne(quorum.path, 'read'), 'free', 'shared: another reader may join');
  // A new shared owner joins the restored resource.
  const c = await LockspaceClient.connect(inst.socketPath);
  t.teardown(() => c.close());
  await c.register(asOwner(32001));
  await c.acquire('', quorum.name, 1);
  await expectRemote(t, c.acquire('', quorum.name, 0), 87, 51, 'exclusive ACQUIRE of the shared resource');
  await c.release('', quorum.name);
  await releaseEverything(t, inst);
});

t.test('relockd: names that are not UTF-8 come back byte for byte (\\udcXX in the document)', async (t) => {
  const inst = await instantiate(t, 'relockd-byte-names.json');
  t.equal(inst.readyLines()[0]!.boot, 'restored', 'boot: restored');
  const [disk, lease] = inst.resources() as unknown as Array<{ path: Buffer; name: Buffer; lockspace: Buffer }>;
  t.same(disk!.path.subarray(-9), Buffer.from('disk-\xff.raw', 'latin1').subarray(-9), 'the image path ends in the byte 0xff');
  t.same(lease!.name, Buffer.from('lease-\xfe', 'latin1'), 'the lease name is lease-\\xfe');
  t.same(readdirSync(lease!.lockspace, { encoding: 'buffer' }), [lease!.name], 'the lease file on disk has exactly those bytes');
  assertAllHeld(t, inst);
  // A new acquire of the same bytes is busy: relockd knows the name exactly.
  const c = await LockspaceClient.connect(inst.socketPath);
  t.teardown(() => c.close());
  await c.register(asOwner(33002));
  await expectRemote(t, c.acquire('', disk!.name, 0), 87, 51, 'ACQUIRE of disk-\\xff.raw');
  await expectRemote(t, c.acquire(lease!.lockspace, lease!.name, 2), 87, 51, 'ACQUIRE of lease-\\xfe');
  await releaseEverything(t, inst);
});

t.test('relockd: restricted client stays restricted', async (t) => {
  const inst = await instantiate(t, 'relockd-restricted-client.json');
  t.equal(inst.readyLines()[0]!.boot, 'restored', 'boot: restored');
  assertAllHeld(t, inst);
  const c = inst.conns[0]!.lockspace();
  const [disk] = inst.resources();
  await expectRemote(t, c.register(asOwner(33001)), 29, 7, 'REGISTER');
  await expectRemote(t, c.restrict(), 29, 7, 'RESTRICT');
  await expectRemote(t, c.newLockspace(join(inst.dir, 'new')), 29, 7, 'NEW');
  await expectRemote(t, c.createResource('', join(inst.dir, 'f')), 29, 7, 'CREATE_RESOURCE');
  await expectRemote(t, c.deleteResource('', join(inst.dir, 'f')), 29, 7, 'DELETE_RESOURCE');
  await expectRemote(t, c.acquire('', join(inst.dir, 'f'), 0), 29, 7, 'ACQUIRE');
  await expectRemote(t, c.release('', disk!.name), 29, 7, 'RELEASE');
  await expectRemote(t, c.createLockspace(inst.dir), 29, 7, 'CREATE_LOCKSPACE');
  await c.ping();
  t.pass('PING still answered');
  t.equal(probeOne(disk!.path), 'held', 'nothing was released by the refused calls');
  await releaseEverything(t, inst);
});

t.test('relockd: unregistered client can REGISTER after the exec', async (t) => {
  const inst = await instantiate(t, 'relockd-unregistered-client.json');
  t.equal(inst.readyLines()[0]!.boot, 'restored', 'boot: restored');
  assertAllHeld(t, inst);
  const u = inst.conns.find((c) => !c.helper)!.lockspace();
  await expectRemote(t, u.acquire('', join(inst.dir, 'img'), 0), 55, 7, 'still unregistered: ACQUIRE');
  await u.register(asOwner(34001));
  const img = join(inst.dir, 'new.img');
  writeFileSync(img, '');
  await u.acquire('', img, 0);
  t.equal(probeOne(img), 'held', 'ACQUIRE after REGISTER on the restored connection');
  await u.release('', img);
  t.equal(probeOne(img), 'free', 'released');
  await u.createLockspace(join(inst.dir, 'more'));
  await releaseEverything(t, inst);
});

t.test('relockd: half-received request completes after the exec', async (t) => {
  const ex = readExample('relockd-half-received-request.json');
  const extClient = ex.relockd!.clients.find((c) => c.pending !== '')!;
  const pending = Buffer.from(extClient.pending, 'base64');
  // The example holds a complete PING, then the head of a REGISTER call.
  const ping = encodePacket({ prog: KEEPALIVE_PROGRAM, vers: 1, proc: KEEPALIVE_PING, type: MessageType.MESSAGE, serial: 0, status: 0 });
  const w = new XdrWriter();
  codec.register.encode(w, { owner: { uuid: 'c0ffee00-1234-4567-89ab-cdef01234567', name: 'vm-new', id: 7, pid: 25001 }, flags: 0 });
  const register = encodePacket({ prog: LOCKSPACE_PROGRAM, vers: LOCKSPACE_VERSION, proc: Proc.REGISTER, type: MessageType.CALL, serial: 0, status: 0 }, Buffer.from(w.bytes()));
  t.same(pending.subarray(0, ping.length), ping, 'pending starts with a whole PING');
  const head = pending.subarray(ping.length);
  t.ok(head.length > 0 && head.length < register.length, `then ${head.length} of the ${register.length} REGISTER bytes`);
  t.same(head, register.subarray(0, head.length), 'which are the head of REGISTER(vm-new)');

  const inst = await instantiate(t, 'relockd-half-received-request.json');
  t.equal(inst.readyLines()[0]!.boot, 'restored', 'boot: restored');
  assertAllHeld(t, inst);
  const raw = inst.conns.find((c) => !c.helper)!;
  await waitFor(() => packetsOf(raw.received).some(isPong), 5000, 'the PONG');
  t.same(packetsOf(raw.received).map((p) => p.header.proc), [KEEPALIVE_PONG], 'the pipelined PING is answered once, REGISTER waits for its tail');
  raw.socket.write(register.subarray(head.length));
  await waitFor(() => packetsOf(raw.received).length >= 2, 5000, 'the REGISTER reply');
  await sleep(300); // anything else that would come
  const got = packetsOf(raw.received);
  t.equal(got.filter(isPong).length, 1, 'exactly one PONG');
  const replies = got.filter((p) => p.header.prog === LOCKSPACE_PROGRAM);
  t.equal(replies.length, 1, 'one REGISTER reply');
  t.match(replies[0]!.header, { proc: Proc.REGISTER, type: MessageType.REPLY, serial: 0, status: MessageStatus.OK }, 'REGISTER succeeded');
  t.equal(got.length, 2, 'nothing else');
  // The connection is registered now (as vm-new, pid 25001).
  const c = raw.lockspace();
  const img = join(inst.dir, 'vm-new.img');
  writeFileSync(img, '');
  await c.acquire('', img, 0);
  t.equal(probeOne(img), 'held', 'the completed REGISTER took effect');
  await c.release('', img);
  await releaseEverything(t, inst);
});

t.test('relockd: termination in progress is resumed', async (t) => {
  const owner = await spawnHelper('idle');
  const inst = await instantiate(t, 'relockd-termination-in-progress.json', { ownerHelpers: [owner] });
  t.equal(inst.readyLines()[0]!.boot, 'restored', 'boot: restored');
  assertAllHeld(t, inst);
  const hung = inst.resources().find((r) => r.lockspace === '')!;
  const shared = inst.resources().find((r) => r.lockspace !== '')!;
  t.same(hung.owners, [owner.pid], 'the terminated owner is our helper');
  await waitFor(() => owner.out().includes('got SIGTERM'), 10000, 'SIGTERM to the owner');
  t.pass('the new image sent SIGTERM to the owner');
  t.equal(probeOne(hung.path), 'held', 'its leases are kept while it still runs');
  owner.child.stdin!.write('exit\n');
  await waitExit(owner.child, 5000);
  await waitFor(() => probeOne(hung.path) === 'free', 10000, 'release after the owner exited');
  t.pass('released once the owner exited');
  t.equal(probeOne(shared.path), 'held', 'the shared resource stays held for its other owner');
  const remaining = { ...shared, owners: shared.owners.filter((p) => p !== owner.pid) };
  t.equal(remaining.owners.length, 1, 'one owner left on the shared resource');
  await releaseAs(inst.socketPath, remaining.owners[0]!, remaining);
  assertFreed(t, inst, shared, 'after its last owner released it');
  t.ok(inst.logs().some((l) => /SIGTERM/.test(String(l.msg))), 'relockd logged the SIGTERM');
});
