// Lifecycle: wires the lock manager, the lock service and the RPC servers;
// boots fresh, from a re-exec state document, or in safe mode; re-execs;
// and shuts down only by an explicit, logged decision.

import { decodeDocFile, fromUnicode } from '../byteString.js';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, unlinkSync } from 'node:fs';
import type { Logger } from 'pino';
import { LockManager } from '../locks/lockManager.js';
import { NativeFileLocker } from '../locks/fileLocker.js';
import type { FileLocker } from '../locks/fileLocker.js';
import { StorageGate } from '../locks/storageGate.js';
import { StorageClassifier } from '../locks/storageClass.js';
import type { InlinePolicy } from '../locks/storageClass.js';
import { RpcServer } from '../rpc/server.js';
import { peerAllowed } from '../rpc/server.js';
import * as native from '../native.js';
import type { FdIdentity, ReexecRecord, StateDocument } from '../state/document.js';
import { restoreState } from '../state/restore.js';
import { scanInheritedFds } from '../state/orphans.js';
import { validateState } from '../state/validate.js';
import { VERSION } from '../version.js';
import { bootMarks, mark } from '../bootMarks.js';
import { AdminService } from './adminService.js';
import { LockService } from './lockService.js';
import type { LockClient } from './lockService.js';
import { openProcessHandle } from './terminator.js';
import type { TerminationOptions } from './terminator.js';
import { REEXEC_ENV, Reexecutor } from './reexec.js';
import { ActivationError, takeActivation } from './activation.js';
import type { ActivatedSockets } from './activation.js';
import { PidFile } from './pidFile.js';
import type { DaemonLogger } from '../log.js';
import type { ResolvedSettings } from './settings.js';
import { safeModeRefusal, stoppingRefusal } from '../locks/errors.js';
import { listenerPath } from '../state/orphans.js';
import type { ExecTarget, ReexecResult, ReplyAfterExec } from './reexec.js';
import net from 'node:net';
import { DaemonMetrics } from '../metrics/counters.js';
import { instrument } from '../metrics/instrument.js';
import type { LockspaceHealthProvider } from '../metrics/exposition.js';
import { MetricsListener } from './metrics.js';
import { checkConfigBeforeReexec } from './reexecConfig.js';
import { codeCacheStatus, scheduleCodeCache } from './codeCache.js';
import { lazyRequire } from '../lazyRequire.js';
import { CrashStore } from './crashStore.js';
import type { ClientConnection } from '../rpc/connection.js';

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
}

/**
 * drain: refuse new acquisitions, keep serving releases, exit when the last
 * lease is gone (host shutdown: libvirt stops the VMs first).
 * kill-owners: virtlockd's way: terminate every lease-holding owner that has
 * its own connection, release everything, exit.
 * refuse: ignore the request while leases are held.
 */
export type ShutdownPolicy = 'drain' | 'kill-owners' | 'refuse';

/** How this image came to be. */
export type BootKind = 'fresh' | 'restored' | 'safe-mode';

