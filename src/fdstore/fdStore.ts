// systemd's file descriptor store (FileDescriptorStoreMax=, sd_notify
// FDSTORE=1 with the fd as SCM_RIGHTS): systemd keeps a reference to every
// fd we hand it, so an OFD lock on a stored lease fd, an accepted client
// connection and a listening socket all outlive a crash of relockd, and the
// restarted process gets them back as LISTEN_FDS with their FDNAMEs.
//
// Names are derived from what the fd *is* (its dev/ino), never from its
// number, so any image (after a re-exec, after a crash) can name an object's
// stored copy without a table of its own. systemd suppresses a duplicate of
// an fd it already holds, so storing again is harmless.

import * as native from '../native.js';

/** Every name we store starts with this (activation names never do: relockd.socket, virtlockd.socket…). */
const STORE_PREFIX = 'store.';

export const isStoredFdName = (name: string): boolean => name.startsWith(STORE_PREFIX);

export const fdNames = {
  lease: (dev: number | string, ino: number | string) => `${STORE_PREFIX}lease.${dev}.${ino}`,
  client: (ino: number | string) => `${STORE_PREFIX}client.${ino}`,
  listener: (ino: number | string) => `${STORE_PREFIX}listen.${ino}`,
  pidFile: `${STORE_PREFIX}pidfile`,
  runner: (ino: number | string) => `${STORE_PREFIX}runner.${ino}`,
  state: (slot: 0 | 1) => `${STORE_PREFIX}state${slot}`,
};

export type StoredKind = 'lease' | 'client' | 'listen' | 'pidfile' | 'runner' | 'state' | 'unknown';

export function kindOfName(name: string): StoredKind {
  const k = name.slice(STORE_PREFIX.length).split('.')[0] ?? '';
  if (k === 'lease' || k === 'client' || k === 'listen' || k === 'pidfile' || k === 'runner') return k;
  if (k === 'state0' || k === 'state1') return 'state';
  return 'unknown';
}

export interface FdStoreConfig {
  /** NOTIFY_SOCKET. */
  socket: string;
  /** FileDescriptorStoreMax= of the unit. */
  max: number;
}

/**
 * On under systemd with a store: NOTIFY_SOCKET, and FDSTORE=<max> in the
 * environment (systemd ≥ 254 sets it from FileDescriptorStoreMax=; relockd's
 * units set it themselves for systemd 252, which does not).
 */
export function fdStoreConfig(env: NodeJS.ProcessEnv = process.env): FdStoreConfig | null {
  const socket = env.NOTIFY_SOCKET;
  const max = Number(env.FDSTORE ?? '');
  if (!socket || !Number.isInteger(max) || max <= 0) return null;
  return { socket, max };
}

export interface FdStoreEvents {
  /** A datagram could not be sent now (EAGAIN: systemd's queue is full); it is retried. */
  deferred(name: string, err: Error): void;
  /** The store is full: this fd is not crash-safe. */
  full(name: string): void;
}

/** The transport: one datagram per fd stored or removed, retried while systemd's queue is full. */
export class FdStore {
  /** Names we stored (or found stored), for the count against FileDescriptorStoreMax=. */
  private readonly stored = new Set<string>();
  private readonly retry = new Map<string, { fd: number } | { remove: true }>();
  private retryTimer: NodeJS.Timeout | null = null;
  /** Datagrams sent, for the bench and metrics. */
  sent = 0;

  constructor(
    readonly config: FdStoreConfig,
    private readonly events: FdStoreEvents,
  ) {}

  get size(): number {
    return this.stored.size;
  }

  has(name: string): boolean {
    return this.stored.has(name);
  }

  /** Already in the store (found at start, or kept across a re-exec). */
  known(name: string): void {
    this.stored.add(name);
  }

  /** Hands `fd` to systemd under `name`; synchronous (the caller answers its client after this). */
  put(name: string, fd: number): void {
    if (this.stored.has(name) && !this.retry.has(name)) return;
    if (this.stored.size >= this.config.max && !this.stored.has(name)) {
      this.events.full(name);
      return;
    }
    this.stored.add(name);
    this.send(name, { fd });
  }

  /** Drops `name` from the store (its lease or client ended). */
  remove(name: string): void {
    if (!this.stored.delete(name)) return;
    const pending = this.retry.get(name);
    if (pending && 'fd' in pending) {
      this.retry.delete(name); // never got there
      return;
    }
    this.send(name, { remove: true });
  }

  private send(name: string, what: { fd: number } | { remove: true }): void {
    try {
      if ('fd' in what) native.sdNotifyFds(this.config.socket, `FDSTORE=1\nFDNAME=${name}`, [what.fd]);
      else native.sdNotify(this.config.socket, `FDSTOREREMOVE=1\nFDNAME=${name}`);
      this.sent++;
      this.retry.delete(name);
    } catch (err) {
      this.retry.set(name, what);
      this.events.deferred(name, err as Error);
      this.retryTimer ??= setTimeout(() => this.flushRetries(), 10);
    }
  }

  private flushRetries(): void {
    this.retryTimer = null;
    for (const [name, what] of [...this.retry]) {
      this.retry.delete(name);
      this.send(name, what);
      if (this.retry.has(name)) break; // still full: the timer is set again
    }
  }
}
