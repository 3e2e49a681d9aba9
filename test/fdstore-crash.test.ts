// Leases that survive relockd's own crash: a real systemd (PID 1 of a private pid + mount
// namespace, test/lib/systemdLab.ts) runs relockd with FileDescriptorStoreMax= and
// Restart=on-failure, on sockets relockd binds itself. The scenario (test/lib/crashProof.ts):
// real client processes hold leases (some as QEMU does), a separate process hammers F_SETLK on
// every lease, relockd is killed with SIGKILL (idle, in the middle of a burst of acquisitions,
// with its stored state unreadable): the hammer never wins, relockd comes back under a new pid
// with every lease, connection and its action runner. fdstore-crash-virtlockd.test.ts runs the
// same proof on virtlockd.service with the takeover drop-in.
//
// The lab is exclusive: the whole test runs under flock /tmp/relockd-systemd-lab.lock.

import t from 'tap';
import { join } from 'node:path';
import { NODE_FLAGS } from './lib/relockd.js';
import { SystemdLab, labUnavailable } from './lib/systemdLab.js';
import { crashProof } from './lib/crashProof.js';

// Most of this may be waiting for the lab (SystemdLab.open); the test itself has its own limit.
t.setTimeout(1_800_000);
const why = labUnavailable();
if (why && process.env.RELOCKD_CI) t.fail(`systemd lab: ${why} (CI needs it: a skipped proof is no proof)`);
else if (why) t.skip(`systemd lab: ${why}`, async () => {});
else main();

function main(): void {
  let lab: SystemdLab | null = null;
  t.before(async () => {
    lab = await SystemdLab.open('fdstore', 1500);
  });
  t.teardown(() => lab?.close());
  t.test('relockd crashes (SIGKILL) with leases held: back under a new pid with every lease and connection', { timeout: 400_000 }, async (t) => {
    const l = lab!;
    const run = l.file('run');
    const UNIT = 'relockd-lab.service';
    l.writeUnit(
      UNIT,
      `[Unit]\nDescription=relockd (fd store lab)\n[Service]\nType=notify\nNotifyAccess=main\n` +
        // The same fd-store settings as units/relockd.service.
        `FileDescriptorStoreMax=4096\nEnvironment=FDSTORE=4096\nEnvironment=RELOCKD_TEST_CRASH_AT=${l.file('crash-at')}\n` +
        `ExecStart=${process.execPath} ${NODE_FLAGS.join(' ')} ${join(l.app, 'bin', 'relockd.cjs')} --runtime-dir=${run} --pid-file=${join(run, 'relockd.pid')} --log-level=info\n` +
        `ExecReload=/bin/kill -USR1 $MAINPID\nRestart=on-failure\nRestartSec=300ms\nKillMode=process\nSendSIGKILL=no\nStandardOutput=append:${l.file('daemon.log')}\nStandardError=inherit\n`,
    );
    const up = l.up();
    t.equal(up.code, 0, `systemd up: ${up.err}`);
    if (up.code !== 0) return;
    await crashProof(t, {
      lab: l,
      unit: UNIT,
      start: [UNIT],
      socket: join(run, 'virtlockd-sock'),
      adminSocket: join(run, 'virtlockd-admin-sock'),
      pidFile: join(run, 'relockd.pid'),
      logName: 'daemon.log',
      storedListeners: 2,
      faultFile: l.file('crash-at'),
    });
  });
}
