// State document → live objects, in the new image after execve. Every fd is
// checked against the identity recorded before the exec (virtlockd trusts
// them blindly); each object that cannot be restored is reported as a
// problem, its fd is kept open (never closed: it may hold a lock), and the
// daemon goes into safe mode. Nothing here ever closes an inherited fd.

import { fstatSync, statSync } from 'node:fs';
import net from 'node:net';
import * as native from '../native.js';
import type { LockManager, Resource } from '../locks/lockManager.js';
import type { RpcServer } from '../rpc/server.js';
import type { ClientConnection } from '../rpc/connection.js';
import type { ProcessHandle } from '../daemon/terminator.js';
import type { FdIdentity, LockPrivateData, ServerState, StateDocument, TerminationState } from './document.js';

export interface RestoreTarget {
  lockServer: RpcServer<any>;
  adminServer: RpcServer<any> | null;
  manager: LockManager;
  /** Configured socket paths: used for listeners of documents without paths (virtlockd's). */
  socketPath: string;
  adminSocketPath: string | null;
  restoreLockContext(conn: ClientConnection<any>, d: LockPrivateData, process: ProcessHandle | null): void;
  openProcessHandle(pid: number, sockFd: number): ProcessHandle | null;
}

export interface RestoreReport {
  listeners: number;
  clients: number;
  resources: number;
  lockspaces: number;
  terminations: TerminationState[];
  /** Inherited fds that are kept open but could not be turned into objects. */
  orphans: FdIdentity[];
  /** The inherited, still locked pid file, when it checked out. */
  pidFile: { path: string; fd: number } | null;
  problems: string[];
}

/** The servers of any accepted document layout, by name. */
export function serversOf(doc: StateDocument): { virtlockd?: ServerState; admin?: ServerState } {
  const d = doc.daemon;
  if (d && 'servers' in d) {
    const s = d.servers;
    if (Array.isArray(s)) return { virtlockd: s[0] };
    return { virtlockd: s.virtlockd, admin: s.admin };
  }
  if (d) return { virtlockd: d as ServerState };
  return { virtlockd: doc.server };
}

type Kind = FdIdentity['kind'];

/** Checks that `fd` is open and is the file recorded before the exec. */
function checkFd(fd: number, kind: Kind, recorded: Map<number, FdIdentity>): string | null {
  let st;
  try {
    st = fstatSync(fd, { bigint: true });
  } catch {
    return `fd ${fd} (${kind}) is not open`;
  }
  const want = recorded.get(fd);
  if (want) {
    if (want.kind !== kind) return `fd ${fd} was recorded as ${want.kind}, expected ${kind}`;
    if (want.dev !== st.dev.toString() || want.ino !== st.ino.toString()) return `fd ${fd} (${kind}) is not the file it was before the exec (dev/ino changed)`;
    return null;
  }
  // Documents without identities (virtlockd's): check the type at least.
  if ((kind === 'listener' || kind === 'client') && !st.isSocket()) return `fd ${fd} (${kind}) is not a socket`;
  if (kind === 'resource' && !st.isFile() && !st.isBlockDevice() && !st.isCharacterDevice()) return `fd ${fd} (resource) is not a file`;
  return null;
}

