// Storage failure over real NFS (the UML lab, ../shared/lab/nfs-hosts): a
// partition between client host c1 and the server, longer than the NFSv4
// lease time (lowered to 15 s on the server for the run), while relockd on
// c1 holds a lease for a real owner process there.
//
//  A. killpath, short timeouts: relockd on c1 fails the lock space and runs
//     the killpath program (which releases through relockctl); relockd on c2
//     then acquires the lease; after the partition heals, c1's owner is not
//     resumed but terminated (its lease is c2's now).
//  B. ignore, long failure timeout: after the partition heals, relockd on c1
//     detects the lost lock (EIO through the holder's fd) and fails the lock
//     space; alongside, every probe method is measured on its own lost lock:
//     which of them really detects the loss.
//
//   flock /tmp/relockd-nfs-lab.lock node --import=@tapjs/typescript/import test/nfs/lockloss.ts [--keep]
//
// Prints PASS/FAIL lines, a timing table and `N passed, N failed`.

import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync, chmodSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from '../lib/relockd.js';
import { run, sleep } from '../e2e/proc.js';
import { DEFAULT_LAB_SCRIPT, Lab } from './lab.js';

// 30 s, not 15: a node program (the killpath's relockctl) takes up to ~10 s
// to start in a UML guest on a loaded 2-core host, and kill_grace must
// leave it that time within the lease.
const LEASE_S = 30;
const keep = process.argv.includes('--keep');
const argOf = (name: string) => process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);
// --lab-dir=DIR (test/nfs/ci.sh): the lab and this run's files there, so that
// ci.sh's teardown finds whatever is left; --time-limit=SECS: stop and clean up.
const W = argOf('lab-dir') ?? mkdtempSync('/tmp/relockd-lockloss-');
mkdirSync(W, { recursive: true });
const TIME_LIMIT_S = Number(argOf('time-limit') ?? 0);
const lab = new Lab(process.env.RELOCKD_NFS_LAB_SCRIPT ?? DEFAULT_LAB_SCRIPT, W);
const NODE = process.execPath;
const FLAGS = '--experimental-permission --allow-fs-read=* --allow-fs-write=* --allow-addons --allow-child-process --no-warnings';
const EXPORT = '/mnt/nfs4/lockloss';
let labUp = false;
let passed = 0;
let failed = 0;
const timings: Array<[string, string]> = [];
const check = (ok: boolean, what: string, detail = '') => {
  if (ok) passed++;
  else failed++;
  console.log(`${ok ? 'PASS' : 'FAIL'} ${what}${detail ? ` — ${detail}` : ''}`);
};
const note = (k: string, v: string) => {
  timings.push([k, v]);
  console.log(`  ${k}: ${v}`);
};

async function sh(host: string, cmd: string, timeoutS = 60): Promise<string> {
  const r = await lab.exec(host, cmd, timeoutS);
  if (r.code !== 0) throw new Error(`${host}: ${cmd}: exit ${r.code}: ${r.stdout}${r.stderr}`);
  return r.stdout;
}

async function ns(cmd: string[]): Promise<void> {
  const { ns } = lab.env();
  const r = await run('ip', ['-n', ns, ...cmd], { timeoutMs: 10_000 });
  if (r.code !== 0) throw new Error(`ip -n ${ns} ${cmd.join(' ')}: ${r.stderr}`);
}

// The partition takes c1's tap off the lab's bridge (both directions drop);
// the tap stays up. (Setting the tap down broke the UML guest's vector NIC for
// good: ARP never resolved again after `up`, and c1's NFS mount never came back.)
const partition = () => ns(['link', 'set', 'mhtap-c1', 'nomaster']);
const heal = () => ns(['link', 'set', 'mhtap-c1', 'master', 'mhbr']);

