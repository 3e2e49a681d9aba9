// The action runner (src/health/actionRunner.ts) across relockd's own restarts, against the real
// daemon where a daemon is needed:
// - after a re-exec the runner is still relockd's child but no ChildProcess object knows it: when it
//   dies, relockd reaps it (before, it stayed a zombie until relockd's next start);
// - after a crash-restart from systemd's fd store, the runner's channel is found again by identity
//   among the fds handed back, never by its old number (which names some other fd in the new
//   process: a lease, a client, or one of Node's own). The whole crash path under a real systemd is
//   in test/lib/crashProof.ts (fdstore-crash*.test.ts).

import t from 'tap';
import { closeSync, existsSync, fstatSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startRelockd, ROOT } from './lib/relockd.js';
import { childrenOf } from './lib/lockfailure.js';
import { remapDocument } from '../src/fdstore/remap.js';
import type { StateDocument } from '../src/state/document.js';
import { matchLog } from './lib/wait.js';

const dir = mkdtempSync(join(tmpdir(), 'relockd-runner-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

/** Polls `fn` until it returns a truthy value or `ms` pass; returns the last value. */
async function poll<T>(fn: () => T, ms: number): Promise<T> {
  const end = Date.now() + ms;
  let v = fn();
  while (!v && Date.now() < end) {
    await new Promise((r) => setTimeout(r, 100));
    v = fn();
  }
  return v;
}

const procState = (pid: number): string | null => {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return s.slice(s.lastIndexOf(')') + 2).split(' ')[0]!;
  } catch {
    return null;
  }
};

t.test('after a re-exec, a runner that dies is reaped (no zombie), and a new one is started while nothing is held', async (t) => {
  const d = await startRelockd({ dir: join(dir, 'd1'), logLevel: 'info' });
  t.teardown(() => d.stop());
  const runner = (await poll(() => childrenOf(d.pid)[0], 30_000))!;
  t.ok(runner, `relockd has its action runner (${runner})`);
  await d.reexec!();
  t.same(childrenOf(d.pid), [runner], 'the same runner after the re-exec');
  await matchLog(t, () => d.logs(), /"ourChild":true[^\n]*action runner carried over the re-exec/, 'the new image adopted it as its child');
  process.kill(runner, 'SIGKILL');
  const gone = await poll(() => procState(runner) === null, 30_000);
  t.ok(gone, `the dead runner was reaped (it is not left a zombie: state ${procState(runner) ?? 'gone'})`);
  await matchLog(t, () => d.logs(), new RegExp(`"runnerPid":${runner}[^\\n]*"signal":9[^\\n]*action runner process exited \\(reaped\\)`), 'and its end logged');
  const next = await poll(() => childrenOf(d.pid).find((p) => p !== runner), 30_000);
  t.ok(next, `holding nothing, relockd started a new runner (${next})`);
});

t.test('crash-restart remap: the runner channel is found by identity, never by its old fd number', async (t) => {
  const base = JSON.parse(readFileSync(join(ROOT, 'state-examples', 'relockd-restricted-client.json'), 'utf8')) as StateDocument;
  const empty = (): StateDocument => {
    const doc = structuredClone(base);
    for (const st of Object.values((doc as any).daemon.servers) as any[]) {
      st.clients = [];
      for (const svc of st.services) svc.socks = [];
    }
    doc.defaultLockspace.resources = [];
    doc.lockspaces = [];
    Object.assign(doc.relockd!, { listeners: [], clients: [], resources: [], terminations: [], fds: [], orphans: [] });
    return doc;
  };
  // The stored channel comes back under a new number; any fd serves for its identity.
  const f = join(dir, 'channel');
  const chan = openSync(f, 'w+');
  const other = openSync(join(dir, 'other'), 'w+');
  t.teardown(() => {
    closeSync(chan);
    closeSync(other);
  });
  const st = fstatSync(chan, { bigint: true });
  const saved = { pid: 4242, fd: other, nextId: 3, partial: '', pending: [2] };

  const doc = empty();
  doc.relockd!.health = { watches: [], records: [], runner: { ...saved, dev: String(st.dev), ino: String(st.ino) } };
  const r = remapDocument(doc, [{ fd: chan, name: `store.runner.${st.ino}` }], process.pid);
  t.equal(doc.relockd!.health!.runner?.fd, chan, 'the runner fd is the passed fd with its identity');
  t.ok(r.used.has(chan), 'and counts as used (not a leftover)');

  const old = empty();
  old.relockd!.health = { watches: [], records: [], runner: { ...saved } };
  const r2 = remapDocument(old, [{ fd: chan, name: `store.runner.${st.ino}` }], process.pid);
  t.notOk(old.relockd!.health!.runner, 'a runner recorded without its identity is dropped, not adopted under its old number');
  t.match(r2.dropped.join('\n'), /action runner 4242/, 'and the drop is reported');

  const lost = empty();
  lost.relockd!.health = { watches: [], records: [], runner: { ...saved, dev: String(st.dev), ino: String(st.ino) } };
  remapDocument(lost, [], process.pid);
  t.notOk(lost.relockd!.health!.runner, 'a channel not handed back: no runner');
  t.ok(existsSync(f));
});
