// Wires the lock-space health monitor (src/health/) to the daemon: owner
// processes come from the lock service's connections (the pidfd taken when
// an owner registered on its own connection), terminations go through the
// existing terminator, and the manager asks the monitor about failed lock
// spaces and leases held for a paused owner.

import { dirname, join } from 'node:path';
import type { Logger } from 'pino';
import { HealthMonitor } from '../health/monitor.js';
import { StorageProber } from '../health/probe.js';
import type { FdGuard } from '../health/probe.js';
import type { HealthOptions } from '../health/options.js';
import type { HealthState, OwnerControl } from '../health/monitor.js';
import type { LockspaceHealthProvider } from '../metrics/exposition.js';
import type { LockManager, Owner } from '../locks/lockManager.js';
import type { StorageGate } from '../locks/storageGate.js';
import * as native from '../native.js';
import { packageRoot } from '../packageRoot.js';
import type { RpcServer } from '../rpc/server.js';
import type { LockClient, LockService } from './lockService.js';
import type { HealthInfo } from '../protocol/relockdAdmin.js';
import type { StateDocument } from '../state/document.js';
import type { LeaseColumns } from '../state/documentFormat.js';
import { isAlive } from '../util/processHandle.js';
import type { ProcessHandle } from '../util/processHandle.js';

/** What the health wiring reads and asks of the daemon (Daemon implements it). */
export interface HealthHost {
  readonly lockServer: RpcServer<LockClient>;
  readonly lockService: Pick<LockService, 'terminations' | 'startTermination'>;
  readonly manager: LockManager;
  readonly gate: StorageGate;
  readonly log: Logger;
  readonly opts: {
    readonly health: HealthOptions;
    readonly termination: { readonly termGraceMs: number };
    readonly storageTimeoutMs: number;
    readonly adminSocketPath: string | null;
  };
  readonly probeGuard: FdGuard;
  readonly orphans: readonly unknown[];
  healthProvider: LockspaceHealthProvider | null;
  notify(message: string): void;
  statusLine(): string;
}

/** The connection on which `pid` registered itself (QEMU's own), if any. */
function ownConnection(d: HealthHost, pid: number): LockClient | null {
  let named: LockClient | null = null;
  for (const c of d.lockServer.clients.values()) {
    const ctx = c.ctx as LockClient;
    if (ctx.owner?.pid !== pid) continue;
    if (ctx.process && ctx.process.pidfd >= 0) return ctx;
    named ??= ctx;
  }
  return named;
}

export function createHealthMonitor(d: HealthHost): HealthMonitor {
  const owners: OwnerControl = {
    ownerOf: (pid) => ownConnection(d, pid)?.owner ?? d.lockService.terminations.get(pid)?.owner ?? null,
    isAlive: async (owner) => {
      const h = ownConnection(d, owner.pid)?.process;
      if (h) return isAlive(h);
      const t = d.lockService.terminations.get(owner.pid);
      if (t?.handle) return isAlive(t.handle);
      return null;
    },
    isTerminating: (pid) => d.lockService.terminations.has(pid),
    terminate: (owner: Owner, reason: string) => {
      const h = ownConnection(d, owner.pid)?.process;
      if (!h || h.pidfd < 0) return false;
      // Our own copy of the pidfd: the termination closes it when done,
      // the connection closes its own.
      let copy: ProcessHandle;
      try {
        copy = { pid: h.pid, pidfd: native.dup(h.pidfd), startTime: h.startTime };
      } catch {
        return false;
      }
      d.log.warn({ owner, reason }, 'terminating owner for a lock failure');
      d.lockService.startTermination(owner, copy, Date.now());
      return true;
    },
  };
  const m = new HealthMonitor({
    manager: d.manager,
    log: d.log.child({ component: 'health' }),
    options: () => d.opts.health,
    termGraceMs: () => d.opts.termination.termGraceMs,
    deadlineMs: () => d.opts.storageTimeoutMs,
    owners,
    notifyStatus: (line) => d.notify(`STATUS=${d.statusLine()} [${line}]`),
    adminSocket: d.opts.adminSocketPath,
    relockctl: [process.execPath, join(packageRoot, 'bin', 'relockctl.cjs')],
    prober: new StorageProber(d.probeGuard),
    runnerArgv: [process.execPath, join(packageRoot, 'dist', 'relockd-runner.cjs')],
    // Nothing a child could block on at its execve: no lease fd, no storage
    // call that holds or may soon hold one, no fd kept from an old image.
    canSpawn: () => d.manager.counts().resources === 0 && d.gate.idle() && d.orphans.length === 0,
  });
  d.manager.acquireCheck = (ls, key) => m.acquireRefusal(ls, key);
  d.manager.handover = (ls, name, owner) => m.handover(ls, name, owner);
  d.healthProvider = healthMetrics(d, m);
  return m;
}

