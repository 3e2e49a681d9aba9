// The daemon's options (resolved from the command line and the
// configuration by settings.ts): a leaf, so settings.ts and daemon.ts do not
// import each other.

import type { HealthOptions } from '../health/options.js';
import type { InlinePolicy } from '../locks/storageClass.js';
import type { TerminationOptions } from '../services/terminator.js';

export interface DaemonOptions {
  socketPath: string;
  /** null: no admin socket. */
  adminSocketPath: string | null;
  adminMaxClients: number;
  runtimeDir: string;
  stateFile: string;
  maxClients: number;
  termination: TerminationOptions;
  storageTimeoutMs: number;
  storagePerKeyConcurrency: number;
  /** How long a re-exec waits for requests in flight before giving up. */
  quiesceTimeoutMs: number;
  /** null: no pid file. */
  pidFile: string | null;
  /** What SIGTERM/SIGINT/SIGQUIT do while leases are held (see requestStop). */
  shutdownPolicy: ShutdownPolicy;
  /** Exit after this many idle seconds (no client, no lease); null: never. */
  timeoutSec: number | null;
  /** Directory lock spaces created at every start. */
  lockspaces: string[];
  /** 'local': storage calls on local filesystems run inline; 'never': always off-thread. */
  storageInline: InlinePolicy;
  /** HTTP metrics listener (an address:port or a UNIX socket path); null: none. */
  metricsListen?: string | null;
  /** Lock-space health watch and lock-failure actions (src/health/). */
  health: HealthOptions;
}

/**
 * drain: refuse new acquisitions, keep serving releases, exit when the last
 * lease is gone (host shutdown: libvirt stops the VMs first).
 * kill-owners: virtlockd's way: terminate every lease-holding owner that has
 * its own connection, release everything, exit.
 * refuse: ignore the request while leases are held.
 */
export type ShutdownPolicy = 'drain' | 'kill-owners' | 'refuse';
