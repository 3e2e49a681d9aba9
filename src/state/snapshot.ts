// Live objects → state document. Pure apart from fstat: the caller has
// already quiesced every client, and runs this, the write and the execve in
// one synchronous stretch so nothing can change in between.

import { toDocText } from '../byteString.js';
import { fstatSync } from 'node:fs';
import type { ClientConnection } from '../rpc/connection.js';
import type { RpcServer } from '../rpc/server.js';
import { handleFd } from '../rpc/server.js';
import type { LockManager, LockSpace } from '../locks/lockManager.js';
import type {
  ClientState,
  FdIdentity,
  LockspaceState,
  RelockdClientExtra,
  RelockdExtension,
  ReexecRecord,
  ServerState,
  StateDocument,
  TerminationState,
} from './document.js';

/** What a server contributes besides its sockets: per-client state. */
interface ServerSnapshotSource<Ctx> {
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
}

function fdIdentity(fd: number, kind: FdIdentity['kind']): FdIdentity {
  const st = fstatSync(fd, { bigint: true });
  return { fd, kind, dev: st.dev.toString(), ino: st.ino.toString() };
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
    for (const conn of src.server.clients.values()) {
      if (conn.isClosed) continue;
      const fd = handleFd(conn.socket);
      if (fd < 0) continue; // already torn down by the kernel/libuv
      fds.push(fdIdentity(fd, 'client'));
      const bytes = input.detached.get(conn) ?? { pending: Buffer.alloc(0), unsent: Buffer.alloc(0) };
      const process = src.process?.(conn);
      if (process && process.pidfd >= 0) fds.push(fdIdentity(process.pidfd, 'pidfd'));
      clients.push({
        server: src.server.name,
        id: conn.id,
        pending: bytes.pending.toString('base64'),
        unsent: bytes.unsent.toString('base64'),
        ...(process ? { process } : {}),
      });
      cs.push({
        id: conn.id,
        auth: 0,
        auth_pending: false,
        readonly: false,
        nrequests_max: 1,
        conn_time: conn.connTime,
        sock: { fd, errfd: -1, pid: 0, isClient: true, unlinkUNIX: false },
        privateData: src.privateData(conn),
      });
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
    resources: [...ls.resources.values()].map((r) => {
      // Identity as recorded when the lock was taken: no fstat per lease here.
      resources.push({ fd: r.fd, since: r.since, dev: String(r.dev), ino: String(r.ino), ...(r.classic ? { classic: true } : {}) });
      return { name: toDocText(r.name), path: toDocText(r.path), fd: r.fd, lockHeld: true, flags: r.flags, owners: [...r.owners] };
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
