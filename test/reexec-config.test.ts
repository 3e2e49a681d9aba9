// A re-exec never changes the settings by accident (issue 13 §3):
//  - a configuration file with errors refuses the re-exec in the old image
//    (relockctl reexec fails naming file, line and key; nothing changes);
//  - if the new image still finds errors (the file changed while the old
//    image quiesced; here: while a request waits on a stopped FUSE server),
//    it keeps the settings that were in force (max_clients, the log file),
//    never the defaults, and `relockctl status` / `reexec` say so.

import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cleanEnv, ENV_PREFIX, ROOT, startRelockd, waitExit } from './lib/relockd.js';
import { probeOne } from './lib/probe.js';
import { waitFor } from './lib/wait.js';
import { AdminClient } from '../src/protocol/adminClient.js';
import { LockspaceClient } from '../src/protocol/lockspaceClient.js';

const CTL = join(ROOT, 'bin', 'relockctl.cjs');
const UUID = '00112233-4455-6677-8899-aabbccddeeff';
const work = mkdtempSync(join(tmpdir(), 'relockd-reexec-config-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));

function ctl(dir: string, ...args: string[]) {
  return spawnSync('/usr/bin/env', [...ENV_PREFIX, process.execPath, CTL, '--runtime-dir', dir, ...args], { env: cleanEnv(), encoding: 'utf8', timeout: 90000 });
}

async function maxClients(adminSocket: string): Promise<number> {
  const a = await AdminClient.connect(adminSocket);
  try {
    const p = await a.clientLimits('virtlockd');
    return Number(p.find((x) => x.field === 'nclients_max')!.value);
  } finally {
    a.close();
  }
}

t.test('a bad file refuses the re-exec in the old image', async (t) => {
  const dir = mkdtempSync(join(work, 'refuse-'));
  const conf = join(dir, 'relockd.conf');
  const log = join(dir, 'relockd.log');
  const good = `max_clients = 10\nlog_outputs = "2:file:${log}"\n`;
  writeFileSync(conf, good);
  const d = await startRelockd({ dir, args: ['-f', conf], logLevel: null });
  t.teardown(() => d.stop());
  const c = await LockspaceClient.connect(d.socketPath);
  t.teardown(() => c.close());
  await c.register({ uuid: UUID, name: 'vm', id: 1, pid: 71001 });
  const img = join(dir, 'disk.img');
  writeFileSync(img, '');
  await c.acquire('', img, 0);

  writeFileSync(conf, `${good}max_clientz = 5\nowner_term_grace = "soon"\n`);
  const r = ctl(dir, 'reexec');
  t.equal(r.status, 1, 'relockctl reexec fails');
  t.match(r.stderr, /re-exec (failed|refused).*configuration file has errors.*not done/s, 'says the re-exec was not done');
  t.match(r.stderr, new RegExp(`${conf.replace(/[.]/g, '\\.')}:4:\\d+: invalid value for 'owner_term_grace'`), 'names file, line and key');
  t.equal(probeOne(img), 'held', 'lease still held');
  t.equal(await maxClients(d.adminSocketPath!), 10, 'max_clients unchanged');
  t.notOk(/"msg":"re-exec complete"/.test(readFileSync(log, 'utf8')), 'no re-exec happened');
  const st = ctl(dir, 'status');
  t.match(st.stdout, /last re-exec:.*FAILED: the configuration file has errors/, 'status says the last re-exec was refused and why');
  // SIGUSR1 (systemctl reload) is refused the same way
  const before = readFileSync(log, 'utf8').length;
  process.kill(d.pid, 'SIGUSR1');
  t.ok(await waitFor(() => readFileSync(log, 'utf8').slice(before).includes('re-exec refused: configuration file has errors'), 10000, 20), 'SIGUSR1 refused, in the log file');
  // fixed: the re-exec goes through
  writeFileSync(conf, good);
  const ok = ctl(dir, 'reexec');
  t.equal(ok.status, 0, `re-exec after the fix: ${ok.stderr}`);
  t.equal(probeOne(img), 'held');
});

const fuseOk = process.getuid?.() === 0 && existsSync('/usr/bin/bindfs') && existsSync('/dev/fuse');

t.test('a new image that finds a bad file keeps the settings in force', { skip: fuseOk ? false : 'needs root, bindfs and /dev/fuse' }, async (t) => {
  const dir = mkdtempSync(join(work, 'keep-'));
  const conf = join(dir, 'relockd.conf');
  const log = join(dir, 'relockd.log');
  const back = join(dir, 'backing');
  const mnt = join(dir, 'mnt');
  mkdirSync(back);
  mkdirSync(mnt);
  // bindfs in the foreground: its pid is the FUSE server; SIGSTOP hangs every call on the mount.
  const fuse = spawn('/usr/bin/bindfs', ['-f', back, mnt], { stdio: 'ignore' });
  t.teardown(async () => {
    try {
      process.kill(fuse.pid!, 'SIGCONT');
    } catch {
      /* gone */
    }
    spawnSync('/usr/bin/fusermount', ['-u', '-z', mnt]);
    fuse.kill('SIGTERM');
    await waitExit(fuse, 5000);
  });
  t.ok(await waitFor(() => spawnSync('/usr/bin/mountpoint', ['-q', mnt]).status === 0, 10000, 20), 'bindfs mounted');
  const space = join(mnt, 'leases');
  const good = `max_clients = 10\nlog_outputs = "2:file:${log}"\nreexec_quiesce_timeout = 60\nlockspaces = [ "${space}" ]\n`;
  writeFileSync(conf, good);
  const d = await startRelockd({ dir, args: ['-f', conf], logLevel: null });
  t.teardown(() => d.stop());
  t.ok(await waitFor(() => existsSync(join(back, 'leases')), 10000, 20), 'lock space created on the FUSE mount');

  const c = await LockspaceClient.connect(d.socketPath);
  t.teardown(() => c.close());
  await c.register({ uuid: UUID, name: 'vm', id: 1, pid: 72001 });
  const img = join(dir, 'disk.img');
  writeFileSync(img, '');
  await c.acquire('', img, 0);

  // A request waiting on the stopped FUSE server keeps the re-exec in its quiesce.
  process.kill(fuse.pid!, 'SIGSTOP');
  const slow = c.acquire(space, 'slow-lease', 2);
  await new Promise((r) => setTimeout(r, 300));
  const logAt = readFileSync(log, 'utf8').length;
  process.kill(d.pid, 'SIGUSR1');
  t.ok(await waitFor(() => readFileSync(log, 'utf8').slice(logAt).includes('re-exec requested: quiescing'), 10000, 10), 'old image checked the file and is quiescing');
  writeFileSync(conf, `max_clients = 10x\n`); // now broken
  process.kill(fuse.pid!, 'SIGCONT');
  await slow;
  t.ok(await waitFor(() => /"msg":"re-exec complete"/.test(readFileSync(log, 'utf8').slice(logAt)), 20000, 20), 'the new image logs to the configured file, not stderr');
  t.match(readFileSync(log, 'utf8').slice(logAt), /configuration invalid after re-exec: running with the settings in force before it/);
  t.equal(await maxClients(d.adminSocketPath!), 10, 'max_clients kept (not the default 1024)');
  t.equal(probeOne(img), 'held', 'lease held');
  t.equal(probeOne(join(space, 'slow-lease')), 'held', 'the lease granted during the quiesce is held (probed through the mount)');
  const st = ctl(dir, 'status');
  t.match(st.stdout, /CONFIG ERROR:.*settings in force before.*relockd\.conf:1/, 'status says the file is bad and the old settings are in force');
  const re = ctl(dir, 'reexec');
  t.equal(re.status, 1, 'a further re-exec is refused while the file is bad');
  writeFileSync(conf, good);
  process.kill(d.pid, 'SIGHUP');
  t.ok(await waitFor(() => !ctl(dir, 'status').stdout.includes('CONFIG ERROR'), 10000, 100), 'SIGHUP with a fixed file clears the error');
});
