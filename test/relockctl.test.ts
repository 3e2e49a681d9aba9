// relockctl, the built CLI (bin/relockctl.cjs) run as a separate process
// against a real relockd: every command, text and --json output, `run`
// holding leases for a command's lifetime, `cleanup` racing with acquires.

import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cleanEnv, ENV_PREFIX, ROOT, startRelockd, waitExit } from './lib/relockd.js';
import type { StartedDaemon } from './lib/relockd.js';
import { spawnOwner } from './lib/targets.js';
import { probeOne } from './lib/probe.js';
import { AdminClient } from '../src/protocol/adminClient.js';
import { LockspaceClient } from '../src/protocol/lockspaceClient.js';
import { RemoteError } from '../src/rpc/client.js';
import { VERSION } from '../src/version.js';
import { waitFor as waitForMs } from './lib/wait.js';
const waitFor = (cond: () => boolean | Promise<boolean>, ms = 10000) => waitForMs(cond, ms, 25);

const CTL = join(ROOT, 'bin', 'relockctl.cjs');
const work = mkdtempSync(join(tmpdir(), 'relockctl-test-'));
chmodSync(work, 0o755);
t.teardown(() => rmSync(work, { recursive: true, force: true }));

const d: StartedDaemon = await startRelockd();
t.teardown(() => d.stop());

const children: ChildProcess[] = [];
t.teardown(() => children.forEach((c) => c.exitCode === null && c.signalCode === null && c.kill('SIGKILL')));
const conns: Array<{ close(): void }> = [];
t.teardown(() => conns.forEach((c) => c.close()));

interface Result {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function ctlArgs(args: string[]): string[] {
  return [...ENV_PREFIX, process.execPath, CTL, '--runtime-dir', d.dir, '--socket', d.socketPath, ...args];
}

/** Starts relockctl; `prefix` runs it through e.g. setpriv. */
function ctlSpawn(args: string[], opts: { prefix?: string[]; raw?: boolean } = {}) {
  const argv = opts.raw ? [...ENV_PREFIX, process.execPath, CTL, ...args] : ctlArgs(args);
  const cmd = opts.prefix ? [...opts.prefix, '/usr/bin/env', ...argv] : ['/usr/bin/env', ...argv];
  const child = spawn(cmd[0]!, cmd.slice(1), { env: cleanEnv(), stdio: ['pipe', 'pipe', 'pipe'] });
  children.push(child);
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (b) => (stdout += b));
  child.stderr!.on('data', (b) => (stderr += b));
  const done = new Promise<Result>((resolve) => child.once('close', (code, signal) => resolve({ code, signal, stdout, stderr })));
  return { child, done, out: () => stdout, err: () => stderr };
}

const ctl = (...args: string[]) => ctlSpawn(args).done;

async function ctlJson<T = any>(...args: string[]): Promise<T> {
  const r = await ctl(...args, '--json');
  if (r.code !== 0) throw new Error(`relockctl ${args.join(' ')} exited ${r.code}: ${r.stderr}${r.stdout}`);
  return JSON.parse(r.stdout) as T;
}

async function admin(): Promise<AdminClient> {
  const c = await AdminClient.connect(d.adminSocketPath!);
  conns.push(c);
  return c;
}

