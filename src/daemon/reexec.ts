// Live re-exec (SIGUSR1): replace the program image in place, same pid,
// without dropping a lock or a connection.
//
// Old image: quiesce (stop reading and accepting, let requests in flight
// finish, bounded) → snapshot → validate → write atomically → clear
// FD_CLOEXEC on every fd to keep → RELOADING=1 → execve. All of that after
// the quiesce runs in one synchronous stretch, so nothing can be accepted,
// read or changed between the snapshot and the exec.
//
// Any failure before execve is undone: CLOEXEC restored, clients resumed,
// the old image keeps serving, and the failure is reported. (virtlockd exits
// here and every lock is lost.)

import type { HealthMonitor } from '../health/monitor.js';
import type { StorageClassifier } from '../locks/storageClass.js';
import type { StorageGate } from '../locks/storageGate.js';
import { closeSync, openSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import { dirname, basename, join } from 'node:path';
import * as native from '../native.js';
import { flushTurnNow } from '../turnFlush.js';
import { codeCacheEnv } from './codeCache.js';
import { encodeFdRanges, FD_PRESCAN_ENV } from '../state/fdPrescan.js';
import { unverifiableFds } from '../services/healthWiring.js';
import { captureSignalsForExec, endSignalCapture, execHoldEnv, holdSignalsForExec, releaseHeldSignals } from './execSignals.js';
import type { ClientConnection } from '../rpc/connection.js';
import type { Header } from '../rpc/packet.js';
import { buildState, tableColumns } from '../state/snapshot.js';
import type { ServerSnapshotSource } from '../state/snapshot.js';
import type { ReexecRecord, StateDocument, TerminationState } from '../state/document.js';
import { validateState } from '../state/validate.js';
import { serialiseState } from '../state/documentFormat.js';
import type { LeaseColumns } from '../state/documentFormat.js';
import { ExecRefusal } from '../state/execPlan.js';
import type { ExecPlan, ExecTarget } from '../state/execPlan.js';
import type { Logger } from 'pino';
import type { LockManager } from '../locks/lockManager.js';
import type { RpcServer } from '../rpc/server.js';
import type { FdIdentity } from '../state/document.js';
import type { LockClient, LockService } from '../services/lockService.js';

/**
 * What a re-exec needs from the daemon: the servers to quiesce and snapshot,
 * what the state document carries, and the calls back when an exec fails
 * (Daemon implements it; test/reexecutor.test.ts a small fake).
 */
export interface ReexecHost {
  readonly log: Logger;
  readonly lockServer: RpcServer<LockClient>;
  readonly adminServer: RpcServer<any> | null;
  readonly manager: LockManager;
  readonly lockService: Pick<LockService, 'frozen' | 'terminations' | 'saveContext'>;
  readonly opts: { readonly quiesceTimeoutMs: number };
  readonly stopping: string | null;
  readonly version: string;
  readonly stateFile: string;
  readonly execPath: string;
  readonly originalArgv: string[];
  readonly orphans: FdIdentity[];
  readonly safeMode: boolean;
  readonly history: ReexecRecord[];
  readonly pidFile: { readonly path: string; readonly fd: number } | null;
  readonly startedAt: number;
  readonly metrics: { save(): unknown };
  readonly gate: Pick<StorageGate, 'stuckKeys'>;
  readonly health: Pick<HealthMonitor, 'fdsToKeep' | 'save'>;
  readonly classifier: Pick<StorageClassifier, 'save'>;
  /** Settings in force, recorded in the state document. */
  settings(): Record<string, unknown>;
  notify(msg: string): void;
  recordReexec(r: ReexecRecord): void;
  /** Restarts the owner terminations a failed exec had frozen. */
  resumeFrozenTerminations(): void;
}

/** How a re-exec attempt ended, inside the daemon (the admin wire reply is relockdAdmin's ReexecResult). */
export type ReexecOutcome =
  | { ok: true; blackoutMs: number; version: string }
  | { ok: false; error: string; /** worth retrying (a refusal that clears by itself) */ transient?: boolean };

/** A call whose reply the new image sends (the admin "re-exec" call itself). */
export interface ReplyAfterExec {
  conn: ClientConnection<any>;
  header: Header;
}

/** Environment marker: lets the new image know the state file is its own. */
export const REEXEC_ENV = 'RELOCKD_REEXEC';

class ReexecFailure extends Error {
  override name = 'ReexecFailure';
}

/** Writes `data` to `path` atomically: temp file 0600, fsync, rename. */
function writeFileAtomic(path: string, data: string): void {
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.tmp`);
  const fd = openSync(tmp, 'w', 0o600);
  try {
    writeSync(fd, data);
    native.fsync(fd);
  } finally {
    closeSync(fd);
  }
  try {
    renameSync(tmp, path);
  } catch (err) {
    try {
      unlinkSync(tmp);
    } catch {
      /* ignore */
    }
    throw err;
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class Reexecutor {
  private running: Promise<ReexecOutcome> | null = null;
  /** Calls to answer from the new image (a second caller merges into a running re-exec). */
  private replyTos: ReplyAfterExec[] = [];

  constructor(private readonly d: ReexecHost) {}

  get inProgress(): boolean {
    return this.running !== null;
  }

  /** Re-execs; resolves only on failure (on success this image is gone). */
  run(trigger: string, replyTo?: ReplyAfterExec, target?: ExecTarget): Promise<ReexecOutcome> {
    if (this.d.stopping) {
      this.d.log.warn({ trigger, stopping: this.d.stopping }, 're-exec refused: the daemon is stopping');
      return Promise.resolve({ ok: false, error: `the daemon is stopping (${this.d.stopping})` });
    }
    if (target && this.running) return Promise.resolve({ ok: false, error: 'a re-exec is in progress', transient: true });
    if (replyTo) this.replyTos.push(replyTo);
    if (this.running) {
      this.d.log.info({ trigger }, 're-exec already in progress; request merged');
      return this.running;
    }
    this.running = this.attempt(trigger, target).finally(() => {
      this.running = null;
      this.replyTos = [];
    });
    return this.running;
  }

  private allClients(): ClientConnection<any>[] {
    const out: ClientConnection<any>[] = [...this.d.lockServer.clients.values()];
    if (this.d.adminServer) out.push(...this.d.adminServer.clients.values());
    return out;
  }

  private async attempt(trigger: string, target?: ExecTarget): Promise<ReexecOutcome> {
    const d = this.d;
    const requestedAtNs = process.hrtime.bigint();
    const log = d.log.child({ reexec: trigger });
    log.info('re-exec requested: quiescing');
    const servers = [d.lockServer, d.adminServer].filter((s) => s !== null);
    servers.forEach((s) => (s.holdNew = true));
    d.lockService.frozen = true;
    const detached = new Map<ClientConnection<any>, { pending: Buffer; unsent: Buffer }>();
    const cleared: number[] = [];
    let stdioCloexec: boolean[] = [];
    let written: string | null = null;
    try {
      await this.quiesce();
      // A stop asked for while we quiesced (a SIGTERM then is handled here, in
      // the old image): the new image would not know of it and the stop would
      // be forgotten. Stay, and keep stopping.
      if (d.stopping) throw new ExecRefusal(`the daemon began stopping (${d.stopping}) during the re-exec, which was therefore not done`, false);
      const ms = savePhases(requestedAtNs);
      // execve first ends every other thread: one blocked in a close on a
      // hung FUSE mount (FLUSH waits uninterruptibly) never ends, and the
      // whole daemon would hang in execve with it (docs/storage-failure.md).
      const stuck = d.gate.stuckKeys();
      if (stuck.length) throw new ExecRefusal(`a storage call on ${stuck.join(', ')} has not returned: execve would wait for it; retry when the storage answers`, true);

      // ---- synchronous from here to execve --------------------------------
      captureSignalsForExec();
      // Tests widen this stretch to send a signal into it (test/reexec-signals.test.ts).
      const stallMs = Number(process.env.RELOCKD_TEST_EXEC_STALL_MS ?? 0);
      if (stallMs > 0) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, stallMs);
      for (const c of this.allClients()) if (!c.isClosed) detached.set(c, c.detachForExec());
      // relockd's own document carries the leases as columns, built straight from the tables; a handback's needs format 1's objects.
      const doc = this.snapshot(trigger, requestedAtNs, detached, false, !target);
      const leases = target ? null : tableColumns(d.manager);
      ms.mark('snapshot');
      if (target) validateState(doc); // relockd's own document is validated as written (serialiseState)
      const plan = leases ? this.ownPlan(doc, leases, requestedAtNs) : target!.plan(doc);
      ms.mark('serialise');
      writeFileAtomic(plan.stateFile, plan.text);
      ms.mark('write');
      written = plan.stateFile;
      const keep = plan.keep;
      stdioCloexec = [0, 1, 2].map((fd) => safeGetCloexec(fd));
      for (const fd of [0, 1, 2]) native.setCloexec(fd, false);
      cleared.push(...keep);
      native.setCloexecAll(Int32Array.from(keep), false); // one call for every fd to keep; no fstat (a failed lock space's fds would block)
      ms.mark('cloexec');
      d.notify(`RELOADING=1\nMONOTONIC_USEC=${process.hrtime.bigint() / 1000n}\nSTATUS=re-executing`);
      log.info({ fds: keep.length, bytes: plan.text.length, saveMs: ms.phases, stateFile: plan.stateFile, exec: plan.execPath, argv: plan.argv }, 're-exec: state written, executing');
      // A signal arriving now stays pending until the new image is ready for it.
      if (plan.holdSignals) holdSignalsForExec();
      flushTurnNow(); // this turn's log lines (replies were all written before detaching)
      native.execve(plan.execPath, plan.argv, plan.env);
      throw new ReexecFailure('execve returned'); // not reached: execve throws on failure
    } catch (err) {
      // ---- failure before execve: undo everything, keep serving -------------
      endSignalCapture();
      const dropped = releaseHeldSignals();
      if (dropped.length) log.warn({ signals: dropped }, 'signals without a handler arrived while the exec was prepared: discarded');
      if (cleared.length) native.setCloexecAll(Int32Array.from(cleared), true);
      stdioCloexec.forEach((on, fd) => trySetCloexec(fd, on));
      if (written) {
        try {
          unlinkSync(written);
        } catch {
          /* ignore */
        }
      }
      for (const c of detached.keys()) if (!c.isClosed) c.reattachAfterFailedExec();
      servers.forEach((s) => (s.holdNew = false));
      for (const c of this.allClients()) if (!detached.has(c) && !c.isClosed) c.release();
      d.lockService.frozen = false;
      d.resumeFrozenTerminations();
      const error = describe(err);
      const transient = err instanceof ExecRefusal ? err.transient : undefined;
      const rec: ReexecRecord = { at: Date.now(), ok: false, error, trigger, fromVersion: d.version };
      d.recordReexec(rec);
      if (err instanceof ExecRefusal) log.warn({ err: error, transient }, 'exec refused: still serving, every lock held');
      else log.error({ err: error }, 're-exec failed before execve: still serving in the old image, every lock held');
      d.notify('READY=1\nSTATUS=re-exec failed; serving');
      return { ok: false, error, ...(transient !== undefined ? { transient } : {}) };
    }
  }

  /** relockd's own re-exec: its document, every fd it names, the original argv. */
  private ownPlan(doc: StateDocument, leases: LeaseColumns, requestedAtNs: bigint): ExecPlan {
    const ext = doc.relockd!;
    const env: NodeJS.ProcessEnv = { ...process.env, ...codeCacheEnv(), ...execHoldEnv(process.env), [REEXEC_ENV]: `${process.pid}:${requestedAtNs}` };
    // The lease fds the new image fstats in the background while it loads
    // (state/fdPrescan.ts); not those on storage that is not healthy, whose fstat could block.
    const unverifiable = unverifiableFds(doc, leases);
    const prescan = encodeFdRanges(unverifiable.size ? leases.fd.filter((fd) => !unverifiable.has(fd)) : leases.fd);
    delete env[FD_PRESCAN_ENV];
    if (prescan) env[FD_PRESCAN_ENV] = prescan;
    return {
      stateFile: this.d.stateFile,
      text: serialiseState(doc, leases),
      keep: [...ext.fds.map((f) => f.fd), ...leases.fd, ...ext.orphans.map((f) => f.fd), ...this.d.health.fdsToKeep()],
      execPath: this.d.execPath,
      argv: this.d.originalArgv,
      env: Object.entries(env).map(([k, v]) => `${k}=${v}`),
      holdSignals: true,
    };
  }

  /** The callers waiting for this re-exec: their own calls stay in flight. */
  private exempt(c: ClientConnection<any>): boolean {
    return this.replyTos.some((r) => r.conn === c);
  }

  /** Stops dispatching, then waits (bounded) until nothing is in flight. */
  private async quiesce(): Promise<void> {
    const d = this.d;
    const deadline = Date.now() + d.opts.quiesceTimeoutMs;
    for (;;) {
      const holds = this.allClients().map((c) => {
        const h = c.hold();
        return this.exempt(c) ? Promise.resolve() : h;
      });
      const remaining = deadline - Date.now();
      if (remaining <= 0) throw new ReexecFailure(`requests still in flight after ${d.opts.quiesceTimeoutMs} ms (storage not responding?)`);
      const settled = Promise.all([...holds, d.manager.settled()]);
      const timedOut = await Promise.race([settled.then(() => false), sleep(remaining).then(() => true)]);
      if (timedOut) throw new ReexecFailure(`requests still in flight after ${d.opts.quiesceTimeoutMs} ms (storage not responding?)`);
      // Stable only if nothing started meanwhile (a termination reaching its
      // release step, a connection accepted while we waited).
      const busyClient = this.allClients().some((c) => !this.exempt(c) && c.inFlight);
      const releasing = [...d.lockService.terminations.values()].some((t) => t.phase === 'releasing');
      if (!busyClient && !releasing && d.manager.idle) return;
      await sleep(1);
    }
  }

  /** What each server's connections contribute to the document (the fd store's journal uses them one by one). */
  snapshotSource(server: 'virtlockd' | 'admin'): ServerSnapshotSource<any> | null {
    const d = this.d;
    if (server === 'admin') return d.adminServer ? { server: d.adminServer, privateData: () => ({}) } : null;
    return {
      server: d.lockServer,
      privateData: (c) => d.lockService.saveContext(c.ctx),
      process: (c) => (c.ctx.process ? { pidfd: c.ctx.process.pidfd, startTime: c.ctx.process.startTime } : undefined),
    };
  }

  /** `omitLeases`: the lock spaces' lists stay empty (the caller writes the leases as columns, tableColumns). */
  snapshot(trigger: string, requestedAtNs: bigint, detached: Map<ClientConnection<any>, { pending: Buffer; unsent: Buffer }>, skeleton = false, omitLeases = false): StateDocument {
    const d = this.d;
    const terminations: TerminationState[] = [...d.lockService.terminations.values()].map((t) => ({
      owner: t.owner,
      startedAt: t.started,
      pidfd: t.handle?.pidfd ?? -1,
      startTime: t.handle?.startTime ?? '0',
    }));
    const doc = buildState({
      pid: process.pid,
      version: d.version,
      trigger,
      requestedAtNs,
      settings: d.settings(),
      lock: this.snapshotSource('virtlockd')!,
      admin: this.snapshotSource('admin'),
      manager: d.manager,
      detached,
      terminations,
      orphans: d.orphans,
      safeMode: d.safeMode,
      history: d.history,
      pidFile: d.pidFile ? { path: d.pidFile.path, fd: d.pidFile.fd } : null,
      startedAt: d.startedAt,
      skeleton,
      omitLeases,
    });
    doc.relockd!.metrics = d.metrics.save() as unknown as Record<string, unknown>;
    doc.relockd!.health = d.health.save();
    doc.relockd!.storage = d.classifier.save();
    const live = this.replyTos.filter((r) => !r.conn.isClosed);
    if (live.length) doc.relockd!.pendingReplies = live.map((r) => ({ server: r.conn.service.name, clientId: r.conn.id, header: r.header }));
    return doc;
  }
}

/** The old image's phases for its "state written" line: ms from the request to quiesced, then each step's own ms. */
function savePhases(requestedAtNs: bigint): { phases: Record<string, number>; mark(name: string): void } {
  let last = process.hrtime.bigint();
  const ms = (a: bigint, b: bigint) => Math.round(Number(b - a) / 1e4) / 100;
  const phases: Record<string, number> = { quiesce: ms(requestedAtNs, last) };
  return {
    phases,
    mark(name) {
      const now = process.hrtime.bigint();
      phases[name] = ms(last, now);
      last = now;
    },
  };
}

function safeGetCloexec(fd: number): boolean {
  try {
    return native.getCloexec(fd);
  } catch {
    return true;
  }
}

function trySetCloexec(fd: number, on: boolean): void {
  try {
    native.setCloexec(fd, on);
  } catch {
    /* fd gone */
  }
}

function describe(err: unknown): string {
  const e = err as { code?: unknown; message?: string };
  const msg = e.message ?? String(err);
  return typeof e.code === 'string' && !msg.includes(e.code) ? `${msg} (${e.code})` : msg;
}