/** Files the guests run (plain JS: no TypeScript in the guests). */
function writeScripts(): void {
  writeFileSync(
    join(W, 'owner.mjs'),
    `const { LockspaceClient } = await import('${ROOT}/dist/src/protocol/lockspaceClient.js');
const [sock, ls, name, uuid] = process.argv.slice(2);
const c = await LockspaceClient.connect(sock);
await c.register({ uuid, name: 'vm-' + name, id: 1, pid: process.pid });
await c.acquire(ls, name, 2);
console.log('ready', process.pid);
setInterval(() => {}, 1 << 30);
`,
  );
  // Another host's VM start: keep trying until the lease is ours, then hold it.
  writeFileSync(
    join(W, 'taker.mjs'),
    `const { LockspaceClient } = await import('${ROOT}/dist/src/protocol/lockspaceClient.js');
const [sock, ls, name] = process.argv.slice(2);
const c = await LockspaceClient.connect(sock);
await c.register({ uuid: '99999999-0000-0000-0000-000000000002', name: 'taker', id: 2, pid: process.pid });
for (;;) {
  try { await c.acquire(ls, name, 2); break; } catch (e) { await new Promise((r) => setTimeout(r, 500)); }
}
console.log('acquired', Date.now() / 1000);
setInterval(() => {}, 1 << 30);
`,
  );
  // Probe-method measurement: one lease file per method, each OFD-locked on
  // its own fd; on 'go' each is probed with that method alone (through a dup).
  writeFileSync(
    join(W, 'methods.cjs'),
    `const n = require('${ROOT}/build/Release/relockd_native.node');
const fs = require('fs');
const dir = process.argv[2];
const methods = { dirStatx: 1, directRead: 2, relock: 4, fstatSync: 8, bufferedRead: 0 };
const fds = {};
for (const m of Object.keys(methods)) { const f = dir + '/method-' + m; fds[m] = fs.openSync(f, fs.constants.O_RDWR | fs.constants.O_CREAT); fs.writeSync(fds[m], 'x'); n.ofdLock(fds[m], 'write', 0, 1); }
console.log('locked');
const go = () => {
  const out = {};
  let left = Object.keys(methods).length;
  for (const [m, bits] of Object.entries(methods)) {
    if (m === 'bufferedRead') {
      try { fs.readSync(fds[m], Buffer.alloc(1), 0, 1, 0); out[m] = 'ok'; } catch (e) { out[m] = e.code; }
      if (--left === 0) console.log(JSON.stringify(out));
      continue;
    }
    n.probeStorage(dir, [{ fd: n.dup(fds[m]), lock: 'write' }], bits, (err, res) => {
      out[m] = err ? err.code : res.dirError ? 'dir:' + res.dirError.code : res.leases[0].error ? res.leases[0].error.code : 'ok';
      if (--left === 0) console.log(JSON.stringify(out));
    });
  }
};
setInterval(() => { if (fs.existsSync('${W}/methods-go')) { fs.unlinkSync('${W}/methods-go'); go(); } }, 200);
`,
  );
  writeFileSync(
    join(W, 'killpath.sh'),
    `#!/bin/sh
echo "$(date +%s.%N) killpath $* pid=$RELOCKD_OWNER_PID lockspace=$RELOCKD_LOCKSPACE resources=$RELOCKD_RESOURCES" >> ${W}/calls.log
if [ "$1" = fail ]; then exec ${NODE} ${ROOT}/bin/relockctl.cjs --admin-socket "$RELOCKD_ADMIN_SOCKET" --timeout 10 release-leases; fi
exit 0
`,
  );
  chmodSync(join(W, 'killpath.sh'), 0o755);
}

function startRelockd(host: string, tag: string, args: string): Promise<string> {
  return sh(host, `mkdir -p /tmp/${tag} && setsid nohup ${NODE} ${FLAGS} ${ROOT}/bin/relockd.cjs --runtime-dir /tmp/${tag} --log-level debug ${args} > ${W}/${tag}.log 2>&1 < /dev/null & echo started`);
}

async function health(host: string, tag: string): Promise<Array<{ dir: string; state: string; lost: string[]; error: string | null; owners: Array<{ phase: string }> }>> {
  const out = await sh(host, `${NODE} ${ROOT}/bin/relockctl.cjs --admin-socket /tmp/${tag}/virtlockd-admin-sock --timeout 5 health --json`, 30);
  return JSON.parse(out);
}

