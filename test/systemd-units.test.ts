// relockd's real units under a real systemd (Debian's systemd 252 as PID 1 of a private namespace,
// test/lib/systemdLab.ts): units/relockd.service + relockd.socket + relockd-admin.socket as shipped,
// and Debian's virtlockd units with the takeover drop-in (units/virtlockd-takeover/), each with only
// its system paths rewritten into the lab. What systemd itself does with them:
//   - socket activation: the service starts on the first connection and serves it; the lock-space
//     protocol (CREATE_LOCKSPACE, leases in a lock-space directory) works through it;
//   - Type=notify: systemd keeps the unit activating until READY=1 (each image of relockd is made to
//     sleep 3 s before its code runs), STATUS= reaches StatusText;
//   - systemctl reload = SIGUSR1 re-exec: RELOADING=1 then READY=1, still active, same MainPID,
//     leases held (probed from another process), clients still connected and served;
//   - systemctl stop with leases held, under each shutdown policy (drain, kill-owners, refuse), and
//     during a reload (its SIGTERM lands while the new image starts);
//   - Restart=on-failure after kill -9 of the main pid.
// Every lease is held by a real client process (relockctl run: registered with its own pid,
// restricted, its own connection, exec'd into the command), as QEMU holds its leases.
//
// The lab is exclusive: everything runs under flock /tmp/relockd-systemd-lab.lock.

import t from 'tap';
import type { Test } from 'tap';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from './lib/relockd.js';
import { SystemdLab, installRelockdUnits, installVirtlockdTakeoverUnits, labUnavailable, waitFor, writeRelockdDefaults } from './lib/systemdLab.js';

t.setTimeout(900_000);

interface Flavour {
  name: string;
  service: string;
  sockets: string[];
  install: (lab: SystemdLab) => { socket: string; adminSocket: string; defaults: string };
  /** The unit file whose [Service] decides crash behaviour (for the fd-store hook below). */
  serviceText: () => string;
  /** Extra relockd flags: pid and state files in the lab where the unit's defaults are system paths. */
  extraArgs: (lab: SystemdLab) => string[];
}

const FLAVOURS: Flavour[] = [
  {
    name: "relockd's own units",
    service: 'relockd.service',
    sockets: ['relockd.socket', 'relockd-admin.socket'],
    install: installRelockdUnits,
    serviceText: () => readFileSync(join(ROOT, 'units', 'relockd.service'), 'utf8'),
    extraArgs: () => [],
  },
  {
    name: "virtlockd.service with the takeover drop-in",
    service: 'virtlockd.service',
    sockets: ['virtlockd.socket', 'virtlockd-admin.socket'],
    install: installVirtlockdTakeoverUnits,
    serviceText: () => readFileSync(join(ROOT, 'units', 'virtlockd-takeover', 'virtlockd.service.d', 'relockd.conf'), 'utf8'),
    // virtlockd's defaults are /run/virtlockd.pid and /run/libvirt/…: put them in the lab's dir.
    extraArgs: (lab) => ['--pid-file', lab.file('virtlockd.pid'), '--state-file', lab.file('relockd-restart-exec.json')],
  },
];

const why = labUnavailable({ virtlockdUnits: true });
if (why && process.env.RELOCKD_CI) t.fail(`systemd lab: ${why} (CI needs it: a skipped proof is no proof)`);
else if (why) t.skip(`systemd lab: ${why}`, async () => {});
else for (const f of FLAVOURS.filter((x) => !process.env.LAB_ONLY || x.service.startsWith(process.env.LAB_ONLY))) t.test(f.name, { timeout: 400_000 }, (t) => scenario(t, f));

