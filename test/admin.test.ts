// The admin socket: the real virt-admin (Debian's libvirt-clients) against
// relockd, and both admin programs at the wire level (libvirt's 0x06900690
// and relockd's own "RELK").

import t from 'tap';
import type { Test } from 'tap';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startRelockd, waitExit } from './lib/relockd.js';
import type { StartedDaemon } from './lib/relockd.js';
import { spawnOwner } from './lib/targets.js';
import { probeOne } from './lib/probe.js';
import { AdminClient } from '../src/protocol/adminClient.js';
import { LockspaceClient } from '../src/protocol/lockspaceClient.js';
import { RemoteError, RpcClient } from '../src/rpc/client.js';
import { ADMIN_PROGRAM, decodeVersion, typedParamValue } from '../src/protocol/admin.js';
import type { TypedParam } from '../src/protocol/admin.js';
import { RELOCKD_ADMIN_PROGRAM } from '../src/protocol/relockdAdmin.js';
import { VERSION } from '../src/version.js';
import { waitFor } from './lib/wait.js';

/** tap's t.rejects pattern for an error reply (its types want an Error). */
const wireError = (wire: Record<string, unknown>) => ({ wire }) as unknown as Error;

const VIRT_ADMIN = '/usr/bin/virt-admin';

const work = mkdtempSync(join(tmpdir(), 'admin-test-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));

const d: StartedDaemon = await startRelockd();
t.teardown(() => d.stop());
const adminPath = d.adminSocketPath!;

const owners: Array<ReturnType<typeof spawnOwner>> = [];
t.teardown(() => owners.forEach((o) => o.child.exitCode === null && o.child.kill('SIGKILL')));
const clients: Array<{ close(): void }> = [];
t.teardown(() => clients.forEach((c) => c.close()));

async function admin(): Promise<AdminClient> {
  const c = await AdminClient.connect(adminPath);
  clients.push(c);
  return c;
}

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function virtAdmin(...args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(VIRT_ADMIN, ['-c', `virtlockd:///system?socket=${adminPath}`, ...args], { timeout: 20000 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** "key   : value" lines (client-info, srv-threadpool-info, srv-clients-info). */
function keyValues(s: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of s.split('\n')) {
    const m = /^\s*([A-Za-z_]+)\s*:\s?(.*)$/.exec(line);
    if (m) out[m[1]!] = m[2]!.trim();
  }
  return out;
}

/** virt-admin's tables: a header, a dashed rule, rows split on 2+ spaces. */
function tableRows(s: string): string[][] {
  const lines = s.split('\n');
  const rule = lines.findIndex((l) => /^-{5,}$/.test(l.trim()));
  return lines
    .slice(rule + 1)
    .map((l) => l.trim())
    .filter(Boolean)
    .map((l) => l.split(/\s{2,}/));
}

const hasVirtAdmin = existsSync(VIRT_ADMIN);

t.test('the admin socket is 0600 and speaks both programs', async (t) => {
  t.equal(statSync(adminPath).mode & 0o777, 0o600, 'socket mode 0600');
  const c = await admin();
  t.equal(decodeVersion(await c.libVersion()), VERSION, 'library version is relockd’s');
  const info = await c.daemonInfo();
  t.equal(info.version, VERSION);
  t.equal(info.pid, d.pid, 'the daemon’s pid');
  t.equal(info.adminSocket, adminPath);
  t.equal(info.socket, d.socketPath);
  t.ok(info.uptimeMs >= 0 && info.startedAt <= Date.now());
  // A program that is not there is still libvirt's RPC error.
  const raw = await RpcClient.connect(adminPath);
  clients.push(raw);
  await t.rejects(raw.call(0x12345678, 1, 1), wireError({ code: 39, message: 'Cannot find program 305419896 version 1' }));
  await t.rejects(raw.call(ADMIN_PROGRAM, 1, 99), wireError({ code: 39, message: 'unknown procedure: 99' }));
  await t.rejects(raw.call(RELOCKD_ADMIN_PROGRAM, 1, 99), wireError({ code: 39, message: 'unknown procedure: 99' }));
});

t.test('virt-admin against relockd', { skip: hasVirtAdmin ? false : 'virt-admin not installed (Debian package libvirt-clients)' }, async (t) => {
  const img = join(work, 'vm1.img');
  writeFileSync(img, '');
  const o = spawnOwner(d.socketPath, [{ path: '', name: img, flags: 0 }], { restrict: true, name: 'vm-virtadmin' });
  owners.push(o);
  await o.ready;
  const ownerPid = o.child.pid!;

  t.test('version and srv-list', async (t) => {
    const v = await virtAdmin('version');
    t.equal(v.code, 0, v.stderr);
    t.match(v.stdout, new RegExp(`Running against daemon: ${VERSION.replace(/\./g, '\\.')}`));
    const l = await virtAdmin('srv-list');
    t.equal(l.code, 0, l.stderr);
    t.same(
      tableRows(l.stdout).map((r) => r[1]),
      ['admin', 'virtlockd'],
      'both servers listed',
    );
  });

  t.test('srv-threadpool-info: one event loop, no workers', async (t) => {
    for (const srv of ['virtlockd', 'admin']) {
      const r = await virtAdmin('srv-threadpool-info', srv);
      t.equal(r.code, 0, r.stderr);
      t.same(keyValues(r.stdout), { minWorkers: '0', maxWorkers: '0', nWorkers: '0', freeWorkers: '0', prioWorkers: '0', jobQueueDepth: '0' }, srv);
    }
    const bad = await virtAdmin('srv-threadpool-set', 'virtlockd', '--max-workers', '4');
    t.equal(bad.code, 1);
    t.match(bad.stderr, 'maxWorkers must not be switched from zero to non-zero');
    const nos = await virtAdmin('srv-threadpool-info', 'nosuch');
    t.equal(nos.code, 1);
    t.match(nos.stderr, "Server not found: No server named 'nosuch'");
  });

  t.test('srv-clients-list and client-info', async (t) => {
    const r = await virtAdmin('srv-clients-list', 'virtlockd');
    t.equal(r.code, 0, r.stderr);
    const rows = tableRows(r.stdout);
    t.equal(rows.length, 1, 'the owner connection');
    const [id, transport, since] = rows[0]!;
    t.equal(transport, 'unix');
    const when = Date.parse(since!.replace(' ', 'T').replace(/([+-]\d\d)(\d\d)$/, '$1:$2'));
    t.ok(Math.abs(when - Date.now()) < 120_000, `connected since ${since} is about now`);

    const ci = await virtAdmin('client-info', 'virtlockd', id!);
    t.equal(ci.code, 0, ci.stderr);
    const kv = keyValues(ci.stdout);
    t.equal(kv.id, id);
    t.equal(kv.transport, 'unix');
    t.equal(kv.readonly, 'no');
    t.equal(kv.unix_process_id, String(ownerPid), 'peer pid');
    t.equal(kv.unix_user_id, String(process.getuid!()), 'peer uid');
    t.equal(kv.unix_group_id, String(process.getgid!()), 'peer gid');
    if (process.getuid!() === 0) t.equal(kv.unix_user_name, 'root');
    t.equal(kv.owner_name, 'vm-virtadmin', 'relockd adds the registered owner');
    t.equal(kv.owner_pid, String(ownerPid));
    t.equal(kv.owner_uuid, '11112222-3333-4444-5555-666677778888');
    t.equal(kv.restricted, 'yes');
    t.equal(kv.owner_leases, '1');

    const adminList = tableRows((await virtAdmin('srv-clients-list', 'admin')).stdout);
    t.ok(adminList.length >= 1, 'virt-admin sees itself (at least) on the admin server');
    const none = await virtAdmin('client-info', 'virtlockd', '99999');
    t.equal(none.code, 1);
    t.match(none.stderr, "Client not found: No client with matching ID '99999'");
  });

  t.test('srv-clients-info and srv-clients-set', async (t) => {
    const r = await virtAdmin('srv-clients-info', 'virtlockd');
    t.equal(r.code, 0, r.stderr);
    t.same(keyValues(r.stdout), { nclients_max: '1024', nclients: '1', nclients_unauth_max: '1024', nclients_unauth: '0' });
    const a = await virtAdmin('srv-clients-info', 'admin');
    t.equal(keyValues(a.stdout).nclients_max, '5000');
    t.ok(Number(keyValues(a.stdout).nclients) >= 1, 'virt-admin itself at least');
    const set = await virtAdmin('srv-clients-set', 'virtlockd', '--max-clients', '2000');
    t.equal(set.code, 0, set.stderr);
    t.equal(keyValues((await virtAdmin('srv-clients-info', 'virtlockd')).stdout).nclients_max, '2000');
    const bad = await virtAdmin('srv-clients-set', 'virtlockd', '--max-clients', '10');
    t.equal(bad.code, 1, 'max below the unauthenticated max is refused');
    t.match(bad.stderr, 'invalid argument: The overall maximum number of clients');
    const back = await virtAdmin('srv-clients-set', 'virtlockd', '--max-clients', '1024');
    t.equal(back.code, 0);
  });

  t.test('daemon-log-filters and daemon-log-outputs drive the log level', async (t) => {
    const f0 = await virtAdmin('daemon-log-filters');
    t.equal(f0.code, 0, f0.stderr);
    t.match(f0.stdout, /Logging filters: *\n/, 'no filters');
    const o0 = await virtAdmin('daemon-log-outputs');
    t.match(o0.stdout, 'Logging outputs: 1:stderr', 'the test daemon starts at debug');

    const setF = await virtAdmin('daemon-log-filters', '--filters', '3:rpc 4:*');
    t.equal(setF.code, 0, setF.stderr);
    t.match((await virtAdmin('daemon-log-filters')).stdout, 'Logging filters: 3:*rpc* 4:***', 'stored the way libvirt 9.0 does');
    // threshold = max(min filter 3, output 1) = warn: a new connection is not logged.
    const before = d.logs().length;
    const c = await LockspaceClient.connect(d.socketPath);
    await c.ping();
    c.close();
    await new Promise((r) => setTimeout(r, 200));
    t.notMatch(d.logs().slice(before), '"client connected"', 'info events are off at warn');

    const badF = await virtAdmin('daemon-log-filters', '--filters', 'x:foo');
    t.equal(badF.code, 1);
    t.match(badF.stderr, "invalid argument: filter 'x:foo' has priority 'x': expected 1 (debug), 2 (info), 3 (warning) or 4 (error)");
    const badO = await virtAdmin('daemon-log-outputs', '--outputs', '1:stderr:extra');
    t.equal(badO.code, 1);
    t.match(badO.stderr, "output '1:stderr:extra' does not fit destination 'stderr'");
    t.match((await virtAdmin('daemon-log-filters')).stdout, 'Logging filters: 3:*rpc* 4:***', 'a refused setting changes nothing');

    // A file output, at debug, next to stderr at error: the file gets what stderr does not.
    const logFile = join(work, 'relockd-admin.log');
    await virtAdmin('daemon-log-filters', '--filters', '1:*');
    const setFile = await virtAdmin('daemon-log-outputs', '--outputs', `1:file:${logFile} 4:stderr`);
    t.equal(setFile.code, 0, setFile.stderr);
    t.match((await virtAdmin('daemon-log-outputs')).stdout, `Logging outputs: 1:file:${logFile} 4:stderr`);
    const before1 = d.logs().length;
    const c1 = await LockspaceClient.connect(d.socketPath);
    await c1.ping();
    c1.close();
    t.ok(await waitFor(() => existsSync(logFile) && readFileSync(logFile, 'utf8').includes('"client connected"')), 'the file output gets info events');
    t.notMatch(d.logs().slice(before1), '"client connected"', 'stderr (at error) does not');

    const setO = await virtAdmin('daemon-log-outputs', '--outputs', '2:stderr');
    t.equal(setO.code, 0, setO.stderr);
    t.match((await virtAdmin('daemon-log-outputs')).stdout, 'Logging outputs: 2:stderr');
    const clear = await virtAdmin('daemon-log-filters', '--filters', '');
    t.equal(clear.code, 0, clear.stderr);
    // threshold = max(default 1, output 2) = info: connections are logged again, debug is not.
    const before2 = d.logs().length;
    const c2 = await LockspaceClient.connect(d.socketPath);
    await c2.ping();
    c2.close();
    t.ok(await waitFor(() => d.logs().slice(before2).includes('"client connected"')), 'info events are back');
    await virtAdmin('daemon-log-outputs', '--outputs', '');
    t.match((await virtAdmin('daemon-log-outputs')).stdout, 'Logging outputs: 1:stderr', 'empty restores the default');
  });

  t.test('daemon-timeout is stored on the daemon', async (t) => {
    const r = await virtAdmin('daemon-timeout', '--timeout', '45');
    t.equal(r.code, 0, r.stderr);
    const c = await admin();
    t.equal((await c.daemonInfo()).daemonTimeout, 45);
    await virtAdmin('daemon-timeout', '--timeout', '0');
    t.equal((await c.daemonInfo()).daemonTimeout, 0);
  });

  t.test('daemon-timeout makes an idle daemon exit', async (t) => {
    const idle = await startRelockd();
    t.teardown(() => idle.stop());
    const r = await new Promise<Run>((resolve) =>
      execFile(VIRT_ADMIN, ['-c', `virtlockd:///system?socket=${idle.adminSocketPath}`, 'daemon-timeout', '--timeout', '1'], (err, stdout, stderr) =>
        resolve({ code: err ? 1 : 0, stdout, stderr }),
      ),
    );
    t.equal(r.code, 0, r.stderr);
    t.ok(await waitExit(idle.child, 10000), 'exited once idle for 1 s');
    t.equal(idle.child.exitCode, 0);
  });

  t.test('srv-update-tls: there is no TLS', async (t) => {
    const r = await virtAdmin('srv-update-tls', 'virtlockd');
    t.equal(r.code, 1);
    t.match(r.stderr, 'no tls service found');
  });

  t.test('client-disconnect of an owner connection ends the owner and frees its lease', async (t) => {
    t.equal(probeOne(img), 'held');
    const id = tableRows((await virtAdmin('srv-clients-list', 'virtlockd')).stdout)[0]![0]!;
    const r = await virtAdmin('client-disconnect', 'virtlockd', id);
    t.equal(r.code, 0, r.stderr);
    t.match(r.stdout, `Client '${id}' disconnected`);
    t.ok(await waitExit(o.child, 10000), 'the owner was terminated (SIGTERM), as virtlockd does');
    t.equal(o.child.signalCode, 'SIGTERM');
    t.ok(await waitFor(() => probeOne(img) === 'free', 10000), 'its lease is released');
    const after = tableRows((await virtAdmin('srv-clients-list', 'virtlockd')).stdout);
    t.equal(after.length, 0, 'the client is gone');
  });
});

t.test('libvirt admin program at the wire level', async (t) => {
  const c = await admin();
  const servers = await c.listServers();
  t.same(servers, { servers: ['admin', 'virtlockd'], ret: 2 });
  t.same(await c.listServers(0), { servers: [], ret: 2 }, 'need_results 0: only the count');
  t.equal(await c.lookupServer('virtlockd'), 'virtlockd');
  await t.rejects(c.lookupServer('nope'), wireError({ code: 95, domain: 7, message: "Server not found: No server named 'nope'" }));
  await t.rejects(c.listServers(1, 1), wireError({ code: 8, domain: 62, message: 'unsupported flags (0x1) in function adminConnectListServers' }));
  await t.rejects(c.open(4), wireError({ code: 8, domain: 62, message: 'unsupported flags (0x4) in function adminDispatchConnectOpen' }));

  const lock = await LockspaceClient.connect(d.socketPath);
  clients.push(lock);
  await lock.register({ uuid: '00112233-4455-6677-8899-aabbccddeeff', name: 'wirevm', id: 3, pid: 4242 });
  const list = await c.listClients('virtlockd');
  t.equal(list.ret, 1);
  const ref = list.clients[0]!;
  t.equal(ref.srv, 'virtlockd');
  t.equal(ref.transport, 0, 'unix');
  t.same(await c.lookupClient('virtlockd', ref.id), ref);
  const info = Object.fromEntries((await c.clientInfo(ref)).map((p: TypedParam) => [p.field, typedParamValue(p)]));
  t.equal(info.unix_process_id, process.pid, 'peer pid is ours');
  t.equal(info.owner_name, 'wirevm');
  t.equal(info.owner_pid, 4242);
  t.equal(info.restricted, false);
  const types = Object.fromEntries((await c.clientInfo(ref)).map((p: TypedParam) => [p.field, p.type]));
  t.match(types, { readonly: 'boolean', unix_user_id: 'int', unix_group_id: 'int', unix_process_id: 'int' }, "libvirt's types");

  const limits = Object.fromEntries((await c.clientLimits('virtlockd')).map((p) => [p.field, p]));
  t.same(limits.nclients, { field: 'nclients', type: 'uint', value: 1 });
  await t.rejects(c.setClientLimits('virtlockd', [{ field: 'bogus', type: 'uint', value: 1 }]), wireError({ code: 74, message: "argument unsupported: parameter 'bogus' not supported" }));
  await t.rejects(c.setClientLimits('virtlockd', [{ field: 'nclients_max', type: 'int', value: 1 }]), wireError({ code: 8 }));

  // The limit is live: at nclients_max, new connections wait in the backlog.
  await c.setClientLimits('virtlockd', [
    { field: 'nclients_max', type: 'uint', value: 1 },
    { field: 'nclients_unauth_max', type: 'uint', value: 1 },
  ]);
  const waiting = await LockspaceClient.connect(d.socketPath);
  clients.push(waiting);
  const pong = waiting.ping().then(() => 'pong');
  t.equal(await Promise.race([pong, new Promise((r) => setTimeout(() => r('waiting'), 400))]), 'waiting', 'not accepted at the limit');
  await c.setClientLimits('virtlockd', [
    { field: 'nclients_max', type: 'uint', value: 1024 },
    { field: 'nclients_unauth_max', type: 'uint', value: 1024 },
  ]);
  t.equal(await pong, 'pong', 'accepted once the limit is raised');
  waiting.close();

  t.same(await c.loggingFilters(), { filters: null, nfilters: 0 });
  await c.setLoggingFilters('1:util +2:rpc');
  t.same(await c.loggingFilters(), { filters: '1:*util* 2:*rpc* ', nfilters: 2 });
  await c.setLoggingFilters(null);
  t.same(await c.loggingOutputs(), { outputs: '1:stderr', noutputs: 1 });

  await c.clientClose(ref);
  t.ok(await waitFor(() => lock.rpc.closed), 'CLIENT_CLOSE closes the connection');
  await t.rejects(c.clientClose(ref), wireError({ code: 96, message: `Client not found: No client with matching ID '${ref.id}'` }));

  const bye = await admin();
  await bye.closeConnection();
  t.ok(await waitFor(() => bye.rpc.closed), 'CONNECT_CLOSE: the daemon closes after its reply');
});

t.test("relockd's program: lock spaces, resources with owners, clients", async (t) => {
  const c = await admin();
  const space = join(work, 'lockd');
  const img = join(work, 'shared.img');
  writeFileSync(img, '');
  // QEMU-style: the owner registers itself on its own (restricted) connection...
  const o = spawnOwner(d.socketPath, [], { restrict: true, name: 'vm-ours' });
  owners.push(o);
  await o.ready;
  const pid = o.child.pid!;
  // ...and libvirtd acquires on its behalf on a separate connection, then closes.
  const libvirtd = await LockspaceClient.connect(d.socketPath);
  await libvirtd.createLockspace(space);
  await libvirtd.register({ uuid: '11112222-3333-4444-5555-666677778888', name: 'vm-ours', id: 7, pid });
  await libvirtd.acquire(space, 'disk0', 2);
  await libvirtd.acquire('', img, 1);
  libvirtd.close();
  await waitFor(async () => (await c.clients('virtlockd')).length === 1);

  const spaces = await c.lockspaces();
  t.same(
    spaces.find((s) => s.dir === space),
    { dir: space, resources: 1, leases: 1 },
  );
  t.ok(spaces.some((s) => s.dir === ''), 'the default lock space');

  const res = await c.resources(space);
  t.equal(res.length, 1);
  const r = res[0]!;
  t.match(r, { lockspace: space, name: 'disk0', path: join(space, 'disk0'), flags: 2 });
  t.equal(r.ino, Number(statSync(join(space, 'disk0')).ino), 'the inode of the lease file');
  t.ok(Math.abs(r.since - Date.now()) < 60_000);
  t.same(r.owners, [{ pid, owner: { uuid: '11112222-3333-4444-5555-666677778888', name: 'vm-ours', id: 7, pid }, terminating: false }], 'owner named from its registered connection');
  const dflt = await c.resources('');
  t.same(
    dflt.filter((x) => x.name === img).map((x) => x.flags),
    [1],
    'shared lease in the default lock space',
  );
  await t.rejects(c.resources('/no/such/space'), wireError({ code: 8, domain: 62, message: "invalid argument: relockd has no lock space '/no/such/space'" }));

  const cl = await c.clients();
  const mine = cl.find((x) => x.server === 'virtlockd')!;
  t.match(mine, { pid, restricted: true, ownerConnection: true, leases: 2, owner: { name: 'vm-ours', pid } });
  t.ok(cl.some((x) => x.server === 'admin' && x.pid === process.pid), 'admin clients too');
  t.same(
    (await c.clients('admin')).every((x) => x.server === 'admin'),
    true,
  );

  const info = await c.daemonInfo();
  t.match(info, { resources: 2, leases: 2, lockClients: 1, safeMode: false, boot: 'fresh' });
  t.ok(info.lockspaces >= 2);

  await t.rejects(c.daemonInfo(1), wireError({ code: 8, domain: 62, message: 'unsupported flags (0x1) in function relockdAdminDispatchGetDaemonInfo' }));

  o.child.kill('SIGKILL');
  await waitExit(o.child, 5000);
  t.ok(await waitFor(async () => (await c.daemonInfo()).resources === 0), 'the owner’s leases go with it');
});

t.test('REEXEC: answered by the new image, leases kept, recorded', async (t) => {
  const img = join(work, 'reexec.img');
  writeFileSync(img, '');
  const o = spawnOwner(d.socketPath, [{ path: '', name: img, flags: 0 }], { restrict: true, name: 'vm-reexec' });
  owners.push(o);
  await o.ready;
  const c = await admin();
  const before = await c.daemonInfo();
  const t0 = Date.now();
  const r = await c.reexec();
  t.same(r.ok, true, JSON.stringify(r));
  t.ok(r.blackoutMs >= 0 && r.blackoutMs < 10_000, `blackout ${r.blackoutMs} ms`);
  t.ok(Date.now() - t0 < 20_000);
  const after = await c.daemonInfo();
  t.equal(after.pid, before.pid, 'same pid');
  t.equal(after.startedAt, before.startedAt, 'uptime is the daemon\'s, not the image\'s');
  t.equal(after.boot, 'restored');
  t.ok(after.lastReexec, 'recorded');
  t.match(after.lastReexec, { result: { ok: true }, trigger: 'admin', toVersion: VERSION });
  t.equal(after.resources, 1, 'the lease survived');
  t.equal(probeOne(img), 'held', 'and is still locked');
  t.match((await c.resources(''))[0]?.owners[0]?.owner, { name: 'vm-reexec' }, 'owner identity carried over');
  o.child.kill('SIGKILL');
  await waitExit(o.child, 5000);
  t.ok(await waitFor(() => probeOne(img) === 'free', 10000));
});

t.test('two REEXEC calls at once merge into one re-exec; both are answered by the new image', async (t) => {
  const a = await admin();
  const b = await admin();
  const before = (await a.daemonInfo()).lastReexec?.at ?? 0;
  const [ra, rb] = await Promise.all([a.reexec(), b.reexec()]);
  t.equal(ra.ok, true, JSON.stringify(ra));
  t.equal(rb.ok, true, JSON.stringify(rb));
  const info = await a.daemonInfo();
  t.ok((info.lastReexec?.at ?? 0) > before, 'a re-exec happened');
  t.equal((d.logs().match(/"msg":"re-exec complete"/g) ?? []).length, (d.logs().match(/"msg":"re-exec requested: quiescing"/g) ?? []).length, 'every requested re-exec completed (no failure, no timeout)');
});

t.test('errors are libvirt error replies', async (t: Test) => {
  const c = await admin();
  try {
    await c.lookupClient('virtlockd', 123456);
    t.fail('expected an error');
  } catch (e) {
    t.ok(e instanceof RemoteError);
    t.match((e as RemoteError).wire, { code: 96, domain: 7, level: 2, str1: 'Client not found: %s', str2: "No client with matching ID '123456'" });
  }
});
