// takeover / handback under a real systemd (PID 1 of a private pid + mount
// namespace: test/fixtures/systemd-ns.sh, the shared lab's script) running
// Debian's own virtlockd.socket, virtlockd-admin.socket and virtlockd.service:
// the drop-in is installed and removed, systemd keeps the same MainPID, its
// `systemctl reload` (kill -USR1) works with either program, and the next
// start of virtlockd.service is relockd after a takeover.
//
// The lab is exclusive: the whole test runs under flock /tmp/relockd-systemd-lab.lock.

import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from './lib/relockd.js';
import { waitFor } from './lib/wait.js';
import { homedir } from 'node:os';

const LAB = join(ROOT, 'test', 'fixtures', 'systemd-ns.sh');
// Real daemons switching programs several times: allow for a loaded machine (tap's default is 180 s).
t.setTimeout(600_000);
const UNITS = ['virtlockd.service', 'virtlockd.socket', 'virtlockd-admin.socket'].map((u) => `/lib/systemd/system/${u}`);
const why = process.getuid?.() !== 0 ? 'needs root' : !existsSync('/lib/systemd/systemd') ? 'needs systemd (Debian package systemd)' : !UNITS.every(existsSync) ? "needs Debian's virtlockd units (package libvirt-daemon-system)" : '';

if (why && process.env.RELOCKD_CI) t.fail(`systemd lab: ${why} (CI needs it: a skipped proof is no proof)`);
else if (why) t.skip(`systemd lab: ${why}`, async () => {});
else main();

