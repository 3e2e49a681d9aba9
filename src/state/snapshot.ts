// Live objects → state document. Pure apart from fstat: the caller has
// already quiesced every client, and runs this, the write and the execve in
// one synchronous stretch so nothing can change in between.

import { toDocText } from '../byteString.js';
import { fstatSync } from 'node:fs';
import type { ClientConnection } from '../rpc/connection.js';
import type { RpcServer } from '../rpc/server.js';
import { handleFd } from '../rpc/server.js';
import type { LockManager, LockSpace } from '../locks/lockManager.js';
import { emptyColumns, type LeaseColumns } from './documentFormat.js';
import type { Resource } from '../locks/lockManager.js';
import type {
  ClientState,
  FdIdentity,
  LockspaceState,
  ResourceState,
  RelockdClientExtra,
  RelockdExtension,
  ReexecRecord,
  ServerState,
  StateDocument,
  TerminationState,
} from './document.js';

/** What a server contributes besides its sockets: per-client state. */
export interface ServerSnapshotSource<Ctx> {
  server: RpcServer<Ctx>;
  /** virtlockd's privateData for a client. */
  privateData(conn: ClientConnection<Ctx>): ClientState['privateData'];
  /** relockd's extra per-client identity (the owner's pidfd), if any. */
  process?(conn: ClientConnection<Ctx>): { pidfd: number; startTime: string } | undefined;
}

export interface SnapshotInput {
  pid: number;
  version: string;
  trigger: string;
  requestedAtNs: bigint;
  settings: Record<string, unknown>;
  lock: ServerSnapshotSource<any>;
  admin: ServerSnapshotSource<any> | null;
  manager: LockManager;
  /** Per-client bytes captured by ClientConnection.detachForExec. */
  detached: Map<ClientConnection<any>, { pending: Buffer; unsent: Buffer }>;
  terminations: TerminationState[];
  orphans: FdIdentity[];
  safeMode: boolean;
  history: ReexecRecord[];
  pidFile: { path: string; fd: number } | null;
  startedAt: number;
  /** Leave out leases and connections (the fd store's journal records those one by one). */
  skeleton?: boolean;
  /** Leave out the leases only: the caller writes them as columns (tableColumns). */
  omitLeases?: boolean;
}

function fdIdentity(fd: number, kind: FdIdentity['kind']): FdIdentity {
  const st = fstatSync(fd, { bigint: true });
  return { fd, kind, dev: st.dev.toString(), ino: st.ino.toString() };
}

// A connection's socket is the same file for its whole life: fstat it once,
// not on every snapshot (the fd store takes one per change, a re-exec one of all).
const socketIds = new WeakMap<ClientConnection<any>, FdIdentity>();

/** The identity of `conn`'s socket (fd `fd`), cached per connection. */
export function socketIdentity(conn: ClientConnection<any>, fd: number): FdIdentity {
  let id = socketIds.get(conn);
  if (!id || id.fd !== fd) {
    id = fdIdentity(fd, 'client');
    socketIds.set(conn, id);
  }
  return id;
}

/** One lease as the document records it: its lock space's entry and relockd's extra. */
export function resourceEntry(r: Resource): { state: ResourceState; extra: RelockdExtension['resources'][number] } {
  return {
    // Names are byte strings: carried as text, non-UTF-8 bytes as \udcXX (byteString.ts).
    state: { name: toDocText(r.name), path: toDocText(r.path), fd: r.fd, lockHeld: true, flags: r.flags, owners: [...r.owners] },
    // Identity as recorded when the lock was taken: no fstat per lease here.
    extra: { fd: r.fd, since: r.since, dev: String(r.dev), ino: String(r.ino), ...(r.classic ? { classic: true } : {}) },
  };
}

/** One connection as the document records it (null: its socket is already gone). */
export function clientEntry(
  src: ServerSnapshotSource<any>,
  conn: ClientConnection<any>,
  bytes: { pending: Buffer; unsent: Buffer; inKernel?: number } | undefined,
): { state: ClientState; extra: RelockdClientExtra; fds: FdIdentity[] } | null {
  if (conn.isClosed) return null;
  const fd = handleFd(conn.socket);
  if (fd < 0) return null; // already torn down by the kernel/libuv
  const fds = [socketIdentity(conn, fd)];
  const b = bytes ?? { pending: Buffer.alloc(0), unsent: Buffer.alloc(0) };
  const process = src.process?.(conn);
  if (process && process.pidfd >= 0) fds.push(fdIdentity(process.pidfd, 'pidfd'));
  return {
    state: {
      id: conn.id,
      auth: 0,
      auth_pending: false,
      readonly: false,
      nrequests_max: 1,
      conn_time: conn.connTime,
      sock: { fd, errfd: -1, pid: 0, isClient: true, unlinkUNIX: false },
      privateData: src.privateData(conn),
    },
    extra: {
      server: src.server.name,
      id: conn.id,
      pending: b.pending.toString('base64'),
      unsent: b.unsent.toString('base64'),
      ...(b.inKernel ? { inKernel: Math.min(b.inKernel, b.pending.length) } : {}),
      ...(process ? { process } : {}),
    },
    fds,
  };
}

