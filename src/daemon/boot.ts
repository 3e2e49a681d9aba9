// Boot paths: a fresh start (bind or take systemd's sockets), a restore from
// the state document an earlier image wrote (state/restore.ts rebuilds the
// objects; this applies the report), and safe mode (a document that cannot be
// trusted: keep every inherited fd, adopt what can be recognised). The
// daemon (daemon.ts) chooses the path and implements BootHost.

import type { HealthMonitor } from '../health/monitor.js';
import type { StorageClassifier } from '../locks/storageClass.js';
import { unverifiableFds } from '../services/healthWiring.js';
import { fdPrescan } from '../state/fdPrescan.js';
import { existsSync, readFileSync, renameSync, unlinkSync } from 'node:fs';
import type { Logger } from 'pino';
import { decodeDocFile } from '../byteString.js';
import { bootMarks, mark } from '../bootMarks.js';
import { lazyRequire } from '../lazyRequire.js';
import * as native from '../native.js';
import type { LockManager } from '../locks/lockManager.js';
import type { DaemonMetrics } from '../metrics/counters.js';
import { adoptClientSocket } from '../rpc/adoptClient.js';
import { peerAllowed } from '../rpc/server.js';
import type { RpcServer } from '../rpc/server.js';
import type { LockClient, LockService } from '../services/lockService.js';
import type { FdIdentity, ReexecRecord, StateDocument } from '../state/document.js';
import { listenerPath, scanInheritedFds } from '../state/orphans.js';
import { restoreState } from '../state/restore.js';
import { parseStateForRestore } from '../state/documentFormat.js';
import type { LeaseRows } from '../state/documentFormat.js';
import { openProcessHandle } from '../util/processHandle.js';
import { ActivationError } from './activation.js';
import type { ActivatedSockets } from './activation.js';
import type { DaemonOptions } from './options.js';
import { PidFile } from './pidFile.js';
import type { ReexecOutcome } from './reexec.js';

/** How this image came to be. */
export type BootKind = 'fresh' | 'restored' | 'safe-mode';

/** What the boot paths read and set on the daemon (Daemon implements it). */
export interface BootHost {
  readonly opts: Pick<DaemonOptions, 'socketPath' | 'adminSocketPath' | 'pidFile'>;
  readonly log: Logger;
  readonly lockServer: RpcServer<LockClient>;
  readonly adminServer: RpcServer<any> | null;
  readonly manager: LockManager;
  readonly lockService: Pick<LockService, 'restoreContext' | 'startTermination'>;
  readonly metrics: Pick<DaemonMetrics, 'restore'>;
  readonly health: Pick<HealthMonitor, 'restore'>;
  readonly classifier: Pick<StorageClassifier, 'restore'>;
  readonly version: string;
  readonly stateFile: string;
  boot: BootKind;
  safeMode: boolean;
  pidFile: PidFile | null;
  orphans: FdIdentity[];
  history: ReexecRecord[];
  startedAt: number;
  recordReexec(r: ReexecRecord): void;
}

/** The state document if it is ours; stale ones are moved aside. */
export function readStateFile(d: BootHost, ours: boolean): StateDocument | 'corrupt' | null {
  const path = d.stateFile;
  if (!existsSync(path)) return null;
  let text: string;
  try {
    text = decodeDocFile(readFileSync(path)); // raw non-UTF-8 name bytes survive (byteString.ts)
  } catch (err) {
    d.log.error({ err, stateFile: path }, 'cannot read state file');
    return ours ? 'corrupt' : null;
  }
  let doc: { magic?: unknown };
  try {
    doc = JSON.parse(text) as { magic?: unknown };
  } catch {
    if (ours) {
      unlinkQuietly(path);
      return 'corrupt';
    }
    moveAside(d, path, 'not valid JSON');
    return null;
  }
  if (doc.magic !== String(process.pid)) {
    moveAside(d, path, `magic ${JSON.stringify(doc.magic)} is not our pid ${process.pid}`);
    return ours ? null : null;
  }
  unlinkQuietly(path);
  return doc as StateDocument;
}

function moveAside(d: BootHost, path: string, why: string): void {
  const aside = `${path}.stale-${Date.now()}`;
  try {
    renameSync(path, aside);
    d.log.warn({ stateFile: path, movedTo: aside, why }, 'stale state file moved aside, not trusted');
  } catch (err) {
    d.log.warn({ err, stateFile: path, why }, 'stale state file could not be moved aside; ignoring it');
  }
}

function unlinkQuietly(path: string): void {
  try {
    unlinkSync(path);
  } catch {
    /* already gone */
  }
}