function spawnHolder(path: string) {
  const child = spawn('python3', ['-c', `import fcntl,os,sys,time\nfd=os.open(sys.argv[1],os.O_RDWR)\nfcntl.lockf(fd,fcntl.LOCK_EX|fcntl.LOCK_NB,1,0)\nprint('ready',flush=True)\ntime.sleep(3600)`, path], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  const ready = new Promise<void>((resolve, reject) => {
    child.stdout!.once('data', () => resolve());
    child.once('exit', (c) => reject(new Error(`holder exited ${c}`)));
  });
  return { child, ready };
}

/** Column start offsets of a header line, by column name. */
function columnStarts(header: string, names: string[]): number[] {
  return names.map((n) => header.indexOf(n));
}

let seq = 0;
const newImage = () => {
  const p = join(work, `img-${++seq}.raw`);
  writeFileSync(p, '');
  return p;
};

const UUID = '11112222-3333-4444-5555-666677778888';

t.test('status, leases and clients: tables and --json', async (t) => {
  const img = newImage();
  const space = join(work, 'space-a');
  const o = spawnOwner(d.socketPath, [{ path: '', name: img, flags: 1 }], { restrict: true, name: 'vm-status' });
  children.push(o.child);
  await o.ready;
  const lv = await LockspaceClient.connect(d.socketPath);
  conns.push(lv);
  await lv.createLockspace(space);
  await lv.register({ uuid: UUID, name: 'vm-status', id: 7, pid: o.child.pid! });
  await lv.acquire(space, 'disk-a', 2);
  lv.close();

  const st = await ctl('status');
  t.equal(st.code, 0, st.stderr);
  t.match(st.stdout, new RegExp(`relockd: +${VERSION.replace(/\./g, '\\.')}, pid ${d.pid}, up `));
  t.match(st.stdout, /leases: +2 held on 2 resources in \d+ lock spaces/);
  t.match(st.stdout, /last re-exec: +none/);
  t.match(st.stdout, new RegExp(`${space.replace(/[/.-]/g, '\\$&')} +1 +1`), 'lease count per lock space');
  const sj = await ctlJson('status');
  t.equal(sj.daemon.pid, d.pid);
  t.equal(sj.daemon.version, VERSION);
  t.equal(sj.daemon.leases, 2);
  t.same(
    sj.lockspaces.find((l: { dir: string }) => l.dir === space),
    { dir: space, resources: 1, leases: 1 },
  );

  const lt = await ctl('leases');
  t.equal(lt.code, 0, lt.stderr);
  const lines = lt.stdout.trimEnd().split('\n');
  const cols = ['LOCK SPACE', 'RESOURCE', 'MODE', 'OWNER', 'PID', 'UUID', 'SINCE'];
  const starts = columnStarts(lines[0]!, cols);
  t.ok(starts.every((s, i) => s >= 0 && (i === 0 || s > starts[i - 1]!)), 'header columns in order');
  const row = lines.find((l) => l.includes('disk-a'))!;
  t.ok(row, 'a row for disk-a');
  t.equal(row.slice(starts[2]!, starts[3]!).trim(), 'exclusive', 'MODE column aligned');
  t.equal(row.slice(starts[3]!, starts[4]!).trim(), 'vm-status', 'OWNER column aligned');
  t.equal(row.slice(starts[4]!, starts[5]!).trim(), String(o.child.pid), 'PID column aligned');
  const shared = lines.find((l) => l.includes(img))!;
  t.equal(shared.slice(starts[2]!, starts[3]!).trim(), 'shared');

  const lj = await ctlJson<any[]>('leases');
  t.equal(lj.length, 2);
  const disk = lj.find((r) => r.name === 'disk-a');
  t.match(disk, { lockspace: space, path: join(space, 'disk-a'), mode: 'exclusive', autocreate: true, owners: [{ pid: o.child.pid, owner: { name: 'vm-status', uuid: UUID } }] });
  t.same((await ctlJson<any[]>('leases', '--lockspace', `${space}/`)).map((r) => r.name), ['disk-a'], '--lockspace, any spelling of the path');
  t.same((await ctlJson<any[]>('leases', '--lockspace', '')).map((r) => r.name), [img], "--lockspace '' is the default one");
  t.equal((await ctlJson<any[]>('leases', '--owner', 'vm-status')).length, 2, '--owner NAME');
  t.equal((await ctlJson<any[]>('leases', '--owner', UUID.toUpperCase().replace(/-/g, ''))).length, 2, '--owner UUID');
  t.equal((await ctlJson<any[]>('leases', '--owner', String(o.child.pid))).length, 2, '--owner PID');
  t.equal((await ctlJson<any[]>('leases', '--owner', 'nobody-here')).length, 0);
  t.match((await ctl('leases', '--owner', 'nobody-here')).stdout, 'no leases held (matching the filter)');

  const ct = await ctl('clients');
  t.equal(ct.code, 0, ct.stderr);
  const cl = ct.stdout.trimEnd().split('\n');
  t.match(cl[0], /^SERVER +ID +PID +UID +CONNECTED +OWNER +OWNER PID +OWNER UUID +RESTRICTED +LEASES$/);
  t.ok(cl.some((l) => /^virtlockd /.test(l) && l.includes('vm-status') && /\byes\b/.test(l) && l.includes('2 (owner connection)')), 'the owner connection row');
  const cj = await ctlJson<any[]>('clients', '--server', 'virtlockd');
  t.same(
    cj.map((c) => ({ pid: c.pid, restricted: c.restricted, name: c.owner?.name, leases: c.leases })),
    [{ pid: o.child.pid, restricted: true, name: 'vm-status', leases: 2 }],
  );
  const aj = await ctlJson<any[]>('clients', '--server', 'admin');
  t.ok(aj.length >= 1 && aj.every((c) => c.server === 'admin'), 'relockctl sees itself on the admin socket');

  o.child.kill('SIGKILL');
  await waitExit(o.child, 5000);
  t.ok(await waitFor(async () => (await ctlJson<any[]>('leases')).length === 0), 'gone with the owner');
});

t.test('reexec: prints the blackout, keeps every lease', async (t) => {
  const img = newImage();
  const o = spawnOwner(d.socketPath, [{ path: '', name: img, flags: 0 }], { restrict: true, name: 'vm-reexec' });
  children.push(o.child);
  await o.ready;
  const r = await ctl('reexec');
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, new RegExp(`^re-exec succeeded: blackout [\\d.]+ ms \\(relockd ${VERSION.replace(/\./g, '\\.')}, pid ${d.pid}\\)`));
  t.equal(probeOne(img), 'held', 'lease held across the re-exec');
  const j = await ctlJson('reexec');
  t.equal(j.ok, true);
  t.equal(j.pid, d.pid);
  t.ok(typeof j.blackoutMs === 'number' && j.blackoutMs >= 0 && j.blackoutMs < 10000, `blackout ${j.blackoutMs} ms`);
  const st = await ctl('status');
  t.match(st.stdout, /last re-exec: .* ok, blackout [\d.]+ ms \[admin, /);
  t.match(st.stdout, /boot: restored/);
  t.equal(probeOne(img), 'held');
  t.match(await ctlJson<any[]>('leases'), [{ name: img, owners: [{ owner: { name: 'vm-reexec' } }] }], 'owner still known');
  o.child.kill('SIGKILL');
  await waitExit(o.child, 5000);
  t.ok(await waitFor(() => probeOne(img) === 'free'));
});

t.test('reexec that fails: exit 1, the error, the old image keeps serving', async (t) => {
  const bad = await startRelockd({ args: ['--state-file', join(work, 'no-such-dir', 'state.json')] });
  t.teardown(() => bad.stop());
  const img = newImage();
  const o = spawnOwner(bad.socketPath, [{ path: '', name: img, flags: 0 }], { restrict: true, name: 'vm-failed-reexec' });
  children.push(o.child);
  await o.ready;
  const args = ['--runtime-dir', bad.dir, '--socket', bad.socketPath];
  const r = await ctlSpawn([...args, 'reexec'], { raw: true }).done;
  t.equal(r.code, 1, r.stdout + r.stderr);
  t.match(r.stderr, /relockctl: re-exec failed: .*no-such-dir/);
  t.match(r.stderr, 'keeps serving in its old image with every lease held');
  const j = await ctlSpawn([...args, 'reexec', '--json'], { raw: true }).done;
  t.equal(j.code, 1);
  t.match(JSON.parse(j.stdout), { ok: false, error: /no-such-dir/, pid: bad.pid });
  const st = await ctlSpawn([...args, 'status'], { raw: true }).done;
  t.match(st.stdout, /last re-exec: .* FAILED: /);
  t.equal(probeOne(img), 'held', 'nothing was dropped');
  o.child.kill('SIGKILL');
  await waitExit(o.child, 5000);
});

t.test('run: leases for exactly the command’s lifetime', async (t) => {
  t.test('normal exit: the exit status passes through, the leases go', async (t) => {
    const img = newImage();
    const space = join(work, 'run-space');
    const r = ctlSpawn(['run', '--lease', img, '--lockspace', space, '--lease', 'lease-x', '--lease', 'lease-y:shared', '--name', 'run-normal', '--', 'sh', '-c', 'echo started; read x; exit 7']);
    t.ok(await waitFor(() => r.out().includes('started')), `command started ${r.err()}`);
    const pid = r.child.pid!;
    t.equal(probeOne(img), 'held');
    t.equal(probeOne(join(space, 'lease-x')), 'held');
    t.equal(probeOne(join(space, 'lease-y'), 'read'), 'free', 'shared lease: readers may join');
    t.equal(probeOne(join(space, 'lease-y')), 'held');
    const leases = await ctlJson<any[]>('leases', '--owner', 'run-normal');
    t.same(leases.map((l) => [l.name, l.mode]).sort(), [[img, 'exclusive'], ['lease-x', 'exclusive'], ['lease-y', 'shared']]);
    t.ok(leases.every((l) => l.owners[0].pid === pid), 'the owner pid is the command’s own pid');
    const cl = (await ctlJson<any[]>('clients', '--server', 'virtlockd')).find((c) => c.pid === pid);
    t.match(cl, { restricted: true, ownerConnection: true, owner: { name: 'run-normal', pid } }, 'a restricted owner connection, inherited by the command');
    r.child.stdin!.end('go\n');
    const res = await r.done;
    t.equal(res.code, 7, 'the command’s exit status');
    t.ok(await waitFor(() => probeOne(img) === 'free'), 'image lease released');
    t.ok(await waitFor(() => !existsSync(join(space, 'lease-x'))), 'autocreated lease file removed on release');
    t.same(await ctlJson('leases', '--owner', 'run-normal'), []);
  });

  t.test('killed -9: the leases go', async (t) => {
    const img = newImage();
    const r = ctlSpawn(['run', '--lease', img, '--name', 'run-killed', '--', 'sleep', '600']);
    t.ok(await waitFor(async () => (await ctlJson<any[]>('leases', '--owner', 'run-killed')).length === 1), `leased ${r.err()}`);
    t.equal(probeOne(img), 'held');
    const pid = r.child.pid!;
    t.match(readProcComm(pid), 'sleep', 'the pid that registered is now the command');
    process.kill(pid, 'SIGKILL');
    const res = await r.done;
    t.equal(res.signal, 'SIGKILL');
    t.ok(await waitFor(() => probeOne(img) === 'free'), 'lease free after kill -9');
    t.same(await ctlJson('leases', '--owner', 'run-killed'), []);
  });

  t.test('busy: a distinct exit status and the holder named', async (t) => {
    const img = newImage();
    const o = spawnOwner(d.socketPath, [{ path: '', name: img, flags: 0 }], { restrict: true, name: 'holder-vm' });
    children.push(o.child);
    await o.ready;
    const other = newImage();
    const r = await ctl('run', '--lease', other, '--lease', img, '--', 'true');
    t.equal(r.code, 75, 'EX_TEMPFAIL');
    t.match(r.stderr, `lease ${img} is busy: held by holder-vm (pid ${o.child.pid}) (exclusive, since `);
    t.equal(probeOne(other), 'free', 'what it had acquired was given back');
    const j = await ctl('--json', 'run', '--lease', img, '--', 'true');
    t.equal(j.code, 75);
    const e = JSON.parse(j.stderr).error;
    t.match(e, { exitCode: 75, lease: { name: img }, holders: [{ pid: o.child.pid, owner: { name: 'holder-vm' } }] });
    o.child.kill('SIGKILL');
    await waitExit(o.child, 5000);

    const foreign = newImage();
    const h = spawnHolder(foreign);
    await h.ready;
    const f = await ctl('run', '--lease', foreign, '--', 'true');
    t.equal(f.code, 75);
    t.match(f.stderr, 'held by another process or host (not through this relockd)');
    h.child.kill('SIGKILL');
  });

  t.test('the command gets a clean process: default signals, blocking stdio, the lease fd', async (t) => {
    const img = newImage();
    // python3 ignores SIGPIPE/SIGXFSZ itself: signal state is read by grep, forked by sh.
    const py = [
      'import os, fcntl, stat, json',
      "fd = int(os.environ['RELOCKCTL_LEASE_FD'])",
      "print(json.dumps({'nonblock': [bool(fcntl.fcntl(i, fcntl.F_GETFL) & os.O_NONBLOCK) for i in (0, 1, 2)],",
      "  'leasefd_is_socket': stat.S_ISSOCK(os.fstat(fd).st_mode)}))",
    ].join('\n');
    const script = 'echo "pid $$"; grep -E "^Sig(Ign|Blk)" /proc/self/status; exec python3 -c "$0"';
    const r = ctlSpawn(['run', '--lease', img, '--', 'sh', '-c', script, py]);
    const res = await r.done;
    t.equal(res.code, 0, res.stderr);
    const lines = res.stdout.trim().split('\n');
    t.equal(lines[0], `pid ${r.child.pid}`, 'same pid as relockctl');
    const sig = Object.fromEntries(lines.slice(1, 3).map((l) => l.split(/:\s*/)));
    t.equal(sig.SigIgn, '0000000000000000', 'no signal ignored (Node itself ignores SIGPIPE and SIGXFSZ)');
    t.equal(sig.SigBlk, '0000000000000000', 'no signal blocked');
    const info = JSON.parse(lines[3]!);
    t.same(info.nonblock, [false, false, false], 'stdio blocking');
    t.equal(info.leasefd_is_socket, true, 'the lock connection is inherited');
    t.ok(await waitFor(() => probeOne(img) === 'free'));
  });

  t.test('command not found, bad lease: nothing is left held', async (t) => {
    const img = newImage();
    const nf = await ctl('run', '--lease', img, '--', 'no-such-command-relockctl');
    t.equal(nf.code, 127);
    t.match(nf.stderr, 'no-such-command-relockctl: command not found');
    const missing = join(work, 'missing.img');
    const bad = await ctl('run', '--lease', missing, '--', 'true');
    t.equal(bad.code, 1);
    t.match(bad.stderr, `Unable to open resource ${missing}: No such file or directory`);
    const usage = await ctl('run', '--', 'true');
    t.equal(usage.code, 2);
    t.equal(probeOne(img), 'free');
    t.same(await ctlJson('leases'), []);
  });
});

function readProcComm(pid: number): string {
  try {
    return spawnSync('cat', [`/proc/${pid}/comm`], { encoding: 'utf8' }).stdout.trim();
  } catch {
    return '';
  }
}

t.test('helpful errors', async (t) => {
  const gone = join(work, 'no-daemon', 'admin-sock');
  const r = await ctlSpawn(['--admin-socket', gone, 'status'], { raw: true }).done;
  t.equal(r.code, 69);
  t.match(r.stderr, `relockd is not running: nothing listens on admin socket ${gone} (ENOENT)`);
  const j = await ctlSpawn(['--admin-socket', gone, 'leases', '--json'], { raw: true }).done;
  t.equal(j.code, 69);
  t.match(JSON.parse(j.stdout), { error: { exitCode: 69, socket: gone, errno: 'ENOENT' } });
  const m = await ctlSpawn(['--socket', join(work, 'nope.sock'), 'run', '--lease', newImage(), '--', 'true'], { raw: true }).done;
  t.equal(m.code, 69);
  t.match(m.stderr, `main socket ${join(work, 'nope.sock')}`);
  const u = await ctl('frobnicate');
  t.equal(u.code, 2);

  const asNobody = process.getuid?.() === 0 && existsSync('/usr/bin/setpriv');
  t.test('permission denied, and refused peers', { skip: asNobody ? false : 'needs root and setpriv' }, async (t) => {
    const prefix = ['/usr/bin/setpriv', '--reuid=65534', '--regid=65534', '--clear-groups'];
    const p = await ctlSpawn(['status'], { prefix }).done;
    t.equal(p.code, 77, p.stderr);
    t.match(p.stderr, `permission denied on admin socket ${d.adminSocketPath}`);
    // With the socket opened up, relockd's own peer-uid rule still refuses.
    const dirMode = statSync(d.dir).mode & 0o777;
    chmodSync(d.dir, 0o711);
    chmodSync(d.adminSocketPath!, 0o666);
    try {
      const q = await ctlSpawn(['status'], { prefix }).done;
      t.equal(q.code, 77, q.stderr);
      t.match(q.stderr, 'your uid 65534 is not allowed');
    } finally {
      chmodSync(d.adminSocketPath!, 0o600);
      chmodSync(d.dir, dirMode);
    }
  });
});

t.test('cleanup: only files nobody holds, dry run first', async (t) => {
  const space = join(work, 'clean');
  const c = await LockspaceClient.connect(d.socketPath);
  conns.push(c);
  await c.createLockspace(space);
  await c.register({ uuid: UUID, name: 'vm-clean', id: 3, pid: 77777 });
  await c.acquire(space, 'held-by-us', 2);
  for (const n of ['stale-1', 'stale-2', 'foreign']) writeFileSync(join(space, n), '');
  writeFileSync(join(space, 'not-a-lease.qcow2'), 'data');
  mkdirSync(join(space, 'subdir'));
  const h = spawnHolder(join(space, 'foreign'));
  await h.ready;

  const dry = await ctl('cleanup', space);
  t.equal(dry.code, 0, dry.stderr);
  t.match(dry.stdout, /^FILE +STATUS +DETAIL\nstale-1 +removable\nstale-2 +removable\n/);
  t.match(dry.stdout, '5 files in ' + space + ', 1 held by relockd, 1 locked elsewhere, 2 removable, 1 not empty (skipped)');
  t.match(dry.stdout, 'dry run: nothing was removed');
  t.ok(existsSync(join(space, 'stale-1')), 'dry run removes nothing');

  const j = await ctlJson('cleanup', space, '--verbose');
  t.same(j.counts, { 'held-by-relockd': 1, locked: 1, removable: 2, removed: 0, nonempty: 1, vanished: 0, error: 0 });
  t.same(
    Object.fromEntries(j.files.map((f: { name: string; status: string }) => [f.name, f.status])),
    { foreign: 'locked', 'held-by-us': 'held-by-relockd', 'not-a-lease.qcow2': 'nonempty', 'stale-1': 'removable', 'stale-2': 'removable' },
  );
  t.equal(j.files.find((f: { name: string }) => f.name === 'held-by-us').detail, 'vm-clean (pid 77777)', 'names the holder');
  t.equal(j.knownLockspace, true);

  const app = await ctl('cleanup', space, '--apply');
  t.equal(app.code, 0, app.stderr);
  t.match(app.stdout, '2 removed');
  t.same(readdirSync(space).sort(), ['foreign', 'held-by-us', 'not-a-lease.qcow2', 'subdir']);
  t.equal(probeOne(join(space, 'held-by-us')), 'held');
  t.equal(probeOne(join(space, 'foreign')), 'held');
  h.child.kill('SIGKILL');
  await waitExit(h.child, 5000);
  const all = await ctlJson('cleanup', space, '--apply', '--include-nonempty');
  t.same(all.counts.removed, 2, 'the foreign file (now free) and the non-empty one');
  t.same(readdirSync(space).sort(), ['held-by-us', 'subdir']);
  await c.release(space, 'held-by-us');
});

t.test('cleanup without a running relockd: the probe alone decides', async (t) => {
  const space = join(work, 'clean-nodaemon');
  mkdirSync(space);
  writeFileSync(join(space, 'stale'), '');
  writeFileSync(join(space, 'locked'), '');
  const h = spawnHolder(join(space, 'locked'));
  await h.ready;
  const r = await ctlSpawn(['--admin-socket', join(work, 'no-admin-sock'), 'cleanup', space, '--apply', '--json'], { raw: true }).done;
  t.equal(r.code, 0, r.stderr);
  t.match(r.stderr, 'relockd is not running');
  const j = JSON.parse(r.stdout);
  t.equal(j.daemon, 'unavailable');
  t.same(j.counts, { 'held-by-relockd': 0, locked: 1, removable: 0, removed: 1, nonempty: 0, vanished: 0, error: 0 });
  t.same(readdirSync(space), ['locked']);
  h.child.kill('SIGKILL');
});

t.test('cleanup: progress line for large directories', async (t) => {
  const space = join(work, 'big');
  mkdirSync(space);
  for (let i = 0; i < 1500; i++) writeFileSync(join(space, `f${i}`), '');
  const r = await ctl('cleanup', space, '--apply');
  t.equal(r.code, 0, r.stderr);
  t.match(r.stderr, 'cleanup: 1500/1500 checked, 1500 removed');
  t.match(r.stdout, '1500 files in ' + space);
  t.same(readdirSync(space), []);
});

t.test('cleanup racing with acquires never removes a held file', async (t) => {
  const space = join(work, 'race');
  const names = Array.from({ length: 12 }, (_, i) => `lease-${i}`);
  const c = await LockspaceClient.connect(d.socketPath);
  conns.push(c);
  await c.createLockspace(space);
  await c.register({ uuid: UUID, name: 'vm-race', id: 4, pid: 88888 });
  const a = await admin();
  for (const n of names) writeFileSync(join(space, n), '');
  // Leases held for the whole test: never touched by cleanup.
  const steady = ['steady-0', 'steady-1'];
  for (const n of steady) await c.acquire(space, n, 2);

  let stop = false;
  let cleanups = 0;
  let removedTotal = 0;
  const cleaner = (async () => {
    while (!stop) {
      const r = await ctl('cleanup', space, '--apply', '--json');
      if (r.code !== 0) throw new Error(`cleanup failed: ${r.stderr}${r.stdout}`);
      removedTotal += JSON.parse(r.stdout).counts.removed;
      cleanups++;
    }
  })();

  let acquires = 0;
  let busy = 0;
  const violations: string[] = [];
  const deadline = Date.now() + 25_000;
  for (let i = 0; (i < 400 || cleanups < 15) && Date.now() < deadline; i++) {
    const n = names[i % names.length]!;
    const p = join(space, n);
    try {
      await c.acquire(space, n, 2);
    } catch (e) {
      if (e instanceof RemoteError && e.code === 87) {
        busy++; // cleanup held its probe lock at that instant: acquirers retry
        continue;
      }
      throw e;
    }
    acquires++;
    const check = async (when: string) => {
      const res = (await a.resources(space)).find((r) => r.name === n);
      let ino = -1;
      try {
        ino = Number(statSync(p).ino);
      } catch {
        violations.push(`${when}: ${n} is gone while held`);
        return;
      }
      if (!res || res.ino !== ino) violations.push(`${when}: ${n} names another file than the one locked`);
      if (i % 10 === 0 && probeOne(p) !== 'held') violations.push(`${when}: ${n} not locked`);
    };
    await check('after acquire');
    await new Promise((r) => setTimeout(r, i % 4));
    await check('before release');
    await c.release(space, n);
    // relockd unlinked it on release; put a stale copy back, so cleanup is
    // always working on the very names being acquired.
    writeFileSync(p, '', { flag: 'a' });
  }
  stop = true;
  await cleaner;
  for (const n of steady) {
    t.ok(existsSync(join(space, n)), `${n} still there`);
    t.equal(probeOne(join(space, n)), 'held', `${n} still locked`);
  }
  t.same(violations, [], 'a held lease file never disappeared');
  t.ok(acquires >= 100, `${acquires} acquires (${busy} busy retries) during ${cleanups} cleanups that removed ${removedTotal} stale files`);
  t.ok(cleanups >= 3, 'cleanup really ran concurrently');
  t.ok(removedTotal > 0, 'and did remove stale files');
  for (const n of steady) await c.release(space, n);
});
