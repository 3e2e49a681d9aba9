// A signal that arrives while relockd re-execs must not end it.
//
// From execve until the new image has installed its handlers every signal has
// its default action; for SIGTERM, SIGHUP, SIGINT, SIGUSR2, SIGPROF ... that
// is to end the process, which drops every lock (before the fix each of them,
// sent right after the exec, killed the daemon). The window is made wide and
// certain here: a --require script sleeps 800 ms in each re-exec'd image
// before relockd's own code runs (after Node's start-up has set the signal
// mask and dispositions back to the defaults, which is what the fix has to
// survive). The signal is sent once the new image has mapped
// relockd_exec_hold.so, i.e. inside that window; the lease must stay held
// (probed from another process) and the signal be handled, late.

import t from 'tap';
import type { Test } from 'tap';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startRelockd } from './lib/relockd.js';
import { probeOne } from './lib/probe.js';
import { matchLog, waitFor } from './lib/wait.js';
import { LockspaceClient } from '../src/protocol/lockspaceClient.js';
import { releaseHeldSignals } from '../src/daemon/execSignals.js';

t.test('a hold library that could not be loaded leaves no trace in the environment', async (t) => {
  // ld.so skips a preload it cannot open; then the library's variables are still set.
  const saved = { LD_PRELOAD: process.env.LD_PRELOAD };
  process.env.LD_PRELOAD = '/nonexistent/relockd_exec_hold.so /some/other.so';
  process.env.RELOCKD_EXEC_HOLD_PRELOAD = '/some/other.so';
  process.env.RELOCKD_EXEC_HOLD = '1,15';
  t.same(releaseHeldSignals(), [], 'nothing pending, nothing discarded');
  t.same([process.env.LD_PRELOAD, process.env.RELOCKD_EXEC_HOLD_PRELOAD, process.env.RELOCKD_EXEC_HOLD], ['/some/other.so', undefined, undefined], 'LD_PRELOAD as it was before, the variables gone');
  process.env.LD_PRELOAD = '/nonexistent/relockd_exec_hold.so';
  process.env.RELOCKD_EXEC_HOLD_PRELOAD = '';
  releaseHeldSignals();
  t.equal(process.env.LD_PRELOAD, undefined, 'no LD_PRELOAD before: none after');
  if (saved.LD_PRELOAD === undefined) delete process.env.LD_PRELOAD;
  else process.env.LD_PRELOAD = saved.LD_PRELOAD;
});