export class Daemon {
  readonly manager: LockManager;
  readonly lockService: LockService;
  readonly lockServer: RpcServer<LockClient>;
  readonly gate: StorageGate;
  readonly classifier: StorageClassifier;
  /** The admin server (libvirt's admin program and relockd's own). */
  adminServer: RpcServer<any> | null = null;
  /** The admin socket's service (see createAdminServer). */
  adminService: AdminService | null = null;
  /**
   * virt-admin daemon-timeout: seconds without clients before the daemon may
   * exit, 0 = never. Stored here; the shutdown policy (host-integration issue) acts on it.
   */
  autoShutdownTimeout = 0;
  /** When the daemon first started (carried across re-execs: uptime is the daemon's, not the image's). */
  startedAt = Date.now();
  readonly version = VERSION;
  /** Node binary and exact original argv, for execve. */
  execPath = process.execPath;
  originalArgv: string[] = [process.argv0, ...process.execArgv, ...process.argv.slice(1)];
  /** Safe mode: a restore went wrong; every inherited fd is kept, acquisitions refused. */
  safeMode = false;
  /** Inherited fds we could not interpret; never closed. */
  orphans: FdIdentity[] = [];
  /** Recent re-execs, newest last (carried across re-execs). */
  history: ReexecRecord[] = [];
  boot: BootKind = 'fresh';
  pidFile: PidFile | null = null;
  /** Log outputs and level, changeable at run time (SIGHUP, virt-admin). */
  logging: DaemonLogger | null = null;
  /** Recomputes the settings from the command line and configuration (SIGHUP). */
  reloadSettings: (() => ResolvedSettings) | null = null;
  /** The configuration file's errors while running with earlier settings (a re-exec met a bad file); null: none. */
  configError: string | null = null;
  /** Set once a stop was accepted (draining or exiting). */
  stopping: ShutdownPolicy | null = null;
  private readonly reexecutor = new Reexecutor(this);
  /** systemd's fd store, when the unit has one (daemon/crashStore.ts); null: a crash drops every lock. */
  readonly crashStore: CrashStore | null;
  /** Running totals for Prometheus (src/metrics/); carried across re-execs. */
  readonly metrics = new DaemonMetrics();
  /** Lock-space health for the metrics; null: what the storage gate knows (daemon/metrics.ts). */
  healthProvider: LockspaceHealthProvider | null = null;
  private readonly metricsListener = new MetricsListener(this);
  private statusTimer: NodeJS.Timeout | null = null;
  private lastStatus = '';
  private idleSince = Date.now();

  constructor(
    readonly opts: DaemonOptions,
    readonly log: Logger,
    locker: FileLocker = new NativeFileLocker(),
  ) {
    this.gate = new StorageGate({ timeoutMs: opts.storageTimeoutMs, perKeyConcurrency: opts.storagePerKeyConcurrency });
    this.classifier = new StorageClassifier(log, opts.storageInline);
    this.manager = new LockManager({ locker, gate: this.gate, log, classifier: this.classifier });
    this.lockService = new LockService(this.manager, opts.termination, log);
    this.lockServer = new RpcServer({ name: 'virtlockd', service: this.lockService, log, maxClients: opts.maxClients });
    instrument(this.metrics, this.manager, this.gate, this.classifier);
    this.lockService.onTerminated = (outcome) => this.metrics.terminations[outcome]++;
    this.createAdminServer();
    this.crashStore = CrashStore.create(this, log);
  }

  get stateFile(): string {
    return this.opts.stateFile;
  }

  get lastReexec(): ReexecRecord | undefined {
    return this.history[this.history.length - 1];
  }

  /**
   * Creates this.adminServer (an RpcServer with the admin service) when an
   * admin socket is configured. Binding or adopting its socket is start()'s job.
   */
  private createAdminServer(): void {
    // ADMIN-WIRING (issue 6): libvirt's admin program and relockd's own (daemon/adminService.ts).
    if (!this.opts.adminSocketPath) return;
    this.adminService = new AdminService(this);
    this.adminServer = new RpcServer({ name: 'admin', service: this.adminService, log: this.log, maxClients: this.opts.adminMaxClients });
  }