async function scenario(t: Test, f: Flavour): Promise<void> {
  const lab = await SystemdLab.open(f.service.replace('.service', ''));
  t.teardown(() => lab.close());
  const u = f.install(lab);
  const policy = (p: string | null) => writeRelockdDefaults(lab, u.defaults, [...f.extraArgs(lab), ...(p ? ['--shutdown-policy', p] : [])]);
  policy(null);
  const up = lab.up();
  t.equal(up.code, 0, `systemd up: ${up.err}`);
  if (up.code !== 0) return;
  const show = (...p: string[]) => lab.show(f.service, p);
  const ctl = (args: string[]) => lab.relockctl([args[0]!, '--socket', u.socket, '--admin-socket', u.adminSocket, '--json', ...args.slice(1)]);
  const diag = () => t.comment(`relockd log:\n${lab.read('relockd.log').slice(-3000)}\n${lab.run(['systemctl', 'status', '--no-pager', f.service, ...f.sockets]).out}`);
  let n = 0;
  // A lease holder as QEMU holds one: `relockctl run` registers its own pid, restricts the
  // connection, acquires, and execs `sleep 6000+n`, which keeps the connection. Returns its sleep
  // duration (its name for pgrep).
  const hold = (lease: string[]) => {
    const tag = String(6000 + ++n);
    lab.spawn(lab.relockctlArgv(['run', '--socket', u.socket, ...lease.flatMap((l) => ['--lease', l]), '--', 'sleep', tag]));
    return tag;
  };
  const holderPid = (tag: string) => lab.run(['pgrep', '-x', '-f', `sleep ${tag}`]).out.trim();
  // `relockctl run` execs its command only once every lease is granted: wait for that before probing,
  // since a probe (F_SETLK from another process) racing the grant itself makes the grant fail (busy).
  const started = async (tag: string, ms = 20_000) => Boolean(await waitFor(() => holderPid(tag), ms));
  const heldBy = async (path: string, want: 'held' | 'free', ms = 15_000) => (await waitFor(() => lab.probe(path) === want, ms)) as boolean;
  const stateIs = async (want: string, ms = 20_000) => (await waitFor(() => show('ActiveState').ActiveState === want, ms)) as boolean;

  // -- socket activation: systemd starts the service on the first connection --------------------------------------------------------------------------
  t.equal(lab.run(['systemctl', 'start', ...f.sockets]).code, 0, `systemctl start ${f.sockets.join(' ')}`);
  t.same(show('ActiveState'), { ActiveState: 'inactive' }, `${f.service} is not running before the first connection`);
  const st = ctl(['status']);
  t.equal(st.code, 0, `relockctl status on the admin socket starts ${f.service} and is answered: ${st.err}`);
  const s1 = show('ActiveState', 'SubState', 'MainPID', 'StatusText', 'Type', 'NotifyAccess');
  t.match(s1, { ActiveState: 'active', SubState: 'running', Type: 'notify', NotifyAccess: 'main' }, 'socket-activated: active (running), Type=notify');
  t.equal(String(st.json?.daemon?.pid), s1.MainPID, "the answer came from systemd's MainPID");
  t.match(s1.StatusText, /^\d+ clients, \d+ leases held in \d+ lockspaces$/, `STATUS= reached systemd: "${s1.StatusText}"`);
  t.equal(lab.run(['systemctl', 'stop', f.service]).code, 0, 'stop it again (no lease held: it exits at once)');

  // -- Type=notify readiness ------------------------------------------------------------------------
  // A drop-in makes every image of relockd (the first and each re-exec) sleep 3 s in node before its
  // code runs (NODE_OPTIONS=--require), i.e. before READY=1: systemd must keep the unit activating
  // (start) that long with the process already its MainPID, and a reload in "reload" until the new
  // image says READY=1. (The sleep is outside relockd: relockd itself is unchanged.)
  const slow = lab.file('slow-start.cjs');
  writeFileSync(slow, 'Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 3000);\n');
  lab.dropIn(f.service, '60-slow-start.conf', `[Service]\nEnvironment=NODE_OPTIONS=--require=${slow}\n`);
  lab.run(['systemctl', 'daemon-reload']);
  const t0 = Date.now();
  t.equal(lab.run(['systemctl', 'start', '--no-block', f.service]).code, 0, 'systemctl start --no-block');
  const starting = await waitFor(() => {
    const x = show('ActiveState', 'SubState', 'MainPID');
    return x.MainPID !== '0' || x.ActiveState === 'active' ? x : null;
  });
  t.match(starting, { ActiveState: 'activating', SubState: 'start' }, `the process runs (MainPID ${starting?.MainPID}) but the unit is still activating: no READY=1 yet`);
  t.ok(await stateIs('active'), 'active once relockd sent READY=1');
  const readyMs = Date.now() - t0;
  t.ok(readyMs >= 2500, `it became active only after the 3 s delay before READY=1 (${readyMs} ms)`);
  const pid = show('MainPID').MainPID!;
  t.equal(String(ctl(['status']).json?.daemon?.pid), pid, 'and serves');

  // The lock-space protocol through the socket-activated daemon: a lock-space directory, a lease
  // file in it (auto-created), and a lease on an image in the default lock space.
  const space = lab.file('lockspace');
  mkdirSync(space);
  const disk = lab.file('disk1.img');
  writeFileSync(disk, '');
  const h1 = hold([disk]);
  const h2 = lab.spawn(lab.relockctlArgv(['run', '--socket', u.socket, '--lockspace', space, '--lease', 'vm2-disk', '--', 'sleep', String(6000 + ++n)]));
  void h2;
  const h2tag = String(6000 + n);
  t.ok((await started(h1)) && (await started(h2tag)), 'both holders were granted their leases and run');
  t.ok(await heldBy(disk, 'held'), 'an image lease (default lock space) is held, seen from another process');
  t.ok(await heldBy(join(space, 'vm2-disk'), 'held'), 'a lease file in a lock-space directory is held (CREATE_LOCKSPACE + AUTOCREATE)');
  t.ok(await waitFor(() => /^2 clients, 2 leases held in 2 lockspaces$/.test(show('StatusText').StatusText ?? '')), `StatusText follows: "${show('StatusText').StatusText}"`);
  const clientsBefore = ctl(['clients']).json;

  // -- systemctl reload: SIGUSR1 re-exec ----------------------------------------------------------
  const rl = lab.run(['systemctl', 'reload', f.service]);
  t.equal(rl.code, 0, `systemctl reload: ${rl.err}`);
  // The new image sleeps 3 s before READY=1: meanwhile systemd has RELOADING=1 (and its STATUS=).
  const reloading = await waitFor(() => {
    const x = show('ActiveState', 'SubState', 'MainPID', 'StatusText');
    return x.SubState === 'reload' && x.StatusText === 're-executing' ? x : null;
  }, 5000, 50);
  t.match(reloading, { ActiveState: 'reloading', SubState: 'reload', MainPID: pid }, `RELOADING=1 + STATUS=re-executing reached systemd: reloading, same MainPID (${JSON.stringify(reloading)})`);
  t.ok(await waitFor(() => show('SubState').SubState === 'running', 15_000), 'READY=1 from the new image: running again');
  t.ok(show('StatusText').StatusText !== 're-executing', `STATUS= back to the counts: "${show('StatusText').StatusText}"`);
  const s2 = show('ActiveState', 'SubState', 'MainPID', 'NRestarts');
  t.match(s2, { ActiveState: 'active', SubState: 'running', MainPID: pid, NRestarts: '0' }, 'after the reload: active, same MainPID, no restart');
  t.equal(lab.probe(disk), 'held', 'image lease still held after the reload');
  t.equal(lab.probe(join(space, 'vm2-disk')), 'held', 'lock-space lease still held after the reload');
  const clientsAfter = ctl(['clients']).json;
  // Lock-space clients (not relockctl's own admin connections): id, peer pid, owner, restriction.
  const lockClients = (j: any) => (Array.isArray(j) ? j : []).filter((c: any) => c.server !== 'admin').map((c: any) => `${c.id}:${c.pid}:${c.owner?.pid}:${c.restricted}`).sort();
  t.equal(lockClients(clientsBefore).length, 2, `two lock clients before the reload: ${lockClients(clientsBefore).join(' ')}`);
  t.same(lockClients(clientsAfter), lockClients(clientsBefore), 'the same clients (id, pid, owner, restricted) are connected after the reload');
  lab.dropIn(f.service, '60-slow-start.conf', '');
  lab.run(['systemctl', 'daemon-reload']);
  // The inherited connections are live: the owner whose process ends is released through its connection.
  lab.run(['kill', '-KILL', holderPid(h2tag)]);
  t.ok(await heldBy(join(space, 'vm2-disk'), 'free'), "an owner's exit after the reload frees its lease (its connection survived the re-exec)");
  const probeClient = ctl(['run', '--lease', lab.file('disk1.img'), '--', 'true']);
  t.not(probeClient.code, 0, 'a second client is refused the held image lease (it is still held, by the first client)');
  const disk3 = lab.file('disk3.img');
  writeFileSync(disk3, '');
  t.equal(ctl(['run', '--lease', disk3, '--', 'true']).code, 0, 'a new client is served after the reload');

  // -- systemctl stop under each shutdown policy, a lease held --------------------------------------
  lab.run(['kill', '-KILL', holderPid(h1)]);
  t.ok(await heldBy(disk, 'free'), 'lease free before the stop tests');
  t.equal(lab.run(['systemctl', 'stop', f.service]).code, 0, 'systemctl stop with no lease held returns');
  t.match(show('ActiveState', 'Result'), { ActiveState: 'inactive', Result: 'success' }, 'no lease held: relockd exits at once, cleanly');

  for (const p of ['drain', 'kill-owners', 'refuse'] as const) {
    await t.test(`systemctl stop, shutdown_policy ${p}, a lease held`, async (t) => {
      policy(p);
      t.equal(lab.run(['systemctl', 'start', f.service]).code, 0, `start ${f.service}`);
      const mp = show('MainPID').MainPID;
      const tag = hold([disk]);
      t.ok(await started(tag), 'the holder was granted its lease and runs');
      t.ok(await heldBy(disk, 'held'), 'lease held');
      const other = lab.file(`other-${p}.img`);
      writeFileSync(other, '');
      t.equal(lab.run(['systemctl', 'stop', '--no-block', f.service]).code, 0, 'systemctl stop --no-block');
      if (p === 'kill-owners') {
        t.ok(await stateIs('inactive'), 'relockd ended the owner and exited: the unit is inactive');
        t.equal(holderPid(tag), '', 'the owner process was terminated (as virtlockd does)');
        t.equal(lab.probe(disk), 'free', 'its lease is released');
        t.equal(show('Result').Result, 'success', 'a clean exit (Result=success), not a failure');
      } else {
        t.ok(await stateIs('deactivating'), 'the stop job runs: deactivating');
        await new Promise((r) => setTimeout(r, 2000));
        t.match(show('ActiveState', 'SubState', 'MainPID'), { ActiveState: 'deactivating', SubState: 'stop-sigterm', MainPID: mp }, '2 s later: still deactivating, same MainPID (systemd sends no SIGKILL)');
        t.equal(lab.probe(disk), 'held', 'the lease is still held while the stop waits');
        t.match(show('StatusText').StatusText, new RegExp(`^stopping \\(${p}\\); `), 'StatusText says it is stopping, and how');
        const r = ctl(['run', '--lease', other, '--', 'true']);
        if (p === 'drain') t.not(r.code, 0, `drain: a new acquisition is refused (${(r.json?.error?.message ?? r.err).slice(0, 120)})`);
        else t.equal(r.code, 0, 'refuse: everything is still served, new acquisitions too');
        t.ok(holderPid(tag), 'the owner keeps running');
        lab.run(['kill', '-KILL', holderPid(tag)]);
        t.ok(await stateIs('inactive'), 'the owner exits: its lease goes, and relockd exits: inactive');
        t.equal(lab.probe(disk), 'free', 'lease free');
        t.equal(show('Result').Result, 'success', 'a clean exit (Result=success)');
      }
      if (!t.passing()) diag();
    });
  }

  // -- systemctl stop while a reload re-execs ---------------------------------------------------------
  // systemd sends SIGTERM at once when a stop finds the unit reloading; here it lands while the new
  // image sleeps in Node before relockd's code runs (the slow-start drop-in), when SIGTERM's default
  // action would end it and drop the lease. relockd holds it (src/daemon/execSignals.ts) and applies
  // its shutdown policy once it is up.
  await t.test('systemctl stop during a reload (re-exec), shutdown_policy drain, a lease held', async (t) => {
    policy('drain');
    lab.dropIn(f.service, '60-slow-start.conf', `[Service]\nEnvironment=NODE_OPTIONS=--require=${slow}\n`);
    lab.run(['systemctl', 'daemon-reload']);
    t.equal(lab.run(['systemctl', 'start', f.service]).code, 0, `start ${f.service}`);
    const mp = show('MainPID').MainPID;
    const tag = hold([disk]);
    t.ok(await started(tag), 'the holder was granted its lease and runs');
    t.equal(lab.run(['systemctl', 'reload', '--no-block', f.service]).code, 0, 'systemctl reload --no-block');
    t.ok(await waitFor(() => show('SubState').SubState === 'reload'), 'reloading: the new image sleeps before its code runs');
    t.equal(lab.run(['systemctl', 'stop', '--no-block', f.service]).code, 0, 'systemctl stop --no-block, during the reload');
    const stopping = await waitFor(() => {
      const x = show('ActiveState', 'SubState', 'MainPID', 'StatusText');
      return /^stopping \(drain\); /.test(x.StatusText ?? '') || x.ActiveState === 'inactive' ? x : null;
    }, 20_000);
    t.match(stopping, { ActiveState: 'deactivating', MainPID: mp }, `the SIGTERM was handled by the new image: draining, same MainPID (${JSON.stringify(stopping)})`);
    t.equal(lab.probe(disk), 'held', 'the lease is still held (probed from another process)');
    lab.run(['kill', '-KILL', holderPid(tag)]);
    t.ok(await stateIs('inactive'), 'the owner exits: relockd exits, inactive');
    t.equal(show('Result').Result, 'success', 'a clean exit (Result=success)');
    lab.dropIn(f.service, '60-slow-start.conf', '');
    lab.run(['systemctl', 'daemon-reload']);
    if (!t.passing()) diag();
  });

  // -- Restart=on-failure: kill -9 of the main pid ---------------------------------------------------
  await t.test('kill -9 of the main pid: systemd restarts it', async (t) => {
    policy(null);
    t.equal(lab.run(['systemctl', 'start', f.service]).code, 0, `start ${f.service}`);
    const s = show('MainPID', 'NRestarts');
    const tag = hold([disk]);
    t.ok(await started(tag), 'the holder was granted its lease and runs');
    t.ok(await heldBy(disk, 'held'), 'lease held');
    lab.run(['kill', '-KILL', s.MainPID!]);
    const back = await waitFor(() => {
      const x = show('ActiveState', 'SubState', 'MainPID', 'NRestarts');
      return x.ActiveState === 'active' && x.MainPID !== s.MainPID && x.MainPID !== '0' ? x : null;
    }, 20_000);
    t.ok(back, 'systemd restarted it (Restart=on-failure, RestartSec=1s): active again under a new MainPID');
    t.equal(back?.NRestarts, String(Number(s.NRestarts) + 1), 'NRestarts counts the restart');
    // HOOK for the fd store (issue 15, h15b): with FileDescriptorStoreMax= in the unit the lease must
    // survive the crash; without it (today) the kernel drops it with the process. This assertion
    // flips by itself when the unit enables the store; the full crash proof (hammer, owners killed
    // while down, relockctl status) is h15b's test, which can reuse test/lib/systemdLab.ts.
    const fdStore = /^\s*FileDescriptorStoreMax=\s*[1-9]/m.test(f.serviceText());
    if (fdStore) t.equal(lab.probe(disk), 'held', 'fd store: the lease survived the kill -9 and the restart');
    else t.equal(lab.probe(disk), 'free', 'without the fd store the kill -9 dropped the lease (what is true today: the crash proof needs the fd store)');
    const d4 = lab.file('disk4.img');
    writeFileSync(d4, '');
    t.equal(ctl(['run', '--lease', d4, '--', 'true']).code, 0, 'the restarted relockd serves new clients');
    lab.run(['kill', '-KILL', holderPid(tag)]);
    if (!t.passing()) diag();
  });
  if (!t.passing()) diag();
}
