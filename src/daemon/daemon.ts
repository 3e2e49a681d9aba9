// Lifecycle: wires the lock manager, the lock service and the RPC servers;
// boots fresh, from a re-exec state document, or in safe mode; re-execs;
// and shuts down only by an explicit, logged decision.

import { fromUnicode } from '../byteString.js';
import { mkdirSync, readdirSync, readFileSync } from 'node:fs';
import type { Logger } from 'pino';
import { LockManager } from '../locks/lockManager.js';
import { NativeFileLocker } from '../locks/fileLocker.js';
import type { FileLocker } from '../locks/fileLocker.js';
import { StorageGate } from '../locks/storageGate.js';
import { StorageClassifier } from '../locks/storageClass.js';
import { RpcServer } from '../rpc/server.js';
import * as native from '../native.js';
import type { FdIdentity, ReexecRecord, StateDocument } from '../state/document.js';
import { VERSION } from '../version.js';
import { AdminService } from '../services/adminService.js';
import type { AdminHost } from '../services/adminService.js';
import { LockService } from '../services/lockService.js';
import type { LockClient } from '../services/lockService.js';
import { REEXEC_ENV, Reexecutor } from './reexec.js';
import type { ReexecHost } from './reexec.js';
import { takeActivation } from './activation.js';
import type { PidFile } from './pidFile.js';
import { readStateFile, startFresh, startFromState, startSafeMode } from './boot.js';
import type { BootHost, BootKind } from './boot.js';
import type { HealthMonitor } from '../health/monitor.js';
import { createHealthMonitor } from '../services/healthWiring.js';
import type { HealthHost } from '../services/healthWiring.js';
import { FdGuard, guardedLocker } from '../health/probe.js';
import type { DaemonLogger } from '../log.js';
import type { ResolvedSettings } from './settings.js';
import { safeModeRefusal, stoppingRefusal } from '../locks/errors.js';
import { ExitCode } from './exitCode.js';
import type { ReexecOutcome, ReplyAfterExec } from './reexec.js';
import type { ExecTarget } from '../state/execPlan.js';
import { parseStateForRestore, serialiseState } from '../state/documentFormat.js';
import type { ServerSnapshotSource } from '../state/snapshot.js';
import { tableColumns } from '../state/snapshot.js';
import { DaemonMetrics } from '../metrics/counters.js';
import { instrument } from '../metrics/instrument.js';
import type { LockspaceHealthProvider } from '../metrics/exposition.js';
import { MetricsListener } from '../services/metrics.js';
import { checkConfigBeforeReexec } from './reexecConfig.js';
import type { ReexecConfigHost } from './reexecConfig.js';
import { codeCacheStatus, scheduleCodeCache } from './codeCache.js';
import { startMemorySettler } from './memorySettle.js';
import type { DaemonOptions, ShutdownPolicy } from './options.js';
import { CrashStore } from './crashStore.js';
import type { ClientConnection } from '../rpc/connection.js';


