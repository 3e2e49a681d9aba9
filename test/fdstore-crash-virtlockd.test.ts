// The fd store's crash proof (test/lib/crashProof.ts) on libvirt's own virtlockd.service with
// relockd's takeover drop-in (units/virtlockd-takeover/virtlockd.service.d/relockd.conf), under a
// real systemd (test/lib/systemdLab.ts): Debian's virtlockd.socket and virtlockd-admin.socket
// activate it, the drop-in makes relockd its program and enables the fd store
// (FileDescriptorStoreMax=, FDSTORE=, Restart=on-failure, RestartSec=). This is how libvirt hosts
// run relockd after `relockctl takeover`: a kill -9 (or an OOM kill in the middle of a burst of
// acquisitions) loses no lease and no client connection.
//
// The lab is exclusive: the whole test runs under flock /tmp/relockd-systemd-lab.lock.

import t from 'tap';
import { appendFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from './lib/relockd.js';
import { SystemdLab, installVirtlockdTakeoverUnits, labUnavailable, writeRelockdDefaults } from './lib/systemdLab.js';
import { crashProof } from './lib/crashProof.js';

t.setTimeout(1_800_000);
const why = labUnavailable({ virtlockdUnits: true });
if (why && process.env.RELOCKD_CI) t.fail(`systemd lab: ${why} (CI needs it: a skipped proof is no proof)`);
else if (why) t.skip(`systemd lab: ${why}`, async () => {});
else main();

function main(): void {
  t.test('the drop-in enables the fd store', async (t) => {
    const dropin = readFileSync(join(ROOT, 'units', 'virtlockd-takeover', 'virtlockd.service.d', 'relockd.conf'), 'utf8');
    t.match(dropin, /^FileDescriptorStoreMax=\d+$/m, 'FileDescriptorStoreMax=');
    t.match(dropin, /^Environment=FDSTORE=\d+$/m, 'FDSTORE= (systemd 252 does not set it)');
    t.match(dropin, /^Restart=on-failure$/m, 'Restart=on-failure');
    t.match(dropin, /^RestartSec=/m, 'RestartSec=');
    t.match(dropin, /^KillMode=process$/m, 'KillMode=process (the action runner outlives a crash)');
  });

  let lab: SystemdLab | null = null;
  t.before(async () => {
    lab = await SystemdLab.open('fdstore-virtlockd', 1500);
  });
  t.teardown(() => lab?.close());
  t.test("virtlockd.service with the takeover drop-in: relockd crashes (SIGKILL) with leases held, back with every lease and connection", { timeout: 400_000 }, async (t) => {
    const l = lab!;
    const u = installVirtlockdTakeoverUnits(l);
    // virtlockd's defaults are /run/virtlockd.pid and /run/libvirt/…: put them in the lab's dir.
    const pidFile = l.file('virtlockd.pid');
    writeRelockdDefaults(l, u.defaults, ['--pid-file', pidFile, '--state-file', l.file('relockd-restart-exec.json'), '--log-level', 'info']);
    // Fault injection for one phase of the proof (src/fdstore/faultInjection.ts): EnvironmentFile= takes more lines.
    appendFileSync(u.defaults, `RELOCKD_TEST_CRASH_AT=${l.file('crash-at')}\n`);
    const up = l.up();
    t.equal(up.code, 0, `systemd up: ${up.err}`);
    if (up.code !== 0) return;
    await crashProof(t, {
      lab: l,
      unit: 'virtlockd.service',
      start: ['virtlockd.socket', 'virtlockd-admin.socket', 'virtlockd.service'],
      socket: u.socket,
      adminSocket: u.adminSocket,
      pidFile,
      logName: 'relockd.log',
      storedListeners: 0,
      faultFile: l.file('crash-at'),
    });
  });
}
