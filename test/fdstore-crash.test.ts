// Leases that survive relockd's own crash: a real systemd (PID 1 of a
// private pid + mount namespace, test/fixtures/systemd-ns.sh) runs relockd
// with FileDescriptorStoreMax= and Restart=on-failure. Real client processes
// inside it hold leases (some as QEMU does: registered with their own pid,
// restricted, on their own connection); a separate process hammers F_SETLK
// on every lease; relockd is killed with SIGKILL (once idle, once in the
// middle of a burst of acquisitions). The hammer never wins, relockd comes
// back under a new pid with every lease and every connection, the clients'
// next requests are served, and an owner killed while relockd was down is
// released after the restart.
//
// The lab is exclusive: the whole test runs under flock /tmp/relockd-systemd-lab.lock.

import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcessByStdio } from 'node:child_process';
import type { Readable, Writable } from 'node:stream';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { homedir } from 'node:os';
import { createInterface } from 'node:readline';
import { NODE_FLAGS, ROOT } from './lib/relockd.js';
import { Hammer, probeOne } from './lib/probe.js';

const LAB = join(ROOT, 'test', 'fixtures', 'systemd-ns.sh');
// Most of this may be waiting for the lab (flock below); the test itself has its own limit.
t.setTimeout(1_800_000);
const why = process.getuid?.() !== 0 ? 'needs root' : !existsSync('/lib/systemd/systemd') ? 'needs systemd (Debian package systemd)' : '';
if (why && process.env.RELOCKD_CI) t.fail(`systemd lab: ${why} (CI needs it: a skipped proof is no proof)`);
else if (why) t.skip(`systemd lab: ${why}`, async () => {});
else main();

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A lease-client.mjs process inside the lab: one JSON command in, one JSON line out. */
class LabClient {
  readonly lines: any[] = [];
  private waiters: Array<() => void> = [];
  pid = 0;
  private seq = 0;
  constructor(readonly name: string, readonly child: ChildProcessByStdio<Writable, Readable, null>) {
    createInterface({ input: child.stdout }).on('line', (l) => {
      try {
        this.lines.push(JSON.parse(l));
      } catch {
        this.lines.push({ raw: l });
      }
      for (const w of this.waiters.splice(0)) w();
    });
  }
  async waitFor(pred: (o: any) => boolean, ms = 30_000): Promise<any> {
    const end = Date.now() + ms;
    for (;;) {
      const hit = this.lines.find(pred);
      if (hit) return hit;
      if (Date.now() > end) throw new Error(`${this.name}: timed out; saw ${JSON.stringify(this.lines.slice(-5))}`);
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 200);
      });
    }
  }
  send(cmd: Record<string, unknown>): number {
    const id = ++this.seq;
    this.child.stdin.write(`${JSON.stringify({ id, ...cmd })}\n`);
    return id;
  }
  async call(cmd: Record<string, unknown>, ms = 30_000): Promise<any> {
    const id = this.send(cmd);
    return this.waitFor((o) => o.id === id, ms);
  }
  get closed(): boolean {
    return this.lines.some((o) => o.event === 'closed');
  }
}