function main(): void {
  // Not under /tmp, /var/tmp or /run (the lab mounts private tmpfs there), and no system path: in
  // the checkout, or in the home directory when the checkout itself is under one of those (a CI
  // clone in /tmp).
  const hidden = /^\/(tmp|var\/tmp|run)\//.test(`${ROOT}/`);
  const base = mkdtempSync(join(hidden ? homedir() : ROOT, '.lab-systemd-takeover-'));
  // The lab hides the host's /tmp, so a checkout there is invisible inside it: run a copy of the
  // runtime tree (hard links where the filesystem allows) from the lab's base instead.
  const APP = hidden ? join(base, 'app') : ROOT;
  if (hidden) {
    mkdirSync(APP);
    for (const d of ['bin', 'dist', 'build', 'node_modules', 'schemas', 'units', 'package.json']) {
      const r = spawnSync('cp', ['-al', join(ROOT, d), APP]);
      if (r.status !== 0) spawnSync('cp', ['-a', join(ROOT, d), APP]);
    }
  }
  const unitDir = join(base, 'units');
  const state = join(base, 'state');
  mkdirSync(join(unitDir, 'virtlockd.service.d'), { recursive: true });
  mkdirSync(state, { recursive: true });
  for (const u of UNITS) copyFileSync(u, join(unitDir, u.replace(/.*\//, '')));
  writeFileSync(join(state, 'virtlockd.conf'), 'log_level = 3\nlog_outputs = "3:stderr"\n');
  // Logs to a file (the lab has no journal); virtlockd's own arguments as a host admin would set them.
  writeFileSync(join(unitDir, 'virtlockd.service.d', '10-lab.conf'), `[Service]\nEnvironment=VIRTLOCKD_ARGS="-f ${state}/virtlockd.conf"\nEnvironment=RELOCKD_ARGS="-f ${state}/virtlockd.conf"\nStandardOutput=append:${state}/daemon.log\nStandardError=inherit\n`);
  const lease = join(state, 'disk.img');
  writeFileSync(lease, '');

  let lock: ReturnType<typeof spawn> | null = null;
  let up = false;
  t.teardown(() => {
    if (up) spawnSync('bash', [LAB, 'down', state]);
    lock?.stdin?.end();
    rmSync(base, { recursive: true, force: true });
  });

  const inLab = (args: string[], timeout = 120_000) => {
    const r = spawnSync('bash', [LAB, 'run', state, ...args], { encoding: 'utf8', timeout, env: { ...process.env, NODE_OPTIONS: '' } });
    return { code: r.status, out: r.stdout ?? '', err: r.stderr ?? '' };
  };
  const relockctl = (args: string[]) => {
    const r = inLab(['/usr/bin/env', '-u', 'NODE_OPTIONS', process.execPath, join(APP, 'bin', 'relockctl.cjs'), ...args]);
    let json: any = null;
    try {
      json = JSON.parse(r.out);
    } catch {
      /* text */
    }
    return { ...r, json };
  };
  const show = (prop: string) => inLab(['systemctl', 'show', 'virtlockd.service', '-p', prop, '--value']).out.trim();
  const exeIn = (pid: string) => inLab(['readlink', `/proc/${pid}/exe`]).out.trim();
  const probe = (path: string) => inLab(['python3', '-c', `import fcntl,os,sys\nfd=os.open(sys.argv[1],os.O_RDWR)\ntry:\n  fcntl.lockf(fd,fcntl.LOCK_SH|fcntl.LOCK_NB,1,0); print('free')\nexcept OSError: print('held')`, path]).out.trim();
  const log = () => (existsSync(join(state, 'daemon.log')) ? readFileSync(join(state, 'daemon.log'), 'utf8') : '');

  t.test('under systemd: takeover installs the drop-in, handback removes it, the pid and the lease stay', { timeout: 300_000 }, async (t) => {
    lock = spawn('flock', ['-w', '600', '/tmp/relockd-systemd-lab.lock', 'sh', '-c', 'echo locked; exec cat'], { stdio: ['pipe', 'pipe', 'inherit'] });
    await new Promise((r) => lock!.stdout!.once('data', r));
    const upR = spawnSync('bash', [LAB, 'up', unitDir, state], { encoding: 'utf8', timeout: 60_000 });
    t.equal(upR.status, 0, `systemd up: ${upR.stderr}`);
    up = upR.status === 0;
    if (!up) return;
    t.equal(inLab(['systemctl', 'start', 'virtlockd.socket', 'virtlockd-admin.socket', 'virtlockd.service']).code, 0, "Debian's virtlockd units start");
    const pid = show('MainPID');
    t.match(exeIn(pid), /\/usr\/sbin\/virtlockd$/, `virtlockd.service runs virtlockd (pid ${pid})`);
    // a lease holder: relockctl run registers itself and holds the lease for its command's lifetime
    const holder = spawn('bash', [LAB, 'run', state, '/usr/bin/env', '-u', 'NODE_OPTIONS', process.execPath, join(APP, 'bin', 'relockctl.cjs'), 'run', '--socket', '/run/libvirt/virtlockd-sock', '--lease', lease, '--', 'sleep', '600'], { stdio: 'ignore' });
    t.teardown(() => holder.kill('SIGKILL'));
    // relockctl run starts Node inside the lab: seconds on a loaded machine. Wait for the event, not a count.
    const held = await waitFor(() => probe(lease) === 'held', 90_000, 100);
    t.ok(held, 'virtlockd holds the lease for relockctl run');

    const to = relockctl(['takeover', '--assume-registered', '--unit-dir', unitDir, '--json']);
    t.equal(to.code, 0, `takeover: ${to.out}${to.err}`);
    t.equal(String(to.json?.pid), pid, 'same pid');
    t.match(to.json?.systemd?.changes?.join('\n') ?? '', /installed .*virtlockd\.service\.d\/relockd\.conf[\s\S]*ran systemctl daemon-reload/, 'says it installed the drop-in and reloaded systemd');
    t.equal(show('MainPID'), pid, "systemd's MainPID unchanged");
    t.equal(show('ActiveState'), 'active', 'virtlockd.service still active');
    t.match(show('ExecStart'), /relockd\.cjs/, "the unit's ExecStart is relockd now (next start)");
    t.match(exeIn(pid), /node/, 'the process runs relockd');
    t.equal(probe(lease), 'held', 'lease held by relockd');
    // systemctl reload = kill -USR1: relockd's own re-exec
    t.equal(inLab(['systemctl', 'reload', 'virtlockd.service']).code, 0, 'systemctl reload (relockd re-exec)');
    await new Promise((r) => setTimeout(r, 2500));
    t.equal(show('MainPID'), pid, 'same MainPID after the reload');
    t.equal(probe(lease), 'held', 'lease held after the reload');

    const hb = relockctl(['handback', '--unit-dir', unitDir, '--json', '--', '-f', join(state, 'virtlockd.conf')]);
    t.equal(hb.code, 0, `handback: ${hb.out}${hb.err}`);
    t.match(hb.json?.systemd?.changes?.join('\n') ?? '', /removed .*relockd\.conf[\s\S]*daemon-reload/, 'says it removed the drop-in');
    t.match(show('ExecStart'), /\/usr\/sbin\/virtlockd/, "the unit's ExecStart is virtlockd again");
    t.equal(show('MainPID'), pid, "systemd's MainPID unchanged");
    t.match(exeIn(pid), /\/usr\/sbin\/virtlockd$/, 'the process runs virtlockd');
    t.equal(probe(lease), 'held', 'lease held by virtlockd');
    t.equal(inLab(['systemctl', 'reload', 'virtlockd.service']).code, 0, 'systemctl reload (virtlockd re-exec)');
    await new Promise((r) => setTimeout(r, 1000));
    t.match(exeIn(pid), /\/usr\/sbin\/virtlockd$/, 'virtlockd re-exec\'d itself');
    t.equal(probe(lease), 'held', 'lease held after virtlockd re-exec');

    // takeover again, then the next start of the unit is relockd
    const to2 = relockctl(['takeover', '--assume-registered', '--unit-dir', unitDir, '--json']);
    t.equal(to2.code, 0, `second takeover: ${to2.out}${to2.err}`);
    // the holder (relockctl run exec'd sleep) inside the lab's pid namespace: by the pid relockd names
    const leases = relockctl(['leases', '--json']);
    const ownerPid = JSON.stringify(leases.json).match(/"pid":\s*(\d+)/)?.[1];
    t.ok(ownerPid, `relockd names the lease's owner pid (${ownerPid})`);
    if (ownerPid) inLab(['kill', '-KILL', ownerPid]);
    holder.kill('SIGKILL');
    const freed = await waitFor(() => probe(lease) === 'free', 90_000, 100);
    t.ok(freed, 'the holder exits: relockd frees the lease');
    t.equal(inLab(['systemctl', 'restart', 'virtlockd.service']).code, 0, 'systemctl restart virtlockd.service');
    const pid2 = show('MainPID');
    t.not(pid2, pid, 'a new process');
    t.match(exeIn(pid2), /node/, 'the next start is relockd (the drop-in)');
    t.equal(show('ActiveState'), 'active', 'active (Type=notify: relockd said READY=1)');
    const hb2 = relockctl(['handback', '--unit-dir', unitDir, '--json', '--', '-f', join(state, 'virtlockd.conf')]);
    t.equal(hb2.code, 0, `handback of the systemd-started relockd: ${hb2.out}${hb2.err}`);
    t.match(exeIn(pid2), /\/usr\/sbin\/virtlockd$/, 'virtlockd again');
    if (!t.passing()) t.comment(log().slice(-4000));
  });
}