export async function startFresh(d: BootHost, activated: ActivatedSockets | null): Promise<void> {
  d.boot = 'fresh';
  if (d.opts.pidFile) d.pidFile = PidFile.acquire(d.opts.pidFile);
  if (activated) {
    // systemd owns these paths: never unlink them, never bind our own.
    for (const fd of activated.main) await d.lockServer.adopt(fd, listenerPath(fd) ?? d.opts.socketPath, false);
    if (activated.admin.length && !d.adminServer) throw new ActivationError('an admin socket was passed but no admin socket is configured');
    for (const fd of activated.admin) await d.adminServer!.adopt(fd, listenerPath(fd) ?? d.opts.adminSocketPath ?? '', false);
    if (activated.main.length === 0) throw new ActivationError('socket activation passed no main socket (relockd.socket or virtlockd.socket)');
    d.log.info({ main: activated.main, admin: activated.admin }, 'socket-activated');
    return;
  }
  await d.lockServer.bind(d.opts.socketPath);
  if (d.adminServer && d.opts.adminSocketPath) await d.adminServer.bind(d.opts.adminSocketPath, 0o600);
}

export async function startFromState(d: BootHost, parsed: StateDocument, requestedAtNs: bigint | null): Promise<void> {
  mark('read');
  let doc: StateDocument;
  let leases: LeaseRows;
  try {
    ({ doc, leases } = parseStateForRestore(parsed)); // validated; format 2's leases stay columns
    mark('validated');
  } catch (err) {
    await startSafeMode(d, [(err as Error).message]);
    return;
  }
  // Before the first request is dispatched: known directories go inline at once.
  if (doc.relockd?.storage) d.classifier.restore(doc.relockd.storage);
  const report = await restoreState(doc, {
    lockServer: d.lockServer,
    adminServer: d.adminServer,
    manager: d.manager,
    socketPath: d.opts.socketPath,
    adminSocketPath: d.opts.adminSocketPath,
    restoreLockContext: (conn, pd, proc) => d.lockService.restoreContext(conn.ctx as LockClient, pd, proc),
    openProcessHandle,
    unverifiable: unverifiableFds(doc, leases.cols),
  }, leases);
  mark('adopted');
  if (report.pidFile) d.pidFile = PidFile.adopt(report.pidFile.path, report.pidFile.fd);
  else if (d.opts.pidFile) {
    try {
      d.pidFile = PidFile.acquire(d.opts.pidFile);
    } catch (err) {
      report.problems.push(`pid file: ${(err as Error).message}`);
    }
  }
  d.orphans = report.orphans;
  if (doc.relockd?.health) d.health.restore(doc.relockd.health);
  d.history = doc.relockd?.history ?? [];
  d.metrics.restore(doc.relockd?.metrics);
  if (doc.relockd?.startedAt) d.startedAt = doc.relockd.startedAt;
  for (const t of report.terminations) {
    const handle = t.pidfd >= 0 ? { pid: t.owner.pid, pidfd: t.pidfd, startTime: t.startTime } : openProcessHandle(t.owner.pid, -1);
    d.lockService.startTermination(t.owner, handle, t.startedAt);
  }
  // A main listener that did not come back: bind afresh so we stay reachable.
  if (d.lockServer.listeners.length === 0) await bindIfFree(d, d.lockServer, d.opts.socketPath, 0o700);
  if (d.adminServer && d.adminServer.listeners.length === 0 && d.opts.adminSocketPath) await bindIfFree(d, d.adminServer, d.opts.adminSocketPath, 0o600);
  const blackoutMs = requestedAtNs !== null ? Number(process.hrtime.bigint() - requestedAtNs) / 1e6 : undefined;
  const prev = doc.relockd;
  d.recordReexec({ at: Date.now(), ok: true, blackoutMs, trigger: prev?.trigger ?? 'virtlockd', fromVersion: prev?.version ?? 'virtlockd', toVersion: d.version });
  sendPendingReplies(d, doc, blackoutMs ?? 0);
  // A retry (SIGUSR1 in safe mode) that restores everything cleanly leaves
  // safe mode; fds we cannot interpret keep it in safe mode.
  if (prev?.safeMode && !report.problems.length && !report.orphans.length) {
    d.log.warn({ earlier: d.history.filter((h) => !h.ok).slice(-3) }, 'left safe mode: this restore was complete (earlier problems above)');
  }
  if (report.problems.length || report.orphans.length) {
    d.safeMode = true;
    d.boot = 'safe-mode';
    d.log.fatal({ problems: report.problems, orphans: report.orphans.map((o) => o.fd) }, 'SAFE MODE: restore incomplete; every inherited fd is kept open (no lock dropped), new acquisitions are refused; send SIGUSR1 to retry');
  } else {
    d.boot = 'restored';
  }
  d.log.info(
    { blackoutMs, bootMs: bootMarks(), listeners: report.listeners, clients: report.clients, resources: report.resources, lockspaces: report.lockspaces, terminations: report.terminations.length, fromVersion: prev?.version, toVersion: d.version, trigger: prev?.trigger, fdPrescan },
    're-exec complete',
  );
}

