// The crash proof of the fd store (issue 15), one scenario for every unit that runs relockd under a
// real systemd (test/lib/systemdLab.ts): relockd's own service (fdstore-crash.test.ts) and libvirt's
// virtlockd.service with the takeover drop-in (fdstore-crash-virtlockd.test.ts).
//
// Real client processes inside the lab hold leases (some as QEMU does: registered with their own
// pid, restricted, on their own connection); a separate process hammers F_SETLK on every lease;
// relockd is killed with SIGKILL (once idle with a victim owner killed while it is down, once in
// the middle of a burst of acquisitions, once with its stored state overwritten). The hammer never
// wins, relockd comes back under a new pid with every lease and connection, the clients' next
// requests are served, the victim's lease is released after the restart, `relockctl status` says
// it recovered and how long it was down, and the action runner survives the crash.
//
// On any failure the daemon's log is kept (copied out of the lab, whose directory goes) and its
// tail printed: a crash test that fails once under load must say why.

import { copyFileSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { ChildProcessByStdio } from 'node:child_process';
import type { Readable, Writable } from 'node:stream';
import type { Test } from 'tap';
import { Hammer, probeOne } from './probe.js';
import type { SystemdLab } from './systemdLab.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A lease-client.mjs process inside the lab: one JSON command in, one JSON line out. */
class LabClient {
  readonly lines: any[] = [];
  private waiters: Array<() => void> = [];
  pid = 0;
  private seq = 0;
  constructor(
    readonly name: string,
    readonly child: ChildProcessByStdio<Writable, Readable, null>,
  ) {
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
      if (Date.now() > end) throw new Error(`${this.name}: no answer within ${ms / 1000} s; its last lines: ${JSON.stringify(this.lines.slice(-5))}`);
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

export interface CrashTarget {
  lab: SystemdLab;
  /** The service relockd runs as (relockd-lab.service, virtlockd.service). */
  unit: string;
  /** Units to start (the service, or its sockets and the service). */
  start: string[];
  socket: string;
  adminSocket: string;
  pidFile: string;
  /** The daemon's log file name in the lab (StandardOutput=append:). */
  logName: string;
  /** Listening sockets relockd stores itself (its own binds; systemd's activated ones come back with their socket units). */
  storedListeners: number;
  /** The unit's RELOCKD_TEST_CRASH_AT file (src/fdstore/faultInjection.ts). */
  faultFile: string;
}

/** Runs the whole crash proof against `x`; the lab must be up. */
export async function crashProof(t: Test, x: CrashTarget): Promise<void> {
  const { lab, unit } = x;
  const log = () => lab.read(x.logName);
  const diag = (why: string) => {
    // Keep the log: the lab's directory is removed at the end.
    const keep = join(tmpdir(), `relockd-crashproof-${unit}-${Date.now()}.log`);
    if (existsSync(lab.file(x.logName))) copyFileSync(lab.file(x.logName), keep);
    const st = lab.run(['systemctl', 'status', unit, '--no-pager']).out;
    return `${why}\n${st}\nrelockd's log (whole log kept in ${keep}), last 6000 bytes:\n${log().slice(-6000)}`;
  };
  try {
    await scenario(t, x, log);
  } catch (err) {
    t.fail(diag(`crash proof stopped: ${(err as Error).message}`));
  }
  if (!t.passing()) t.comment(diag('crash proof failed'));
}

async function scenario(t: Test, x: CrashTarget, log: () => string): Promise<void> {
  const { lab, unit } = x;
  const leases = lab.file('leases');
  mkdirSync(leases, { recursive: true });
  const files = Array.from({ length: 8 }, (_, i) => join(leases, `disk${i}.img`));
  const burstFiles = Array.from({ length: 40 }, (_, i) => join(leases, `burst${i}.img`));
  for (const f of [...files, ...burstFiles]) writeFileSync(f, '');
  const show = (prop: string) => lab.show(unit, [prop])[prop] ?? '';
  const relockctl = (args: string[]) => lab.relockctl([...args, '--admin-socket', x.adminSocket]);
  const client = async (name: string): Promise<LabClient> => {
    const c = new LabClient(name, lab.spawnPiped(['/usr/bin/env', '-u', 'NODE_OPTIONS', process.execPath, join(lab.app, 'test', 'fixtures', 'lease-client.mjs'), x.socket, lab.app]));
    const ready = await c.waitFor((o) => 'ready' in o);
    if (!ready.ready) throw new Error(`${name}: ${ready.err}`);
    c.pid = ready.pid;
    return c;
  };
  /** Waits for systemd to report the service active under a pid other than `old`. */
  const restarted = async (old: string, ms = 120_000): Promise<{ pid: string; ms: number }> => {
    const t0 = Date.now();
    while (Date.now() - t0 < ms) {
      const s = lab.show(unit, ['MainPID', 'ActiveState', 'SubState']);
      if (s.MainPID !== '0' && s.MainPID !== old && s.ActiveState === 'active' && s.SubState === 'running') return { pid: s.MainPID!, ms: Date.now() - t0 };
      await sleep(100);
    }
    throw new Error(`relockd did not come back (NRestarts ${show('NRestarts')}, Result ${show('Result')})`);
  };
  const kill9 = (pids: Array<string | number>) => lab.run(['kill', '-KILL', ...pids.map(String)]);
  /** The action runner: relockd's one child process, by its pid in the lab. */
  const runnerPid = (daemon: string) => lab.run(['bash', '-c', `for p in /proc/[0-9]*; do [ "$(cut -d' ' -f4 $p/stat 2>/dev/null)" = ${daemon} ] && basename $p; done`]).out.trim();
  const alive = (pid: string) => lab.run(['kill', '-0', pid]).code === 0;
  let hammer: Hammer | null = null;
  t.teardown(() => hammer?.kill());

  t.equal(lab.run(['systemctl', 'start', ...x.start]).code, 0, `${x.start.join(' ')} start (Type=notify)`);
  const pid1 = show('MainPID');
  t.match(log(), /fd store in use/, 'relockd uses the fd store');
  const runner = runnerPid(pid1);
  t.match(runner, /^\d+$/, `relockd has its action runner (pid ${runner})`);

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

  // ---- SIGKILL of relockd and, while it is down, of its victim owner ---------------
  hammer = await Hammer.start(held);
  const k = kill9([pid1, victim.pid]);
  t.equal(k.code, 0, `kill -9 relockd (${pid1}) and the victim (${victim.pid}) ${k.err}`);
  const back = await restarted(pid1);
  t.not(back.pid, pid1, `relockd is back under a new pid ${back.pid}`);
  await sleep(500);
  const h = await hammer.stop();
  hammer = null;
  t.same(h.wins, {}, `the hammer never won (${h.attempts} F_SETLK attempts)`);
  t.ok(h.attempts > 100, 'the hammer really ran');
  for (const f of held) t.equal(probeOne(f), 'held', `${f} still held after the restart`);
  t.match(log(), /recovered from a crash/, 'logs the recovery');

  // The action runner outlived the crash (its channel was in the store) and the new image adopted it:
  // a crash-restarted relockd holds lease fds from its first instruction, so it could not spawn one.
  t.ok(alive(runner), `the action runner ${runner} is still running`);
  t.match(log(), new RegExp(`"runnerPid":${runner}\\b[^\\n]*action runner carried over the crash`), 'the restarted relockd adopted it');
  t.equal(runnerPid(back.pid), '', 'and spawned no other (it holds lease fds)');
  t.notMatch(log(), /ACTION RUNNER GONE/, 'the runner was never lost');

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
  for (let n = 0; n < 300 && !freed; n++) {
    freed = probeOne(victimLease) === 'free';
    if (!freed) await sleep(100);
  }
  t.ok(freed, "the victim's lease was released after the restart (EOF on its adopted connection)");

  const st = relockctl(['status']);
  t.match(st.out, new RegExp(`pid ${back.pid}\\b`), `relockctl status names the new pid\n${st.out}${st.err}`);
  t.match(st.out, /CRASH:\s+recovered from a crash of relockd .* it was down \d/, 'relockctl status says it recovered from a crash and how long it was down');
  t.equal(lab.run(['cat', x.pidFile]).out.trim(), back.pid, 'the pid file names the new pid (its lock kept by the store)');

  // What systemd holds: each lease, each connection, the listeners relockd bound, the pid file,
  // the runner's channel, two state memfds.
  const expected = held.length + 3 + x.storedListeners + 1 + 1 + 2;
  const storeIs = async (n: number) => {
    for (let w = 0; w < 100 && Number(show('NFileDescriptorStore')) !== n; w++) await sleep(100);
    return Number(show('NFileDescriptorStore'));
  };
  t.equal(await storeIs(expected), expected, `systemd's fd store holds exactly ${expected} fds (no leftover of the crash, no duplicate)`);
  // A live re-exec (systemctl reload) under the store: same pid, no duplicate in the store.
  t.equal(lab.run(['systemctl', 'reload', unit]).code, 0, 'systemctl reload (re-exec)');
  for (const q of qemu) t.ok((await q.call({ op: 'ping' })).ok, `${q.name} served after the re-exec`);
  t.equal(show('MainPID'), back.pid, 'same pid after the reload');
  t.equal(await storeIs(expected), expected, 'the store still holds exactly those fds after the re-exec');

  // ---- a SIGKILL in the middle of a burst of acquisitions (an OOM kill) -------------
  const burster = await client('burst');
  t.ok((await burster.call({ op: 'register', pid: 888888, ownerName: 'burst' })).ok, 'burst client registers');
  hammer = await Hammer.start(held);
  const burstId = burster.send({ op: 'burst', names: burstFiles });
  await burster.waitFor((o) => o.granted === burstFiles[10]);
  const pid2 = show('MainPID');
  t.equal(kill9([pid2]).code, 0, `kill -9 relockd (${pid2}) after ${burster.lines.filter((o) => o.granted).length} of ${burstFiles.length} grants`);
  const back2 = await restarted(pid2);
  t.pass(`back under pid ${back2.pid}`);
  const done = await burster.waitFor((o) => o.id === burstId, 120_000);
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
  t.ok(alive(runner), `the action runner ${runner} survived the second crash too`);

  // ---- SIGKILL at the worst instants (fault injected, src/fdstore/faultInjection.ts) -----------
  // 'read': a request was recorded in the stored state but is still queued in the socket (relockd
  // peeks, records, then takes bytes out); the restart must answer it exactly once: a lost copy
  // leaves the client waiting forever, a doubled one answers one serial twice.
  // 'grant': a lease is locked and stored, the turn's state not written, the client not answered;
  // that lease was never granted (released), and the request is dispatched again, which must not
  // find the lease still locked by that leftover.
  for (const at of ['read', 'grant'] as const) {
    const faultFiles = Array.from({ length: 5 }, (_, n) => join(leases, `fault-${at}${n}.img`));
    for (const f of faultFiles) writeFileSync(f, '');
    hammer = await Hammer.start(held);
    const pid4 = show('MainPID');
    writeFileSync(x.faultFile, at);
    const faultId = burster.send({ op: 'burst', names: faultFiles });
    const back4 = await restarted(pid4);
    t.notOk(existsSync(x.faultFile), `relockd was killed at '${at}' of the first acquisition, back under pid ${back4.pid}`);
    const faultDone = await burster.waitFor((o) => o.id === faultId, 120_000);
    t.ok(faultDone.ok, `(${at}) every acquisition was answered, the one cut short by the crash too ${faultDone.err ?? ''}`);
    const h4 = await hammer.stop();
    hammer = null;
    t.same(h4.wins, {}, `(${at}) the hammer never won (${h4.attempts} attempts)`);
    t.same(faultFiles.filter((f) => probeOne(f) !== 'held'), [], `(${at}) every one of them is held`);
    t.notOk(burster.closed, `(${at}) the client's connection survived`);
    t.equal((await burster.call({ op: 'unmatched' })).unmatched, 0, `(${at}) no reply came that the client did not wait for (none answered twice)`);
  }
  t.match(log(), /bytes recorded just before the crash were still queued in the socket: taken out once/, "the request cut short at 'read' was in the record and in the socket; its socket copy was taken out once");
  t.match(log(), /a lease taken just before the crash was never granted: released/, "the lease taken in the turn cut short at 'grant' was released, then granted again to the request");

  // ---- an unreadable stored state: safe mode, every stored fd kept -------------------
  const pid3 = show('MainPID');
  // Overwrite both state memfds through /proc (root can), then crash.
  const mem = lab.run(['bash', '-c', `for f in /proc/${pid3}/fd/*; do case "$(readlink $f)" in /memfd:relockd-state*) printf 'garbage' > $f;; esac; done; ls -l /proc/${pid3}/fd | grep -c memfd:relockd-state`]);
  t.equal(mem.out.trim(), '2', 'both stored state documents overwritten');
  hammer = await Hammer.start([...held, ...burstFiles]);
  t.equal(kill9([pid3]).code, 0, `kill -9 relockd (${pid3}) with its stored state unreadable`);
  const back3 = await restarted(pid3);
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
}
