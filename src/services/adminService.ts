// The admin socket's service: libvirt's admin program (what virt-admin
// speaks) and relockd's own program, both backed by the live daemon. This is
// the glue between the wire tables (protocol/admin.ts, protocol/relockdAdmin.ts)
// and the daemon's servers, clients, lock manager and log settings.
//
// client-disconnect on a lock-socket client runs that connection's normal
// close path: closing QEMU's inherited connection while it holds leases ends
// QEMU (SIGTERM, then SIGKILL) and releases its leases, exactly as virtlockd
// does (virLockDaemonClientFree). That is intended; it is the administrator's hammer.

import { readFileSync } from 'node:fs';
import { userInfo } from 'node:os';
import type { Level } from 'pino';
import { E } from '../util/errorCatalogue.js';
import type { ClientConnection, Service } from '../rpc/connection.js';
import type { RpcServer } from '../rpc/server.js';
import { adminProgram, ClientTransport, encodeVersion } from '../protocol/admin.js';
import type { AdminBackend, AdminClientHandle, AdminContext, AdminServerHandle, ClientLimits, TypedParam } from '../protocol/admin.js';
import { relockdAdminProgram } from '../protocol/relockdAdmin.js';
import { daemonMetricsText } from './metrics.js';
import type {
  ClientInfo,
  DaemonInfo,
  LastReexec,
  LeaseOwner,
  LockspaceInfo,
  OwnerInfo,
  ReexecResult,
  RelockdAdminBackend,
  ResourceInfo,
  TerminationInfo,
} from '../protocol/relockdAdmin.js';
import type { Program } from '../rpc/program.js';
import type { Owner } from '../locks/lockManager.js';
import { VERSION } from '../version.js';
import { levelOfPriority, loggingPlan, LogSpecError, parseLogFilters, parseLogOutputs, priorityOfLevel } from '../config/logging.js';
import type { LogFilter, LogOutput } from '../config/logging.js';
import type { DaemonLogger, OutputSpec } from '../log.js';
import type { Logger } from 'pino';
import type { LockManager } from '../locks/lockManager.js';
import type { ReexecRecord } from '../state/document.js';
import type { Header } from '../rpc/packet.js';
import type { LockClient, LockService } from './lockService.js';
import { handback } from './handbackCall.js';
import type { HandbackHost } from './handback.js';
import type { MetricsHost } from './metrics.js';
import { healthInfo } from './healthWiring.js';
import type { HealthMonitor } from '../health/monitor.js';

/** The log settings' view of the daemon: its logger and (when attached) its log outputs. */
export interface LogHost {
  readonly log: Logger;
  readonly logging: DaemonLogger | null;
}

/**
 * What the admin service reads and asks of the daemon (Daemon implements it;
 * test/adminService.test.ts a small fake). It never writes the daemon's
 * options: the idle timeout goes through setIdleTimeout.
 */
export interface AdminHost extends LogHost, HandbackHost, MetricsHost {
  readonly lockServer: RpcServer<LockClient>;
  readonly adminServer: RpcServer<any> | null;
  readonly manager: LockManager;
  readonly lockService: Pick<LockService, 'terminations'>;
  readonly opts: { readonly socketPath: string; readonly adminSocketPath: string | null; readonly timeoutSec: number | null };
  readonly boot: string;
  readonly configError: string | null;
  readonly lastReexec: ReexecRecord | undefined;
  /** virt-admin daemon-timeout: seconds without clients before the daemon exits; null: never. */
  /** Lock-space health (LIST_HEALTH, RELEASE_OWNER_LEASES). */
  readonly health: Pick<HealthMonitor, 'watches' | 'records' | 'releaseForOwner'>;
  setIdleTimeout(sec: number | null): void;
  reexec(trigger: string, replyTo?: { conn: ClientConnection<any>; header: Header }): Promise<{ ok: true; blackoutMs: number } | { ok: false; error: string; transient?: boolean }>;
}

// ---- log settings (virt-admin daemon-log-filters / daemon-log-outputs) -------

const logArg = (reason: string) => E.LOG_SETTING_INVALID({ reason });

/** The same syntax as log_filters/log_outputs in the configuration file. */
function parseOrRefuse<T>(parse: () => T): T {
  try {
    return parse();
  } catch (err) {
    if (err instanceof LogSpecError) throw logArg(err.message);
    throw err;
  }
}

