// Lifecycle: wires the lock manager, the lock service and the RPC server,
// handles signals, and shuts down only by an explicit, logged decision.

import { mkdirSync } from 'node:fs';
import type { Logger } from 'pino';
import { LockManager } from '../locks/lockManager.js';
import { NativeFileLocker } from '../locks/fileLocker.js';
import type { FileLocker } from '../locks/fileLocker.js';
import { StorageGate } from '../locks/storageGate.js';
import { RpcServer } from '../rpc/server.js';
import * as native from '../native.js';
import { LockService } from './lockService.js';
import type { LockClient } from './lockService.js';
import type { TerminationOptions } from './terminator.js';

export interface DaemonOptions {
  socketPath: string;
  /** null: no admin socket. */
  adminSocketPath: string | null;
  adminMaxClients: number;
  runtimeDir: string;
  maxClients: number;
  termination: TerminationOptions;
  storageTimeoutMs: number;
  storagePerKeyConcurrency: number;
}

export class Daemon {
  readonly manager: LockManager;
  readonly lockService: LockService;
  readonly lockServer: RpcServer<LockClient>;
  readonly gate: StorageGate;
  /** The admin server, once started (see startAdmin). */
  adminServer: RpcServer<unknown> | null = null;
  readonly startedAt = Date.now();
  private stopping = false;

  constructor(
    readonly opts: DaemonOptions,
    readonly log: Logger,
    locker: FileLocker = new NativeFileLocker(),
  ) {
    this.gate = new StorageGate({ timeoutMs: opts.storageTimeoutMs, perKeyConcurrency: opts.storagePerKeyConcurrency });
    this.manager = new LockManager({ locker, gate: this.gate, log });
    this.lockService = new LockService(this.manager, opts.termination, log);
    this.lockServer = new RpcServer({ name: 'virtlockd', service: this.lockService, log, maxClients: opts.maxClients });
  }

  async start(): Promise<void> {
    mkdirSync(this.opts.runtimeDir, { recursive: true, mode: 0o700 });
    await this.lockServer.bind(this.opts.socketPath);
    if (this.opts.adminSocketPath) await this.startAdmin(this.opts.adminSocketPath);
    this.notify('READY=1');
    this.log.info({ socket: this.opts.socketPath, version: process.env.npm_package_version }, 'relockd ready');
  }

  /** The admin server: libvirt's admin program and relockd's own. */
  private async startAdmin(path: string): Promise<void> {
    // ADMIN-WIRING (issue 6): create this.adminServer with the admin service and bind it.
    void path;
  }

  /** sd_notify, when run under systemd (or a test acting as it). */
  notify(msg: string): void {
    const sock = process.env.NOTIFY_SOCKET;
    if (!sock) return;
    try {
      native.sdNotify(sock, msg);
    } catch (err) {
      this.log.warn({ err }, 'sd_notify failed');
    }
  }

  /**
   * SIGTERM/SIGINT/SIGQUIT. With no lease held: clean exit. With leases
   * held, exiting would either leave VMs running unprotected (locks drop) or
   * require killing them; relockd does neither and keeps serving, saying
   * who holds what. (Configurable policies: host-integration issue.)
   */
  async requestStop(signal: string): Promise<void> {
    if (this.stopping) return;
    const counts = this.manager.counts();
    if (counts.resources > 0) {
      const owners = new Set<number>();
      for (const ls of this.manager.allSpaces()) for (const r of ls.resources.values()) r.owners.forEach((p) => owners.add(p));
      this.log.warn({ signal, ...counts, ownerPids: [...owners] }, 'stop refused: leases are held; release them (or stop the VMs) first');
      return;
    }
    this.stopping = true;
    this.notify('STOPPING=1');
    this.log.info({ signal }, 'stopping: no leases held');
    await this.lockServer.closeListeners();
    await this.adminServer?.closeListeners();
    for (const c of this.lockServer.clients.values()) c.close('daemon stopping');
    process.exit(0);
  }
}