  /** Boots: restores from a re-exec state document if there is one for us, else fresh. */
  async start(): Promise<void> {
    mkdirSync(this.opts.runtimeDir, { recursive: true, mode: 0o700 });
    // Read (and unset, so children never see them) before anything else.
    const activated = takeActivation();
    const marker = process.env[REEXEC_ENV];
    delete process.env[REEXEC_ENV];
    const reexecOf = marker ? marker.split(':') : null;
    const ours = reexecOf !== null && reexecOf[0] === String(process.pid);
    const requestedAtNs = ours && reexecOf![1] ? BigInt(reexecOf![1]) : null;

    const doc = this.readStateFile(ours);
    if (doc === 'corrupt') {
      await this.startSafeMode(['state document is not readable JSON']);
    } else if (doc) {
      await this.startFromState(doc, requestedAtNs);
    } else {
      if (ours) {
        // We were exec'd by an old image but its document is gone: keep every inherited fd.
        await this.startSafeMode([`state file ${this.stateFile} is missing after a re-exec`]);
      } else if (this.crashStore?.hasStoredState) {
        await this.crashStore.recover(activated, { startFromState: (d) => this.startFromState(d, null), startSafeMode: (p) => this.startSafeMode(p), keepOrphan: (fd) => this.orphans.push({ fd, kind: 'resource', dev: '0', ino: '0' }) });
      } else {
        await this.startFresh(activated);
      }
    }
    if (this.safeMode) this.manager.acquireRefusal = safeModeRefusal;
    await this.createConfiguredLockspaces();
    this.crashStore?.install();
    this.startTimers();
    this.notify(`READY=1\nSTATUS=${this.statusLine()}`);
    // Counting fds walks /proc/self/fd (~20 ms with 10k leases): with many
    // leases that count waits until the clients queued behind it are answered.
    this.logFdLimit();
    setImmediate(() => void this.startMetricsListener());
    this.log.info({ socket: this.opts.socketPath, version: this.version, boot: this.boot, codeCache: codeCacheStatus(), ...this.manager.counts() }, 'relockd ready');
    scheduleCodeCache(`${this.stateFile.replace(/\.json$/, '')}.v8cache`, this.log);
  }

  /** After an unexpected failure while restoring: refuse acquisitions, keep everything. */
  enterSafeMode(): void {
    this.safeMode = true;
    this.boot = 'safe-mode';
    this.manager.acquireRefusal = safeModeRefusal;
    this.startTimers();
    this.notify(`READY=1\nSTATUS=${this.statusLine()}`);
  }

  /** The state document if it is ours; stale ones are moved aside. */
  private readStateFile(ours: boolean): StateDocument | 'corrupt' | null {
    const path = this.stateFile;
    if (!existsSync(path)) return null;
    let text: string;
    try {
      text = decodeDocFile(readFileSync(path)); // raw non-UTF-8 name bytes survive (byteString.ts)
    } catch (err) {
      this.log.error({ err, stateFile: path }, 'cannot read state file');
      return ours ? 'corrupt' : null;
    }
    let doc: { magic?: unknown };
    try {
      doc = JSON.parse(text) as { magic?: unknown };
    } catch {
      if (ours) {
        this.unlinkQuietly(path);
        return 'corrupt';
      }
      this.moveAside(path, 'not valid JSON');
      return null;
    }
    if (doc.magic !== String(process.pid)) {
      this.moveAside(path, `magic ${JSON.stringify(doc.magic)} is not our pid ${process.pid}`);
      return ours ? null : null;
    }
    this.unlinkQuietly(path);
    return doc as StateDocument;
  }

  private moveAside(path: string, why: string): void {
    const aside = `${path}.stale-${Date.now()}`;
    try {
      renameSync(path, aside);
      this.log.warn({ stateFile: path, movedTo: aside, why }, 'stale state file moved aside, not trusted');
    } catch (err) {
      this.log.warn({ err, stateFile: path, why }, 'stale state file could not be moved aside; ignoring it');
    }
  }

  private unlinkQuietly(path: string): void {
    try {
      unlinkSync(path);
    } catch {
      /* already gone */
    }
  }

  private async startFresh(activated: ActivatedSockets | null): Promise<void> {
    this.boot = 'fresh';
    if (this.opts.pidFile) this.pidFile = PidFile.acquire(this.opts.pidFile);
    if (activated) {
      // systemd owns these paths: never unlink them, never bind our own.
      for (const fd of activated.main) await this.lockServer.adopt(fd, listenerPath(fd) ?? this.opts.socketPath, false);
      if (activated.admin.length && !this.adminServer) throw new ActivationError('an admin socket was passed but no admin socket is configured');
      for (const fd of activated.admin) await this.adminServer!.adopt(fd, listenerPath(fd) ?? this.opts.adminSocketPath ?? '', false);
      if (activated.main.length === 0) throw new ActivationError('socket activation passed no main socket (relockd.socket or virtlockd.socket)');
      this.log.info({ main: activated.main, admin: activated.admin }, 'socket-activated');
      return;
    }
    await this.lockServer.bind(this.opts.socketPath);
    if (this.adminServer && this.opts.adminSocketPath) await this.adminServer.bind(this.opts.adminSocketPath, 0o600);
  }