/** libvirt's text for an output in force ("1:stderr", "3:file:/var/log/x"). */
function outputText(o: { level: string; kind: string; path?: string; ident?: string }): string {
  const p = priorityOfLevel(o.level);
  return o.kind === 'file' ? `${p}:file:${o.path}` : o.kind === 'syslog' ? `${p}:syslog:${o.ident}` : `${p}:${o.kind}`;
}

/**
 * virt-admin's daemon-log-filters/-outputs on relockd. relockd has one log
 * stream, not libvirt's per-module categories, so every filter counts as
 * matching (src/config/logging.ts, loggingPlan):
 *
 *   threshold(filters) = lowest filter priority, or the start-up level when
 *                        there are no filters;
 *   pino level         = max(threshold, lowest output priority):
 *                        1 debug, 2 info, 3 warn, 4 error.
 *
 * So `daemon-log-filters 1:*` plus `daemon-log-outputs 1:stderr` turns on
 * debug events; `4:*` leaves errors only. Outputs (stderr, journald,
 * syslog:IDENT, file:PATH) are applied through the daemon's log outputs;
 * without them (a Daemon built without createDaemonLogger) only stderr and
 * journald, both meaning our stderr, are accepted. An empty setting restores
 * the start-up state (no filters / the outputs the daemon started with).
 */
export class LogSettings {
  private filters: LogFilter[] = [];
  /** null: the outputs in force at start. */
  private outputs: LogOutput[] | null = null;
  private start: { level: Level; outputs: LogOutput[] } | null = null;

  /** The Daemon is built before its log outputs are attached: read the start-up state on first use. */
  constructor(private readonly daemon: LogHost) {}

  private get startLevel(): Level {
    return this.startState().level;
  }

  private get startOutputs(): LogOutput[] {
    return this.startState().outputs;
  }

  private startState(): { level: Level; outputs: LogOutput[] } {
    if (!this.start) {
      const level = this.daemon.log.level as Level;
      const specs = this.daemon.logging?.outputs.specs ?? [{ level, kind: 'stderr' as const }];
      const outputs = specs.map((o): LogOutput => {
        const text = outputText(o);
        const p = priorityOfLevel(o.level);
        return parseOrRefuse(() => parseLogOutputs(text))[0] ?? { priority: p, level: levelOfPriority(p), kind: 'stderr', text };
      });
      this.start = { level, outputs };
    }
    return this.start;
  }

  getFilters(): { filters: string; count: number } {
    // virLogGetFilters in 9.0: "N:*match* " per filter, trailing space included.
    return { filters: this.filters.map((f) => `${f.priority}:*${f.match}* `).join(''), count: this.filters.length };
  }

  getOutputs(): { outputs: string; count: number } {
    const outs = this.outputs ?? this.startOutputs;
    return { outputs: outs.map((o) => o.text).join(' '), count: outs.length };
  }

  setFilters(spec: string): void {
    const filters = parseOrRefuse(() => parseLogFilters(spec));
    this.apply(filters, this.outputs, 'filters');
  }

  setOutputs(spec: string): void {
    const parsed = parseOrRefuse(() => parseLogOutputs(spec));
    this.apply(this.filters, parsed.length ? parsed : null, 'outputs');
  }

  private apply(filters: LogFilter[], outputs: LogOutput[] | null, what: 'filters' | 'outputs'): void {
    const plan = loggingPlan({ logLevel: 0, logFilters: filters, logOutputs: outputs ?? this.startOutputs }, { defaultLevel: this.startLevel });
    const log = this.daemon.log;
    const before = log.level;
    const logging = this.daemon.logging;
    if (logging) {
      const specs: OutputSpec[] = plan.outputs.map((o) => ({ level: o.level, kind: o.kind, ...(o.path !== undefined ? { path: o.path } : {}), ...(o.ident !== undefined ? { ident: o.ident } : {}) }));
      try {
        logging.apply(plan.level, specs);
      } catch (err) {
        throw E.LOG_OUTPUTS_OPEN(Math.abs((err as NodeJS.ErrnoException).errno ?? 0), (err as Error).message);
      }
    } else {
      const other = plan.outputs.find((o) => o.kind === 'file' || o.kind === 'syslog');
      if (other) {
        throw E.LOG_OUTPUT_KIND({ kind: other.kind });
      }
      log.level = plan.level;
    }
    this.filters = filters;
    this.outputs = outputs;
    const shown = what === 'filters' ? this.getFilters().filters.trim() : this.getOutputs().outputs;
    // logLevel: pino's own "level" key is this line's severity.
    log.warn({ [what]: shown, logLevel: plan.level, was: before }, 'log settings changed by admin');
  }
}