const dir = mkdtempSync(join(tmpdir(), 'relockd-execsig-'));
const slow = join(dir, 'slow-reexec.cjs');
writeFileSync(slow, "if (process.env.RELOCKD_REEXEC !== undefined) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 800);\n");
const d = await startRelockd({ dir, nodeOptions: `--require=${slow}`, logLevel: 'info' });
t.teardown(() => {
  d.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

const img = join(dir, 'disk.img');
writeFileSync(img, '');
const c = await LockspaceClient.connect(d.socketPath);
await c.register({ uuid: '0badc0de-0000-4000-8000-000000000001', name: 'vm-execsig', id: 1, pid: process.pid });
await c.acquire('', img, 0);
t.equal(probeOne(img), 'held', 'the lease is held (probed from another process)');

const readProc = (what: string) => {
  try {
    return readFileSync(`/proc/${d.pid}/${what}`, 'utf8');
  } catch {
    return '';
  }
};
// The exec itself: a new image has a new stack (field 28 of /proc/PID/stat).
const stackStart = () => readProc('stat').split(') ')[1]?.split(' ')[25] ?? '';
const mapsHold = () => readProc('maps').includes('relockd_exec_hold.so');
const completions = () => (d.logs().match(/"msg":"re-exec complete"/g) ?? []).length;
const alive = () => d.child.exitCode === null && d.child.signalCode === null;

/** SIGUSR1, then `sig` inside the new image's start-up; resolves once that image is up. */
async function signalDuringExec(t: Test, sig: NodeJS.Signals): Promise<void> {
  const before = completions();
  const stack0 = stackStart();
  process.kill(d.pid, 'SIGUSR1');
  t.ok(await waitFor(() => stackStart() !== stack0 && mapsHold(), 10_000, 2), 'the new image is starting, with relockd_exec_hold.so preloaded');
  t.equal(completions(), before, 'and has not restored anything yet (still inside the window)');
  process.kill(d.pid, sig);
  t.ok(await waitFor(() => completions() > before || !alive(), 15_000), 're-exec finished');
  t.ok(alive(), `${sig} during the exec did not end the daemon (${d.child.signalCode ?? d.child.exitCode ?? 'running'})`);
  t.equal(probeOne(img), 'held', `the lease is still held after ${sig} (probed from another process)`);
}

t.test('SIGHUP during the exec: the configuration is re-read once the new image is up', async (t) => {
  await signalDuringExec(t, 'SIGHUP');
  await matchLog(t, d.logs, /"msg":"configuration reloaded"/, 'SIGHUP was handled (late)');
});

t.test('SIGUSR2 during the exec: ignored, as always', async (t) => {
  await signalDuringExec(t, 'SIGUSR2');
  await matchLog(t, d.logs, /"signal":"SIGUSR2","msg":"signal ignored"/, 'SIGUSR2 was handled (late)');
});

t.test('SIGPROF (no handler) during the exec: discarded, said in the log', async (t) => {
  await signalDuringExec(t, 'SIGPROF');
  await matchLog(t, d.logs, /"signals":\["SIGPROF"\],"msg":"signals without a handler arrived before the daemon was ready \(during a re-exec\): discarded"/, 'SIGPROF was taken out, not acted on');
  await c.release('', img, 0);
  t.equal(probeOne(img), 'free', 'the client is still served on its old connection: released');
  await c.acquire('', img, 0);
  t.equal(probeOne(img), 'held', 'and acquired again');
});

t.test('SIGHUP in the old image\'s last synchronous stretch: carried across the execve, handled by the new image', async (t) => {
  // No JavaScript runs from the snapshot to execve; Node's own handler would take the signal into a
  // pipe nobody reads again. Here that stretch is stretched to 1.5 s (RELOCKD_TEST_EXEC_STALL_MS).
  const d2 = await startRelockd({ logLevel: 'info', env: { RELOCKD_TEST_EXEC_STALL_MS: '1500' } });
  t.teardown(() => d2.kill('SIGKILL'));
  const img2 = join(d2.dir, 'disk2.img');
  writeFileSync(img2, '');
  const c2 = await LockspaceClient.connect(d2.socketPath);
  await c2.register({ uuid: '0badc0de-0000-4000-8000-000000000002', name: 'vm-stretch', id: 2, pid: process.pid });
  await c2.acquire('', img2, 0);
  const reloads = () => (d2.logs().match(/"msg":"configuration reloaded"/g) ?? []).length;
  const r0 = reloads();
  const wchan = () => {
    try {
      return readFileSync(`/proc/${d2.pid}/wchan`, 'utf8');
    } catch {
      return '';
    }
  };
  process.kill(d2.pid, 'SIGUSR1');
  // Idle, the main thread waits in epoll; in the stall, on a futex.
  t.ok(await waitFor(() => wchan().startsWith('futex'), 5000, 2), 'the main thread waits on a futex');
  await new Promise((r) => setTimeout(r, 50));
  t.ok(wchan().startsWith('futex'), `and still does 50 ms later: the old image is in its last synchronous stretch (${wchan()})`);
  t.equal((d2.logs().match(/"msg":"re-exec complete"/g) ?? []).length, 0, 'no new image yet');
  process.kill(d2.pid, 'SIGHUP');
  await matchLog(t, d2.logs, /"msg":"re-exec complete"/, 're-exec complete');
  await matchLog(t, d2.logs, /"msg":"re-exec complete"[^\n]*\n(?:[^\n]*\n)*?[^\n]*"msg":"configuration reloaded"/, 'the SIGHUP was handled, by the new image');
  t.equal(reloads(), r0 + 1, 'exactly once');
  t.equal(probeOne(img2), 'held', 'lease held');
  c2.close();
});

t.test('SIGTERM during the exec: the shutdown policy (drain) applies, no lock is dropped', async (t) => {
  await signalDuringExec(t, 'SIGTERM');
  await matchLog(t, d.logs, /"signal":"SIGTERM","owners":1,"msg":"draining/, 'SIGTERM was handled (late): draining');
  t.equal(probeOne(img), 'held', 'the lease stays held while draining');
  await c.release('', img, 0);
  t.ok(await waitFor(() => !alive(), 10_000), 'the last lease released: the daemon exits');
  t.equal(d.child.exitCode, 0, 'a clean exit, not a signal death');
  t.equal(probeOne(img), 'free', 'lease free');
  c.close();
});
