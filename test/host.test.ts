// Host integration against real processes: systemd socket activation
// (systemd-socket-activate), sd_notify messages, pid file, idle timeout,
// signals and the shutdown policies with real lease-holding owners.

import t from 'tap';
import type { Test } from 'tap';
import { mkdtempSync, rmSync, writeFileSync, existsSync, readFileSync, openSync, closeSync, fstatSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { startRelockd, waitExit, waitForSocket, ENV_PREFIX, NODE_FLAGS, RELOCKD_BIN } from './lib/relockd.js';
import { spawnOwner } from './lib/targets.js';
import { probeOne } from './lib/probe.js';
import { NotifyReceiver } from './lib/notify.js';
import { LockspaceClient } from '../src/protocol/lockspaceClient.js';
import { RemoteError } from '../src/rpc/client.js';
import { matchLog } from './lib/wait.js';

const UUID = '00112233-4455-6677-8899-aabbccddeeff';
const work = mkdtempSync(join(tmpdir(), 'host-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));

function daemonArgv(dir: string, extra: string[] = []): string[] {
  return [...ENV_PREFIX, process.execPath, ...NODE_FLAGS, RELOCKD_BIN, '--runtime-dir', dir, '--log-level', 'debug', ...extra];
}

function spawnLogged(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env) {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
  let logs = '';
  child.stdout!.on('data', (d) => (logs += d));
  child.stderr!.on('data', (d) => (logs += d));
  return { child, logs: () => logs };
}

const killHard = (c: ChildProcess) => {
  if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
};

t.test('socket activation through systemd-socket-activate, then a re-exec', async (t) => {
  const dir = mkdtempSync(join(work, 'act-'));
  const sock = join(dir, 'activated.sock');
  const admin = join(dir, 'activated-admin.sock');
  const notify = await NotifyReceiver.start(join(dir, 'notify'));
  t.teardown(() => notify.stop());
  const p = spawnLogged('systemd-socket-activate', ['-l', sock, '-l', admin, '--fdname=relockd.socket:relockd-admin.socket', '-E', `NOTIFY_SOCKET=${notify.path}`, '/usr/bin/env', ...daemonArgv(dir, ['--socket', join(dir, 'unused.sock'), '--admin-socket', join(dir, 'unused-admin.sock')])]);
  t.teardown(() => killHard(p.child));
  await waitForSocket(sock);
  // The first connection makes systemd-socket-activate exec relockd (same pid).
  const c = await LockspaceClient.connect(sock);
  t.teardown(() => c.close());
  await c.register({ uuid: UUID, name: 'act', id: 1, pid: 70001 });
  const img = join(dir, 'act.img');
  writeFileSync(img, '');
  await c.acquire('', img, 0);
  t.equal(probeOne(img), 'held');
  await matchLog(t, () => p.logs(), /"msg":"socket-activated"/);
  t.notOk(existsSync(join(dir, 'unused.sock')), 'no socket of its own was bound');
  const ready = await notify.waitFor((m) => m.startsWith('READY=1'));
  t.match(ready, /STATUS=/, 'READY=1 comes with a STATUS line');

  // Re-exec the socket-activated daemon: listeners come from the state document.
  notify.messages.length = 0;
  process.kill(p.child.pid!, 'SIGUSR1');
  const reloading = await notify.waitFor((m) => m.startsWith('RELOADING=1'));
  t.match(reloading, /MONOTONIC_USEC=\d+/, 'RELOADING=1 with MONOTONIC_USEC');
  await notify.waitFor((m) => m.startsWith('READY=1'));
  t.pass('READY=1 again after the re-exec');
  // /proc/PID/environ is what the image was exec'd with: the re-exec passed
  // our current environment, from which LISTEN_* had been removed.
  t.notMatch(readFileSync(`/proc/${p.child.pid}/environ`, 'utf8'), /LISTEN_(FDS|PID|FDNAMES)=/, 'LISTEN_* unset (nothing exec\'d from us inherits them)');
  t.equal(probeOne(img), 'held');
  await c.release('', img, 0);
  const fresh = await LockspaceClient.connect(sock);
  await fresh.ping();
  fresh.close();
  c.close();
  // Stop: no leases, so it exits; systemd's socket path is not ours to unlink.
  process.kill(p.child.pid!, 'SIGTERM');
  t.ok(await waitExit(p.child, 5000), 'exits on SIGTERM with no leases');
  t.equal(p.child.exitCode, 0);
  await notify.waitFor((m) => m.startsWith('STOPPING=1'));
  t.ok(existsSync(sock), 'the activated socket path is left alone');
});

t.test('an unclaimed activation fd is a clear startup error', async (t) => {
  const dir = mkdtempSync(join(work, 'unclaimed-'));
  const sock = join(dir, 'x.sock');
  const p = spawnLogged('systemd-socket-activate', ['-l', sock, '--fdname=something-else.socket', '/usr/bin/env', ...daemonArgv(dir)]);
  t.teardown(() => killHard(p.child));
  await waitForSocket(sock);
  const s = (await import('node:net')).connect(sock);
  s.on('error', () => {});
  t.ok(await waitExit(p.child, 10000), 'exits');
  s.destroy();
  t.equal(p.child.exitCode, 6);
  await matchLog(t, () => p.logs(), /unclaimed: fd 3 named 'something-else.socket'/);
});

t.test('pid file: a second instance refuses to start, naming the running pid', async (t) => {
  const d = await startRelockd();
  t.teardown(() => d.stop());
  t.equal(readFileSync(join(d.dir, 'virtlockd.pid'), 'utf8'), String(d.pid));
  const second = spawnLogged('/usr/bin/env', daemonArgv(d.dir, ['--socket', join(d.dir, 'second.sock'), '--admin-socket', join(d.dir, 'second-admin.sock')]));
  t.teardown(() => killHard(second.child));
  t.ok(await waitExit(second.child, 10000));
  t.equal(second.child.exitCode, 1);
  await matchLog(t, () => second.logs(), new RegExp(`already running \\(pid ${d.pid}`));
  await d.reexec!();
  const third = spawnLogged('/usr/bin/env', daemonArgv(d.dir, ['--socket', join(d.dir, 'third.sock'), '--admin-socket', join(d.dir, 'third-admin.sock')]));
  t.ok(await waitExit(third.child, 10000));
  t.equal(third.child.exitCode, 1, 'still locked after a re-exec');
});

t.test('a socket another live daemon serves is never unlinked', async (t) => {
  const d = await startRelockd();
  t.teardown(() => d.stop());
  const other = mkdtempSync(join(work, 'other-'));
  const p = spawnLogged('/usr/bin/env', daemonArgv(other, ['--socket', d.socketPath]));
  t.teardown(() => killHard(p.child));
  t.ok(await waitExit(p.child, 10000));
  t.equal(p.child.exitCode, 6);
  await matchLog(t, () => p.logs(), /another daemon is already serving/);
  const c = await LockspaceClient.connect(d.socketPath);
  await c.ping();
  c.close();
  t.pass('the first daemon still serves its socket');
});

t.test('--timeout exits only with no client and no lease', async (t) => {
  t.test('idle: exits, removing socket and pid file', async (t) => {
    const d = await startRelockd({ args: ['--timeout', '1'] });
    t.teardown(() => d.stop());
    t.ok(await waitExit(d.child, 5000), 'exited');
    t.equal(d.child.exitCode, 0);
    t.notOk(existsSync(d.socketPath), 'socket removed');
    t.notOk(existsSync(join(d.dir, 'virtlockd.pid')), 'pid file removed');
  });
  t.test('a lease held without any connection keeps it running', async (t) => {
    const d = await startRelockd({ args: ['--timeout', '1'] });
    t.teardown(() => d.stop());
    const img = join(work, 'timeout.img');
    writeFileSync(img, '');
    const c = await LockspaceClient.connect(d.socketPath);
    await c.register({ uuid: UUID, name: 't', id: 1, pid: 70002 });
    await c.acquire('', img, 0);
    c.close();
    t.notOk(await waitExit(d.child, 3000), 'still running after 3 s');
    t.equal(probeOne(img), 'held');
    const c2 = await LockspaceClient.connect(d.socketPath);
    await c2.register({ uuid: UUID, name: 't', id: 1, pid: 70002 });
    await c2.release('', img, 0);
    c2.close();
    t.ok(await waitExit(d.child, 5000), 'exits once nothing is held');
  });
  t.test('a connected client keeps it running', async (t) => {
    const d = await startRelockd({ args: ['--timeout', '1'] });
    t.teardown(() => d.stop());
    const c = await LockspaceClient.connect(d.socketPath);
    t.notOk(await waitExit(d.child, 2500), 'still running');
    c.close();
    t.ok(await waitExit(d.child, 5000), 'exits after the client left');
  });
});

t.test('under systemd (JOURNAL_STREAM names our stderr) every line carries its syslog priority', async (t) => {
  const dir = mkdtempSync(join(work, 'journal-'));
  const errPath = join(dir, 'stderr');
  const fd = openSync(errPath, 'w');
  const st = fstatSync(fd);
  const p = spawn('/usr/bin/env', daemonArgv(dir, ['--log-level', 'info']), {
    stdio: ['ignore', 'ignore', fd],
    env: { ...process.env, JOURNAL_STREAM: `${st.dev}:${st.ino}` },
  });
  closeSync(fd);
  t.teardown(() => killHard(p));
  await waitForSocket(join(dir, 'virtlockd-sock'));
  process.kill(p.pid!, 'SIGUSR2'); // 'signal ignored' is logged as a warning
  const until = Date.now() + 10000;
  while (!/"level":"warn"/.test(readFileSync(errPath, 'utf8')) && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
  process.kill(p.pid!, 'SIGTERM');
  t.ok(await waitExit(p, 5000));
  const lines = readFileSync(errPath, 'utf8').trim().split('\n');
  t.ok(lines.length > 3);
  t.ok(lines.every((l) => /^<[2-7]>\{"level":/.test(l)), 'every line starts with <N>');
  t.ok(lines.some((l) => l.startsWith('<6>{"level":"info"')), 'info is <6>');
  t.ok(lines.some((l) => l.startsWith('<4>{"level":"warn"')), 'warn is <4>');
});

t.test('-d/--daemon returns only when the daemon is ready, or with its startup error', async (t) => {
  const dir = mkdtempSync(join(work, 'daemonize-'));
  const env = { ...process.env, LIBVIRT_LOG_OUTPUTS: `2:file:${join(dir, 'relockd.log')}` };
  const run = (extra: string[]) => {
    const p = spawn('/usr/bin/env', daemonArgv(dir, ['-d', ...extra]), { stdio: ['ignore', 'pipe', 'pipe'], env });
    let err = '';
    p.stderr!.on('data', (d) => (err += d));
    return { p, err: () => err };
  };
  const first = run([]);
  t.ok(await waitExit(first.p, 15000), 'the invoking process returns');
  t.equal(first.p.exitCode, 0);
  const pid = Number(readFileSync(join(dir, 'virtlockd.pid'), 'utf8'));
  t.teardown(() => {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  });
  t.not(pid, first.p.pid, 'the daemon is another process');
  t.equal(readFileSync(`/proc/${pid}/stat`, 'utf8').split(' ')[5], String(pid), 'in a session of its own');
  // Ready means ready: the socket answers at once.
  const c = await LockspaceClient.connect(join(dir, 'virtlockd-sock'));
  await c.ping();
  c.close();
  const second = run([]);
  t.ok(await waitExit(second.p, 15000));
  t.equal(second.p.exitCode, 1, 'a failing start exits non-zero');
  t.match(second.err(), new RegExp(`relockd: error: another daemon is already running \\(pid ${pid}`), "prints the daemon's own startup error");
  t.match(readFileSync(join(dir, 'relockd.log'), 'utf8'), /"msg":"relockd ready"/, 'logs went to the configured file');
  process.kill(pid, 'SIGTERM');
  const end = Date.now() + 5000;
  while (existsSync(`/proc/${pid}`) && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
  t.notOk(existsSync(join(dir, 'virtlockd.pid')), 'clean exit');
});

t.test('signals: SIGHUP and SIGPIPE never kill; stop policies with real owners', async (t) => {
  t.test('SIGHUP, SIGUSR2, SIGPIPE are survived', async (t) => {
    const d = await startRelockd();
    t.teardown(() => d.stop());
    for (const s of ['SIGHUP', 'SIGUSR2', 'SIGPIPE'] as const) process.kill(d.pid, s);
    t.notOk(await waitExit(d.child, 500), 'alive');
  });

  const withOwner = async (t: Test, policy: string) => {
    const notifyDir = mkdtempSync(join(work, `pol-${policy}-`));
    const notify = await NotifyReceiver.start(join(notifyDir, 'notify'));
    t.teardown(() => notify.stop());
    const d = await startRelockd({ args: ['--shutdown-policy', policy, '--term-grace', '1'], env: { NOTIFY_SOCKET: notify.path } });
    t.teardown(() => d.stop());
    const img = join(notifyDir, 'owned.img');
    writeFileSync(img, '');
    const o = spawnOwner(d.socketPath, [{ path: '', name: img, flags: 0 }], { restrict: true });
    t.teardown(() => killHard(o.child));
    await o.ready;
    t.equal(probeOne(img), 'held');
    return { d, img, o, notify };
  };

  t.test('drain (default): refuses new leases, keeps the held ones, exits after the last release', async (t) => {
    const { d, img, o, notify } = await withOwner(t, 'drain');
    process.kill(d.pid, 'SIGTERM');
    await notify.waitFor((m) => m.startsWith('STOPPING=1'));
    t.notOk(await waitExit(d.child, 800), 'still running while the owner holds its lease');
    t.equal(probeOne(img), 'held', 'lease kept');
    t.equal(o.child.exitCode, null, 'the owner was not killed');
    const other = join(work, 'drain-other.img');
    writeFileSync(other, '');
    const c = await LockspaceClient.connect(d.socketPath);
    await c.register({ uuid: UUID, name: 'late', id: 1, pid: 70003 });
    try {
      await c.acquire('', other, 0);
      t.fail('acquire accepted while draining');
    } catch (e) {
      t.ok(e instanceof RemoteError);
      t.match((e as Error).message, /stopping \(draining\)/);
    }
    c.close();
    await matchLog(t, () => d.logs(), new RegExp(`"ownerPid":${o.child.pid}`), 'the affected owner is logged');
    o.child.kill('SIGKILL'); // the VM shuts down
    t.ok(await waitExit(d.child, 5000), 'exits once drained');
    t.equal(d.child.exitCode, 0);
    t.equal(probeOne(img), 'free');
    t.notOk(existsSync(d.socketPath), 'socket removed');
  });

  t.test('kill-owners: terminates the owner, then releases and exits', async (t) => {
    const { d, img, o } = await withOwner(t, 'kill-owners');
    process.kill(d.pid, 'SIGTERM');
    t.ok(await waitExit(o.child, 5000), 'owner terminated');
    t.ok(await waitExit(d.child, 5000), 'daemon exited');
    t.equal(d.child.exitCode, 0);
    t.equal(probeOne(img), 'free');
    await matchLog(t, () => d.logs(), /sent SIGTERM/);
  });

  t.test('refuse: keeps running and serving (new leases too), exits once nothing is held', async (t) => {
    const { d, img, o } = await withOwner(t, 'refuse');
    process.kill(d.pid, 'SIGTERM');
    t.notOk(await waitExit(d.child, 800), 'still running');
    t.equal(probeOne(img), 'held');
    await matchLog(t, () => d.logs(), /stop deferred/);
    const other = join(work, 'refuse-other.img');
    writeFileSync(other, '');
    const c = await LockspaceClient.connect(d.socketPath);
    await c.register({ uuid: UUID, name: 'late', id: 1, pid: 70004 });
    await c.acquire('', other, 0);
    t.pass('new acquisitions still accepted');
    await c.release('', other, 0);
    c.close();
    o.child.kill('SIGKILL');
    t.ok(await waitExit(d.child, 5000), 'exits once nothing is held');
    t.equal(d.child.exitCode, 0);
  });
});