// ---- the service -----------------------------------------------------------------

/** An admin-socket connection's state. */
interface AdminConnState extends AdminContext {
  readonly conn: ClientConnection<AdminContext>;
}

let groupCache: { at: number; names: Map<number, string> } | null = null;

/** Group names from /etc/group (small, local), cached for a minute. */
function groupName(gid: number): string | undefined {
  if (!groupCache || Date.now() - groupCache.at > 60_000) {
    const names = new Map<number, string>();
    try {
      for (const line of readFileSync('/etc/group', 'utf8').split('\n')) {
        const [name, , id] = line.split(':');
        if (name && id !== undefined && /^\d+$/.test(id)) names.set(Number(id), name);
      }
    } catch {
      /* no /etc/group: names are simply omitted */
    }
    groupCache = { at: Date.now(), names };
  }
  return groupCache.names.get(gid);
}

/** Peers must have our euid (or be root when we are root): one name to know. */
function userName(uid: number): string | undefined {
  try {
    const me = userInfo();
    if (me.uid === uid) return me.username;
  } catch {
    /* no passwd entry */
  }
  return uid === 0 ? 'root' : undefined;
}

export class AdminService implements Service<AdminContext> {
  readonly name = 'admin';
  readonly programs: ReadonlyArray<Program<AdminContext>>;
  readonly logSettings: LogSettings;
  /** Per-server limit on unauthenticated clients (all clients authenticate at once). */
  private readonly unauthMax = new Map<string, number>();

  constructor(private readonly daemon: AdminHost) {
    this.logSettings = new LogSettings(daemon);
    const libvirt: AdminBackend = {
      libVersion: encodeVersion(VERSION),
      servers: () => this.serverHandles(),
      getLoggingOutputs: () => this.logSettings.getOutputs(),
      getLoggingFilters: () => this.logSettings.getFilters(),
      setLoggingOutputs: (s) => this.logSettings.setOutputs(s),
      setLoggingFilters: (s) => this.logSettings.setFilters(s),
      setDaemonTimeout: (sec) => {
        // virNetDaemonAutoShutdown: 0 turns the idle exit off.
        this.daemon.setIdleTimeout(sec > 0 ? sec : null);
        this.daemon.log.info({ timeout: sec }, 'daemon timeout set by admin');
      },
    };
    const ours: RelockdAdminBackend = {
      daemonInfo: () => this.daemonInfo(),
      lockspaces: () => this.lockspaces(),
      resources: (f) => this.resources(f),
      clients: (f) => this.clients(f),
      reexec: (caller) => this.reexec(caller as AdminConnState),
      handback: (caller, a) => handback(this.daemon, (caller as AdminConnState).conn, a),
      metrics: () => daemonMetricsText(this.daemon),
      health: () => healthInfo(this.daemon),
      releaseOwnerLeases: (pid, lockspace) => this.daemon.health.releaseForOwner(pid, lockspace),
    };
    this.programs = [adminProgram(libvirt), relockdAdminProgram(ours)];
  }

  createContext(conn: ClientConnection<AdminContext>): AdminContext {
    const st: AdminConnState = {
      conn,
      closeAfterReply: () => {
        // The reply is queued synchronously after the handler returns; close once it is flushed.
        setImmediate(() => conn.socket.write(Buffer.alloc(0), () => conn.close('admin client closed its connection (CONNECT_CLOSE)')));
      },
    };
    return st;
  }

  // ---- servers and clients as libvirt's admin program sees them --------------

  private rpcServers(): Array<RpcServer<any>> {
    const out: Array<RpcServer<any>> = [this.daemon.lockServer];
    if (this.daemon.adminServer) out.push(this.daemon.adminServer);
    return out.sort((a, b) => a.name.localeCompare(b.name));
  }

  private serverHandles(): AdminServerHandle[] {
    return this.rpcServers().map((s) => this.serverHandle(s));
  }

