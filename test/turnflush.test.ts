// Writes batched per event-loop turn (src/turnFlush.ts): flusher order,
// flushers scheduled while flushing, the log's one write per turn, and, with
// the real daemon, that a lease's log line is on disk before its reply
// reaches the client — at the default level, where replies wait behind the
// turn's log lines, with many clients at once.

import t from 'tap';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { atTurnEnd, flushTurnNow, turnIdle } from '../src/turnFlush.js';
import { LogOutputs } from '../src/log.js';
import { LockspaceClient } from '../src/protocol/lockspaceClient.js';
import { startRelockd } from './lib/relockd.js';

t.test('flushers run at the end of the turn, in order, including ones scheduled meanwhile', async (t) => {
  const seen: string[] = [];
  t.ok(turnIdle(), 'nothing pending at first');
  atTurnEnd(() => {
    seen.push('a');
    atTurnEnd(() => seen.push('c'));
  });
  atTurnEnd(() => seen.push('b'));
  t.notOk(turnIdle(), 'pending until the turn ends');
  t.same(seen, [], 'nothing runs synchronously');
  await new Promise((r) => setImmediate(r));
  t.same(seen, ['a', 'b', 'c'], 'in scheduling order, the late one in the same pass');
  t.ok(turnIdle());
});

t.test('a throwing flusher does not stop the others', async (t) => {
  const seen: string[] = [];
  const onErr = (err: Error) => seen.push(`error:${err.message}`);
  const before = process.listeners('uncaughtException');
  process.removeAllListeners('uncaughtException');
  process.on('uncaughtException', onErr);
  atTurnEnd(() => {
    throw new Error('boom');
  });
  atTurnEnd(() => seen.push('after'));
  flushTurnNow();
  await new Promise((r) => setImmediate(r));
  process.removeListener('uncaughtException', onErr);
  for (const l of before) process.on('uncaughtException', l);
  t.same(seen, ['after', 'error:boom'], 'the error reaches the last-resort handler after the others ran');
});

t.test('log lines of one turn go to a file output together, in order, at the end of the turn', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'turnflush-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'log');
  const out = new LogOutputs([{ level: 'info', kind: 'file', path }]);
  for (let i = 0; i < 5; i++) out.write(`{"level":"info","n":${i}}\n`);
  out.write('{"level":"debug","n":"below the output level"}\n');
  t.equal(readFileSync(path, 'utf8'), '', 'nothing written during the turn');
  await new Promise((r) => setImmediate(r));
  t.equal(readFileSync(path, 'utf8'), [0, 1, 2, 3, 4].map((i) => `{"level":"info","n":${i}}\n`).join(''), 'all lines of the turn, in order, none below the level');
  out.write('{"level":"warn","n":"x"}\n');
  out.set([]); // a new set of outputs: pending lines still go where they were meant to
  t.match(readFileSync(path, 'utf8'), /"n":"x"/, 'pending lines are written before the outputs change');
});

t.test('daemon at info: every lease line is on disk before the client has its reply', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'turnflush-d-'));
  const logPath = join(dir, 'relockd.log');
  const conf = join(dir, 'relockd.conf');
  writeFileSync(conf, `log_level = 2\nlog_outputs = "2:file:${logPath}"\n`);
  const d = await startRelockd({ dir: join(dir, 'run'), args: ['-f', conf], logLevel: null });
  t.teardown(async () => {
    await d.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  const N = 16;
  const clients = await Promise.all(Array.from({ length: N }, () => LockspaceClient.connect(d.socketPath)));
  await Promise.all(clients.map((c, i) => c.register({ uuid: `00000000-0000-0000-0000-${String(i + 1).padStart(12, '0')}`, name: `vm${i}`, id: i + 1, pid: 10_000_000 + i })));
  const files = clients.map((_, i) => join(dir, `disk${i}.img`));
  for (const f of files) writeFileSync(f, '');
  let missing = 0;
  for (let round = 0; round < 5; round++) {
    // All clients at once, so that one turn answers several of them.
    await Promise.all(
      clients.map(async (c, i) => {
        await c.acquire('', files[i]!);
        const text = readFileSync(logPath, 'utf8');
        const acquired = text.split('\n').filter((l) => l.includes('"msg":"lease acquired"') && l.includes(`"resource":"${files[i]}"`)).length;
        if (acquired < round + 1) missing++;
        await c.release('', files[i]!);
      }),
    );
  }
  if (missing) t.comment(readFileSync(logPath, "utf8").split("\n").slice(0, 3).join("\n"));
  t.equal(missing, 0, `each of ${N * 5} acquire replies came after its "lease acquired" line was written`);
  for (const c of clients) c.rpc.close();
});
