// The daemon works in '/' in every mode (issue 9 §1): relative paths on the
// command line, in the environment and in the configuration file mean the
// directory it was started in — at start, after a re-exec (argv is reused)
// and after SIGHUP — and a relative lock-space path from a client is refused
// instead of being created somewhere under the daemon's working directory.

import t from 'tap';
import { existsSync, mkdtempSync, readFileSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { spawn } from 'node:child_process';
import { ENV_PREFIX, NODE_FLAGS, RELOCKD_BIN, ROOT, cleanEnv, waitExit, waitForSocket } from './lib/relockd.js';
import { probeOne } from './lib/probe.js';
import { waitFor } from './lib/wait.js';
import { LockspaceClient } from '../src/protocol/lockspaceClient.js';
import { RemoteError } from '../src/rpc/client.js';

const work = mkdtempSync(join(tmpdir(), 'cwd-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));
const owner = { uuid: '00112233-4455-6677-8899-aabbccddeeff', name: 'vm', id: 1, pid: 990100 };
const cwdOf = (pid: number) => readlinkSync(`/proc/${pid}/cwd`);
const count = (text: string, re: RegExp) => (text.match(re) ?? []).length;

t.test('foreground, relative paths everywhere: runs in /, re-exec and SIGHUP keep the paths', async (t) => {
  const start = mkdtempSync(join(work, 'fg-'));
  writeFileSync(join(start, 'relockd.conf'), 'log_outputs = "2:file:logs/relockd.log"\n');
  // The entry script relative too, as in `./bin/relockd.cjs` from a checkout
  // (through a link, so that it cannot happen to resolve from / as well).
  symlinkSync(ROOT, join(start, 'app'));
  const script = join('app', relative(ROOT, RELOCKD_BIN));
  const args = ['--runtime-dir', 'rt', '--socket', 'rt/main.sock', '--admin-socket', 'rt/admin.sock', '--pid-file', 'rt/d.pid', '--state-file', 'rt/state.json', '-f', 'relockd.conf'];
  const child = spawn('/usr/bin/env', [...ENV_PREFIX, process.execPath, ...NODE_FLAGS, script, ...args], { cwd: start, stdio: ['ignore', 'pipe', 'pipe'], env: cleanEnv() });
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (out += d));
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  const sock = join(start, 'rt', 'main.sock');
  await waitForSocket(sock, 15000, () => child.exitCode !== null).catch((e: Error) => t.fail(`${e.message}\n${out}`));
  const pid = child.pid!;
  t.equal(cwdOf(pid), '/', 'the foreground daemon works in /');
  t.equal(readFileSync(join(start, 'rt', 'd.pid'), 'utf8').trim(), String(pid), 'pid file where the command line said, relative to the start directory');
  t.ok(existsSync(join(start, 'rt', 'admin.sock')), 'admin socket too');
  const logFile = join(start, 'logs', 'relockd.log');
  t.ok(await waitFor(() => existsSync(logFile) && /relockd ready/.test(readFileSync(logFile, 'utf8'))), "the config file's relative log output is in the start directory");

  const c = await LockspaceClient.connect(sock);
  t.teardown(() => c.close());
  await c.register(owner);
  for (const rel of ['relative/name', 'x', '../up']) {
    try {
      await c.createLockspace(rel);
      t.fail(`created '${rel}'`);
    } catch (e) {
      t.ok(e instanceof RemoteError, 'a protocol error');
      t.equal((e as RemoteError).code, 8, `'${rel}': VIR_ERR_INVALID_ARG`);
      t.equal((e as Error).message, `invalid argument: Lockspace path '${rel}' is not an absolute path`);
    }
  }
  t.notOk(existsSync(join(start, 'relative')) || existsSync('/relative') || existsSync('/x'), 'no directory created anywhere');
  const img = join(start, 'disk.img');
  writeFileSync(img, '');
  await c.acquire('', img, 0);

  process.kill(pid, 'SIGUSR1');
  t.ok(await waitFor(() => count(readFileSync(logFile, 'utf8'), /"msg":"re-exec complete"/g) === 1, 15000), `re-exec completed\n${out}`);
  t.equal(child.exitCode, null, 'same process');
  t.equal(cwdOf(pid), '/', 'still in /');
  t.equal(probeOne(img), 'held', 'the lease survived the re-exec');
  t.equal(readFileSync(join(start, 'rt', 'd.pid'), 'utf8').trim(), String(pid), 'pid file kept');
  await c.ping();
  const again = await LockspaceClient.connect(sock);
  await again.ping();
  again.close();
  t.notOk(existsSync('/rt') || existsSync('/logs'), 'nothing resolved against / after the re-exec');

  process.kill(pid, 'SIGHUP');
  t.ok(await waitFor(() => /"msg":"configuration reloaded"/.test(readFileSync(logFile, 'utf8')), 10000), 'SIGHUP re-read the relative -f file, logging to the same file');
  t.notOk(existsSync('/logs'), 'the relative log output still means the start directory');
  await c.release('', img, 0);
  c.close();
  process.kill(pid, 'SIGTERM');
  t.ok(await waitExit(child, 10000), 'clean exit');
  t.notOk(existsSync(join(start, 'rt', 'd.pid')), 'pid file removed');
});

t.test('-d with relative paths: the daemon child works in / and uses the start directory', async (t) => {
  const start = mkdtempSync(join(work, 'd-'));
  const env = cleanEnv({ LIBVIRT_LOG_OUTPUTS: '2:file:relockd.log' });
  const p = spawn('/usr/bin/env', [...ENV_PREFIX, process.execPath, ...NODE_FLAGS, RELOCKD_BIN, '-d', '--runtime-dir', 'rt', '--pid-file', 'd.pid'], { cwd: start, stdio: ['ignore', 'pipe', 'pipe'], env });
  let err = '';
  p.stderr!.on('data', (d) => (err += d));
  t.ok(await waitExit(p, 15000), 'the invoking process returns');
  t.equal(p.exitCode, 0, err);
  const pid = Number(readFileSync(join(start, 'd.pid'), 'utf8'));
  t.teardown(() => {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  });
  t.equal(cwdOf(pid), '/', 'the daemon child works in /');
  const c = await LockspaceClient.connect(join(start, 'rt', 'virtlockd-sock'));
  await c.ping();
  c.close();
  t.ok(await waitFor(() => existsSync(join(start, 'relockd.log'))), "the environment's relative log file is in the start directory");
  process.kill(pid, 'SIGTERM');
  t.ok(await waitFor(() => !existsSync(`/proc/${pid}`), 5000), 'clean exit');
});
