// `relockctl handback`: relockd → the real virtlockd, in place (same pid,
// leases and connections kept). relockd checks what virtlockd 9.0 can take,
// writes virtlockd's state document where virtlockd looks and execs it; a
// refusal leaves relockd serving. relockctl retries transient refusals, then
// checks from outside that the pid now runs virtlockd, that virtlockd answers
// on the admin socket, and that every lease is still locked by that pid.

import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { AdminClient } from '../protocol/adminClient.js';
import type { DaemonInfo, HandbackRefused, ResourceInfo } from '../protocol/relockdAdmin.js';
import { ConnectionClosedError, RemoteError } from '../rpc/client.js';
import { CtlError, Exit } from './command.js';
import type { GlobalArgs } from './command.js';
import { connectAdmin, socketPaths } from './connection.js';
import { alive, exeOf, inodeKey, locksOf, systemdUnitOf } from './procInfo.js';
import { removeDropin } from './systemdDropin.js';
import { err, json, out } from './output.js';

export interface HandbackArgs extends GlobalArgs {
  virtlockd: string;
  /** virtlockd's arguments (after --). */
  virtlockdArgs: string[];
  wait: number;
  trial: boolean;
  systemd: 'auto' | 'yes' | 'no';
  unitDir: string;
  systemctl: string;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Starts the virtlockd binary with these arguments in a throwaway private
 * mount namespace (tmpfs /run, its own sockets there, --timeout 1): proves
 * that the binary runs and its configuration loads before relockd execs it.
 * A configuration virtlockd rejects would make it exit at once — with every
 * lock.
 */
function dryRunVirtlockd(path: string, args: string[]): string | null {
  const dir = mkdtempSync(join(tmpdir(), 'relockd-handback-dry-'));
  try {
    const rest = args.filter((_, i) => !(args[i] === '-p' || args[i - 1] === '-p' || args[i] === '--pid-file' || args[i - 1] === '--pid-file' || args[i]!.startsWith('--pid-file=')));
    writeFileSync(join(dir, 'run.sh'), 'mount -n -t tmpfs -o mode=0755 tmpfs /run || exit 97; exec "$@"\n');
    const r = spawnSync('unshare', ['-m', '--propagation', 'private', '--', '/bin/sh', join(dir, 'run.sh'), path, ...rest, '-p', join(dir, 'dry.pid'), '--timeout', '1'], {
      encoding: 'utf8',
      timeout: 30_000,
      env: Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^(LISTEN_|NOTIFY_SOCKET$|RELOCKD_)/.test(k))),
    });
    if (r.error) return `${path} did not run: ${r.error.message}`;
    if (r.status === 97) return null; // cannot make a private /run here (not root): skip the dry run
    if (r.status !== 0) return `${path} ${rest.join(' ')} exited ${r.status ?? r.signal} in a dry run: ${(r.stderr || '').trim().split('\n').slice(-3).join(' | ')}`;
    return null;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export async function cmdHandback(a: HandbackArgs): Promise<number> {
  const t0 = Date.now();
  const adminSocket = socketPaths(a).adminSocket;
  // ---- what relockd holds now -----------------------------------------------------------------
  let info: DaemonInfo;
  let resources: ResourceInfo[];
  {
    const c = await connectAdmin(a);
    try {
      info = await c.daemonInfo();
      resources = await c.resources(null);
    } finally {
      c.close();
    }
  }
  const pid = info.pid;
  const unit = systemdUnitOf(pid);
  const underSystemd = a.systemd === 'yes' || (a.systemd === 'auto' && unit === 'virtlockd.service');
  if (a.trial) {
    const why = dryRunVirtlockd(a.virtlockd, a.virtlockdArgs);
    if (why) throw new CtlError(`refusing: ${why}; nothing was changed, relockd keeps serving`, Exit.ERROR);
  }

  // ---- ask relockd; retry what clears by itself ----------------------------------------------
  const deadline = Date.now() + a.wait * 1000;
  let refused: HandbackRefused | null = null;
  let asked = 0;
  for (;;) {
    asked = Date.now();
    const c = await connectAdmin(a);
    try {
      refused = await c.handback(a.virtlockd, a.virtlockdArgs);
    } catch (e) {
      if (e instanceof ConnectionClosedError) refused = null; // the exec closed it
      else if (e instanceof RemoteError) throw new CtlError(`relockd: ${e.message}`, Exit.ERROR, { code: e.code, domain: e.domain });
      else throw e;
    } finally {
      c.close();
    }
    if (!refused) break;
    if (!refused.transient || Date.now() > deadline) {
      const msg = `handback refused: ${refused.error}\nnothing was changed; relockd (pid ${pid}) keeps serving with every lease`;
      if (a.json) json({ ok: false, pid, refused: refused.error, transient: refused.transient, warnings: refused.warnings });
      else err(`relockctl: ${msg}`);
      return refused.transient ? Exit.BUSY : Exit.ERROR;
    }
    await sleep(100);
  }

  // ---- the exec: relockd → virtlockd -------------------------------------------------------------
  let exe: string | null = null;
  for (;;) {
    exe = exeOf(pid);
    if (exe === null || !alive(pid)) throw new CtlError(`pid ${pid} exited during the handback: the host has no lock daemon and its locks are gone; start the lock daemon again and see virtlockd's log`, Exit.ERROR);
    if (basename(exe) === basename(a.virtlockd)) break;
    if (Date.now() - asked > 15_000) throw new CtlError(`pid ${pid} still runs ${exe} 15 s after the handback was accepted`, Exit.ERROR);
    await sleep(2);
  }
  const execMs = Date.now() - asked;
  // virtlockd serves once its restore is done: libvirt's admin program answers.
  const vDeadline = Date.now() + Math.max(a.timeout, 30) * 1000;
  let servers: string[] = [];
  for (;;) {
    if (!alive(pid)) throw new CtlError(`virtlockd (pid ${pid}) exited right after the handback (its restore failed: see its log): the host has no lock daemon and its locks are gone`, Exit.ERROR);
    try {
      const c = await AdminClient.connect(adminSocket, 5000);
      try {
        servers = (await c.listServers(8)).servers;
      } finally {
        c.close();
      }
      break;
    } catch (e) {
      if (Date.now() > vDeadline) throw new CtlError(`virtlockd (pid ${pid}) does not answer on ${adminSocket}: ${(e as Error).message}`, Exit.ERROR);
      await sleep(20);
    }
  }
  // Every lease relockd held must still be locked by that pid.
  const locks = new Set(locksOf(pid).map((l) => inodeKey(l.dev, l.ino)));
  const missing = resources.filter((r) => !locks.has(inodeKey(r.dev, r.ino)));
  const problems = missing.length ? [`${missing.length} lease(s) are not locked by pid ${pid} any more: ${missing.map((r) => r.path).join(', ')}`] : [];

  let systemd: { changes: string[]; error?: string } | null = null;
  if (underSystemd) systemd = removeDropin({ unitDir: a.unitDir, systemctl: a.systemctl }, 'virtlockd.service');
  const report = { ok: problems.length === 0, pid, from: `relockd ${info.version}`, to: exe, execMs, totalMs: Date.now() - t0, leases: resources.length, lockClients: info.lockClients, servers, problems, systemd };
  if (a.json) json(report);
  else {
    out(`handback ${report.ok ? 'done' : 'INCOMPLETE'}: pid ${pid} is now ${exe} (was relockd ${info.version}); exec ${execMs} ms after the request, ${report.totalMs} ms in all`);
    out(`  ${resources.length} lease resource(s) still locked by pid ${pid}; virtlockd serves ${servers.join(', ') || 'no servers?'}`);
    for (const p of problems) out(`  PROBLEM: ${p}`);
    for (const c of systemd?.changes ?? []) out(`  systemd: ${c}`);
    if (systemd?.error) out(`  systemd: ERROR ${systemd.error}`);
  }
  return report.ok && !systemd?.error ? Exit.OK : Exit.ERROR;
}
