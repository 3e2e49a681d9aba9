// Client limits: at max_clients the daemon stops accepting (connections wait
// in the kernel backlog) and resumes when a client leaves; out of fds
// (EMFILE) it pauses accepting instead of crashing or spinning.

import t from 'tap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { startRelockd, waitForSocket, waitExit, ENV_PREFIX, NODE_FLAGS, RELOCKD_BIN } from './lib/relockd.js';
import { probeOne } from './lib/probe.js';
import { RpcClient } from '../src/rpc/client.js';
import { LockspaceClient } from '../src/protocol/lockspaceClient.js';
import { matchLog } from './lib/wait.js';

const within = <T>(p: Promise<T>, ms: number) =>
  Promise.race([p.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), ms))]);

t.test('at max_clients new connections wait, and are served when a client leaves', async (t) => {
  const d = await startRelockd({ args: ['--max-clients', '3'] });
  t.teardown(() => d.stop());
  const first = await Promise.all([1, 2, 3].map(() => RpcClient.connect(d.socketPath)));
  for (const c of first) await c.ping();
  const waiting = await RpcClient.connect(d.socketPath); // connect() completes: the kernel queues it
  t.teardown(() => [...first, waiting].forEach((c) => c.close()));
  t.notOk(await within(waiting.ping(), 700), 'the fourth client is not served while three are connected');
  await matchLog(t, () => d.logs(), /"why":"limit".*"msg":"accepting paused"/);
  first[0]!.close();
  t.ok(await within(waiting.ping(), 3000), 'served once a client left');
  await matchLog(t, () => d.logs(), /accepting resumed/);
});

t.test('near RLIMIT_NOFILE it pauses accepting instead of hitting EMFILE; service resumes', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'emfile-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const sock = join(dir, 's.sock');
  let logs = '';
  // A low fd limit (Node and libuv need ~25 of them themselves).
  const child = spawn('prlimit', ['--nofile=48:48', '--', '/usr/bin/env', ...ENV_PREFIX, process.execPath, ...NODE_FLAGS, RELOCKD_BIN, '--runtime-dir', dir, '--socket', sock, '--log-level', 'debug', '--max-clients', '1000'], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout!.on('data', (b) => (logs += b));
  child.stderr!.on('data', (b) => (logs += b));
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  await waitForSocket(sock);
  const img = join(dir, 'held.img');
  writeFileSync(img, '');
  const holder = await LockspaceClient.connect(sock);
  await holder.register({ uuid: '00112233-4455-6677-8899-aabbccddeeff', name: 'h', id: 1, pid: 80001 });
  await holder.acquire('', img, 0);
  const flood: RpcClient[] = [];
  for (let i = 0; i < 60; i++) {
    try {
      flood.push(await RpcClient.connect(sock, 2000));
    } catch {
      break;
    }
  }
  await new Promise((r) => setTimeout(r, 500));
  t.match(logs, /"why":"fds".*accepting paused/, 'accepting paused near the fd limit');
  t.notMatch(logs, /uncaught|EMFILE/, 'no EMFILE anywhere');
  t.equal(child.exitCode, null, 'daemon alive');
  t.equal(probeOne(img), 'held', 'lease held');
  flood.forEach((c) => c.close());
  await new Promise((r) => setTimeout(r, 1500));
  const after = await LockspaceClient.connect(sock);
  t.ok(await within(after.ping(), 3000), 'new clients served again');
  after.close();
  await holder.release('', img, 0);
  holder.close();
  child.kill('SIGTERM');
  t.ok(await waitExit(child, 5000));
});