async function until<T>(what: string, ms: number, f: () => Promise<T | null | undefined | false>): Promise<T | null> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    try {
      const v = await f();
      if (v) return v;
    } catch {
      /* retry */
    }
    await sleep(300);
  }
  console.log(`  (timed out waiting for ${what})`);
  return null;
}

const stateOf = async (host: string, tag: string, dir: string) => (await health(host, tag)).find((w) => w.dir === dir);
/** Both daemons answer (a start in a loaded UML guest takes seconds: a fixed sleep raced it). */
async function readyBoth(a: string, b: string): Promise<void> {
  const ok = await until(`${a} and ${b} ready`, 90_000, async () => logLine(a, /"msg":"relockd ready"/) && logLine(b, /"msg":"relockd ready"/));
  if (!ok) throw new Error(`relockd ${a}/${b} did not start`);
}

/**
 * The first line of a daemon's log (on the lab's shared work directory) at or
 * after `since` matching `re`. Cheaper and exact where a relockctl in a
 * loaded guest takes seconds to start.
 */
function logLine(tag: string, re: RegExp, since = 0): string | null {
  const f = join(W, `${tag}.log`);
  if (!existsSync(f)) return null;
  return readFileSync(f, 'utf8').split('\n').find((l) => re.test(l) && Date.parse(/"time":"([^"]+)"/.exec(l)?.[1] ?? '') >= since) ?? null;
}


/**
 * The daemon's own timeline (its log's timestamps; UML guests read the host's
 * clock), relative to `t0`: polling relockctl health in a guest takes seconds.
 */
function logTimeline(file: string, t0: number, steps: Array<[string, RegExp]>): void {
  const lines = existsSync(file) ? readFileSync(file, 'utf8').split('\n') : [];
  for (const [label, re] of steps) {
    const l = lines.find((x) => re.test(x) && Date.parse(/"time":"([^"]+)"/.exec(x)?.[1] ?? '') >= t0);
    const at = l ? Date.parse(/"time":"([^"]+)"/.exec(l)![1]!) : null;
    note(label, at === null ? 'not in the log' : `${((at - t0) / 1000).toFixed(2)} s`);
  }
}
const t = (t0: number) => `${((Date.now() - t0) / 1000).toFixed(1)} s`;

