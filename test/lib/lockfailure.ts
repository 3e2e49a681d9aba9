// Shared set-up for the lock-failure suites: a relockd with short health
// timings, a lock space on a freezable FUSE mount, a real owner process
// holding a lease there on its own connection (as QEMU does), a killpath
// program and a fake virsh that record their calls, and a local lock space
// that must keep being served while the FUSE one is frozen.

import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Test } from 'tap';
import { AdminClient } from '../../src/protocol/adminClient.js';
import type { HealthInfo } from '../../src/protocol/relockdAdmin.js';
import { LockspaceClient } from '../../src/protocol/lockspaceClient.js';
import { mountBindfs } from './fuse.js';
import type { FrozenableMount } from './fuse.js';
import { ROOT, startRelockd, waitForSocket } from './relockd.js';
import type { StartedDaemon } from './relockd.js';
import { spawnOwner } from './targets.js';
import { waitFor } from './wait.js';

export const OWNER_UUID = '11112222-3333-4444-5555-666677778888';

/**
 * Short timings, with room for a loaded 2-core CI machine (a killpath
 * program is a node process that may take seconds to start there): probes
 * every 0.3 s with a 1 s deadline, failed after 3 s, kill_grace 5 s.
 */
export const KILL_GRACE_MS = 5000;
const FAST = ['--lockspace-check-interval', '0.3', '--lockspace-failure-timeout', '3', '--kill-grace', String(KILL_GRACE_MS / 1000), '--term-grace', '0.5', '--storage-timeout', '1'];

export interface Scene {
  work: string;
  fuse: FrozenableMount;
  /** Lock space on the FUSE mount. */
  ls: string;
  lease: string;
  /** Lock space on local storage (never watched). */
  local: string;
  d: StartedDaemon;
  admin: AdminClient;
  owner: ChildProcess;
  ownerExit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Lines the killpath program and the fake virsh wrote. */
  calls(): string[];
  health(): Promise<HealthInfo | undefined>;
  waitState(state: string, ms?: number): Promise<HealthInfo>;
  /** Holders relockd reports for the lease. */
  holders(): Promise<number[]>;
}

export interface SceneOptions {
  action: 'killpath' | 'pause' | 'terminate' | 'ignore';
  /** Extra seconds the killpath program sleeps on resume (to catch 'recovering'). */
  resumeDelay?: number;
  /** Seconds the killpath program sleeps on fail before it releases (to re-exec while it runs). */
  failDelay?: number;
  /** The killpath program does not release (the owner keeps its leases). */
  noRelease?: boolean;
  extraArgs?: string[];
  env?: NodeJS.ProcessEnv;
}