  private serverHandle(s: RpcServer<any>): AdminServerHandle {
    const isLock = s === this.daemon.lockServer;
    return {
      name: s.name,
      clients: () => [...s.clients.values()].sort((a, b) => a.id - b.id).map((c) => this.clientHandle(c, isLock)),
      client: (id) => {
        const c = s.clients.get(id);
        return c ? this.clientHandle(c, isLock) : undefined;
      },
      limits: (): ClientLimits => ({
        max: s.maxClients,
        current: s.clients.size,
        unauthMax: this.unauthMax.get(s.name) ?? s.maxClients,
        unauthCurrent: 0,
      }),
      setLimits: (max, unauth) => {
        if (unauth === null && !this.unauthMax.has(s.name)) this.unauthMax.set(s.name, s.maxClients);
        if (max !== null) {
          s.maxClients = max;
          s.checkLimit(); // pause or resume accepting under the new limit
        }
        if (unauth !== null) this.unauthMax.set(s.name, unauth);
        this.daemon.log.info({ server: s.name, maxClients: s.maxClients, maxUnauthClients: this.unauthMax.get(s.name) }, 'client limits set by admin');
      },
    };
  }

  private clientHandle(c: ClientConnection<any>, isLock: boolean): AdminClientHandle {
    return {
      id: c.id,
      connTime: c.connTime,
      transport: ClientTransport.UNIX,
      info: () => this.clientInfoParams(c, isLock),
      close: () => {
        c.log.warn({ peer: c.peer }, 'disconnecting client on admin request');
        // After the current reply: the caller may be closing itself.
        setImmediate(() => c.close('disconnected by admin request (client-disconnect)'));
      },
    };
  }

  /** client-info: libvirt's keys for a local client, then relockd's owner details. */
  private clientInfoParams(c: ClientConnection<any>, isLock: boolean): TypedParam[] {
    const p: TypedParam[] = [{ field: 'readonly', type: 'boolean', value: false }];
    p.push({ field: 'unix_user_id', type: 'int', value: c.peer.uid });
    const user = userName(c.peer.uid);
    if (user !== undefined) p.push({ field: 'unix_user_name', type: 'string', value: user });
    p.push({ field: 'unix_group_id', type: 'int', value: c.peer.gid });
    const group = groupName(c.peer.gid);
    if (group !== undefined) p.push({ field: 'unix_group_name', type: 'string', value: group });
    p.push({ field: 'unix_process_id', type: 'int', value: c.peer.pid });
    if (isLock) {
      const ctx = c.ctx as LockClient;
      const o = registered(ctx.owner);
      p.push({ field: 'restricted', type: 'boolean', value: ctx.restricted });
      if (o) {
        p.push({ field: 'owner_name', type: 'string', value: o.name });
        p.push({ field: 'owner_uuid', type: 'string', value: o.uuid });
        p.push({ field: 'owner_id', type: 'uint', value: o.id >>> 0 });
        p.push({ field: 'owner_pid', type: 'int', value: o.pid | 0 });
        p.push({ field: 'owner_leases', type: 'uint', value: this.daemon.manager.heldBy(o.pid) });
      }
    }
    return p;
  }

  // ---- relockd's program ----------------------------------------------------------

  private async reexec(caller: AdminConnState): Promise<ReexecResult> {
    const d = this.daemon;
    // A second caller joins a running re-exec (Reexecutor.run merges it);
    // the new image answers every merged call.
    const header = caller.conn.currentHeader;
    d.log.warn({ client: caller.conn.id, peer: caller.conn.peer }, 're-exec requested by admin');
    const r = await d.reexec('admin', header ? { conn: caller.conn, header } : undefined);
    // Only a failure comes back here: on success this image is gone and the new one replies.
    return r.ok ? { ok: true, blackoutMs: r.blackoutMs } : { ok: false, blackoutMs: 0, error: r.error };
  }

  private lastReexec(): LastReexec | null {
    const l = this.daemon.lastReexec;
    if (!l) return null;
    const blackoutMs = l.blackoutMs ?? 0;
    const result: ReexecResult = l.ok ? { ok: true, blackoutMs } : { ok: false, blackoutMs, error: l.error ?? 'unknown error' };
    return { at: l.at, result, trigger: l.trigger ?? '', fromVersion: l.fromVersion ?? '', toVersion: l.toVersion ?? '' };
  }

  /** Owner identities by pid: the owner connection first, then any registered client, then terminations. */
  private ownersByPid(): Map<number, { owner: OwnerInfo; viaOwnerConnection: boolean }> {
    const m = new Map<number, { owner: OwnerInfo; viaOwnerConnection: boolean }>();
    for (const c of this.daemon.lockServer.clients.values()) {
      const o = registered((c.ctx as LockClient).owner);
      if (!o) continue;
      const viaOwnerConnection = o.pid === c.peer.pid;
      const known = m.get(o.pid);
      if (!known || (viaOwnerConnection && !known.viaOwnerConnection)) m.set(o.pid, { owner: ownerInfo(o), viaOwnerConnection });
    }
    for (const [pid, t] of this.daemon.lockService.terminations) {
      if (!m.has(pid)) m.set(pid, { owner: ownerInfo(t.owner), viaOwnerConnection: false });
    }
    return m;
  }

