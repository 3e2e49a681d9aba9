// The re-executor against a small fake host (no daemon): refusals, and a
// failure before execve undone completely. The exec target does not exist, so
// execve fails with ENOENT and this process is never replaced; the real
// re-execs are in reexec*.test.ts.

import t from 'tap';
import pino from 'pino';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Reexecutor } from '../src/daemon/reexec.js';
import type { ReexecHost } from '../src/daemon/reexec.js';
import { LockManager } from '../src/locks/lockManager.js';
import { NativeFileLocker } from '../src/locks/fileLocker.js';
import { StorageGate } from '../src/locks/storageGate.js';
import { StorageClassifier } from '../src/locks/storageClass.js';
import { DaemonMetrics } from '../src/metrics/counters.js';
import { ExecRefusal } from '../src/state/execPlan.js';
import type { ReexecRecord } from '../src/state/document.js';

interface Fake extends ReexecHost {
  notes: string[];
  records: ReexecRecord[];
  resumed: number;
  stopping: string | null;
}

function fakeHost(dir: string): Fake {
  const log = pino({ level: 'silent' });
  const server = (name: string) => ({ name, clients: new Map(), listeners: [], maxClients: 10, holdNew: false });
  const host: Fake = {
    notes: [],
    records: [],
    resumed: 0,
    log,
    lockServer: server('virtlockd') as never,
    adminServer: server('admin') as never,
    manager: new LockManager({ locker: new NativeFileLocker(), gate: new StorageGate({ timeoutMs: 1000, perKeyConcurrency: 4 }), log, classifier: new StorageClassifier(log, 'never') }),
    lockService: { frozen: false, terminations: new Map(), saveContext: () => ({}) as never },
    opts: { quiesceTimeoutMs: 1000 },
    stopping: null,
    version: '0.0.0-test',
    stateFile: join(dir, 'state.json'),
    execPath: join(dir, 'no-such-node'),
    originalArgv: ['node', 'relockd'],
    orphans: [],
    safeMode: false,
    history: [],
    pidFile: null,
    startedAt: Date.now(),
    metrics: new DaemonMetrics(),
    gate: { stuckKeys: () => [] },
    health: { fdsToKeep: () => [], save: () => ({ watches: [], records: [] }) },
    classifier: { save: () => [] },
    settings: () => ({}),
    notify: (m) => host.notes.push(m.split('\n')[0]!),
    recordReexec: (r) => host.records.push(r),
    resumeFrozenTerminations: () => host.resumed++,
  };
  return host;
}

t.test('a stopping daemon refuses, touching nothing', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'relockd-reexecutor-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const host = fakeHost(dir);
  host.stopping = 'drain';
  const r = await new Reexecutor(host).run('SIGUSR1');
  t.same(r, { ok: false, error: 'the daemon is stopping (drain)' });
  t.same(host.notes, []);
  t.same(host.records, []);
  t.equal(host.lockService.frozen, false);
});

t.test('a stop asked for while quiescing: no exec, and the stop is not forgotten', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'relockd-reexecutor-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const host = fakeHost(dir);
  const r = new Reexecutor(host).run('SIGUSR1');
  host.stopping = 'drain'; // a SIGTERM handled while the re-exec waits for requests in flight
  t.same(await r, { ok: false, error: 'the daemon began stopping (drain) during the re-exec, which was therefore not done', transient: false });
  t.equal(existsSync(host.stateFile), false, 'no state file written');
  t.same(host.notes, ['READY=1'], 'systemd told: ready again (never reloading)');
  t.equal(host.stopping, 'drain', 'still stopping');
  t.equal(host.lockService.frozen, false, 'releases flow again (a drain waits for them)');
});

t.test('execve failing: everything undone, the failure recorded, still serving', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'relockd-reexecutor-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const host = fakeHost(dir);
  const rx = new Reexecutor(host);
  const first = rx.run('SIGUSR1');
  const second = rx.run('admin'); // merged into the first
  t.equal(rx.inProgress, true);
  const [a, b] = await Promise.all([first, second]);
  t.equal(a, b, 'the merged request gets the same result');
  t.match(a, { ok: false, error: /ENOENT|no such file/i });
  t.equal(rx.inProgress, false);
  t.equal(existsSync(host.stateFile), false, 'the state file written for the exec is removed');
  t.same(host.notes, ['RELOADING=1', 'READY=1'], 'systemd told: reloading, then ready again');
  t.equal(host.records.length, 1, 'one attempt, one record');
  t.match(host.records[0], { ok: false, trigger: 'SIGUSR1', fromVersion: '0.0.0-test' });
  t.equal(host.resumed, 1, 'frozen terminations resumed');
  t.equal(host.lockService.frozen, false);
  t.equal((host.lockServer as unknown as { holdNew: boolean }).holdNew, false, 'new requests flow again');
});

t.test("an exec target's refusal comes back as it was raised", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'relockd-reexecutor-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const host = fakeHost(dir);
  const planned: string[] = [];
  const r = await new Reexecutor(host).run('handback', undefined, {
    plan: (doc) => {
      planned.push(doc.magic);
      throw new ExecRefusal('not now', true);
    },
  });
  t.same(planned, [String(process.pid)], 'planned on the snapshot of this image');
  t.same(r, { ok: false, error: 'not now', transient: true });
  t.same(host.notes, ['READY=1']);
  t.equal(host.resumed, 1);
});