export class Daemon implements AdminHost, BootHost, HealthHost, ReexecHost, ReexecConfigHost {
  readonly manager: LockManager;
  readonly lockService: LockService;
  readonly lockServer: RpcServer<LockClient>;
  readonly gate: StorageGate;
  readonly classifier: StorageClassifier;
  readonly health: HealthMonitor;
  readonly probeGuard = new FdGuard();
  /** The admin server (libvirt's admin program and relockd's own). */
  adminServer: RpcServer<any> | null = null;
  /** The admin socket's service (see createAdminServer). */
  adminService: AdminService | null = null;
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
  /** Lock-space health for the metrics; null: what the storage gate knows (services/metrics.ts). */
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
    // Releases wait for a health probe using the same fd (src/health/probe.ts).
    locker = guardedLocker(locker, this.probeGuard);
    this.gate = new StorageGate({ timeoutMs: opts.storageTimeoutMs, perKeyConcurrency: opts.storagePerKeyConcurrency });
    this.classifier = new StorageClassifier(log, opts.storageInline);
    this.manager = new LockManager({ locker, gate: this.gate, log, classifier: this.classifier });
    this.lockService = new LockService(this.manager, opts.termination, log);
    this.lockServer = new RpcServer({ name: 'virtlockd', service: this.lockService, log, maxClients: opts.maxClients });
    instrument(this.metrics, this.manager, this.gate, this.classifier);
    this.lockService.onTerminated = (outcome) => this.metrics.terminations[outcome]++;
    this.createAdminServer();
    this.health = createHealthMonitor(this);
    this.crashStore = CrashStore.create(this, log);
  }

  /** The idle exit (--timeout, virt-admin daemon-timeout); null: never. */
  setIdleTimeout(sec: number | null): void {
    this.opts.timeoutSec = sec;
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
    // ADMIN-WIRING (issue 6): libvirt's admin program and relockd's own (services/adminService.ts).
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

    const doc = readStateFile(this, ours);
    if (doc === 'corrupt') {
      await startSafeMode(this, ['state document is not readable JSON']);
    } else if (doc) {
      await startFromState(this, doc, requestedAtNs);
    } else {
      if (ours) {
        // We were exec'd by an old image but its document is gone: keep every inherited fd.
        await startSafeMode(this, [`state file ${this.stateFile} is missing after a re-exec`]);
      } else if (this.crashStore?.hasStoredState) {
        await this.crashStore.recover(activated, { startFromState: (d) => startFromState(this, d, null), startSafeMode: (p) => startSafeMode(this, p, activated), keepOrphan: (fd) => this.orphans.push({ fd, kind: 'resource', dev: '0', ino: '0' }) });
      } else {
        this.health.ensureRunner(); // before any client can take a lease (src/health/actionRunner.ts)
        await startFresh(this, activated);
      }
    }
    if (this.safeMode) this.manager.acquireRefusal = safeModeRefusal;
    await this.createConfiguredLockspaces();
    this.crashStore?.install();
    this.startTimers();
    this.health.start();
    this.notify(`READY=1\nSTATUS=${this.statusLine()}`);
    // Counting fds walks /proc/self/fd (~20 ms with 10k leases): with many
    // leases that count waits until the clients queued behind it are answered.
    this.logFdLimit();
    setImmediate(() => void this.startMetricsListener());
    this.log.info({ socket: this.opts.socketPath, version: this.version, boot: this.boot, codeCache: codeCacheStatus(), ...this.manager.counts() }, 'relockd ready');
    // A fresh image has never run the re-exec path: run it once on a copy of
    // its state (no fd, client or lease is touched), so that the cache covers
    // it. Only the skeleton (servers, lock spaces, no clients or leases) when
    // clients already hold many leases: a full copy of thousands is megabytes
    // of garbage that V8 keeps as heap. A restored image ran the new image's
    // half already; the old image's save came with the cache it started from.
    const warm =
      this.boot === 'fresh'
        ? () => {
            const skeleton = this.manager.counts().resources > 100 || this.lockServer.clients.size > 100;
            // The re-exec's own path: leases as columns from the tables, read back as restore reads them.
            const doc = this.stateSnapshot('code-cache-warm-up', new Map(), skeleton, !skeleton);
            parseStateForRestore(JSON.parse(serialiseState(doc, skeleton ? undefined : tableColumns(this.manager))));
            return skeleton ? 'skeleton' : 'document';
          }
        : undefined;
    scheduleCodeCache(`${this.stateFile.replace(/\.json$/, '')}.v8cache`, this.log, undefined, warm);
    startMemorySettler(this.log); // after the code cache is written (src/daemon/memorySettle.ts)
  }

  /** After an unexpected failure while restoring: refuse acquisitions, keep everything. */
  enterSafeMode(): void {
    this.safeMode = true;
    this.boot = 'safe-mode';
    this.manager.acquireRefusal = safeModeRefusal;
    this.startTimers();
    this.notify(`READY=1\nSTATUS=${this.statusLine()}`);
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
    set('health', o.health);
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
  reexec(trigger = 'SIGUSR1', replyTo?: ReplyAfterExec, target?: ExecTarget): Promise<ReexecOutcome> {
    // A handback execs virtlockd, which does not read relockd's settings.
    const refused = target ? null : checkConfigBeforeReexec(this, trigger);
    if (refused) return Promise.resolve(refused);
    if (target && this.crashStore) return this.crashStore.handback(target, (t) => this.reexecutor.run(trigger, replyTo, t));
    return this.reexecutor.run(trigger, replyTo, target);
  }

  /** The state document of this moment (the fd store keeps it current). */
  stateSnapshot(trigger: string, bytes: Map<ClientConnection<any>, { pending: Buffer; unsent: Buffer }>, skeleton = false, omitLeases = false): StateDocument {
    return this.reexecutor.snapshot(trigger, process.hrtime.bigint(), bytes, skeleton, omitLeases);
  }

  snapshotSource(server: 'virtlockd' | 'admin'): ServerSnapshotSource<any> | null {
    return this.reexecutor.snapshotSource(server);
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
    const health = this.health.statusSuffix();
    return `${this.safeMode ? 'SAFE MODE; ' : ''}${this.stopping ? `stopping (${this.stopping}); ` : ''}${this.lockServer.clients.size} clients, ${c.resources} leases held in ${c.lockspaces} lockspaces${health ? `; ${health}` : ''}`;
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
    process.exit(ExitCode.OK);
  }
}
