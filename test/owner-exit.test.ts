// Owners' exits are events (issue 9 §5): relockd waits on the owner's pidfd
// (a uv_poll_t in the addon) instead of polling, releases the leases as soon
// as the owner is gone, and then logs how it ended (PIDFD_INFO_EXIT). Real
// owner processes: exit codes, SIGKILL, owners handling SIGTERM, and a watch
// carried across a re-exec. (The latency figure comes from
// bench/ownerdeath.ts; timing is not asserted here beyond "no grace timer".)

import t from 'tap';
import { closeSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { startRelockd, waitExit, ROOT } from './lib/relockd.js';
import { probeOne } from './lib/probe.js';
import { waitFor } from './lib/wait.js';
import * as native from '../src/native.js';
import { ownerExit } from '../src/services/ownerExit.js';

// A long owner_term_grace breaks the storage-failure timing rule against the
// default 90 s NFSv4 lease time (docs/storage-failure.md §5): say the lease is longer.
const LONG_GRACE_OK = ['--nfs-lease-time', '300'];

const work = mkdtempSync(join(tmpdir(), 'owner-exit-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));

type TermMode = 'default' | 'ignore' | { exit: number };

/**
 * A real owner: registers ITSELF (as QEMU does on its inherited connection),
 * acquires `img`, prints "ready". On stdin: "exit N" exits with N, "drop"
 * closes its lock connection and keeps running.
 */
function owner(socket: string, img: string, onTerm: TermMode) {
  const term =
    onTerm === 'ignore' ? "process.on('SIGTERM', () => process.stdout.write('term-ignored\\n'));" : onTerm === 'default' ? '' : `process.on('SIGTERM', () => process.exit(${onTerm.exit}));`;
  const code = `
    const { LockspaceClient } = await import(${JSON.stringify(`${ROOT}/dist/src/protocol/lockspaceClient.js`)});
    ${term}
    const c = await LockspaceClient.connect(${JSON.stringify(socket)});
    await c.register({ uuid: '11112222-3333-4444-5555-666677778888', name: 'exiter', id: 4, pid: process.pid });
    await c.acquire('', ${JSON.stringify(img)}, 0);
    process.stdout.write('ready\\n');
    process.stdin.on('data', (d) => {
      const [cmd, arg] = String(d).trim().split(' ');
      if (cmd === 'exit') process.exit(Number(arg));
      if (cmd === 'drop') c.close();
    });
    setInterval(() => {}, 1 << 30);
  `;
  const child = spawn('/usr/bin/env', ['-u', 'NODE_OPTIONS', process.execPath, '--input-type=module', '-e', code], { stdio: ['pipe', 'pipe', 'inherit'] });
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  const ready = new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', () => out.includes('ready') && resolve());
    child.once('exit', (c) => reject(new Error(`owner exited early (${c})`)));
  });
  return { child, ready, out: () => out, send: (s: string) => child.stdin!.write(`${s}\n`) };
}

const ended = (logs: string, how: string) => logs.includes(`"msg":"owner ended: ${how}"`);

t.test('addon: the pidfd watch fires once on exit, close() disarms it, PIDFD_INFO_EXIT has the status', async (t) => {
  const c = spawn('sh', ['-c', 'read x; exit 7'], { stdio: ['pipe', 'ignore', 'ignore'] });
  const fd = native.pidfdOpen(c.pid!);
  t.teardown(() => native.pidfdExited(fd) || c.kill('SIGKILL'));
  t.equal(native.pidfdExited(fd), false, 'running: not readable');
  t.equal(native.pidfdExitInfo(fd), null, 'no exit info while it runs');
  let disarmedFired = false;
  native.watchPidfd(fd, () => (disarmedFired = true)).close();
  let fired = 0;
  const exited = new Promise<void>((resolve) => native.watchPidfd(fd, (err) => (t.equal(err, null), fired++, resolve())));
  c.stdin!.end('go\n');
  await exited;
  t.equal(native.pidfdExited(fd), true, 'readable after exit');
  const e = await ownerExit(fd);
  t.same(e, { how: 'exited with code 7', code: 7 }, 'exit code once reaped (our child: node reaps it)');
  await new Promise((r) => setTimeout(r, 50));
  t.equal(fired, 1, 'fired exactly once');
  t.equal(disarmedFired, false, 'a closed watch never fires');
  const k = spawn('sleep', ['30']);
  const kfd = native.pidfdOpen(k.pid!);
  k.kill('SIGKILL');
  t.same(await ownerExit(kfd), { how: 'killed by SIGKILL', signal: 'SIGKILL', coreDumped: false });
  t.same(await ownerExit(-1), { how: 'exit status unknown (no pidfd)' });
  // Not our child, and its parent does not reap it yet (stopped): the
  // status is not there; once the parent reaps it, it is.
  const parent = spawn('sh', ['-c', 'sleep 0.3 & echo $!; kill -STOP $$; wait'], { stdio: ['ignore', 'pipe', 'ignore'] });
  t.teardown(() => parent.kill('SIGKILL'));
  const grandchild = Number(await new Promise<string>((r) => parent.stdout!.once('data', (b) => r(String(b)))));
  const gfd = native.pidfdOpen(grandchild);
  await new Promise<void>((resolve) => native.watchPidfd(gfd, () => resolve()));
  t.same(await ownerExit(gfd, [0, 10, 20]), { how: 'exit status unknown (not reaped by its parent within 30 ms)' });
  parent.kill('SIGCONT');
  t.same(await ownerExit(gfd), { how: 'exited with code 0', code: 0 }, 'there once its parent reaped it');
});

t.test('addon: bad arguments and fds that are not pidfds', async (t) => {
  t.throws(() => native.watchPidfd('3' as never, () => {}), TypeError);
  t.throws(() => native.watchPidfd(0, 'cb' as never), TypeError);
  t.throws(() => native.pidfdExitInfo(-1), RangeError);
  const fd = openSync(join(work, 'plain'), 'w');
  t.teardown(() => closeSync(fd));
  t.throws(() => native.pidfdExitInfo(fd), { code: 'ENOTTY' }, 'a plain file has no PIDFD_GET_INFO');
  t.throws(() => native.pidfdExited(1 << 20), { code: 'EBADF' });
  t.match((await ownerExit(fd)).how, /^exit status unknown \(the kernel does not report it: ENOTTY\)$/);
});

t.test('addon: a callback that throws reaches uncaughtException, and the process lives on', async (t) => {
  const code = `
    const native = await import(${JSON.stringify(`${ROOT}/dist/src/native.js`)});
    const { spawn } = await import('node:child_process');
    process.on('uncaughtException', (e) => { console.log('caught: ' + e.message); setTimeout(() => console.log('alive'), 20); });
    const c = spawn('true');
    native.watchPidfd(native.pidfdOpen(c.pid), () => { throw new Error('boom'); });
  `;
  const p = spawn('/usr/bin/env', ['-u', 'NODE_OPTIONS', process.execPath, '--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  p.stdout!.on('data', (d) => (out += d));
  p.stderr!.on('data', (d) => (out += d));
  t.ok(await waitExit(p, 10000));
  t.equal(p.exitCode, 0, out);
  t.match(out, /caught: boom\nalive/);
});

t.test('an owner that exits with a code: released at once, "exited with code 7" logged after', async (t) => {
  const d = await startRelockd({ args: ['--term-grace', '20', ...LONG_GRACE_OK] });
  t.teardown(() => d.stop());
  const img = join(work, 'code.raw');
  writeFileSync(img, '');
  const o = owner(d.socketPath, img, 'default');
  t.teardown(() => o.child.kill('SIGKILL'));
  await o.ready;
  t.equal(probeOne(img), 'held');
  o.send('exit 7');
  t.ok(await waitExit(o.child, 5000));
  t.ok(await waitFor(() => probeOne(img) === 'free', 3000, 5), 'released well before any grace timer (20 s)');
  t.ok(await waitFor(() => ended(d.logs(), 'exited with code 7'), 6000), 'exit code logged');
  const logs = d.logs();
  t.ok(logs.indexOf('leases released') < logs.indexOf('owner ended: exited with code 7'), 'release first, then the exit reason');
  // Its exit closed the connection: it was already exiting (PF_EXITING), so nothing to signal.
  t.notMatch(logs, /sent SIGTERM|sent SIGKILL/, 'a dying owner is not signalled');
  t.match(logs, /"outcome":"gone"/);
});

t.test('an owner killed by SIGKILL: released, "killed by SIGKILL" logged', async (t) => {
  const d = await startRelockd({ args: ['--term-grace', '20', ...LONG_GRACE_OK] });
  t.teardown(() => d.stop());
  const img = join(work, 'kill.raw');
  writeFileSync(img, '');
  const o = owner(d.socketPath, img, 'ignore');
  t.teardown(() => o.child.kill('SIGKILL'));
  await o.ready;
  o.child.kill('SIGKILL');
  t.ok(await waitFor(() => probeOne(img) === 'free', 3000, 5), 'released');
  t.ok(await waitFor(() => ended(d.logs(), 'killed by SIGKILL'), 6000), d.logs().slice(-2000));
});

t.test('owners that drop their connection: SIGTERM first, then release; how they ended is logged', async (t) => {
  for (const [mode, how] of [
    [{ exit: 3 }, 'exited with code 3'],
    ['default', 'killed by SIGTERM'],
  ] as const) {
    const d = await startRelockd({ args: ['--term-grace', '20', ...LONG_GRACE_OK] });
    const img = join(work, `drop-${how.replace(/ /g, '-')}.raw`);
    writeFileSync(img, '');
    const o = owner(d.socketPath, img, mode);
    await o.ready;
    o.send('drop');
    t.ok(await waitExit(o.child, 5000), `${how}: owner terminated`);
    t.ok(await waitFor(() => probeOne(img) === 'free', 3000, 5), `${how}: released long before the 20 s grace`);
    t.ok(await waitFor(() => ended(d.logs(), how), 6000), `${how}: logged`);
    const logs = d.logs();
    t.ok(logs.indexOf('sent SIGTERM') < logs.indexOf('leases released'), `${how}: kill first, then release`);
    t.match(logs, /owner exited after SIGTERM/);
    o.child.kill('SIGKILL');
    await d.stop();
  }
});

t.test('a termination carried across a re-exec: the new image re-arms the watch', async (t) => {
  const d = await startRelockd({ args: ['--term-grace', '30', ...LONG_GRACE_OK] });
  t.teardown(() => d.stop());
  const img = join(work, 'reexec.raw');
  writeFileSync(img, '');
  const o = owner(d.socketPath, img, 'ignore');
  t.teardown(() => o.child.kill('SIGKILL'));
  await o.ready;
  o.send('drop');
  t.ok(await waitFor(() => o.out().includes('term-ignored'), 5000), 'SIGTERM sent, ignored');
  await d.reexec!();
  t.equal(probeOne(img), 'held', 'still held: the owner still runs');
  // Re-sent SIGTERM or not, the owner ignores it; its death must be noticed
  // by the new image's watch, not by the 30 s grace timer.
  o.child.kill('SIGKILL');
  t.ok(await waitFor(() => probeOne(img) === 'free', 3000, 5), 'released by the new image right after the exit');
  t.ok(await waitFor(() => ended(d.logs(), 'killed by SIGKILL'), 6000), 'and the exit reason logged by the new image');
  t.notMatch(d.logs(), /sent SIGKILL/, 'no SIGKILL from relockd: the grace time had not run out');
});