async function scenarioA(): Promise<void> {
  console.log(`# A: partition c1 from the server for longer than the ${LEASE_S} s lease; killpath`);
  const ls = `${EXPORT}/a`;
  await sh('c1', `mkdir -p ${ls}`);
  // 4 s failure timeout + 20 s kill_grace + 1 s term grace + 3 s margin <= 30 s lease
  await startRelockd('c1', 'c1a', `--lockspace-check-interval 1 --lockspace-failure-timeout 4 --kill-grace 20 --term-grace 1 --storage-timeout 2 --nfs-lease-time ${LEASE_S} --lock-failure-action killpath --killpath ${W}/killpath.sh --lockspace ${ls}`);
  await startRelockd('c2', 'c2a', `--storage-timeout 5 --lockspace ${ls}`);
  await readyBoth('c1a', 'c2a');
  await sh('c1', `setsid nohup ${NODE} ${W}/owner.mjs /tmp/c1a/virtlockd-sock ${ls} disk1 11111111-0000-0000-0000-00000000000a > ${W}/ownerA.log 2>&1 < /dev/null & echo $! > ${W}/ownerA.pid`);
  const pid = Number((await until('owner', 10_000, async () => /ready (\d+)/.exec(readFileSync(join(W, 'ownerA.log'), 'utf8'))?.[1])) ?? 0);
  check(pid > 0, 'A: owner on c1 holds disk1');
  const watched = await until('watch', 20_000, async () => logLine('c1a', /"msg":"lock-space health watch started/));
  check(!!watched, 'A: relockd on c1 watches the NFS lock space (healthy)');
  const lt = readFileSync(join(W, 'c1a.log'), 'utf8').match(/"leaseTimeMs":(\d+|null)/)?.[1];
  note('A lease time read from mountstats', `${lt} ms`);
  await sh('c2', `setsid nohup ${NODE} ${W}/taker.mjs /tmp/c2a/virtlockd-sock ${ls} disk1 > ${W}/takerA.log 2>&1 < /dev/null & echo ok`);
  await sleep(1500);
  check(!readFileSync(join(W, 'takerA.log'), 'utf8').includes('acquired'), 'A: c2 cannot acquire disk1 while c1 holds it');
  const t0 = Date.now();
  await partition();
  // (relockctl health in a guest takes seconds: the daemon's own log has the exact timeline, below)
  const failedAt = await until('failed', 60_000, async () => logLine('c1a', /"msg":"lock space failed"/, t0));
  note('A partition -> failed', failedAt ? t(t0) : 'never');
  check(!!failedAt, 'A: c1 fails the lock space');
  const kp = await until('killpath', 20_000, async () => existsSync(join(W, 'calls.log')) && readFileSync(join(W, 'calls.log'), 'utf8').includes('fail'));
  note('A partition -> killpath ran', kp ? t(t0) : 'never');
  check(!!kp, 'A: the killpath program ran for the owner', existsSync(join(W, 'calls.log')) ? readFileSync(join(W, 'calls.log'), 'utf8').trim() : '');
  const released = await until('released', 40_000, async () => logLine('c1a', /"msg":"lock failure: owner made safe/, t0));
  note('A partition -> owner released on c1', released ? t(t0) : 'never');
  const took = await until('c2 acquires', 90_000, async () => /acquired ([\d.]+)/.exec(readFileSync(join(W, 'takerA.log'), 'utf8')));
  note('A partition -> c2 acquired disk1', took ? `${(Number(took[1]) - t0 / 1000).toFixed(1)} s` : 'never');
  check(!!took, 'A: relockd on c2 acquires the lease during the partition');
  if (took) check(Number(took[1]) * 1000 - t0 >= LEASE_S * 1000 - 1000, 'A: not before the lease time', `${(Number(took[1]) - t0 / 1000).toFixed(1)} s >= ${LEASE_S} s`);
  await sleep(2000);
  await heal();
  const th = Date.now();
  note('A partition length', `${((th - t0) / 1000).toFixed(1)} s`);
  const gone = await until('owner terminated', 60_000, async () => (await sh('c1', `kill -0 ${pid} 2>/dev/null && echo alive || echo gone`)).includes('gone'));
  note('A heal -> c1 owner terminated', gone ? t(th) : 'never');
  check(!!gone, 'A: after the heal, the owner on c1 is terminated, not resumed');
  check(!readFileSync(join(W, 'calls.log'), 'utf8').includes('resume'), 'A: resume never ran');
  const log = readFileSync(join(W, 'c1a.log'), 'utf8');
  check(/taken by someone else during the failure/.test(log), 'A: c1 logs why');
  check(/"event":"fail".*killpath program \(fail\) succeeded/.test(log), 'A: the killpath program (through the action runner) succeeded');
  logTimeline(join(W, 'c1a.log'), t0, [
    ['A c1 log: first probe failed', /"msg":"lock-space probe failed"/],
    ['A c1 log: failing', /"msg":"lock space failing"/],
    ['A c1 log: failed', /"msg":"lock space failed"/],
    ['A c1 log: killpath sent to the runner', /"msg":"killpath program \(fail\) sent/],
    ['A c1 log: killpath started', /"msg":"killpath program started \(fail\)"/],
    ['A c1 log: owner made safe (released)', /"msg":"lock failure: owner made safe/],
    ['A c1 log: killpath exited', /"msg":"killpath program \(fail\) (succeeded|failed)"/],
    ['A c1 log: recovering', /"msg":"lock space recovering"/],
    ['A c1 log: owner terminated (lease taken)', /taken by someone else during the failure; the owner must never run again/],
  ]);
  const healthy = await until('healthy', 120_000, async () => logLine('c1a', /"msg":"lock space healthy"/, th));
  const st = await stateOf('c1', 'c1a', ls).catch(() => undefined);
  check(!!healthy && (!st || st.state === 'healthy'), 'A: c1 healthy again after the heal', JSON.stringify(st ?? 'watch ended'));
  note('A heal -> c1 healthy', healthy ? t(th) : 'never');
}

async function scenarioB(): Promise<void> {
  console.log('# B: action ignore, long failure timeout: the lost lock is detected after the heal (EIO)');
  const ls = `${EXPORT}/b`;
  // After A's long partition the c1 client's TCP connection and NFSv4 state
  // recover on their own schedule (RPC retransmits back off up to timeo=60 s).
  const t1 = Date.now();
  const back = await until('c1 mount answers after A', 240_000, async () => (await lab.exec('c1', `mkdir -p ${ls} && echo ok`, 30)).stdout.includes('ok'));
  note('A heal -> c1 NFS mount answers again', back ? t(t1) : 'never');
  if (!back) throw new Error('c1 NFS mount did not answer after the heal');
  await startRelockd('c1', 'c1b', `--lockspace-check-interval 1 --lockspace-failure-timeout 300 --storage-timeout 2 --lock-failure-action ignore --lockspace ${ls}`);
  await startRelockd('c2', 'c2b', `--storage-timeout 5 --lockspace ${ls}`);
  await readyBoth('c1b', 'c2b');
  await sh('c1', `setsid nohup ${NODE} ${W}/owner.mjs /tmp/c1b/virtlockd-sock ${ls} disk2 11111111-0000-0000-0000-00000000000b > ${W}/ownerB.log 2>&1 < /dev/null & echo ok`);
  await sh('c1', `mkdir -p ${EXPORT}/m && setsid nohup ${NODE} ${W}/methods.cjs ${EXPORT}/m > ${W}/methods.log 2>&1 < /dev/null & echo ok`);
  await until('owner', 10_000, async () => readFileSync(join(W, 'ownerB.log'), 'utf8').includes('ready'));
  await until('methods', 10_000, async () => readFileSync(join(W, 'methods.log'), 'utf8').includes('locked'));
  await until('watch', 20_000, async () => logLine('c1b', /"msg":"lock-space health watch started/));
  // c2 wants disk2 and the method files: the courteous server (Linux >= 5.19)
  // only drops c1's expired state when someone else asks for a conflicting lock.
  await sh('c2', `setsid nohup ${NODE} ${W}/taker.mjs /tmp/c2b/virtlockd-sock ${ls} disk2 > ${W}/takerB.log 2>&1 < /dev/null & echo ok`);
  await sh('c2', `setsid nohup python3 -c "
import fcntl, os, time, glob
want = ['${EXPORT}/m/method-' + m for m in ['dirStatx', 'directRead', 'relock', 'fstatSync', 'bufferedRead']]
fds = {p: os.open(p, os.O_RDWR) for p in want}
got = set()
while len(got) < len(want):
    for p, fd in fds.items():
        if p in got: continue
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0); got.add(p); print('got', p, time.time(), flush=True)
        except OSError: pass
    time.sleep(0.5)
time.sleep(3600)
" > ${W}/takerM.log 2>&1 < /dev/null & echo ok`);
  const t0 = Date.now();
  await partition();
  const took = await until('c2 acquires disk2', 90_000, async () => /acquired ([\d.]+)/.exec(readFileSync(join(W, 'takerB.log'), 'utf8')));
  note('B partition -> c2 acquired disk2', took ? `${(Number(took[1]) - t0 / 1000).toFixed(1)} s` : 'never');
  check(!!took && Number(took[1]) * 1000 - t0 >= LEASE_S * 1000 - 1000, 'B: c2 acquires disk2 during the partition, not before the lease time', took ? `${(Number(took[1]) - t0 / 1000).toFixed(1)} s` : 'never');
  await until('c2 takes the method files', 30_000, async () => (readFileSync(join(W, 'takerM.log'), 'utf8').match(/^got/gm) ?? []).length === 5);
  const before = await stateOf('c1', 'c1b', ls);
  note('B state during the partition', `${before?.state} (${before?.error ?? ''})`);
  await heal();
  const th = Date.now();
  note('B heal at', `${((th - t0) / 1000).toFixed(2)} s after the partition`);
  const lostLine = await until('lost lock', 120_000, async () => logLine('c1b', /"why":"lock lost on.*"msg":"lock space failed"/, th));
  note('B heal -> lost lock in c1 log', lostLine ? `${((Date.parse(/"time":"([^"]+)"/.exec(lostLine)![1]!) - th) / 1000).toFixed(2)} s` : 'never');
  const lost = lostLine ? await until('lost lock (relockctl health)', 60_000, async () => {
    const w = await stateOf('c1', 'c1b', ls);
    return w && w.lost.length > 0 ? w : null;
  }) : null;
  note('B heal -> lost lock detected', lost ? `${t(th)} (state ${lost.state}, lost ${lost.lost.join(', ')})` : 'never');
  check(!!lost && lost.state !== 'healthy', 'B: relockd on c1 detects the lost lock after the heal', lost ? JSON.stringify({ state: lost.state, lost: lost.lost, error: lost.error }) : '');
  logTimeline(join(W, 'c1b.log'), t0, [
    ['B c1 log: failing (partition)', /"msg":"lock space failing"/],
    ['B c1 log: first probe reporting the lost lock', /"err":"lock lost on/],
    ['B c1 log: failed (lock lost)', /"why":"lock lost on.*"msg":"lock space failed"/],
  ]);
  await sleep(3000);
  writeFileSync(join(W, 'methods-go'), '');
  const res = await until('methods', 60_000, async () => readFileSync(join(W, 'methods.log'), 'utf8').split('\n').find((l) => l.startsWith('{')));
  note('B probe methods on a lost lock', res ?? 'no answer');
  if (res) {
    const r = JSON.parse(res) as Record<string, string>;
    check(r.directRead === 'EIO', 'B: O_DIRECT read through the holder fd detects the lost lock (EIO)', res);
  }
}

async function main(): Promise<void> {
  console.log(`lab in ${W}`);
  writeScripts();
  process.env.MH_GRACE = String(LEASE_S);
  const up = await lab.up(2);
  if (up.code !== 0) throw new Error(`lab up failed: ${up.stdout}${up.stderr}`);
  labUp = true;
  note('server nfsv4leasetime', (await sh('srv', 'cat /proc/fs/nfsd/nfsv4leasetime')).trim() + ' s');
  note('client kernel', (await sh('c1', 'uname -r')).trim());
  await sh('c1', `mkdir -p ${EXPORT} && grep -o 'lease_time=[0-9]*' /proc/self/mountstats | head -1 || true`).then((s) => note('c1 mountstats', s.trim() || 'no lease_time'));
  try {
    await scenarioA();
  } catch (e) {
    check(false, 'A ran', (e as Error).message);
  }
  try {
    await scenarioB();
  } catch (e) {
    check(false, 'B ran', (e as Error).message);
  }
}

let finished = false;
async function finish(): Promise<void> {
  if (finished) return;
  finished = true;
  await heal().catch(() => {});
  console.log('\n| step | measured |\n|---|---|');
  for (const [k, v] of timings) console.log(`| ${k} | ${v} |`);
  if (!keep || !labUp) {
    for (const h of ['c1', 'c2', 'srv']) await lab.crash(h).catch(() => {});
    await lab.down(true).catch(() => {});
    rmSync(W, { recursive: true, force: true });
  } else console.log(`kept: ${W}`);
  console.log(`${passed} passed, ${failed} failed`);
  process.exitCode = failed ? 1 : 0;
}

if (TIME_LIMIT_S > 0) {
  setTimeout(() => {
    check(false, `time limit of ${TIME_LIMIT_S} s reached`);
    void finish().then(() => process.exit(1));
  }, TIME_LIMIT_S * 1000).unref();
}

main()
  .catch((e) => check(false, 'lab run', (e as Error).stack ?? String(e)))
  .finally(finish);