/**
 * The lock tables as format 2's columns (documentFormat.ts), in the order
 * buildState lists the lock spaces: what a re-exec writes, built without
 * format 1's two objects and owner array per lease.
 */
export function tableColumns(manager: LockManager): LeaseColumns {
  const cols = emptyColumns();
  let i = 0;
  for (const ls of [manager.defaultSpace, ...manager.spaces.values()]) {
    cols.counts.push(ls.resources.size);
    for (const r of ls.resources.values()) {
      // Names are byte strings: carried as text, non-UTF-8 bytes as \udcXX (byteString.ts).
      cols.name.push(toDocText(r.name));
      cols.fd.push(r.fd);
      cols.flags.push(r.flags);
      cols.since.push(r.since);
      // Identity as recorded when the lock was taken: no fstat per lease here.
      cols.dev.push(r.dev);
      cols.ino.push(r.ino);
      const n = r.pushOwners(cols.owners);
      if (n !== 1) cols.multiOwners.push([i, n]);
      const path = r.explicitPath;
      if (path !== null) cols.paths.push([i, toDocText(path)]);
      if (r.classic) cols.classic.push(r.fd);
      i++;
    }
  }
  return cols;
}

export function buildState(input: SnapshotInput): StateDocument {
  const fds: FdIdentity[] = [];
  const listeners: RelockdExtension['listeners'] = [];
  const clients: RelockdClientExtra[] = [];

  const serverState = (src: ServerSnapshotSource<any>, maxClients: number): ServerState => {
    const socks = src.server.listeners.map((l) => {
      const fd = l.fd;
      fds.push(fdIdentity(fd, 'listener'));
      listeners.push({ server: src.server.name, fd, path: l.path, unlinkOnClose: l.unlinkOnClose });
      return { fd, errfd: -1, pid: 0, isClient: false, unlinkUNIX: l.unlinkOnClose };
    });
    const cs: ClientState[] = [];
    if (!input.skeleton) {
      for (const conn of src.server.clients.values()) {
        const e = clientEntry(src, conn, input.detached.get(conn));
        if (!e) continue;
        fds.push(...e.fds);
        clients.push(e.extra);
        cs.push(e.state);
      }
    }
    return {
      min_workers: 0,
      max_workers: 0,
      priority_workers: 0,
      max_clients: maxClients,
      max_anonymous_clients: maxClients,
      keepaliveInterval: 4294967295,
      keepaliveCount: 0,
      next_client_id: src.server.nextClientId,
      services: [{ auth: 0, readonly: false, nrequests_client_max: 1, socks }],
      clients: cs,
    };
  };

  const servers: Record<string, ServerState> = {};
  // virtlockd 9.0 writes the names sorted: admin, virtlockd.
  if (input.admin) servers.admin = serverState(input.admin, input.admin.server.maxClients);
  servers.virtlockd = serverState(input.lock, input.lock.server.maxClients);

  const resources: RelockdExtension['resources'] = [];
  const space = (ls: LockSpace): LockspaceState => ({
    // Names are byte strings: carried as text, non-UTF-8 bytes as \udcXX (byteString.ts).
    ...(ls.isDefault ? {} : { directory: toDocText(ls.dir) }),
    resources: input.skeleton || input.omitLeases
      ? []
      : [...ls.resources.values()].map((r) => {
          const e = resourceEntry(r);
          resources.push(e.extra);
          return e.state;
        }),
  });
  const defaultLockspace = space(input.manager.defaultSpace);
  const lockspaces = [...input.manager.spaces.values()].map(space);

  for (const t of input.terminations) if (t.pidfd >= 0) fds.push(fdIdentity(t.pidfd, 'pidfd'));
  if (input.pidFile) fds.push(fdIdentity(input.pidFile.fd, 'pidfile'));

  return {
    daemon: { servers },
    defaultLockspace,
    lockspaces,
    magic: String(input.pid),
    relockd: {
      formatVersion: 1,
      version: input.version,
      requestedAtNs: input.requestedAtNs.toString(),
      trigger: input.trigger,
      settings: input.settings,
      listeners,
      clients,
      resources,
      terminations: input.terminations,
      fds,
      orphans: input.orphans,
      safeMode: input.safeMode,
      history: input.history,
      startedAt: input.startedAt,
      ...(input.pidFile ? { pidFile: input.pidFile } : {}),
    },
  };
}
