// The V8 code cache a re-exec hands to the next image
// (src/daemon/codeCache.ts): a re-exec'd image compiles from it, a corrupt
// or foreign cache is rejected by V8 and the image compiles from source with
// every lease still held, and a clean exit leaves no cache behind.

import t from 'tap';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LockspaceClient } from '../src/protocol/lockspaceClient.js';
import { startRelockd, waitExit } from './lib/relockd.js';
import { probeOne } from './lib/probe.js';
import { waitFor } from './lib/wait.js';

const readyStates = (logs: string): string[] => [...logs.matchAll(/"codeCache":"(\w+)"[^\n]*"msg":"relockd ready"/g)].map((m) => m[1]!);

t.test('re-execs use the code cache; a corrupt one is rejected and nothing is lost', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'codecache-'));
  const d = await startRelockd({ dir: join(dir, 'run'), logLevel: 'debug' });
  let stopped = false;
  t.teardown(async () => {
    if (!stopped) await d.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  const cache = join(dir, 'run', 'relockd-restart-exec.v8cache');
  const disk = join(dir, 'disk.img');
  writeFileSync(disk, '');
  const c = await LockspaceClient.connect(d.socketPath);
  await c.register({ uuid: '00000000-0000-0000-0000-0000000000aa', name: 'vm', id: 1, pid: 10_000_001 });
  await c.acquire('', disk);

  const reexecReady = async () => {
    const n = readyStates(d.logs()).length;
    await d.reexec!();
    t.ok(await waitFor(() => readyStates(d.logs()).length > n, 15000), 'the new image is ready');
    return readyStates(d.logs()).at(-1);
  };
  t.ok(await waitFor(() => existsSync(cache), 15000), 'the first image writes its code cache');
  // A fresh image has never saved or restored a state document: it runs that
  // path once on a copy of its state so that the cache covers it.
  t.ok(await waitFor(() => /"warmed":"document"[^\n]*code cache written/.test(d.logs()), 5000), 'after running the save and restore path once on a copy of its state');
  t.equal(await reexecReady(), 'used', 'the re-exec\'d image compiled from the cache');
  t.equal(probeOne(disk), 'held', 'lease held');

  t.ok(await waitFor(() => (d.logs().match(/code cache written for the next image/g) ?? []).length >= 2, 15000), 'the new image writes its own cache');
  writeFileSync(cache, Buffer.alloc(4096, 0x5a)); // garbage in place of the cache
  t.equal(await reexecReady(), 'rejected', 'V8 rejected the corrupt cache and the image compiled from source');
  t.equal(probeOne(disk), 'held', 'lease still held');
  await c.release('', disk);
  t.equal(probeOne(disk), 'free', 'and released on request: the daemon serves normally');
  c.rpc.close();

  t.ok(await waitFor(() => (d.logs().match(/code cache written for the next image/g) ?? []).length >= 3, 15000), 'this image wrote its cache too');
  d.kill('SIGTERM'); // no lease held: a clean exit
  t.ok(await waitExit(d.child, 15000), 'exited');
  stopped = true;
  t.equal(d.child.exitCode, 0, 'exit status 0');
  t.notOk(existsSync(cache), 'a clean exit removes the cache');
});
