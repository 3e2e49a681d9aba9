// Which storage runs inline on the event loop: local filesystems by statfs
// type; anything else (here: procfs, standing in for NFS and friends)
// off-thread; slow inline calls (three in a row, or one very slow) demote
// its directory; 'never' turns it off.
// And the same daemon serves leases correctly with inlining on and off.

import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { StorageClassifier } from '../src/locks/storageClass.js';
import { cleanEnv, ENV_PREFIX, ROOT, startRelockd } from './lib/relockd.js';
import { probeOne } from './lib/probe.js';
import { waitFor, matchLog } from './lib/wait.js';
import { LockspaceClient } from '../src/protocol/lockspaceClient.js';

const work = mkdtempSync(join(tmpdir(), 'storage-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));
const quiet = pino({ level: 'silent' });

t.test('classifier: local inline, unknown types offloaded, slow calls demote, never means never', async (t) => {
  const c = new StorageClassifier(quiet);
  t.equal(c.mode(work), 'offload', 'unknown until classified (statfs runs off-thread)');
  t.ok(await waitFor(() => c.mode(work) === 'inline'), `${work} (a local filesystem here) becomes inline`);
  c.mode('/proc');
  await new Promise((r) => setTimeout(r, 100));
  t.equal(c.mode('/proc'), 'offload', 'a filesystem type not known to be local stays off-thread');
  c.observe(work, 10);
  t.equal(c.mode(work), 'inline', 'a fast call changes nothing');
  c.observe(work, 500);
  t.equal(c.mode(work), 'inline', 'one slow call (a preemption on a busy host) does not demote');
  c.observe(work, 500);
  c.observe(work, 10);
  c.observe(work, 500);
  c.observe(work, 500);
  t.equal(c.mode(work), 'inline', 'a fast call between slow ones starts the count again');
  c.observe(work, 500);
  t.equal(c.mode(work), 'offload', 'three slow inline calls in a row demote the directory');
  const once = new StorageClassifier(quiet);
  once.mode(work);
  t.ok(await waitFor(() => once.mode(work) === 'inline'));
  once.observe(work, 5000);
  t.equal(once.mode(work), 'offload', 'one very slow call (storage that hung) demotes at once');
  const never = new StorageClassifier(quiet, 'never');
  never.mode(work);
  await new Promise((r) => setTimeout(r, 100));
  t.equal(never.mode(work), 'offload', "policy 'never'");
});

t.test('classifier: verdicts saved and restored (a re-exec keeps them: classified once per daemon life)', async (t) => {
  const c = new StorageClassifier(quiet);
  c.mode(work);
  t.ok(await waitFor(() => c.mode(work) === 'inline'));
  const demoted = mkdtempSync(join(work, 'demoted-'));
  c.mode(demoted);
  t.ok(await waitFor(() => c.mode(demoted) === 'inline'));
  c.observe(demoted, 5000);
  c.mode('/proc');
  t.ok(await waitFor(() => c.save().some(([d]) => d === '/proc')), '/proc classified');
  const saved = c.save();
  t.same(new Map(saved), new Map([[work, 'local'], [demoted, 'demoted'], ['/proc', 'remote']]), 'local, demoted and remote verdicts');
  const next = new StorageClassifier(quiet);
  next.restore(saved);
  t.equal(next.mode(work), 'inline', 'a restored local directory is inline at once, before any statfs');
  t.equal(next.mode(demoted), 'offload', 'a demotion is not forgotten');
  t.equal(next.mode('/proc'), 'offload', 'remote stays off-thread');
  t.ok(next.isHostLocal(work) && next.isHostLocal(demoted) && !next.isHostLocal('/proc'), 'host-local verdicts kept (autocreated lease files unlinked only there)');
  t.same(new Map(next.save()), new Map(saved), 'saved again unchanged');
});

t.test('a re-exec carries the verdicts: the first request after it is served inline, nothing is classified again', async (t) => {
  const d = await startRelockd({});
  t.teardown(() => d.stop());
  const dir = mkdtempSync(join(work, 'carried-'));
  const img = join(dir, 'disk.img');
  writeFileSync(img, '');
  const c = await LockspaceClient.connect(d.socketPath);
  t.teardown(() => c.close());
  await c.register({ uuid: '00112233-4455-6677-8899-aabbccddee01', name: 'vm', id: 1, pid: 91001 });
  await c.acquire('', img, 0);
  await c.release('', img, 0);
  const classified = () => d.logs().split('\n').filter((l) => l.includes('"msg":"storage classified"') && l.includes(JSON.stringify(dir)));
  t.ok(await waitFor(() => classified().length === 1), 'classified once by the first image');
  await d.reexec!();
  const after = d.logs().length;
  await c.acquire('', img, 0);
  t.equal(probeOne(img), 'held', 'acquired after the re-exec');
  await c.release('', img, 0);
  await new Promise((r) => setTimeout(r, 200));
  const tail = d.logs().slice(after);
  t.notMatch(tail, /"msg":"storage classified"/, 'the new image did not classify the directory again');
  t.notMatch(tail, /"msg":"slow storage call/, 'no demotion');
  t.equal(classified().length, 1, 'still one classification in the daemon life');
});

for (const inline of ['local', 'never'] as const) {
  t.test(`leases with --storage-inline ${inline}`, async (t) => {
    const d = await startRelockd({ args: ['--storage-inline', inline] });
    t.teardown(() => d.stop());
    const dir = mkdtempSync(join(work, `${inline}-`));
    const img = join(dir, 'disk.img');
    writeFileSync(img, '');
    const c = await LockspaceClient.connect(d.socketPath);
    t.teardown(() => c.close());
    await c.register({ uuid: '00112233-4455-6677-8899-aabbccddeeff', name: 'vm', id: 1, pid: 91000 });
    await c.createLockspace(join(dir, 'leases'));
    for (let i = 0; i < 3; i++) {
      // the first round classifies the directories, later rounds use the result
      await c.acquire('', img, 0);
      t.equal(probeOne(img), 'held');
      await c.acquire(join(dir, 'leases'), 'lease', 2);
      t.equal(probeOne(join(dir, 'leases', 'lease')), 'held');
      await c.release('', img, 0);
      await c.release(join(dir, 'leases'), 'lease', 0);
      t.equal(probeOne(img), 'free');
      await new Promise((r) => setTimeout(r, 50));
    }
    if (inline === 'local') await matchLog(t, () => d.logs(), /"mode":"inline","hostLocal":true,"msg":"storage classified"/, 'classified inline');
    else {
      t.notMatch(d.logs(), /"mode":"inline"/, 'never inline');
      // Still classified: whether autocreated lease files may be unlinked depends on it.
      await matchLog(t, () => d.logs(), /"mode":"offload","hostLocal":true,"msg":"storage classified"/, 'classified host-local, handled off-thread');
    }
    t.notOk(existsSync(join(dir, 'leases', 'lease')), 'host-local storage: the autocreated lease file is unlinked on release');
  });
}

// Storage other hosts may share (here FUSE, classified like NFS): autocreated
// lease files are kept on release, since unlink-then-close lets an acquirer on
// another host lock the unlinked file while a later one creates a new one
// (docs/nfs-crosshost.md). relockctl cleanup removes the unused ones.
t.test('shared storage (FUSE): autocreated lease files are kept; relockctl cleanup removes them', { skip: existsSync('/usr/bin/bindfs') ? false : 'needs bindfs (Debian package bindfs)' }, async (t) => {
  const back = mkdtempSync(join(work, 'fuse-back-'));
  const mnt = mkdtempSync(join(work, 'fuse-mnt-'));
  const m = spawnSync('/usr/bin/bindfs', ['--no-allow-other', back, mnt], { encoding: 'utf8' });
  if (m.status !== 0) return t.comment(`bindfs failed, skipped: ${m.stderr}`);
  t.teardown(() => {
    spawnSync('/usr/bin/fusermount', ['-u', '-z', mnt]);
  });
  const d = await startRelockd();
  t.teardown(() => d.stop());
  const c = await LockspaceClient.connect(d.socketPath);
  t.teardown(() => c.close());
  await c.register({ uuid: '00112233-4455-6677-8899-aabbccddeeff', name: 'vm', id: 1, pid: 91001 });
  const space = join(mnt, 'leases');
  await c.createLockspace(space);
  await new Promise((r) => setTimeout(r, 200)); // classification is asynchronous
  for (const name of ['kept-exclusive', 'kept-shared']) {
    await c.acquire(space, name, name.endsWith('shared') ? 3 : 2);
    t.equal(probeOne(join(space, name)), 'held', `${name}: held`);
    await c.release(space, name, 0);
    t.ok(existsSync(join(back, 'leases', name)), `${name}: the lease file is kept on release`);
    t.equal(probeOne(join(space, name)), 'free', `${name}: and free`);
  }
  await matchLog(t, () => d.logs(), /"hostLocal":false,"msg":"storage classified"/, 'FUSE is not host-local');
  await matchLog(t, () => d.logs(), /lease files on storage other hosts may share are kept on release/, 'said once in the log');
  await c.acquire(space, 'kept-exclusive', 2);
  const ctl = (...args: string[]) => spawnSync('/usr/bin/env', [...ENV_PREFIX, process.execPath, join(ROOT, 'bin', 'relockctl.cjs'), '--runtime-dir', d.dir, '--socket', d.socketPath, ...args], { env: cleanEnv(), encoding: 'utf8' });
  const r = ctl('cleanup', space, '--apply');
  t.equal(r.status, 0, r.stderr);
  t.ok(existsSync(join(back, 'leases', 'kept-exclusive')), 'cleanup keeps the held one');
  t.notOk(existsSync(join(back, 'leases', 'kept-shared')), 'and removes the unused one');
  await c.release(space, 'kept-exclusive', 0);

  // DELETE_RESOURCE there never removes a file someone else holds.
  const victim = join(space, 'held-elsewhere');
  writeFileSync(victim, '');
  const holder = spawn('python3', ['-c', 'import fcntl,os,sys,time; fd=os.open(sys.argv[1],os.O_RDWR); fcntl.lockf(fd,fcntl.LOCK_EX,1,0); print("locked",flush=True); time.sleep(60)', victim], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => holder.kill('SIGKILL'));
  await new Promise((r) => holder.stdout!.once('data', r));
  await t.rejects(c.deleteResource(space, 'held-elsewhere'), { code: 87 }, 'DELETE_RESOURCE of a file another process holds: busy');
  t.ok(existsSync(join(back, 'leases', 'held-elsewhere')), 'and the file is still there');
  holder.kill('SIGKILL');
  await new Promise((r) => holder.once('exit', r));
  await c.deleteResource(space, 'held-elsewhere');
  t.notOk(existsSync(join(back, 'leases', 'held-elsewhere')), 'once nobody holds it, DELETE_RESOURCE removes it');
  await c.deleteResource(space, 'held-elsewhere');
  t.pass('a missing file is fine');
});