function main(): void {
  const hidden = /^\/(tmp|var\/tmp|run)\//.test(`${ROOT}/`);
  const base = mkdtempSync(join(hidden ? homedir() : ROOT, '.lab-fdstore-'));
  const APP = hidden ? join(base, 'app') : ROOT;
  if (hidden) {
    mkdirSync(APP);
    for (const d of ['bin', 'dist', 'build', 'node_modules', 'schemas', 'units', 'package.json', 'test']) {
      const r = spawnSync('cp', ['-al', join(ROOT, d), APP]);
      if (r.status !== 0) spawnSync('cp', ['-a', join(ROOT, d), APP]);
    }
  }
  const unitDir = join(base, 'units');
  const state = join(base, 'state');
  const run = join(state, 'run');
  const leases = join(state, 'leases');
  for (const d of [unitDir, state, run, leases]) mkdirSync(d, { recursive: true });
  const sock = join(run, 'virtlockd-sock');
  const adminSock = join(run, 'virtlockd-admin-sock');
  const pidFile = join(run, 'relockd.pid');
  const UNIT = 'relockd-lab.service';
  writeFileSync(
    join(unitDir, UNIT),
    `[Unit]\nDescription=relockd (fd store lab)\n[Service]\nType=notify\nNotifyAccess=main\n` +
      // The same fd-store settings as units/relockd.service.
      `FileDescriptorStoreMax=4096\nEnvironment=FDSTORE=4096\n` +
      `ExecStart=${process.execPath} ${NODE_FLAGS.join(' ')} ${join(APP, 'bin', 'relockd.cjs')} --runtime-dir=${run} --pid-file=${pidFile} --log-level=info\n` +
      `ExecReload=/bin/kill -USR1 $MAINPID\nRestart=on-failure\nRestartSec=300ms\nKillMode=process\nSendSIGKILL=no\nStandardOutput=append:${state}/daemon.log\nStandardError=inherit\n`,
  );
  const files = Array.from({ length: 8 }, (_, i) => join(leases, `disk${i}.img`));
  const burstFiles = Array.from({ length: 40 }, (_, i) => join(leases, `burst${i}.img`));
  for (const f of [...files, ...burstFiles]) writeFileSync(f, '');

  let lock: ReturnType<typeof spawn> | null = null;
  let up = false;
  let labSince = 0;
  const clients: LabClient[] = [];
  let hammer: Hammer | null = null;
  t.teardown(() => {
    hammer?.kill();
    for (const c of clients) c.child.kill('SIGKILL');
    if (up) spawnSync('bash', [LAB, 'down', state]);
    if (labSince) t.comment(`lab held ${((Date.now() - labSince) / 1000).toFixed(1)} s`);
    lock?.stdin?.end();
    if (!process.env.RELOCKD_KEEP_LAB) rmSync(base, { recursive: true, force: true });
  });

  const inLab = (args: string[], timeout = 60_000) => {
    const r = spawnSync('bash', [LAB, 'run', state, ...args], { encoding: 'utf8', timeout, env: { ...process.env, NODE_OPTIONS: '' } });
    return { code: r.status, out: r.stdout ?? '', err: r.stderr ?? '' };
  };
  const show = (prop: string) => inLab(['systemctl', 'show', UNIT, '-p', prop, '--value']).out.trim();
  const relockctl = (args: string[]) => {
    const r = inLab(['/usr/bin/env', '-u', 'NODE_OPTIONS', process.execPath, join(APP, 'bin', 'relockctl.cjs'), ...args, '--admin-socket', adminSock]);
    let json: any = null;
    try {
      json = JSON.parse(r.out);
    } catch {
      /* text */
    }
    return { ...r, json };
  };
  const log = () => (existsSync(join(state, 'daemon.log')) ? readFileSync(join(state, 'daemon.log'), 'utf8') : '');
  const client = async (name: string): Promise<LabClient> => {
    const child = spawn('bash', [LAB, 'run', state, '/usr/bin/env', '-u', 'NODE_OPTIONS', process.execPath, join(APP, 'test', 'fixtures', 'lease-client.mjs'), sock, APP], { stdio: ['pipe', 'pipe', 'inherit'] });
    const c = new LabClient(name, child);
    clients.push(c);
    const ready = await c.waitFor((o) => 'ready' in o);
    if (!ready.ready) throw new Error(`${name}: ${ready.err}`);
    c.pid = ready.pid;
    return c;
  };
  /** Waits for systemd to report the service active under a pid other than `old`. */
  const restarted = async (old: string, ms = 60_000): Promise<{ pid: string; ms: number }> => {
    const t0 = Date.now();
    while (Date.now() - t0 < ms) {
      const pid = show('MainPID');
      if (pid !== '0' && pid !== old && show('ActiveState') === 'active' && show('SubState') === 'running') return { pid, ms: Date.now() - t0 };
      await sleep(100);
    }
    const st = inLab(['systemctl', 'status', UNIT, '--no-pager']).out;
    throw new Error(`relockd did not come back (NRestarts ${show('NRestarts')}, Result ${show('Result')}):\n${st}\nlog:\n${log().slice(-3000)}`);
  };
  const killRelockd = (pid: string, alsoKill: number[] = []) => inLab(['kill', '-KILL', pid, ...alsoKill.map(String)]);

  // The lab is one per machine: wait for it outside the test's own time limit (other suites use it too).
  t.before(async () => {
    lock = spawn('flock', ['-w', '1500', '/tmp/relockd-systemd-lab.lock', 'sh', '-c', 'echo locked; exec cat'], { stdio: ['pipe', 'pipe', 'inherit'] });
    await new Promise((r) => lock!.stdout!.once('data', r));
    labSince = Date.now();
  });
  t.test('relockd crashes (SIGKILL) with leases held: back under a new pid with every lease and connection', { timeout: 300_000 }, async (t) => {
    const upR = spawnSync('bash', [LAB, 'up', unitDir, state], { encoding: 'utf8', timeout: 60_000 });
    t.equal(upR.status, 0, `systemd up: ${upR.stderr}`);
    up = upR.status === 0;
    if (!up) return;
    t.equal(inLab(['systemctl', 'start', UNIT]).code, 0, 'relockd starts (Type=notify)');
    const pid1 = show('MainPID');
    t.match(log(), /fd store in use/, 'relockd uses the fd store');

    // Two QEMU-like owners (own connection, registered with their own pid, restricted),
    // a manager (libvirtd-like: registers another pid, stays unrestricted), and a victim
    // QEMU that is killed while relockd is down.
    const qemu = [await client('qemu-a'), await client('qemu-b')];
    const mgr = await client('libvirtd');
    const victim = await client('qemu-victim');
    let i = 0;
    const held: string[] = [];
    for (const q of qemu) {
      t.ok((await q.call({ op: 'register', self: true })).ok, `${q.name} registers itself`);
      for (let k = 0; k < 2; k++) {
        const f = files[i++]!;
        t.ok((await q.call({ op: 'acquire', name: f })).ok, `${q.name} acquires ${f}`);
        held.push(f);
      }
      t.ok((await q.call({ op: 'restrict' })).ok, `${q.name} restricts its connection`);
    }
    t.ok((await mgr.call({ op: 'register', pid: 999999, ownerName: 'managed' })).ok, 'manager registers an owner pid on its behalf');
    const mgrLease = files[i++]!;
    t.ok((await mgr.call({ op: 'acquire', name: mgrLease })).ok, 'manager acquires a lease');
    held.push(mgrLease);
    t.ok((await victim.call({ op: 'register', self: true })).ok, 'victim registers itself');
    const victimLease = files[i++]!;
    t.ok((await victim.call({ op: 'acquire', name: victimLease })).ok, 'victim acquires a lease');
    t.ok((await victim.call({ op: 'restrict' })).ok, 'victim restricts');
    for (const f of [...held, victimLease]) t.equal(probeOne(f), 'held', `${f} held before the crash`);

    hammer = await Hammer.start(held);
    // SIGKILL relockd and, while it is down, its victim owner.
    const k = killRelockd(pid1, [victim.pid]);
    t.equal(k.code, 0, `kill -9 relockd (${pid1}) and the victim (${victim.pid}) ${k.err}`);
    const back = await restarted(pid1);
    t.not(back.pid, pid1, `relockd is back under a new pid ${back.pid} (${back.ms} ms after the kill)`);
    await sleep(500);
    const h = await hammer.stop();
    hammer = null;
    t.same(h.wins, {}, `the hammer never won (${h.attempts} F_SETLK attempts)`);
    t.ok(h.attempts > 100, 'the hammer really ran');
    for (const f of held) t.equal(probeOne(f), 'held', `${f} still held after the restart`);
    t.match(log(), /recovered from a crash/, 'logs the recovery');

    // Same connections, still served.
    for (const q of [...qemu, mgr]) t.notOk(q.closed, `${q.name}'s connection was never closed`);
    for (const q of qemu) t.ok((await q.call({ op: 'ping' })).ok, `${q.name}: keepalive answered on the same connection`);
    for (const q of qemu) t.notOk((await q.call({ op: 'acquire', name: files[7] })).ok, `${q.name} is still restricted (and registered)`);
    const more = await mgr.call({ op: 'acquire', name: files[7] });
    t.ok(more.ok, `manager's next acquisition is served ${more.err ?? ''}`);
    t.equal(probeOne(files[7]!), 'held', 'and held');
    t.ok((await mgr.call({ op: 'release', name: files[7] })).ok, 'and released');
    t.equal(probeOne(files[7]!), 'free', 'released for real (the stored copy does not keep the lock)');

    // The victim died while relockd was down: its lease is released after the restart.
    let freed = false;
    for (let n = 0; n < 100 && !freed; n++) {
      freed = probeOne(victimLease) === 'free';
      if (!freed) await sleep(100);
    }
    t.ok(freed, "the victim's lease was released after the restart (EOF on its adopted connection)");

    const st = relockctl(['status']);
    t.match(st.out, new RegExp(`pid ${back.pid}\\b`), `relockctl status names the new pid\n${st.out}${st.err}`);
    t.match(st.out, /CRASH:\s+recovered from a crash of relockd .* it was down \d/, 'relockctl status says it recovered from a crash and how long it was down');
    t.equal(readFileSync(pidFile, 'utf8').trim(), back.pid, 'the pid file names the new pid (its lock kept by the store)');

    // What systemd holds: each lease, each connection, the two listeners, the pid file, two state memfds.
    await sleep(300);
    const expected = held.length + 3 + 2 + 1 + 2;
    t.equal(Number(show('NFileDescriptorStore')), expected, `systemd's fd store holds exactly ${expected} fds (no leftover of the crash, no duplicate)`);
    // A live re-exec (systemctl reload) under the store: same pid, no duplicate in the store.
    t.equal(inLab(['systemctl', 'reload', UNIT]).code, 0, 'systemctl reload (re-exec)');
    await sleep(2500);
    t.equal(show('MainPID'), back.pid, 'same pid after the reload');
    t.equal(Number(show('NFileDescriptorStore')), expected, 'the store still holds exactly those fds after the re-exec');
    for (const q of qemu) t.ok((await q.call({ op: 'ping' })).ok, `${q.name} served after the re-exec`);

    // ---- a SIGKILL in the middle of a burst of acquisitions -------------------
    const burster = await client('burst');
    t.ok((await burster.call({ op: 'register', pid: 888888, ownerName: 'burst' })).ok, 'burst client registers');
    hammer = await Hammer.start(held);
    const burstId = burster.send({ op: 'burst', names: burstFiles });
    await burster.waitFor((o) => o.granted === burstFiles[10]);
    const pid2 = show('MainPID');
    t.equal(killRelockd(pid2).code, 0, `kill -9 relockd (${pid2}) after ${burster.lines.filter((o) => o.granted).length} of ${burstFiles.length} grants`);
    const back2 = await restarted(pid2);
    t.pass(`back under pid ${back2.pid} after ${back2.ms} ms`);
    const done = await burster.waitFor((o) => o.id === burstId, 60_000);
    t.ok(done.ok, `the burst completed: the request in flight at the crash was answered after the restart ${done.err ?? ''}`);
    const h2 = await hammer.stop();
    hammer = null;
    t.same(h2.wins, {}, `the hammer never won across the second crash (${h2.attempts} attempts)`);
    const notHeld = burstFiles.filter((f) => probeOne(f) !== 'held');
    t.same(notHeld, [], 'every lease of the burst is held');
    for (const f of held) t.equal(probeOne(f), 'held', `${f} still held`);
    t.notOk(burster.closed, "the burst client's connection survived");
    const lsOut = relockctl(['leases', '--json']);
    const count = (JSON.stringify(lsOut.json).match(/burst\d+\.img/g) ?? []).length;
    t.ok(count >= burstFiles.length, `relockctl leases lists the burst leases (${count})`);

    // ---- an unreadable stored state: safe mode, every stored fd kept ----------------
    const pid3 = show('MainPID');
    // Overwrite both state memfds through /proc (root can), then crash.
    const mem = inLab(['bash', '-c', `for f in /proc/${pid3}/fd/*; do case "$(readlink $f)" in /memfd:relockd-state*) printf 'garbage' > $f;; esac; done; ls -l /proc/${pid3}/fd | grep -c memfd:relockd-state`]);
    t.equal(mem.out.trim(), '2', 'both stored state documents overwritten');
    hammer = await Hammer.start([...held, ...burstFiles]);
    t.equal(killRelockd(pid3).code, 0, `kill -9 relockd (${pid3}) with its stored state unreadable`);
    const back3 = await restarted(pid3, 120_000);
    await sleep(500);
    const h3 = await hammer.stop();
    hammer = null;
    t.same(h3.wins, {}, `the hammer never won (${h3.attempts} attempts)`);
    t.match(log(), /SAFE MODE/, 'relockd is in safe mode');
    const st3 = relockctl(['status']);
    t.match(st3.out, /SAFE MODE/, `relockctl status says safe mode (pid ${back3.pid})`);
    const refused = await mgr.call({ op: 'acquire', name: files[7] });
    t.notOk(refused.ok, `new acquisitions are refused in safe mode (${refused.err})`);
    const stillHeld = [...held, ...burstFiles].filter((f) => probeOne(f) === 'held').length;
    t.equal(stillHeld, held.length + burstFiles.length, 'every lease is still held (every stored fd kept)');
  });
}
