// After a crash the stored fds come back under new numbers (LISTEN_FDS from
// 3 up). The state document names the old numbers and records each fd's
// identity (dev/ino, as the re-exec document does), so every fd it names is
// found again by identity among the fds systemd passed, and the document is
// rewritten to the new numbers. It then restores exactly like a re-exec's.
//
// What the document names but systemd did not pass back is gone for good:
// a lease whose fd is neither ours nor in the store holds no lock anywhere
// (it was being released), a client connection not passed back is closed.
// Process handles (pidfds) are not stored: the restore opens them afresh.

import { fstatSync } from 'node:fs';
import { inheritedLockFlavour, serversOf } from '../state/restore.js';
import type { FdIdentity, LockPrivateData, StateDocument } from '../state/document.js';

export interface PassedFd {
  fd: number;
  name: string;
}

export interface RemapResult {
  /** Passed fds the document now names. */
  used: Set<number>;
  /** Leases the document named whose fd came back without a lock: their release was under way. */
  unlocked: number[];
  /** What was dropped from the document, for the log. */
  dropped: string[];
  /**
   * Owners whose own connection (the peer registered itself, as QEMU does)
   * closed while relockd was down: systemd drops a stored socket on hang-up.
   * They get the owner path of a closed connection.
   */
  lostOwners: Array<{ owner: { uuid: string; name: string; id: number; pid: number }; startTime: string }>;
}

const key = (dev: string | number | bigint, ino: string | number | bigint) => `${dev}:${ino}`;

function identityOf(fd: number): string | null {
  try {
    const st = fstatSync(fd, { bigint: true });
    return key(st.dev, st.ino);
  } catch {
    return null;
  }
}

/** Rewrites `doc` in place to the fds passed to this process; `pid` becomes its magic. */
export function remapDocument(doc: StateDocument, passed: PassedFd[], pid: number): RemapResult {
  const ext = doc.relockd;
  if (!ext) throw new Error('the stored state document has no relockd section');
  const byIdentity = new Map<string, number>();
  for (const p of passed) {
    const id = identityOf(p.fd);
    if (id && !byIdentity.has(id)) byIdentity.set(id, p.fd);
  }
  // Old fd number → identity, as recorded when the document was written.
  const recorded = new Map<number, FdIdentity>();
  for (const f of ext.fds) recorded.set(f.fd, f);
  for (const r of ext.resources) if (r.dev !== undefined && r.ino !== undefined) recorded.set(r.fd, { fd: r.fd, kind: 'resource', dev: r.dev, ino: r.ino });
  const used = new Set<number>();
  const dropped: string[] = [];
  const unlocked: number[] = [];
  const lostOwners: RemapResult['lostOwners'] = [];
  const find = (oldFd: number): number => {
    const id = recorded.get(oldFd);
    const fd = id ? byIdentity.get(key(id.dev, id.ino)) : undefined;
    if (fd === undefined) return -1;
    used.add(fd);
    return fd;
  };

  // Leases.
  const newResFd = new Map<number, number>();
  for (const space of [doc.defaultLockspace, ...doc.lockspaces]) {
    space.resources = space.resources.filter((r) => {
      const fd = find(r.fd);
      if (fd < 0) {
        dropped.push(`lease ${r.name} (fd not passed back: it was released)`);
        return false;
      }
      if (inheritedLockFlavour(fd) === 'unknown') {
        dropped.push(`lease ${r.name} (its fd holds no lock: it was being released)`);
        unlocked.push(fd);
        return false;
      }
      newResFd.set(r.fd, fd);
      r.fd = fd;
      return true;
    });
  }
  ext.resources = ext.resources.filter((r) => {
    const fd = newResFd.get(r.fd);
    if (fd === undefined) return false;
    r.fd = fd;
    return true;
  });

  // Listeners and clients of each server.
  const servers = serversOf(doc);
  const listenerFd = new Map<number, number>();
  for (const [name, st] of Object.entries(servers)) {
    if (!st) continue;
    for (const svc of st.services) {
      svc.socks = svc.socks.filter((s) => {
        const fd = find(s.fd);
        if (fd < 0) {
          dropped.push(`${name} listener fd ${s.fd} (not passed back)`);
          return false;
        }
        listenerFd.set(s.fd, fd);
        s.fd = fd;
        return true;
      });
    }
    const keptIds = new Set<number>();
    st.clients = st.clients.filter((c) => {
      const fd = find(c.sock.fd);
      if (fd < 0) {
        dropped.push(`${name} client ${c.id ?? '?'} (connection not passed back: closed while relockd was down)`);
        const pd = c.privateData as Partial<LockPrivateData>;
        const own = ext.clients.find((x) => x.server === name && x.id === c.id)?.process;
        if (name === 'virtlockd' && own && pd.ownerId && pd.ownerPid) {
          lostOwners.push({ owner: { uuid: pd.ownerUUID ?? '', name: pd.ownerName ?? '', id: pd.ownerId, pid: pd.ownerPid }, startTime: own.startTime });
        }
        return false;
      }
      c.sock.fd = fd;
      if (c.id !== undefined) keptIds.add(c.id);
      return true;
    });
    ext.clients = ext.clients.filter((c) => c.server !== name || keptIds.has(c.id));
  }
  ext.listeners = ext.listeners.filter((l) => {
    const fd = listenerFd.get(l.fd);
    if (fd === undefined) return false;
    l.fd = fd;
    return true;
  });
  for (const c of ext.clients) if (c.process) c.process = { pidfd: -1, startTime: c.process.startTime };
  for (const t of ext.terminations) t.pidfd = -1;

  // The pid file and orphans of an earlier safe mode.
  if (ext.pidFile) {
    const fd = find(ext.pidFile.fd);
    if (fd < 0) {
      dropped.push('pid file (not passed back)');
      delete ext.pidFile;
    } else ext.pidFile.fd = fd;
  }
  ext.orphans = ext.orphans.filter((o) => {
    const fd = byIdentity.get(key(o.dev, o.ino));
    if (fd === undefined) return false;
    used.add(fd);
    o.fd = fd;
    return true;
  });

  // The action runner's channel (daemon/crashStore.ts stores it): found by
  // identity, or the runner is forgotten (a crash-restarted process holds
  // lease fds, so it cannot spawn another: health/actionRunner.ts).
  const runner = ext.health?.runner;
  if (runner) {
    const fd = runner.dev !== undefined && runner.ino !== undefined ? byIdentity.get(key(runner.dev, runner.ino)) : undefined;
    if (fd === undefined) {
      dropped.push(`action runner ${runner.pid} (its channel was not passed back)`);
      delete ext.health!.runner;
    } else {
      used.add(fd);
      runner.fd = fd;
    }
  }

  // The identity list, in the new numbers (pidfds were not stored).
  const fds: FdIdentity[] = [];
  for (const f of ext.fds) {
    if (f.kind === 'pidfd') continue;
    const fd = byIdentity.get(key(f.dev, f.ino));
    if (fd !== undefined && used.has(fd)) fds.push({ ...f, fd });
  }
  ext.fds = fds;
  doc.magic = String(pid);
  return { used, unlocked, dropped, lostOwners };
}