  /** Lock-space directories from the configuration exist after every start. */
  private async createConfiguredLockspaces(): Promise<void> {
    for (const dir of this.opts.lockspaces) {
      try {
        await this.manager.createLockSpace(fromUnicode(dir)); // configured as text; names are bytes
      } catch (err) {
        this.log.error({ lockspace: dir, err: (err as Error).message }, 'cannot create configured lockspace');
      }
    }
  }

  private async startFromState(doc: StateDocument, requestedAtNs: bigint | null): Promise<void> {
    mark('read');
    try {
      validateState(doc);
      mark('validated');
    } catch (err) {
      await this.startSafeMode([(err as Error).message]);
      return;
    }
    const report = await restoreState(doc, {
      lockServer: this.lockServer,
      adminServer: this.adminServer,
      manager: this.manager,
      socketPath: this.opts.socketPath,
      adminSocketPath: this.opts.adminSocketPath,
      restoreLockContext: (conn, d, proc) => this.lockService.restoreContext(conn.ctx as LockClient, d, proc),
      openProcessHandle,
    });
    mark('adopted');
    if (report.pidFile) this.pidFile = PidFile.adopt(report.pidFile.path, report.pidFile.fd);
    else if (this.opts.pidFile) {
      try {
        this.pidFile = PidFile.acquire(this.opts.pidFile);
      } catch (err) {
        report.problems.push(`pid file: ${(err as Error).message}`);
      }
    }
    this.orphans = report.orphans;
    this.history = doc.relockd?.history ?? [];
    this.metrics.restore(doc.relockd?.metrics);
    if (doc.relockd?.startedAt) this.startedAt = doc.relockd.startedAt;
    for (const t of report.terminations) {
      const handle = t.pidfd >= 0 ? { pid: t.owner.pid, pidfd: t.pidfd, startTime: t.startTime } : openProcessHandle(t.owner.pid, -1);
      this.lockService.startTermination(t.owner, handle, t.startedAt);
    }
    // A main listener that did not come back: bind afresh so we stay reachable.
    if (this.lockServer.listeners.length === 0) await this.bindIfFree(this.lockServer, this.opts.socketPath, 0o700);
    if (this.adminServer && this.adminServer.listeners.length === 0 && this.opts.adminSocketPath) await this.bindIfFree(this.adminServer, this.opts.adminSocketPath, 0o600);
    const blackoutMs = requestedAtNs !== null ? Number(process.hrtime.bigint() - requestedAtNs) / 1e6 : undefined;
    const prev = doc.relockd;
    this.recordReexec({ at: Date.now(), ok: true, blackoutMs, trigger: prev?.trigger ?? 'virtlockd', fromVersion: prev?.version ?? 'virtlockd', toVersion: this.version });
    this.sendPendingReplies(doc, blackoutMs ?? 0);
    // A retry (SIGUSR1 in safe mode) that restores everything cleanly leaves
    // safe mode; fds we cannot interpret keep it in safe mode.
    if (prev?.safeMode && !report.problems.length && !report.orphans.length) {
      this.log.warn({ earlier: this.history.filter((h) => !h.ok).slice(-3) }, 'left safe mode: this restore was complete (earlier problems above)');
    }
    if (report.problems.length || report.orphans.length) {
      this.safeMode = true;
      this.boot = 'safe-mode';
      this.log.fatal({ problems: report.problems, orphans: report.orphans.map((o) => o.fd) }, 'SAFE MODE: restore incomplete; every inherited fd is kept open (no lock dropped), new acquisitions are refused; send SIGUSR1 to retry');
    } else {
      this.boot = 'restored';
    }
    this.log.info(
      { blackoutMs, bootMs: bootMarks(), listeners: report.listeners, clients: report.clients, resources: report.resources, lockspaces: report.lockspaces, terminations: report.terminations.length, fromVersion: prev?.version, toVersion: this.version, trigger: prev?.trigger },
      're-exec complete',
    );
  }

