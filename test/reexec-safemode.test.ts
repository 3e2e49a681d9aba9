// What happens when the re-exec hand-over goes wrong after execve (the old
// image is gone, so there is nobody to fall back to): the new image must
// stay up in SAFE MODE, keep every lock it inherited (no fd closed), keep
// its clients, refuse new acquisitions with a clear error, still allow
// releases of what it could restore, and retry on SIGUSR1. Damage is
// applied by the stand-in old image test/fixtures/exec-with-state.mjs:
// a truncated document, a schema-invalid one, a resource fd closed behind
// our back, a resource fd replaced by another file. Also: a stale document
// (not ours) found at a normal start is moved aside, never trusted.

import t from 'tap';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startRelockd } from './lib/relockd.js';
import { probeOne } from './lib/probe.js';
import { LockspaceClient } from '../src/protocol/lockspaceClient.js';
import { RemoteError } from '../src/rpc/client.js';
import { readExample, waitFor, instantiate, asOwner, releaseAs, expectRemote } from './lib/stateHarness.js';
import type { Instance } from './lib/stateHarness.js';


const freeOrGone = (path: string) => !existsSync(path) || probeOne(path) === 'free';

function fatalSafeMode(inst: Instance, nth: number): Record<string, any> | undefined {
  return inst.logs().filter((l) => l.level === 'fatal' && /^SAFE MODE/.test(String(l.msg)))[nth];
}

// ---------------------------------------------------------------- damaged hand-overs

interface Case {
  name: string;
  example: string;
  args: string[];
  /** Index (default lockspace first) of the resource whose fd the old image damaged. */
  damaged?: number;
  /** The document itself is readable and valid (restore ran, with problems). */
  docValid: boolean;
}

const cases: Case[] = [];
for (const example of ['relockd-directory-lockspaces.json', 'virtlockd-9.0.json']) {
  const n = example.startsWith('virtlockd') ? 0 : 1;
  cases.push(
    { name: `${example}: truncated (not JSON)`, example, args: ['--corrupt', 'json'], docValid: false },
    { name: `${example}: schema-invalid (no lockspaces)`, example, args: ['--corrupt', 'schema'], docValid: false },
    { name: `${example}: resource fd closed behind our back`, example, args: ['--close-fd', `resource:${n}`], damaged: n, docValid: true },
    { name: `${example}: resource fd replaced by another file`, example, args: ['--replace-fd', `resource:${n}`], damaged: n, docValid: true },
  );
}

