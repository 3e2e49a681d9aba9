// relockd's state document → virtlockd 9.0's (the handback conversion):
// what is written, what is refused and why, on the state examples. The real
// virtlockd reading such documents is in test/takeover.test.ts.

import t from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ConversionRefused, toVirtlockdDocument, virtlockdStateFile, VIRTLOCKD_STATE_MAX } from '../src/state/virtlockdDocument.js';
import type { StateDocument } from '../src/state/document.js';
import { parseStateDocument } from '../src/state/documentFormat.js';
import { ROOT } from './lib/relockd.js';

// In memory, as restore and the handback see it (format 2 examples decoded).
const example = (name: string): StateDocument => parseStateDocument(JSON.parse(readFileSync(join(ROOT, 'state-examples', `${name}.json`), 'utf8')));

function refusals(doc: StateDocument, opts = {}): { reasons: string[]; transient: boolean } {
  try {
    toVirtlockdDocument(doc, opts);
  } catch (e) {
    if (e instanceof ConversionRefused) return { reasons: e.refusals.map((r) => r.reason), transient: e.transient };
    throw e;
  }
  return { reasons: [], transient: false };
}

t.test('state file path: virtlockd 9.0 virLockDaemonExecRestartStatePath', async (t) => {
  t.equal(virtlockdStateFile(true, {}, '/root'), '/run/virtlockd-restart-exec.json');
  t.equal(virtlockdStateFile(false, { XDG_RUNTIME_DIR: '/run/user/1000' }, '/home/u'), '/run/user/1000/libvirt/virtlockd-restart-exec.json');
  t.equal(virtlockdStateFile(false, { HOME: '/home/u' }, '/x'), '/home/u/.cache/libvirt/virtlockd-restart-exec.json');
});

t.test('a convertible document: only what virtlockd reads, in its key order', async (t) => {
  const doc = example('relockd-shared-owners');
  const conv = toVirtlockdDocument(doc);
  const out = JSON.parse(conv.text);
  t.same(Object.keys(out), ['daemon', 'defaultLockspace', 'lockspaces', 'magic'], 'no relockd object, 9.0 order');
  t.equal(out.magic, doc.magic, 'magic kept (the pid: execve keeps it)');
  t.same(Object.keys(out.daemon.servers), ['admin', 'virtlockd'].filter((k) => k in (doc.daemon as any).servers));
  const srv = out.daemon.servers.virtlockd;
  t.same(Object.keys(srv), ['min_workers', 'max_workers', 'priority_workers', 'max_clients', 'max_anonymous_clients', 'keepaliveInterval', 'keepaliveCount', 'next_client_id', 'services', 'clients']);
  t.equal(srv.keepaliveInterval, 4294967295);
  for (const c of srv.clients) {
    t.same(Object.keys(c.privateData), ['restricted', 'ownerPid', 'ownerId', 'ownerName', 'ownerUUID'], 'privateData as virtlockd reads it');
    t.equal(c.sock.isClient, true);
  }
  const res = [...out.defaultLockspace.resources, ...out.lockspaces.flatMap((l: any) => l.resources)];
  for (const r of res) t.same(Object.keys(r), ['name', 'path', 'fd', 'lockHeld', 'flags', 'owners']);
  t.equal(conv.resources, res.length);
  const fds = new Set(conv.fds);
  for (const r of res) t.ok(fds.has(r.fd), `lease fd ${r.fd} inherited`);
  const ext = doc.relockd!;
  for (const f of ext.fds.filter((f) => f.kind === 'pidfd' || f.kind === 'pidfile')) t.notOk(fds.has(f.fd), `${f.kind} fd ${f.fd} not inherited (virtlockd has no use for it)`);
  // the shared+autocreate lease is OFD-locked in relockd's hands: a warning, not a refusal
  t.ok(conv.warnings.some((w) => /shared, autocreated and OFD-locked/.test(w)), 'warns about the lease file virtlockd will leave behind');
});

t.test('the calling admin connection is left out (it closes at the exec)', async (t) => {
  const doc = example('relockd-shared-owners');
  const admin = (doc.daemon as any).servers.admin;
  if (!admin) {
    (doc.daemon as any).servers.admin = { ...(doc.daemon as any).servers.virtlockd, clients: [] };
  }
  const a = (doc.daemon as any).servers.admin;
  a.clients = [{ id: 42, auth: 0, auth_pending: false, readonly: false, nrequests_max: 1, sock: { fd: 77, errfd: -1, pid: 0, isClient: true, unlinkUNIX: false }, privateData: {} }];
  const conv = toVirtlockdDocument(doc, { dropAdminClients: new Set([42]) });
  t.same(JSON.parse(conv.text).daemon.servers.admin.clients, []);
  t.notOk(conv.fds.includes(77));
});

t.test('an unregistered lock client is handed over with an owner name virtlockd can save', async (t) => {
  const conv = toVirtlockdDocument(example('relockd-unregistered-client'));
  const cs = JSON.parse(conv.text).daemon.servers.virtlockd.clients;
  const unreg = cs.find((c: any) => c.privateData.ownerId === 0);
  t.ok(unreg, 'the unregistered client is there');
  t.equal(unreg.privateData.ownerName, '', 'ownerName "" (virtlockd 9.0 exits 9 at its next re-exec on a null one)');
  t.equal(unreg.privateData.ownerPid, 0, 'ownerPid 0: virtlockd lets it REGISTER later');
});

t.test('refusals: transient ones clear by themselves, the others need the admin', async (t) => {
  const half = refusals(example('relockd-half-received-request'));
  t.match(half.reasons.join('\n'), /partly received request/);
  t.equal(half.transient, true);

  const term = refusals(example('relockd-termination-in-progress'));
  t.match(term.reasons.join('\n'), /is being terminated/);
  t.equal(term.transient, true);

  const safe = example('relockd-shared-owners');
  safe.relockd!.safeMode = true;
  safe.relockd!.orphans = [{ fd: 99, kind: 'resource', dev: '1', ino: '2' }];
  const s = refusals(safe);
  t.match(s.reasons.join('\n'), /safe mode/);
  t.match(s.reasons.join('\n'), /fds 99/);
  t.equal(s.transient, false);

  const flags = example('relockd-shared-owners');
  flags.defaultLockspace.resources[0]!.flags = 4;
  t.match(refusals(flags).reasons.join('\n'), /flags 0x4 that virtlockd does not know/);

  const dup = example('relockd-shared-owners');
  dup.defaultLockspace.resources.push({ ...dup.defaultLockspace.resources[0]!, fd: 123 });
  t.match(refusals(dup).reasons.join('\n'), /appears twice/);

  const dupSpace = example('relockd-directory-lockspaces');
  dupSpace.lockspaces.push({ ...dupSpace.lockspaces[0]! });
  t.match(refusals(dupSpace).reasons.join('\n'), /appears twice; virtlockd would drop one/);

  const big = example('relockd-shared-owners');
  const r = big.defaultLockspace.resources[0]!;
  for (let i = 0; i < 60_000; i++) big.defaultLockspace.resources.push({ ...r, name: `/big/${i}/${'x'.repeat(100)}`, path: `/big/${i}/${'x'.repeat(100)}`, fd: 1000 + i });
  const b = refusals(big);
  t.match(b.reasons.join('\n'), new RegExp(`virtlockd reads at most ${VIRTLOCKD_STATE_MAX}`));
  t.equal(b.transient, false);
});
