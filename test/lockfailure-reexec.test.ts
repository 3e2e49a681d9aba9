// Re-exec (SIGUSR1) while a lock space is failing, failed or recovering, on
// a frozen FUSE mount: the state goes through the state document; nothing
// is forgotten (state, since, last good probe, the owner's record) and no
// action runs twice (one killpath `fail`, one `resume`). The re-exec itself
// must not wait for the frozen storage.

import t from 'tap';
import { bindfsAvailable } from './lib/fuse.js';
import { setUp } from './lib/lockfailure.js';
import { KILL_GRACE_MS } from './lib/lockfailure.js';
import { probeOne } from './lib/probe.js';
import { waitFor } from './lib/wait.js';

const count = (lines: string[], word: string) => lines.filter((l) => l.startsWith('killpath') && l.includes(` ${word} `)).length;

const skip = bindfsAvailable();
if (skip) {
  t.fail(`${skip}: the storage-failure suite needs a FUSE mount (CI installs bindfs and fuse3)`);
} else {
  t.test('re-exec while failing', async (t) => {
    const s = await setUp(t, { action: 'killpath', extraArgs: ['--lockspace-failure-timeout', '20'] });
    s.fuse.freeze();
    const before = await s.waitState('failing');
    const t0 = Date.now();
    await s.d.reexec!(30000);
    t.ok(Date.now() - t0 < 6000, `the re-exec did not wait for the frozen storage (${Date.now() - t0} ms)`);
    const after = await s.health();
    t.equal(after?.state, 'failing', 'still failing after the re-exec');
    t.equal(after?.since, before.since, 'since carried over');
    t.equal(after?.lastGood, before.lastGood, 'last good probe carried over (the failure clock does not restart)');
    s.fuse.thaw();
    await s.waitState('healthy');
    t.equal(count(s.calls(), 'fail'), 0, 'no action: it never failed');
    t.same(await s.holders(), [s.owner.pid], 'the owner kept its lease');
    t.equal(probeOne(s.lease), 'held');
  });

  t.test('re-exec while failed with a release stuck in the kernel: refused, transiently', async (t) => {
    const s = await setUp(t, { action: 'killpath' });
    s.fuse.freeze();
    await s.waitState('failed');
    t.ok(await waitFor(async () => (await s.holders()).length === 0, 10000, 50), 'killpath released');
    const before = await s.health();
    // The release's close is stuck in the kernel (FUSE FLUSH, uninterruptible):
    // execve would hang on it, so the re-exec is refused, transiently.
    const refused = await s.admin.reexec();
    t.match(refused, { ok: false }, 'the re-exec is refused while a storage call is stuck');
    t.match(refused.ok ? '' : refused.error, /has not returned: execve would wait for it/, 'with a clear reason');
    const after = await s.health();
    t.equal(after?.state, 'failed', 'still failed');
    t.same(after?.owners.map((o) => [o.owner.pid, o.action, o.phase]), [[s.owner.pid, 'killpath', 'released']], "the owner's record is intact");
    t.equal(after?.since, before?.since);
    await new Promise((r) => setTimeout(r, KILL_GRACE_MS + 500)); // past kill_grace again
    t.equal(count(s.calls(), 'fail'), 1, 'killpath did not run again');
    t.equal(s.owner.exitCode, null, 'the owner was not killed');
    s.fuse.thaw();
    await s.waitState('healthy');
    t.equal(count(s.calls(), 'resume'), 1, 'resumed once');
    t.same(await s.holders(), [s.owner.pid]);
    t.equal(probeOne(s.lease), 'held');
  });

  t.test('re-exec while recovering (resume program running)', async (t) => {
    const s = await setUp(t, { action: 'killpath', resumeDelay: 2 });
    s.fuse.freeze();
    await s.waitState('failed');
    t.ok(await waitFor(async () => (await s.holders()).length === 0, 10000, 50), 'killpath released');
    s.fuse.thaw();
    const rec = await s.waitState('recovering');
    t.ok(await waitFor(async () => (await s.health())?.owners[0]?.phase === 'resuming', 5000, 20), `resume program running (${rec.state})`);
    t.same(await s.holders(), [s.owner.pid], 'lease re-acquired before resume');
    await s.d.reexec!(30000);
    await s.waitState('healthy');
    t.ok(await waitFor(() => count(s.calls(), 'resume') === 1, 5000), 'the resume started before the re-exec finished');
    await new Promise((r) => setTimeout(r, 1000));
    t.equal(count(s.calls(), 'resume'), 1, 'and was not run again');
    t.equal(count(s.calls(), 'fail'), 1);
    t.same(await s.holders(), [s.owner.pid], 'lease held by its owner');
    const after = s.d.logs().split('re-exec: state written, executing')[1] ?? '';
    t.match(after, /"msg":"action runner carried over the re-exec"/, 'the new image adopted the runner and its channel');
    t.match(after, /"event":"resume".*"msg":"killpath program \(resume\) succeeded"/, "the resume program's result reached the new image");
  });

  t.test('re-exec while the killpath program runs (failed)', async (t) => {
    const s = await setUp(t, { action: 'killpath', failDelay: 2 });
    s.fuse.freeze();
    await s.waitState('failed');
    t.ok(await waitFor(() => count(s.calls(), 'fail') === 1, 8000, 20), 'killpath started');
    t.same(await s.holders(), [s.owner.pid], 'not released yet (the program sleeps first)');
    await s.d.reexec!(30000);
    t.ok(await waitFor(async () => (await s.holders()).length === 0, 10000, 50), 'the program released through the new image');
    const afterExec = () => s.d.logs().split('re-exec: state written, executing')[1] ?? '';
    // relockctl release-leases answers after the stuck close's deadline (1 s), then the program exits.
    const reached = await waitFor(() => /"event":"fail".*"msg":"killpath program \(fail\) succeeded"/.test(afterExec()), 8000, 50);
    t.ok(reached, "its result reached the new image (the runner's report waited in the channel across the exec)");
    await new Promise((r) => setTimeout(r, KILL_GRACE_MS + 500));
    t.equal(s.owner.exitCode, null, 'the owner was not killed');
    t.equal(count(s.calls(), 'fail'), 1, 'killpath ran once');
    s.fuse.thaw();
    await s.waitState('healthy');
    t.equal(count(s.calls(), 'resume'), 1, 'resumed once');
    t.same(await s.holders(), [s.owner.pid]);
  });
}