export async function restoreState(doc: StateDocument, target: RestoreTarget): Promise<RestoreReport> {
  const ext = doc.relockd;
  const recorded = new Map<number, FdIdentity>((ext?.fds ?? []).map((f) => [f.fd, f]));
  const report: RestoreReport = { listeners: 0, clients: 0, resources: 0, lockspaces: 0, terminations: [], orphans: [], problems: [], pidFile: null };
  const keep = (fd: number, kind: Kind) => {
    // An fd we cannot use is still never closed: it may hold a lock.
    try {
      const st = fstatSync(fd, { bigint: true });
      report.orphans.push({ fd, kind, dev: st.dev.toString(), ino: st.ino.toString() });
      native.setCloexec(fd, true);
    } catch {
      /* not open at all */
    }
  };

  // Orphans carried from an earlier safe-mode image stay orphans.
  for (const o of ext?.orphans ?? []) {
    const why = checkFd(o.fd, o.kind, new Map([[o.fd, o]]));
    if (why) report.problems.push(`orphan ${why}`);
    else {
      report.orphans.push(o);
      native.setCloexec(o.fd, true);
    }
  }

  // 1. Resources first: they are the locks. Re-mark them close-on-exec so
  // children never inherit them.
  const extraByFd = new Map((ext?.resources ?? []).map((r) => [r.fd, r]));
  const spaces = [{ dir: '', st: doc.defaultLockspace }, ...doc.lockspaces.map((l) => ({ dir: l.directory!, st: l }))];
  for (const { dir, st } of spaces) {
    const ls = target.manager.adoptLockSpace(dir);
    if (dir) report.lockspaces++;
    for (const r of st.resources) {
      const why = checkFd(r.fd, 'resource', recorded);
      if (why) {
        report.problems.push(`resource '${r.name}' in lockspace '${dir}': ${why}`);
        keep(r.fd, 'resource');
        continue;
      }
      const fst = fstatSync(r.fd, { bigint: true });
      if (!recorded.has(r.fd)) {
        // virtlockd documents: the fd must still be the file at `path`, if it exists.
        let mismatch = false;
        try {
          const pst = statSync(r.path, { bigint: true });
          mismatch = pst.ino !== fst.ino || pst.dev !== fst.dev;
        } catch {
          /* lease file gone: the fd still holds the lock */
        }
        if (mismatch) {
          // Not the file the document names: keep the fd (it may hold some
          // lock), but never pass it off as this resource.
          report.problems.push(`resource '${r.name}' in lockspace '${dir}': fd ${r.fd} is not the file at ${r.path}`);
          keep(r.fd, 'resource');
          continue;
        }
      }
      const res: Resource = {
        name: r.name,
        path: r.path,
        fd: r.fd,
        dev: Number(fst.dev),
        ino: Number(fst.ino),
        flags: r.flags,
        owners: [...r.owners],
        since: extraByFd.get(r.fd)?.since ?? Date.now(),
        // virtlockd took classic POSIX locks; relockd documents say which are.
        ...(!ext || extraByFd.get(r.fd)?.classic ? { classic: true } : {}),
      };
      try {
        target.manager.adoptResource(ls, res);
        native.setCloexec(r.fd, true);
        report.resources++;
      } catch (err) {
        report.problems.push((err as Error).message);
        keep(r.fd, 'resource');
      }
    }
  }

  // 2. Listeners.
  const servers = serversOf(doc);
  const pathOf = new Map((ext?.listeners ?? []).map((l) => [l.fd, l]));
  const restoreServer = async (name: 'virtlockd' | 'admin', st: ServerState | undefined, srv: RpcServer<any> | null, defaultPath: string | null) => {
    if (!st) return;
    if (!srv) {
      // e.g. an admin server in the document but none configured: keep its fds.
      for (const svc of st.services) for (const s of svc.socks) keep(s.fd, 'listener');
      for (const c of st.clients) keep(c.sock.fd, 'client');
      return;
    }
    if (st.next_client_id && st.next_client_id > srv.nextClientId) srv.nextClientId = st.next_client_id;
    for (const svc of st.services) {
      for (const s of svc.socks) {
        const why = checkFd(s.fd, 'listener', recorded);
        if (why) {
          report.problems.push(`${name} listener: ${why}`);
          keep(s.fd, 'listener');
          continue;
        }
        const info = pathOf.get(s.fd);
        try {
          await srv.adopt(s.fd, info?.path ?? defaultPath ?? '', info?.unlinkOnClose ?? s.unlinkUNIX ?? !s.isClient);
          native.setCloexec(s.fd, true);
          report.listeners++;
        } catch (err) {
          report.problems.push(`${name} listener fd ${s.fd}: ${(err as Error).message}`);
          keep(s.fd, 'listener');
        }
      }
    }
    const extraClients = new Map((ext?.clients ?? []).filter((c) => c.server === name).map((c) => [c.id, c]));
    for (const c of st.clients) {
      const fd = c.sock.fd;
      const why = checkFd(fd, 'client', recorded);
      if (why) {
        report.problems.push(`${name} client ${c.id ?? '?'}: ${why}`);
        keep(fd, 'client');
        continue;
      }
      const extra = c.id !== undefined ? extraClients.get(c.id) : undefined;
      try {
        const peer = native.peerCred(fd);
        const sock = new net.Socket({ fd, readable: true, writable: true });
        native.setCloexec(fd, true);
        const pd = c.privateData as LockPrivateData;
        let process: ProcessHandle | null = null;
        if (name === 'virtlockd' && pd.ownerId !== 0 && pd.ownerPid === peer.pid) {
          if (extra?.process && extra.process.pidfd >= 0) {
            const pwhy = checkFd(extra.process.pidfd, 'pidfd', recorded);
            if (pwhy) report.problems.push(`client ${c.id} owner handle: ${pwhy}`);
            else {
              process = { pid: pd.ownerPid, pidfd: extra.process.pidfd, startTime: extra.process.startTime };
              native.setCloexec(extra.process.pidfd, true);
            }
          }
          process ??= target.openProcessHandle(pd.ownerPid, fd);
        }
        srv.attach(sock, peer, {
          id: c.id,
          connTime: c.conn_time,
          pending: extra ? Buffer.from(extra.pending, 'base64') : undefined,
          unsent: extra ? Buffer.from(extra.unsent, 'base64') : undefined,
          restore: name === 'virtlockd' ? (conn) => target.restoreLockContext(conn, pd, process) : undefined,
        });
        report.clients++;
      } catch (err) {
        report.problems.push(`${name} client ${c.id ?? '?'} fd ${fd}: ${(err as Error).message}`);
        keep(fd, 'client');
      }
    }
  };
  await restoreServer('virtlockd', servers.virtlockd, target.lockServer, target.socketPath);
  await restoreServer('admin', servers.admin, target.adminServer, target.adminSocketPath);

  // 3. The pid file (its lock is ours for as long as the fd is open).
  if (ext?.pidFile) {
    const why = checkFd(ext.pidFile.fd, 'pidfile', recorded);
    if (why) report.problems.push(`pid file: ${why}`);
    else report.pidFile = ext.pidFile;
  }

  // 4. Owner terminations in progress: the caller resumes them.
  for (const t of ext?.terminations ?? []) {
    if (t.pidfd >= 0) {
      const why = checkFd(t.pidfd, 'pidfd', recorded);
      if (why) {
        report.problems.push(`termination of pid ${t.owner.pid}: ${why}`);
        report.terminations.push({ ...t, pidfd: -1 });
        continue;
      }
      native.setCloexec(t.pidfd, true);
    }
    report.terminations.push(t);
  }
  return report;
}