/**
 * The document cannot be trusted. Keep every inherited fd that could hold
 * a lock or a client; adopt our own listeners (found through
 * /proc/net/unix) and the client sockets so we stay reachable.
 */
export async function startSafeMode(d: BootHost, problems: string[], activated: ActivatedSockets | null = null): Promise<void> {
  d.safeMode = true;
  d.boot = 'safe-mode';
  const found = scanInheritedFds();
  const orphans: FdIdentity[] = [...found.others];
  // A crash-restart under socket activation: systemd passed its sockets again
  // (virtlockd.socket...). They are the servers' sockets, whatever path they
  // have, and the clients accepted on them belong to those servers: never
  // bind a socket of our own over systemd's.
  const byPath = new Map<string, RpcServer<any>>([[d.opts.socketPath, d.lockServer]]);
  if (d.adminServer && d.opts.adminSocketPath) byPath.set(d.opts.adminSocketPath, d.adminServer);
  const taken = new Set<number>();
  for (const [fds, srv] of [[activated?.main ?? [], d.lockServer], [activated?.admin ?? [], d.adminServer]] as const) {
    for (const fd of fds) {
      const path = listenerPath(fd);
      if (!srv || path === null) continue;
      try {
        await srv.adopt(fd, path, false);
        native.setCloexec(fd, true);
        byPath.set(path, srv);
        taken.add(fd);
      } catch (err) {
        problems.push(`activated listener ${path}: ${(err as Error).message}`);
      }
    }
  }
  for (const { fd, path } of found.listeners) {
    if (taken.has(fd)) continue;
    const srv = byPath.get(path) ?? null;
    if (srv) {
      try {
        await srv.adopt(fd, path, false);
        native.setCloexec(fd, true);
        continue;
      } catch (err) {
        problems.push(`listener ${path}: ${(err as Error).message}`);
      }
    }
    orphans.push({ fd, kind: 'listener', dev: '0', ino: '0' });
  }
  // Client sockets go back to the server they were accepted on (accepted
  // sockets carry the listener's path). Lock clients come back restricted:
  // who they were is unknown, so they may do nothing but keepalive.
  for (const { fd, path } of found.sockets) {
    const srv = (path === null ? undefined : byPath.get(path)) ?? null;
    try {
      if (!srv) throw new Error('accepted on an unknown socket');
      adoptClientSocket(srv, fd, (peer) => {
        if (!peerAllowed(peer)) throw new Error('peer not allowed');
        return srv === d.lockServer ? { restore: (c) => ((c.ctx as LockClient).restricted = true) } : {};
      });
    } catch {
      orphans.push({ fd, kind: 'client', dev: '0', ino: '0' });
    }
  }
  for (const o of orphans) {
    try {
      const st = (lazyRequire('node:fs') as typeof import('node:fs')).fstatSync(o.fd, { bigint: true });
      o.dev = st.dev.toString();
      o.ino = st.ino.toString();
      native.setCloexec(o.fd, true);
    } catch {
      /* gone */
    }
  }
  d.orphans = orphans;
  if (d.lockServer.listeners.length === 0) await bindIfFree(d, d.lockServer, d.opts.socketPath, 0o700);
  if (d.adminServer && d.adminServer.listeners.length === 0 && d.opts.adminSocketPath) await bindIfFree(d, d.adminServer, d.opts.adminSocketPath, 0o600);
  d.recordReexec({ at: Date.now(), ok: false, error: problems.join('; '), trigger: 'restore', toVersion: d.version });
  d.log.fatal(
    { problems, keptFds: orphans.map((o) => o.fd), keptLockFds: orphans.filter((o) => o.kind === 'resource').length, adoptedClients: d.lockServer.clients.size },
    'SAFE MODE: state document unusable; every inherited fd is kept open (no lock dropped), new acquisitions are refused; send SIGUSR1 to retry',
  );
}

async function bindIfFree(d: BootHost, srv: RpcServer<any>, path: string, mode: number): Promise<void> {
  try {
    await srv.bind(path, mode);
  } catch (err) {
    d.log.error({ err: (err as Error).message, socket: path }, 'cannot bind socket');
  }
}

/** Replies the old image owed (the admin call that asked for this re-exec). */
function sendPendingReplies(d: BootHost, doc: StateDocument, blackoutMs: number): void {
  for (const p of doc.relockd?.pendingReplies ?? []) {
    const srv = p.server === 'admin' ? d.adminServer : d.lockServer;
    const conn = srv?.clients.get(p.clientId);
    const prog = conn?.service.programs.find((g) => g.prog === p.header.prog && g.vers === p.header.vers);
    const proc = prog?.procedures.get(p.header.proc);
    if (!conn || !proc) continue;
    const result: ReexecOutcome = { ok: true, blackoutMs, version: d.version };
    conn.sendReply(p.header, proc.encodeRet, result);
  }
}