for (const c of cases) {
  t.test(c.name, async (t) => {
    const inst = await instantiate(t, c.example, { args: c.args });
    const ready = inst.readyLines()[0]!;
    t.equal(ready.boot, 'safe-mode', 'boot: safe-mode');
    const fatal = fatalSafeMode(inst, 0);
    t.ok(fatal, 'a fatal SAFE MODE line');
    t.comment(`SAFE MODE: ${JSON.stringify({ problems: fatal?.problems, orphans: fatal?.orphans, keptFds: fatal?.keptFds })}`);
    t.ok(inst.alive(), 'the daemon stays up');

    const all = inst.resources();
    const damaged = c.damaged !== undefined ? all[c.damaged]! : null;
    const others = all.filter((r) => r !== damaged);
    t.ok(others.length >= 1, `${others.length} undamaged resource(s)`);
    if (damaged) t.equal(probeOne(damaged.path), 'free', 'the damaged resource lost its lock when the old image closed its fd (the damage itself)');
    for (const r of others) t.equal(probeOne(r.path), 'held', `every other lock is held: ${r.path.slice(inst.dir.length)}`);
    if (damaged && c.docValid) {
      t.equal(ready.resources, others.length, 'the damaged resource is not adopted as held');
    }

    // The connections that existed still work.
    for (const conn of inst.conns) await conn.lockspace().ping();
    t.pass(`${inst.conns.length} inherited connection(s) answer PING`);

    // New acquisitions are refused, clearly.
    const nc = await LockspaceClient.connect(inst.socketPath);
    t.teardown(() => nc.close());
    await nc.register(asOwner(41001));
    const img = join(inst.dir, 'new.img');
    writeFileSync(img, '');
    const err = await expectRemote(t, nc.acquire('', img, 0), 29, 51, 'ACQUIRE refused in safe mode');
    t.match(err?.message, /safe mode/, 'the error says why');
    t.equal(probeOne(img), 'free', 'nothing was locked');
    if (damaged) {
      await expectRemote(t, nc.acquire(damaged.lockspace, damaged.name, damaged.flags), 29, 51, 'ACQUIRE of the lost resource refused too');
      t.ok(freeOrGone(damaged.path), 'and not re-locked');
    }

    // RELEASE of restored resources works where the document was valid.
    const victim = others[0]!;
    if (c.docValid) {
      for (const pid of victim.owners) await releaseAs(inst.socketPath, pid, victim);
      t.ok(freeOrGone(victim.path), `RELEASE works for a restored resource: ${victim.name}`);
    } else {
      const rc = await LockspaceClient.connect(inst.socketPath);
      await rc.register(asOwner(victim.owners[0]!));
      try {
        await rc.release(victim.lockspace, victim.name);
        t.fail('RELEASE of a resource that was never restored should fail');
      } catch (e) {
        t.ok(e instanceof RemoteError, `RELEASE refused (nothing was restored): ${(e as Error).message}`);
      } finally {
        rc.close();
      }
      t.equal(probeOne(victim.path), 'held', 'and its lock is still held (kept as an orphan fd)');
    }
    const stillHeld = c.docValid ? others.filter((r) => r !== victim) : others;

    // A later SIGUSR1 retries the hand-over.
    process.kill(inst.pid, 'SIGUSR1');
    await waitFor(() => inst.readyLines().length >= 2 || !inst.alive(), 20000, 'the image after SIGUSR1');
    t.ok(inst.alive(), 'still up after SIGUSR1');
    const again = inst.readyLines()[1]!;
    t.equal(again.pid, inst.pid, 'same pid (it re-exec\'d)');
    const fatal2 = fatalSafeMode(inst, 1);
    const orphans: number[] = fatal2?.orphans ?? fatal2?.keptFds ?? [];
    const problems: string[] = fatal2?.problems ?? [];
    t.comment(`after SIGUSR1: boot=${again.boot} problems=${JSON.stringify(problems)} orphans=${JSON.stringify(orphans)}`);
    if (orphans.length > 0) {
      t.equal(again.boot, 'safe-mode', `still in safe mode: ${orphans.length} inherited fd(s) it cannot interpret`);
    } else {
      // Nothing left in doubt: no orphan, no problem. The retry still says
      // safe mode, because startFromState also ORs in the previous image's
      // safeMode flag, so "send SIGUSR1 to retry" can never succeed.
      t.equal(again.boot, 'restored', 'a retry with no orphan and no problem leaves safe mode');
    }
    for (const r of stillHeld) t.equal(probeOne(r.path), 'held', `still held after the retry: ${r.path.slice(inst.dir.length)}`);
    for (const conn of inst.conns) await conn.lockspace().ping();
    t.pass('the inherited connections still answer PING');
    if (again.boot === 'safe-mode') {
      await expectRemote(t, nc.acquire('', img, 0), 29, 51, 'ACQUIRE still refused after the retry');
    }
  });
}

// ---------------------------------------------------------------- stale documents

for (const variant of ['a valid document of another pid', 'unreadable JSON'] as const) {
  t.test(`a stale state file (${variant}) at a normal start is moved aside, not trusted`, async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'relockd-stale-'));
    const state = join(dir, 'state.json');
    const doc = readExample('relockd-restricted-client.json');
    doc.magic = '1'; // never our pid
    const text = variant === 'unreadable JSON' ? JSON.stringify(doc).slice(0, 200) : JSON.stringify(doc, null, 2);
    writeFileSync(state, text, { mode: 0o600 });
    const d = await startRelockd({ dir, args: ['--state-file', state] });
    t.teardown(async () => {
      await d.stop();
      rmSync(dir, { recursive: true, force: true });
    });
    await waitFor(() => d.logs().includes('relockd ready'), 15000, 'relockd ready');
    const logs = d.logs().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, any>);
    const warn = logs.find((l) => l.msg === 'stale state file moved aside, not trusted');
    t.ok(warn, 'warned');
    t.equal(warn?.level, 'warn', 'at warning level');
    t.match(String(warn?.why), variant === 'unreadable JSON' ? /not valid JSON/ : /magic "1" is not our pid/, `why: ${warn?.why}`);
    const ready = logs.find((l) => l.msg === 'relockd ready')!;
    t.equal(ready.boot, 'fresh', 'a fresh start');
    t.equal(ready.resources, 0, 'nothing adopted from it');
    t.notOk(existsSync(state), 'the state path is free');
    const aside = readdirSync(dir).filter((f) => f.startsWith('state.json.stale-'));
    t.equal(aside.length, 1, `moved to ${aside[0]}`);
    t.equal(readFileSync(join(dir, aside[0]!), 'utf8'), text, 'unchanged, for inspection');
    t.notOk(logs.some((l) => l.level === 'fatal'), 'no safe mode');
    // and it serves normally
    const c = await LockspaceClient.connect(d.socketPath);
    t.teardown(() => c.close());
    await c.register(asOwner(42001));
    const img = join(dir, 'img');
    writeFileSync(img, '');
    await c.acquire('', img, 0);
    t.equal(probeOne(img), 'held', 'acquisitions work');
    await c.release('', img);
  });
}