  private daemonInfo(): DaemonInfo {
    const d = this.daemon;
    const counts = d.manager.counts();
    const now = Date.now();
    const terminations: TerminationInfo[] = [...d.lockService.terminations.values()].map((t) => ({
      owner: ownerInfo(t.owner),
      since: t.started,
      phase: String((t as { phase?: unknown }).phase ?? 'terminating'),
    }));
    return {
      version: VERSION,
      pid: process.pid,
      startedAt: d.startedAt,
      uptimeMs: now - d.startedAt,
      // Where the sockets really are (socket activation decides, not our defaults).
      socket: d.lockServer.listeners.map((l) => l.path).join(', ') || d.opts.socketPath,
      adminSocket: d.adminServer?.listeners.map((l) => l.path).join(', ') || (d.opts.adminSocketPath ?? ''),
      lockClients: d.lockServer.clients.size,
      adminClients: d.adminServer?.clients.size ?? 0,
      lockspaces: counts.lockspaces,
      resources: counts.resources,
      leases: counts.leases,
      boot: d.boot,
      safeMode: d.safeMode,
      daemonTimeout: d.opts.timeoutSec ?? 0,
      reexecSupported: true,
      lastReexec: this.lastReexec(),
      terminations,
      configError: d.configError,
      stopping: d.stopping,
    };
  }

  private lockspaces(): LockspaceInfo[] {
    return this.daemon.manager.allSpaces().map((ls) => {
      let leases = 0;
      for (const r of ls.resources.values()) leases += r.owners.length;
      return { dir: ls.dir, resources: ls.resources.size, leases };
    });
  }

  private resources(filter: string | null): ResourceInfo[] {
    const m = this.daemon.manager;
    const spaces = filter === null ? m.allSpaces() : filter === '' ? [m.defaultSpace] : [m.spaces.get(filter)];
    if (spaces[0] === undefined) throw E.NO_SUCH_LOCKSPACE({ dir: filter! });
    const owners = this.ownersByPid();
    const terminating = this.daemon.lockService.terminations;
    const out: ResourceInfo[] = [];
    for (const ls of spaces) {
      for (const r of ls!.resources.values()) {
        out.push({
          lockspace: ls!.dir,
          name: r.name,
          path: r.path,
          flags: r.flags,
          since: r.since,
          fd: r.fd,
          dev: r.dev,
          ino: r.ino,
          owners: r.owners.map((pid): LeaseOwner => ({ pid, owner: owners.get(pid)?.owner ?? null, terminating: terminating.has(pid) })),
        });
      }
    }
    return out;
  }

  private clients(filter: string | null): ClientInfo[] {
    const servers = this.rpcServers().filter((s) => filter === null || s.name === filter);
    if (filter !== null && servers.length === 0) {
      throw E.LIST_CLIENTS_NO_SERVER({ name: filter });
    }
    const held = new Map<number, number>();
    for (const ls of this.daemon.manager.allSpaces()) {
      for (const r of ls.resources.values()) for (const pid of new Set(r.owners)) held.set(pid, (held.get(pid) ?? 0) + 1);
    }
    const out: ClientInfo[] = [];
    for (const s of servers) {
      const isLock = s === this.daemon.lockServer;
      for (const c of [...s.clients.values()].sort((a, b) => a.id - b.id)) {
        const ctx = isLock ? (c.ctx as LockClient) : null;
        const o = ctx ? registered(ctx.owner) : null;
        out.push({
          server: s.name,
          id: c.id,
          connTime: c.connTime,
          pid: c.peer.pid,
          uid: c.peer.uid,
          gid: c.peer.gid,
          owner: o ? ownerInfo(o) : null,
          restricted: ctx?.restricted ?? false,
          ownerConnection: o !== null && o.pid === c.peer.pid,
          leases: o ? (held.get(o.pid) ?? 0) : 0,
        });
      }
    }
    return out;
  }
}

function registered(o: Owner | null | undefined): Owner | null {
  return o && o.id !== 0 ? o : null;
}

function ownerInfo(o: Owner): OwnerInfo {
  return { uuid: o.uuid, name: o.name, id: o.id >>> 0, pid: o.pid >>> 0 };
}
