// The re-exec state document: virtlockd 9.0's format (virLockDaemonPreExecRestart), so that
// either daemon's state can be read, plus one `relockd` object for what
// virtlockd does not carry. schemas/state.schema.json is the authority; these
// types mirror it.

interface SocketState {
  fd: number;
  errfd: number;
  pid: number;
  isClient: boolean;
  unlinkUNIX?: boolean;
}

interface ServiceState {
  auth: number;
  readonly: boolean;
  nrequests_client_max: number;
  socks: SocketState[];
}

export interface LockPrivateData {
  restricted: boolean;
  ownerPid: number;
  ownerId: number;
  ownerName: string;
  ownerUUID: string;
}

export interface ClientState {
  id?: number;
  auth: number;
  auth_pending?: boolean;
  readonly: boolean;
  nrequests_max: number;
  conn_time?: number;
  sock: SocketState;
  privateData: LockPrivateData | Record<string, never>;
}

export interface ServerState {
  min_workers: number;
  max_workers: number;
  priority_workers: number;
  max_clients: number;
  max_anonymous_clients?: number;
  keepaliveInterval: number;
  keepaliveCount: number;
  keepaliveRequired?: boolean;
  next_client_id?: number;
  services: ServiceState[];
  clients: ClientState[];
}

export interface ResourceState {
  name: string;
  path: string;
  fd: number;
  lockHeld: boolean;
  flags: number;
  owners: number[];
}

export interface LockspaceState {
  directory?: string;
  resources: ResourceState[];
}

/** What an fd is, and which file it must still be after execve. */
export interface FdIdentity {
  fd: number;
  kind: 'listener' | 'client' | 'resource' | 'pidfd' | 'pidfile';
  /** st_dev and st_ino as decimal strings (inode numbers can exceed 2^53). */
  dev: string;
  ino: string;
}

export interface RelockdClientExtra {
  server: string;
  id: number;
  /** Bytes received but not yet dispatched (base64). */
  pending: string;
  /** Reply bytes not yet written (base64); normally empty after quiescing. */
  unsent: string;
  /**
   * How many of the last pending bytes were recorded before they were taken
   * out of the socket (fd store peek reads): after a crash they may still be
   * queued there. Absent: none.
   */
  inKernel?: number;
  /** Owner identity for connections whose peer registered itself. */
  process?: { pidfd: number; startTime: string };
}

export interface TerminationState {
  owner: { uuid: string; name: string; id: number; pid: number };
  startedAt: number;
  pidfd: number;
  startTime: string;
}

interface ListenerState {
  server: string;
  fd: number;
  path: string;
  unlinkOnClose: boolean;
}

export interface RelockdExtension {
  formatVersion: 1;
  version: string;
  /** CLOCK_MONOTONIC ns when the re-exec was requested (blackout start). */
  requestedAtNs: string;
  trigger: string;
  settings: Record<string, unknown>;
  listeners: ListenerState[];
  clients: RelockdClientExtra[];
  /** Per lease: since when, its identity (dev/ino) and lock flavour. */
  resources: Array<{ fd: number; since: number; dev?: string; ino?: string; classic?: boolean }>;
  terminations: TerminationState[];
  fds: FdIdentity[];
  /** Inherited fds a safe-mode image could not interpret; kept open forever. */
  orphans: FdIdentity[];
  safeMode: boolean;
  history: ReexecRecord[];
  /** Epoch ms the daemon first started (before any re-exec). */
  startedAt?: number;
  /** Prometheus totals (src/metrics/counters.ts MetricsState), so rates do not jump at a re-exec. */
  metrics?: Record<string, unknown>;
  /** The locked pid file, kept open across the exec so its lock never lapses. */
  pidFile?: { path: string; fd: number };
  /** Lock-space health watches and per-owner lock-failure handling (src/health/monitor.ts). */
  health?: import('../health/monitor.js').HealthDocument;
  /** Each directory's storage classification (src/locks/storageClass.ts): kept for the daemon's life, across re-execs. */
  storage?: import('../locks/storageClass.js').StorageVerdict[];
  /** Calls the old image took whose reply the new image sends (admin re-exec). */
  pendingReplies?: PendingReply[];
}

interface PendingReply {
  server: string;
  clientId: number;
  header: { prog: number; vers: number; proc: number; type: number; serial: number; status: number };
}

export interface ReexecRecord {
  at: number;
  ok: boolean;
  blackoutMs?: number;
  error?: string;
  trigger: string;
  fromVersion?: string;
  toVersion?: string;
}

export interface StateDocument {
  daemon?: { servers: Record<string, ServerState> | ServerState[] } | ServerState;
  server?: ServerState;
  defaultLockspace: LockspaceState;
  lockspaces: LockspaceState[];
  magic: string;
  relockd?: RelockdExtension;
}