/** LIST_HEALTH: every watched directory with the owners being handled there. */
export function healthInfo(d: { readonly health: Pick<HealthMonitor, 'watches' | 'records'> }): HealthInfo[] {
  const m = d.health;
  return [...m.watches.values()].map((w) => ({
    dir: w.key,
    lockspace: w.lockspace,
    state: w.state,
    since: w.since,
    lastGood: w.lastGoodAt,
    error: w.lastError,
    lost: [...w.lost],
    leaseTimeMs: w.leaseTimeMs ?? -1,
    owners: m.records
      .filter((r) => r.key === w.key)
      .map((r) => ({ owner: r.owner, action: r.action, phase: r.phase, since: r.startedAt, resources: r.leases.map((l) => l.name), note: r.note ?? null })),
  }));
}

/** Lease fds of a state document (its leases as columns) on watched storage that is not healthy (not to be fstat'd at restore). */
export function unverifiableFds(doc: StateDocument, leases: LeaseColumns): Set<number> {
  const bad = new Set((doc.relockd?.health?.watches ?? []).filter((w) => w.state !== 'healthy').map((w) => w.key));
  const out = new Set<number>();
  if (bad.size === 0) return out;
  let i = 0;
  for (const end = leases.counts[0] ?? 0; i < end; i++) if (bad.has(dirname(leases.name[i]!))) out.add(leases.fd[i]!);
  doc.lockspaces.forEach((l, s) => {
    const end = i + (leases.counts[s + 1] ?? 0);
    if (l.directory && bad.has(l.directory)) for (let j = i; j < end; j++) out.add(leases.fd[j]!);
    i = end;
  });
  return out;
}

const HEALTH_RANK: Record<HealthState, number> = { healthy: 0, failing: 1, recovering: 2, failed: 3 };

/**
 * relockd_lockspace_health: each lock space's state. A lock space not
 * watched (local storage) is healthy unless a call there overran the
 * storage deadline (failing); the default lock space takes the worst of
 * its image directories' watches.
 */
function healthMetrics(d: HealthHost, m: HealthMonitor): LockspaceHealthProvider {
  return {
    states: ['healthy', 'failing', 'failed', 'recovering'],
    lockspaceHealth: () => {
      const stuck = new Set(d.gate.stuckKeys());
      const worst = new Map<string, HealthState>();
      for (const w of m.watches.values()) {
        const cur = worst.get(w.lockspace);
        if (!cur || HEALTH_RANK[w.state] > HEALTH_RANK[cur]) worst.set(w.lockspace, w.state);
      }
      return [...d.manager.spaces.keys()].map((dir) => {
        const st = worst.get(dir) ?? 'healthy';
        const gateStuck = dir === '' ? [...stuck].some((k) => !d.manager.spaces.has(k)) : stuck.has(dir);
        return { lockspace: dir, state: st === 'healthy' && gateStuck ? 'failing' : st };
      });
    },
  };
}