export async function setUp(t: Test, o: SceneOptions): Promise<Scene> {
  const work = mkdtempSync(join(tmpdir(), 'lockfail-'));
  const fuse = await mountBindfs(work);
  const rec = join(work, 'calls.log');
  writeFileSync(rec, '');
  const node = process.execPath;
  const ctl = join(ROOT, 'bin', 'relockctl.cjs');
  const killpath = join(work, 'killpath.sh');
  writeFileSync(
    killpath,
    `#!/bin/sh
echo "parent $PPID" >> ${rec}.ppid
echo "killpath $* uuid=$RELOCKD_OWNER_UUID name=$RELOCKD_OWNER_NAME pid=$RELOCKD_OWNER_PID lockspace=$RELOCKD_LOCKSPACE resources=$RELOCKD_RESOURCES" >> ${rec}
if [ "$2" = fail ]; then sleep ${o.failDelay ?? 0}; fi
if [ "$2" = fail ] && [ -z "${o.noRelease ? '1' : ''}" ]; then
  exec ${node} ${ctl} --admin-socket "$RELOCKD_ADMIN_SOCKET" release-leases
fi
if [ "$2" = resume ]; then sleep ${o.resumeDelay ?? 0}; fi
exit 0
`,
  );
  chmodSync(killpath, 0o755);
  const bin = join(work, 'bin');
  mkdirSync(bin);
  writeFileSync(join(bin, 'virsh'), `#!/bin/sh\necho "virsh $*" >> ${rec}\nexit 0\n`);
  chmodSync(join(bin, 'virsh'), 0o755);
  const ls = join(fuse.mnt, 'leases');
  const local = join(work, 'local-leases');
  const d = await startRelockd({
    args: [...FAST, '--lock-failure-action', o.action, '--killpath', `${killpath} first-arg`, '--libvirt-uri', 'test:///fake', ...(o.extraArgs ?? [])],
    env: { PATH: `${bin}:${process.env.PATH}`, ...o.env },
  });
  await waitForSocket(d.adminSocketPath!);
  const admin = await AdminClient.connect(d.adminSocketPath!);
  const c = await LockspaceClient.connect(d.socketPath);
  await c.createLockspace(ls);
  await c.createLockspace(local);
  c.close();
  const { child: owner, ready } = spawnOwner(d.socketPath, [{ path: ls, name: 'disk1', flags: 2 }], { name: 'vm1' });
  const ownerExit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => owner.once('exit', (code, signal) => r({ code, signal })));
  t.teardown(async () => {
    if (owner.exitCode === null && owner.signalCode === null) owner.kill('SIGKILL');
    admin.close();
    await fuse.cleanup();
    await d.stop();
    rmSync(work, { recursive: true, force: true });
  });
  await ready;
  const health = async () => (await admin.health()).find((w) => w.dir === ls);
  const scene: Scene = {
    work,
    fuse,
    ls,
    lease: join(ls, 'disk1'),
    local,
    d,
    admin,
    owner,
    ownerExit,
    calls: () => (existsSync(rec) ? readFileSync(rec, 'utf8').split('\n').filter(Boolean) : []),
    health,
    waitState: async (state, ms = 15000) => {
      let last: HealthInfo | undefined;
      // A healthy watch with no leases left ends at once: gone counts as healthy.
      const ok = await waitFor(async () => {
        last = await health();
        return last?.state === state || (state === 'healthy' && last === undefined);
      }, ms, 50);
      if (ok && !last) return { dir: ls, lockspace: ls, state: 'healthy', since: 0, lastGood: 0, error: null, lost: [], leaseTimeMs: -1, owners: [] };
      if (!ok) throw new Error(`lock space did not become ${state} within ${ms} ms (now ${last?.state ?? 'not watched'})\n${healthLog(d.logs())}`);
      return last!;
    },
    holders: async () => (await admin.resources(ls)).find((r) => r.name === 'disk1')?.owners.map((x) => x.pid) ?? [],
  };
  // The watch starts once the lease is there and the FUSE mount is classified remote.
  await scene.waitState('healthy');
  return scene;
}

/** A client on the local lock space acquires and releases while the FUSE one is frozen. */
export async function localStillServed(t: Test, s: Scene): Promise<void> {
  const c = await LockspaceClient.connect(s.d.socketPath);
  try {
    await c.register({ uuid: '22223333-4444-5555-6666-777788889999', name: 'other', id: 2, pid: process.pid });
    const t0 = Date.now();
    await c.acquire(s.local, 'other-disk', 2);
    await c.release(s.local, 'other-disk', 0);
    t.ok(Date.now() - t0 < 2000, `a lease in a local lock space is served while the FUSE one is frozen (${Date.now() - t0} ms)`);
  } finally {
    c.close();
  }
}

/**
 * Another host, as far as locks go: a process that opened the lease file
 * before the freeze and, once told, keeps trying to take the lock.
 */
export function spawnThief(path: string): { go(): void; got: Promise<void>; child: ChildProcess } {
  // What another host's relockd does: open (creating), lock, and keep the
  // lock only if the path still names the locked file (autocreated lease
  // files are unlinked on release).
  const code = `
import fcntl, os, sys, time
sys.stdin.readline()
while True:
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
        st = os.fstat(fd)
        try:
            ps = os.stat(sys.argv[1])
        except OSError:
            ps = None
        if st.st_nlink > 0 and ps is not None and ps.st_ino == st.st_ino:
            break
    except OSError:
        pass
    os.close(fd)
    time.sleep(0.001)
print('got', flush=True)
time.sleep(3600)
`;
  const child = spawn('python3', ['-u', '-c', code, path], { stdio: ['pipe', 'pipe', 'inherit'] });
  let buf = '';
  const got = new Promise<void>((resolve) => {
    child.stdout!.on('data', (d) => {
      buf += d;
      if (buf.includes('got')) resolve();
    });
  });
  return { go: () => child.stdin!.write('go\n'), got, child };
}

/** The health monitor's lines of a daemon log, shortened to message and reason. */
export function healthLog(logs: string): string {
  return logs
    .split('\n')
    .filter((l) => l.includes('"component":"health"'))
    .map((l) => [...l.matchAll(/"(msg|why|reason|note|err)":"([^"]*)"/g)].map((m) => `${m[1]}=${m[2]}`).join(' '))
    .join('\n');
}

/** relockd's children: the action runner is its only one (programs are the runner's children). */
export function childrenOf(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}