  /**
   * The document cannot be trusted. Keep every inherited fd that could hold
   * a lock or a client; adopt our own listeners (found through
   * /proc/net/unix) and the client sockets so we stay reachable.
   */
  private async startSafeMode(problems: string[]): Promise<void> {
    this.safeMode = true;
    this.boot = 'safe-mode';
    const found = scanInheritedFds();
    const orphans: FdIdentity[] = [...found.others];
    for (const { fd, path } of found.listeners) {
      const srv = path === this.opts.socketPath ? this.lockServer : path === this.opts.adminSocketPath ? this.adminServer : null;
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
      const srv = path === this.opts.socketPath ? this.lockServer : path === this.opts.adminSocketPath ? this.adminServer : null;
      try {
        if (!srv) throw new Error('accepted on an unknown socket');
        const peer = native.peerCred(fd);
        if (!peerAllowed(peer)) throw new Error('peer not allowed');
        const sock = new net.Socket({ fd, readable: true, writable: true });
        native.setCloexec(fd, true);
        srv.attach(sock, peer, srv === this.lockServer ? { restore: (c) => ((c.ctx as LockClient).restricted = true) } : {});
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
    this.orphans = orphans;
    if (this.lockServer.listeners.length === 0) await this.bindIfFree(this.lockServer, this.opts.socketPath, 0o700);
    if (this.adminServer && this.adminServer.listeners.length === 0 && this.opts.adminSocketPath) await this.bindIfFree(this.adminServer, this.opts.adminSocketPath, 0o600);
    this.recordReexec({ at: Date.now(), ok: false, error: problems.join('; '), trigger: 'restore', toVersion: this.version });
    this.log.fatal(
      { problems, keptFds: orphans.map((o) => o.fd), keptLockFds: orphans.filter((o) => o.kind === 'resource').length, adoptedClients: this.lockServer.clients.size },
      'SAFE MODE: state document unusable; every inherited fd is kept open (no lock dropped), new acquisitions are refused; send SIGUSR1 to retry',
    );
  }

  private async bindIfFree(srv: RpcServer<any>, path: string, mode: number): Promise<void> {
    try {
      await srv.bind(path, mode);
    } catch (err) {
      this.log.error({ err: (err as Error).message, socket: path }, 'cannot bind socket');
    }
  }

  /** Replies the old image owed (the admin call that asked for this re-exec). */
  private sendPendingReplies(doc: StateDocument, blackoutMs: number): void {
    for (const p of doc.relockd?.pendingReplies ?? []) {
      const srv = p.server === 'admin' ? this.adminServer : this.lockServer;
      const conn = srv?.clients.get(p.clientId);
      const prog = conn?.service.programs.find((g) => g.prog === p.header.prog && g.vers === p.header.vers);
      const proc = prog?.procedures.get(p.header.proc);
      if (!conn || !proc) continue;
      const result: ReexecResult = { ok: true, blackoutMs, version: this.version };
      conn.sendReply(p.header, proc.encodeRet, result);
    }
  }

  recordReexec(r: ReexecRecord): void {
    if (r.ok) {
      this.metrics.reexecs.ok++;
      if (r.blackoutMs !== undefined) this.metrics.lastBlackoutSeconds = r.blackoutMs / 1000;
    } else this.metrics.reexecs.failed++;
    this.history.push(r);
    if (this.history.length > 20) this.history.splice(0, this.history.length - 20);
  }

  /** Settings in force, recorded in the state document for inspection. */
  settings(): Record<string, unknown> {
    const { termination, ...rest } = this.opts;
    return { ...rest, termination: { ...termination }, logLevel: this.log.level, logOutputs: this.logging?.outputs.specs ?? [] };
  }

  /**
   * SIGHUP: re-read the configuration and apply what can change while
   * running (log level and outputs, client limits, grace and storage times,
   * shutdown policy, new lock spaces). Paths and sockets need a re-exec.
   * A bad configuration changes nothing; the daemon never dies over it.
   */
  async reload(): Promise<void> {
    if (!this.reloadSettings) return;
    let next: ResolvedSettings;
    try {
      next = this.reloadSettings();
    } catch (err) {
      this.log.error({ err: (err as Error).message }, 'configuration reload failed: keeping the current settings');
      this.configError = (err as Error).message;
      return;
    }
    this.configError = null;
    for (const w of next.warnings) this.log.warn({ configFile: next.configFile }, w);
    const o = next.options;
    const cur = this.opts;
    const changed: Record<string, unknown> = {};
    const set = <K extends keyof DaemonOptions>(k: K, v: DaemonOptions[K]) => {
      if (JSON.stringify(cur[k]) !== JSON.stringify(v)) {
        changed[k] = v;
        cur[k] = v;
      }
    };
    set('maxClients', o.maxClients);
    set('adminMaxClients', o.adminMaxClients);
    set('termination', o.termination);
    set('storageTimeoutMs', o.storageTimeoutMs);
    set('storagePerKeyConcurrency', o.storagePerKeyConcurrency);
    set('quiesceTimeoutMs', o.quiesceTimeoutMs);
    set('shutdownPolicy', o.shutdownPolicy);
    set('lockspaces', o.lockspaces);
    set('storageInline', o.storageInline);
    const metricsMoved = (cur.metricsListen ?? null) !== (o.metricsListen ?? null);
    set('metricsListen', o.metricsListen ?? null);
    this.classifier.policy = cur.storageInline;
    this.lockServer.maxClients = cur.maxClients;
    if (this.adminServer) this.adminServer.maxClients = cur.adminMaxClients;
    this.lockServer.checkLimit();
    this.adminServer?.checkLimit();
    this.lockService.termination = cur.termination;
    this.gate.options = { timeoutMs: cur.storageTimeoutMs, perKeyConcurrency: cur.storagePerKeyConcurrency };
    const before = this.log.level;
    this.logging?.apply(next.level, next.outputs);
    if (before !== next.level) changed.logLevel = next.level;
    await this.createConfiguredLockspaces();
    if (metricsMoved) {
      this.metricsListener.close();
      await this.startMetricsListener();
    }
    const needReexec = (['socketPath', 'adminSocketPath', 'stateFile', 'pidFile', 'runtimeDir'] as const).filter((k) => cur[k] !== o[k]);
    this.log.info({ configFile: next.configFile, changed, needReexec }, 'configuration reloaded');
  }

  /** Re-exec (SIGUSR1, or the admin interface with a call to answer afterwards). */
  reexec(trigger = 'SIGUSR1', replyTo?: ReplyAfterExec, target?: ExecTarget): Promise<ReexecResult> {
    // A handback execs virtlockd, which does not read relockd's settings.
    const refused = target ? null : checkConfigBeforeReexec(this, trigger);
    if (refused) return Promise.resolve(refused);
    if (target && this.crashStore) return this.crashStore.handback(target, (t) => this.reexecutor.run(trigger, replyTo, t));
    return this.reexecutor.run(trigger, replyTo, target);
  }

  /** The state document of this moment (the fd store keeps it current). */
  stateSnapshot(trigger: string, bytes: Map<ClientConnection<any>, { pending: Buffer; unsent: Buffer }>): StateDocument {
    return this.reexecutor.snapshot(trigger, process.hrtime.bigint(), bytes);
  }

  get reexecInProgress(): boolean {
    return this.reexecutor.inProgress;
  }

  /** Restarts terminations stopped for a re-exec that then failed. */
  resumeFrozenTerminations(): void {
    for (const t of [...this.lockService.terminations.values()]) {
      this.lockService.terminations.delete(t.owner.pid);
      this.lockService.startTermination(t.owner, t.handle, t.started);
    }
  }

  statusLine(): string {
    const c = this.manager.counts();
    return `${this.safeMode ? 'SAFE MODE; ' : ''}${this.stopping ? `stopping (${this.stopping}); ` : ''}${this.lockServer.clients.size} clients, ${c.resources} leases held in ${c.lockspaces} lockspaces`;
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
   * Every lease and every connected VM costs an fd. Node raises the soft
   * RLIMIT_NOFILE to the hard limit at start; say what we got.
   */
  private logFdLimit(): void {
    let soft = Infinity;
    try {
      const line = readFileSync('/proc/self/limits', 'utf8').split('\n').find((l) => l.startsWith('Max open files'));
      const [s, h] = (line ?? '').replace('Max open files', '').trim().split(/\s+/);
      soft = Number(s) || Infinity;
      const lim = { nofileSoft: s, nofileHard: h, maxClients: this.opts.maxClients };
      if (s !== h) this.log.warn(lim, 'soft RLIMIT_NOFILE is below the hard limit');
      else this.log.info(lim, 'file descriptor limit');
    } catch {
      /* no /proc */
    }
    if (soft === Infinity) return;
    // fds in use ≈ what Node holds itself + one per client, lease and owner handle.
    const tracked = () => {
      let n = this.lockServer.clients.size + (this.adminServer?.clients.size ?? 0) + this.manager.counts().resources;
      for (const c of this.lockServer.clients.values()) if (c.ctx.process && c.ctx.process.pidfd >= 0) n++;
      return n;
    };
    // What Node holds itself: counted from /proc/self/fd when it is cheap
    // (few fds: a fresh start) or once the first replies are out (see
    // startTimers' caller); until then a conservative estimate, so the budget
    // is in force from the first accept.
    let base = 32;
    const count = () => {
      try {
        base = readdirSync('/proc/self/fd').length - tracked();
      } catch {
        /* keep the estimate */
      }
    };
    if (tracked() < 256) count();
    else setTimeout(count, 100);
    const reserve = Math.max(4, Math.min(64, Math.floor(soft / 16))); // room for acquires and logs
    const exhausted = () => base + tracked() >= soft - reserve;
    this.lockServer.fdsExhausted = exhausted;
    if (this.adminServer) this.adminServer.fdsExhausted = exhausted;
  }

  /** Periodic STATUS= for systemd, and the --timeout idle check. */
  private startTimers(): void {
    if (this.statusTimer) return;
    this.statusTimer = setInterval(() => {
      const st = this.statusLine();
      if (st !== this.lastStatus) {
        this.lastStatus = st;
        this.notify(`STATUS=${st}`);
      }
      this.checkIdle();
      this.lockServer.checkLimit(); // leases released free fds too
      this.adminServer?.checkLimit();
      if (this.stopping === 'drain' || this.stopping === 'refuse') void this.finishDrain();
    }, 250);
    this.statusTimer.unref();
  }

  /** No client on any server, no lease, nothing being terminated or kept. */
  private isIdle(): boolean {
    const c = this.manager.counts();
    return this.lockServer.clients.size === 0 && (this.adminServer?.clients.size ?? 0) === 0 && c.resources === 0 && this.orphans.length === 0 && this.lockService.terminations.size === 0;
  }

  private checkIdle(): void {
    if (this.opts.timeoutSec === null || this.stopping || this.reexecInProgress) return;
    if (!this.isIdle()) {
      this.idleSince = Date.now();
      return;
    }
    if (Date.now() - this.idleSince >= this.opts.timeoutSec * 1000) {
      this.log.info({ timeoutSec: this.opts.timeoutSec }, 'idle timeout: no client and no lease');
      void this.exitCleanly('timeout');
    }
  }

  /** Owners holding leases, for logs. */
  private holders(): Array<{ pid: number; resources: string[] }> {
    const by = new Map<number, string[]>();
    for (const ls of this.manager.allSpaces()) {
      for (const r of ls.resources.values()) for (const p of new Set(r.owners)) by.set(p, [...(by.get(p) ?? []), ls.isDefault ? r.name : `${ls.dir}/${r.name}`]);
    }
    return [...by].map(([pid, resources]) => ({ pid, resources }));
  }

  /**
   * SIGTERM/SIGINT/SIGQUIT. With no lease held every policy exits at once.
   * With leases held, simply exiting would leave VMs running without their
   * leases, so the configured policy decides (see ShutdownPolicy).
   */
  async requestStop(signal: string): Promise<void> {
    const held = this.manager.counts().resources > 0 || this.orphans.length > 0 || this.lockService.terminations.size > 0;
    if (!held) return this.exitCleanly(signal);
    const policy = this.opts.shutdownPolicy;
    const holders = this.holders();
    for (const h of holders) this.log.warn({ signal, policy, ownerPid: h.pid, resources: h.resources }, 'stop requested while this owner holds leases');
    if (this.stopping) return;
    if (this.orphans.length > 0) {
      this.log.warn({ signal, orphans: this.orphans.length }, 'stop refused: safe mode keeps fds it cannot interpret (they may hold locks)');
      return;
    }
    this.stopping = policy;
    this.notify('STOPPING=1');
    if (policy === 'refuse') {
      // Keep serving everything; the stop happens once nothing is held.
      this.log.warn({ signal, owners: holders.length }, 'stop deferred: leases are held; still serving, exiting once the last lease is released');
      return;
    }
    this.manager.acquireRefusal = stoppingRefusal;
    if (policy === 'drain') {
      this.log.warn({ signal, owners: holders.length }, 'draining: new acquisitions refused; exiting when the last lease is released');
      return;
    }
    // kill-owners: like virtlockd, end every owner that holds its own lock
    // connection, then release everything and exit.
    this.log.warn({ signal, owners: holders.length }, 'stopping: terminating every lease-holding owner, then releasing');
    for (const c of this.lockServer.clients.values()) c.close('daemon stopping (kill-owners)');
    await new Promise((r) => setTimeout(r, 50)); // let the close handlers start their terminations
    await Promise.all([...this.lockService.terminations.values()].map((t) => t.done));
    for (const h of this.holders()) await this.manager.releaseOwner(h.pid);
    await this.exitCleanly(signal);
  }

  private async finishDrain(): Promise<void> {
    if (this.manager.counts().resources === 0 && this.lockService.terminations.size === 0 && this.manager.idle) {
      await this.exitCleanly('drained');
    }
  }

  private async startMetricsListener(): Promise<void> {
    if (!this.opts.metricsListen) return;
    try {
      await this.metricsListener.start(this.opts.metricsListen);
    } catch (err) {
      this.log.error({ metricsListen: this.opts.metricsListen, err: (err as Error).message }, 'cannot serve metrics over HTTP (relockctl metrics still works)');
    }
  }

  private exiting = false;

  /** The only way the daemon exits: nothing is held any more. */
  private async exitCleanly(reason: string): Promise<void> {
    if (this.exiting) return;
    this.exiting = true;
    this.notify('STOPPING=1');
    this.log.info({ reason }, 'exiting: no leases held');
    // Stop accepting first (server.close() does at once), then close the
    // clients: a net.Server's close completes only once its connections are
    // gone, so awaiting it first hung a drained daemon with a client connected.
    const listenersClosed = Promise.all([this.lockServer.closeListeners(), this.adminServer?.closeListeners()]);
    this.metricsListener.close();
    for (const c of this.lockServer.clients.values()) c.close('daemon stopping');
    for (const c of this.adminServer?.clients.values() ?? []) c.close('daemon stopping');
    await listenersClosed;
    this.pidFile?.remove();
    process.exit(0);
  }
}
