// The daemons a parameterised suite runs against: relockd always, the real
// virtlockd when Debian's libvirt-daemon is installed (CI installs it).

import { spawn } from 'node:child_process';
import { startRelockd } from './relockd.js';
import type { StartedDaemon } from './relockd.js';
import { existsSync } from 'node:fs';
import { ROOT } from './relockd.js';

export interface Target {
  name: 'relockd' | 'virtlockd';
  available: boolean;
  why?: string;
  start(): Promise<StartedDaemon>;
}

const only = process.env.RELOCKD_TEST_TARGETS?.split(',');

export const targets: Target[] = [
  { name: 'relockd' as const, available: true, start: () => startRelockd() },
  {
    name: 'virtlockd' as const,
    available: existsSync('/usr/sbin/virtlockd'),
    why: 'install Debian package libvirt-daemon (/usr/sbin/virtlockd) to run this suite against the real virtlockd',
    start: async () => {
      const { startVirtlockd } = await import('./virtlockd.js');
      const d = await startVirtlockd();
      return { ...d, kind: 'virtlockd' } as unknown as StartedDaemon;
    },
  },
].filter((t) => !only || only.includes(t.name));

/**
 * A separate process that connects to `socket`, registers ITSELF as the
 * owner (like QEMU's inherited connection), acquires the given resources,
 * prints "ready" and then sleeps until killed.
 */
export function spawnOwner(
  socket: string,
  resources: Array<{ path: string; name: string; flags: number }>,
  opts: { ignoreTerm?: boolean; restrict?: boolean; name?: string } = {},
) {
  const code = `
    const { LockspaceClient } = await import(${JSON.stringify(`${ROOT}/dist/src/protocol/lockspaceClient.js`)});
    ${opts.ignoreTerm ? "process.on('SIGTERM', () => {});" : ''}
    const c = await LockspaceClient.connect(${JSON.stringify(socket)});
    await c.register({ uuid: '11112222-3333-4444-5555-666677778888', name: ${JSON.stringify(opts.name ?? 'ownervm')}, id: 7, pid: process.pid });
    for (const r of ${JSON.stringify(resources)}) await c.acquire(r.path, r.name, r.flags);
    ${opts.restrict ? 'await c.restrict();' : ''}
    process.stdout.write('ready\\n');
    setInterval(() => {}, 1 << 30);
  `;
  const child = spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (d) => (err += d));
  const ready = new Promise<void>((resolve, reject) => {
    child.stdout!.once('data', () => resolve());
    child.once('exit', (c) => reject(new Error(`owner exited ${c}: ${err}`)));
  });
  return { child, ready };
}
