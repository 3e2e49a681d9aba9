// What a new host admin tripped on (issue 13 §3), each checked against the
// real daemon and relockctl as separate processes, in temp runtime dirs.

import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRequire } from 'node:module';
import { cleanEnv, ENV_PREFIX, NODE_FLAGS, RELOCKD_BIN, ROOT, startRelockd, waitExit, waitForSocket } from './lib/relockd.js';
import { waitFor } from './lib/wait.js';
import { LockspaceClient } from '../src/protocol/lockspaceClient.js';
import { socketCandidates } from '../src/ctl/connection.js';
import { relockdCodec } from '../src/protocol/relockdAdmin.js';
import { XdrReader, XdrWriter } from '../src/rpc/xdr.js';
import { defaultPaths } from '../src/util/paths.js';

// npm's own range semantics (semver comes with the dev dependencies).
const semver = createRequire(import.meta.url)('semver') as { satisfies(version: string, range: string): boolean };
const CTL = join(ROOT, 'bin', 'relockctl.cjs');
const work = mkdtempSync(join(tmpdir(), 'relockd-newadmin-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));

const relockd = (args: string[], env: NodeJS.ProcessEnv = {}) =>
  spawnSync('/usr/bin/env', [...ENV_PREFIX, process.execPath, ...NODE_FLAGS, RELOCKD_BIN, ...args], { env: cleanEnv(env), encoding: 'utf8', timeout: 20000 });
const relockctl = (args: string[], timeout = 20000) => {
  const t0 = Date.now();
  const r = spawnSync('/usr/bin/env', [...ENV_PREFIX, process.execPath, CTL, ...args], { env: cleanEnv(), encoding: 'utf8', timeout });
  return { ...r, ms: Date.now() - t0 };
};

t.test('command-line values get the configuration file bounds', async (t) => {
  const dir = mkdtempSync(join(work, 'bounds-'));
  for (const [args, re] of [
    [['--storage-timeout', '3000000'], /--storage-timeout 3000000: expected a number of seconds above 0, up to 2147483/],
    [['--storage-timeout', '0'], /--storage-timeout 0: expected/],
    [['--term-grace', '-1'], /--term-grace -1: expected a number of seconds from 0 to 2147483/],
    [['--term-grace', 'abc'], /--term-grace takes a number/],
    [['--max-clients', '0'], /--max-clients 0: expected an integer from 1 to 4294967295/],
    [['--max-clients', '1.5'], /--max-clients 1.5: expected/],
    [['--max-clients', '4294967296'], /--max-clients 4294967296: expected/],
  ] as const) {
    const r = relockd(['--runtime-dir', dir, ...args]);
    t.equal(r.status, 1, `${args.join(' ')} refused`);
    t.match(r.stderr, re);
  }
  // accepted: --term-grace 0 (SIGKILL right after SIGTERM), the largest storage timeout
  const d = await startRelockd({ args: ['--term-grace', '0', '--storage-timeout', '2147483', '--max-clients', '1'] });
  t.teardown(() => d.stop());
  t.pass('--term-grace 0 --storage-timeout 2147483 --max-clients 1 accepted');
});

t.test('relockctl exits after its own timeout; --timeout must be a number', async (t) => {
  // A "daemon" that accepts and never answers (a stopped relockd looks like this).
  const sock = join(work, 'silent.sock');
  const held: net.Socket[] = [];
  const srv = net.createServer((c) => held.push(c));
  await new Promise<void>((r) => srv.listen(sock, r));
  t.teardown(() => {
    held.forEach((c) => c.destroy());
    srv.close();
  });
  const r = relockctl(['--admin-socket', sock, '--timeout', '1', 'status']);
  t.equal(r.signal, null, 'not killed by the test timeout');
  t.equal(r.status, 69, 'EX_UNAVAILABLE');
  t.match(r.stderr, /did not answer CONNECT_OPEN within 1 s/);
  t.ok(r.ms < 10000, `exited ${r.ms} ms after start`);
  for (const bad of ['abc', '0', '-1', '9999999999']) {
    const b = relockctl(['--admin-socket', sock, '--timeout', bad, 'status']);
    t.equal(b.status, 2, `--timeout ${bad}: usage error`);
    t.match(b.stderr, new RegExp(`--timeout takes a number of seconds .* not '${bad}'`));
  }
});

t.test('relockctl finds a daemon started by relockd.socket (relockd-*-sock names) and status shows real paths', async (t) => {
  const dir = mkdtempSync(join(work, 'units-'));
  const main = join(dir, 'relockd-sock');
  const admin = join(dir, 'relockd-admin-sock');
  const child = spawn('/usr/bin/env', [...ENV_PREFIX, 'systemd-socket-activate', `--listen=${main}`, '--fdname=relockd.socket', `--listen=${admin}`, '--fdname=relockd-admin.socket', process.execPath, ...NODE_FLAGS, RELOCKD_BIN, '--runtime-dir', dir], { env: cleanEnv(), stdio: 'ignore' });
  t.teardown(async () => {
    child.kill('SIGKILL');
    await waitExit(child, 5000);
  });
  await waitForSocket(admin);
  // relockd starts on the first connection (socket activation): the status call itself starts it
  const r = relockctl(['--runtime-dir', dir, 'status']);
  t.equal(r.status, 0, `status: ${r.stderr}`);
  t.match(r.stdout, new RegExp(`sockets: +${main} \\(main\\), ${admin} \\(admin\\)`), 'the sockets it really listens on');
  t.notMatch(r.stdout, /virtlockd-sock/, 'no socket path that does not exist');
  const m = relockctl(['--runtime-dir', dir, 'metrics']);
  t.equal(m.status, 0);
  // without --runtime-dir, root looks in relockd's units' place, then virtlockd's (the takeover)
  const c = socketCandidates({ json: false, timeout: 30 }, defaultPaths({}, true), true);
  t.same(c.adminSocket, ['/run/relockd/relockd-admin-sock', '/run/relockd/virtlockd-admin-sock', '/run/libvirt/virtlockd-admin-sock']);
  t.same(c.socket, ['/run/relockd/relockd-sock', '/run/relockd/virtlockd-sock', '/run/libvirt/virtlockd-sock']);
  const none = relockctl(['--runtime-dir', join(dir, 'nothing'), 'status']);
  t.equal(none.status, 69);
  t.match(none.stderr, /looked for .*nothing\/virtlockd-admin-sock, .*nothing\/relockd-admin-sock/, 'says where it looked');
});

t.test('a socket in a missing directory is reported as such; a failed start leaves no pid file', async (t) => {
  const dir = mkdtempSync(join(work, 'missing-'));
  const r = relockd(['--runtime-dir', dir, '--socket', join(dir, 'no', 'such', 'sock')]);
  t.equal(r.status, 6);
  t.match(r.stderr, new RegExp(`cannot create socket ${dir}/no/such/sock: directory ${dir}/no/such does not exist`));
  t.notMatch(r.stderr, /EACCES|\.tmp/);
  t.notOk(existsSync(join(dir, 'virtlockd.pid')), 'no stale pid file');
});

t.test('-d: a failed start names the log file; the log file is where the docs say', async (t) => {
  const dir = mkdtempSync(join(work, 'daemon-'));
  const log = join(dir, 'relockd.log');
  const conf = join(dir, 'c.conf');
  writeFileSync(conf, `log_outputs = "2:file:${log}"\n`);
  const r = relockd(['-d', '-f', conf, '--runtime-dir', dir, '--socket', join(dir, 'missing', 'sock')]);
  t.equal(r.status, 1);
  t.match(r.stderr, new RegExp(`directory ${dir}/missing does not exist\\. For more, see the log \\(${log}\\)`));
  t.match(readFileSync(log, 'utf8'), /startup failed/);
  // nothing configured: an unprivileged daemon logs to $XDG_CACHE_HOME/libvirt/relockd.log (README, relockd(8))
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  t.match(readme, /\/var\/log\/libvirt\/relockd\.log/, 'README names the -d log file');
  t.match(readFileSync(join(ROOT, 'debian', 'man', 'relockd.8'), 'utf8'), /\/var\/log\/libvirt\/relockd\.log/, 'relockd(8) names it');
});

t.test('status while draining after SIGTERM', async (t) => {
  const d = await startRelockd({ logLevel: 'info' });
  t.teardown(() => d.stop());
  const c = await LockspaceClient.connect(d.socketPath);
  t.teardown(() => c.close());
  await c.register({ uuid: '00112233-4455-6677-8899-aabbccddeeff', name: 'vm', id: 1, pid: 73001 });
  const img = join(work, 'drain.img');
  writeFileSync(img, '');
  await c.acquire('', img, 0);
  process.kill(d.pid, 'SIGTERM');
  t.ok(await waitFor(() => d.logs().includes('draining'), 10000, 20));
  const r = relockctl(['--runtime-dir', d.dir, 'status']);
  t.match(r.stdout, /STOPPING: +draining: new acquisitions are refused; exits when the last of 1 lease is released \(shutdown policy drain\)/);
  const j = JSON.parse(relockctl(['--runtime-dir', d.dir, '--json', 'status']).stdout) as { daemon: { stopping: string } };
  t.equal(j.daemon.stopping, 'drain');
  await c.release('', img);
  t.ok(await waitExit(d.child, 10000), `exits once the lease is released\n${d.logs().slice(-1500)}`);
});

t.test('environment-variable errors name the variable', async (t) => {
  const dir = mkdtempSync(join(work, 'env-'));
  const o = relockd(['--runtime-dir', dir], { LIBVIRT_LOG_OUTPUTS: '9:bogus' });
  t.equal(o.status, 1);
  t.match(o.stderr, /environment variable LIBVIRT_LOG_OUTPUTS: invalid value '9:bogus': output '9:bogus' has priority '9'/);
  const f = relockd(['--runtime-dir', dir], { LIBVIRT_LOG_FILTERS: 'x' });
  t.equal(f.status, 1);
  t.match(f.stderr, /environment variable LIBVIRT_LOG_FILTERS: invalid value 'x'/);
  const d = await startRelockd({ env: { LIBVIRT_DEBUG: '7' }, logLevel: null });
  t.teardown(() => d.stop());
  t.ok(await waitFor(() => d.logs().includes('environment variable LIBVIRT_DEBUG'), 10000, 20), 'LIBVIRT_DEBUG=7 warned about, by name');
});

t.test('npm pack is plainly unsupported; engines names only the tested Node line', async (t) => {
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { engines: { node: string } };
  const r = spawnSync('npm', ['pack', '--dry-run', '--ignore-scripts=false'], { cwd: ROOT, encoding: 'utf8', timeout: 60000, env: { ...process.env, npm_config_loglevel: 'error' } });
  t.not(r.status, 0, 'npm pack fails');
  t.match(r.stderr, /relockd is not distributed as an npm package .* Debian package \(npm run package\) or run it from a git checkout/);
  // The shebang's --experimental-permission is Node 20's spelling (later lines renamed it
  // --permission): engines must admit only what CI runs, Node 20.
  t.ok(semver.satisfies(process.versions.node, pkg.engines.node), `this Node (${process.versions.node}) satisfies engines (${pkg.engines.node})`);
  for (const other of ['21.0.0', '22.13.0', '23.5.0', '24.0.0']) t.notOk(semver.satisfies(other, pkg.engines.node), `engines excludes untested Node ${other}`);
  t.match(readFileSync(RELOCKD_BIN, 'utf8').split('\n')[0]!, /--experimental-permission/);
});

t.test('daemon info from an older relockd (no appended fields) still decodes', async (t) => {
  const info = { version: '0.1.0', pid: 1, startedAt: 0, uptimeMs: 0, socket: '/s', adminSocket: '/a', lockClients: 0, adminClients: 0, lockspaces: 1, resources: 0, leases: 0, boot: 'fresh', safeMode: false, daemonTimeout: 0, reexecSupported: true, lastReexec: null, terminations: [], configError: 'bad', stopping: 'drain' };
  const w = new XdrWriter();
  relockdCodec.daemonInfo.encode(w, info);
  const full = w.bytes();
  t.same(relockdCodec.daemonInfo.decode(new XdrReader(full)), info);
  // an old daemon stops before config_error
  const w0 = new XdrWriter();
  relockdCodec.daemonInfo.encode(w0, { ...info, configError: null, stopping: null });
  const old = w0.bytes().subarray(0, w0.bytes().length - 8); // two absent optionals: 4 bytes each
  t.same(relockdCodec.daemonInfo.decode(new XdrReader(old)), { ...info, configError: null, stopping: null });
});
