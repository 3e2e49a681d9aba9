// The configuration file as the daemon uses it: errors at start name file,
// line, key and expectation; unknown keys are warnings; SIGHUP applies a new
// log level live; configured lock spaces exist after every (re)start.

import t from 'tap';
import { mkdtempSync, rmSync, writeFileSync, statSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { startRelockd, waitExit, ENV_PREFIX, NODE_FLAGS, RELOCKD_BIN } from './lib/relockd.js';
import { LockspaceClient } from '../src/protocol/lockspaceClient.js';
import { matchLog } from './lib/wait.js';

const work = mkdtempSync(join(tmpdir(), 'confd-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));
const UUID = '00112233-4455-6677-8899-aabbccddeeff';

t.test('a bad configuration file stops the start with file, line, key and expectation', async (t) => {
  const dir = mkdtempSync(join(work, 'bad-'));
  const conf = join(dir, 'relockd.conf');
  writeFileSync(conf, '# comment\nlog_level = 3\nmax_clients = "many"\n');
  const child = spawn('/usr/bin/env', [...ENV_PREFIX, process.execPath, ...NODE_FLAGS, RELOCKD_BIN, '--runtime-dir', dir, '-f', conf], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stderr!.on('data', (d) => (out += d));
  t.ok(await waitExit(child, 10000));
  t.equal(child.exitCode, 1);
  t.match(out, new RegExp(`${conf}:3:\\d+: .*'max_clients'`), 'names the file, line and key');
  t.match(out, /integer/, 'says what was expected');
  t.notOk(existsSync(join(dir, 'virtlockd-sock')), 'nothing was started');
  const missing = spawn('/usr/bin/env', [...ENV_PREFIX, process.execPath, ...NODE_FLAGS, RELOCKD_BIN, '--runtime-dir', dir, '-f', join(dir, 'nope.conf')], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out2 = '';
  missing.stderr!.on('data', (d) => (out2 += d));
  t.ok(await waitExit(missing, 10000));
  t.equal(missing.exitCode, 1, 'an explicit -f file must exist');
  t.match(out2, /nope\.conf/);
});

t.test('unknown keys warn; SIGHUP applies a new log level; configured lock spaces are created', async (t) => {
  const dir = mkdtempSync(join(work, 'live-'));
  const conf = join(dir, 'relockd.conf');
  const space = join(dir, 'lockd', 'files');
  writeFileSync(conf, `log_level = 3\nlockspaces = [ "${space}" ]\nno_such_key = 1\n`);
  const d = await startRelockd({ dir, args: ['-f', conf], logLevel: null });
  t.teardown(() => d.stop());
  await new Promise((r) => setTimeout(r, 200));
  await matchLog(t, () => d.logs(), /no_such_key/, 'unknown key named in a warning');
  t.ok(statSync(space).isDirectory(), 'configured lock space created (mkdir -p)');
  // The lock space is known without any CREATE_LOCKSPACE: a VM start after a restart works.
  const c = await LockspaceClient.connect(d.socketPath);
  t.teardown(() => c.close());
  await c.register({ uuid: UUID, name: 'vm', id: 1, pid: 90001 });
  await c.acquire(space, 'lease', 2);
  await c.release(space, 'lease', 0);
  const before = d.logs().length;
  await c.ping();
  t.notMatch(d.logs().slice(before), /"level":"debug"/, 'no debug lines at log_level 3');
  writeFileSync(conf, `log_level = 1\nlockspaces = [ "${space}" ]\n`);
  process.kill(d.pid, 'SIGHUP');
  const deadline = Date.now() + 5000;
  while (!/configuration reloaded/.test(d.logs()) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  await matchLog(t, () => d.logs(), /"changed":\{[^}]*"logLevel":"debug"/, 'reload reports the new level');
  const mark = d.logs().length;
  await c.acquire(space, 'lease2', 2);
  await new Promise((r) => setTimeout(r, 100));
  await matchLog(t, () => d.logs().slice(mark), /"level":"debug"/, 'debug lines appear after SIGHUP');
  writeFileSync(conf, 'max_clients = [ oops\n');
  process.kill(d.pid, 'SIGHUP');
  const d2 = Date.now() + 5000;
  while (!/configuration reload failed/.test(d.logs()) && Date.now() < d2) await new Promise((r) => setTimeout(r, 20));
  await matchLog(t, () => d.logs(), /configuration reload failed: keeping the current settings/);
  t.equal(d.child.exitCode, null, 'a bad file on SIGHUP never kills the daemon');
  await c.release(space, 'lease2', 0);
});
