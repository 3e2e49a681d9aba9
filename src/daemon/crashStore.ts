// Leases that survive relockd's own crash (systemd's fd store; src/fdstore/).
//
// While running: every fd whose loss would drop a lease or a client goes to
// the store as it appears (a lease fd when the lock is taken, a connection
// when it is accepted, our listeners, the pid file) and leaves it when its
// lease or client ends. The state that gives those fds meaning is the
// re-exec document (state/snapshot.ts, same schema and validation), kept in
// a memfd that is itself in the store: a full document as the base, then a
// journal with one record per event-loop turn that changed something, each
// holding the current entry of every lease and connection that changed
// (fdstore/stateJournal.ts, journal.ts: O(change), not O(state)). A new full
// base is written when the journal outgrows the old one, in a turn of its own.
//
// Crash window: replies wait for the end of their turn behind earlier
// flushers (turnFlush.ts), and the journal append is scheduled when the
// change happens, before the reply is sent. So no client is ever told of a
// lease, a registration or a release the stored state does not show yet, and
// the fd datagram goes out synchronously when the lock is taken, before
// either. A crash before the append (or in the middle of it: a torn record
// is ignored) leaves stored fds the state does not name: such a lease was
// never granted to anyone (it is released), such a connection was accepted
// but never answered (it is adopted as new).
//
// After a crash (Restart=on-failure): the stored fds come back with their
// names; the base of the newer complete memfd plus its journal give the
// document, its fds are found again by identity (fdstore/remap.ts), and it
// is restored as after a re-exec. An unreadable state means safe mode with
// every fd kept.

import { closeSync, fstatSync, ftruncateSync, writeSync } from 'node:fs';
import type { Logger } from 'pino';
import * as native from '../native.js';
import { FdStore, fdNames, fdStoreConfig, isStoredFdName, kindOfName } from '../fdstore/fdStore.js';
import type { FdStoreConfig } from '../fdstore/fdStore.js';
import { StateSlots, newestSlot } from '../fdstore/stateSlots.js';
import { StateJournal } from '../fdstore/stateJournal.js';
import type { JournalSource } from '../fdstore/stateJournal.js';
import { replayJournal } from '../fdstore/journal.js';
import type { ServerSnapshotSource } from '../state/snapshot.js';
import { remapDocument } from '../fdstore/remap.js';
import { crashHook } from '../fdstore/faultInjection.js';
import type { CrashPoint } from '../fdstore/faultInjection.js';
import type { PassedFd } from '../fdstore/remap.js';
import { handleFd } from '../rpc/server.js';
import { socketIdentity } from '../state/snapshot.js';
import type { ClientConnection } from '../rpc/connection.js';
import type { LockSpace, Resource } from '../locks/lockManager.js';
import { listenerPath } from '../state/orphans.js';
import { atTurnEnd } from '../turnFlush.js';
import type { StateDocument } from '../state/document.js';
import type { ActivatedSockets } from './activation.js';
import { SD_LISTEN_FDS_START } from './activation.js';
import type { ReexecOutcome } from './reexec.js';
import type { ExecTarget } from '../state/execPlan.js';
import { PidFile } from './pidFile.js';
import { closeProcessHandle, openProcessHandle } from '../util/processHandle.js';
import type { RpcServer } from '../rpc/server.js';
import type { LockClient, LockService } from '../services/lockService.js';
import type { LockManager } from '../locks/lockManager.js';
import type { DaemonMetrics } from '../metrics/counters.js';
import type { DaemonOptions } from './options.js';
import type { BootKind } from './boot.js';
import type { ReexecRecord } from '../state/document.js';
import type { ActionRunner } from '../health/actionRunner.js';

/** The trigger recorded in stored documents and in the history entry of a recovery. */
const CRASH_TRIGGER = 'crash-restart';

/** Stored fds systemd passed to this process (LISTEN_FDNAMES names starting with store.). Reads, does not unset. */
export function passedStoredFds(env: NodeJS.ProcessEnv = process.env, pid = process.pid): PassedFd[] {
  if (env.LISTEN_PID !== String(pid)) return [];
  const n = Number(env.LISTEN_FDS);
  const names = (env.LISTEN_FDNAMES ?? '').split(':');
  const out: PassedFd[] = [];
  if (!Number.isInteger(n) || names.length !== n) return out;
  names.forEach((name, i) => {
    if (isStoredFdName(name)) out.push({ fd: SD_LISTEN_FDS_START + i, name });
  });
  return out;
}

const inoOf = (fd: number): bigint | null => {
  try {
    return fstatSync(fd, { bigint: true }).ino;
  } catch {
    return null;
  }
};

/** What the fd store reads and asks of the daemon (Daemon implements it). */
export interface CrashStoreHost {
  readonly lockServer: RpcServer<LockClient>;
  readonly adminServer: RpcServer<any> | null;
  readonly lockService: Pick<LockService, 'onStateChange' | 'startTermination' | 'terminations'>;
  readonly manager: LockManager;
  /** The action runner, whose channel the store keeps too (health/actionRunner.ts). */
  readonly health: { readonly runner: Pick<ActionRunner, 'fd' | 'generation'> };
  readonly metrics: Pick<DaemonMetrics, 'lastBlackoutSeconds'>;
  /** The log outputs, flushed before a turn's state is written (null when logging goes elsewhere, e.g. tests). */
  readonly logging: { readonly outputs: { flush(): void } } | null;
  readonly opts: Pick<DaemonOptions, 'socketPath' | 'adminSocketPath' | 'pidFile'>;
  boot: BootKind;
  pidFile: PidFile | null;
  readonly lastReexec: ReexecRecord | undefined;
  readonly reexecInProgress: boolean;
  stateSnapshot(trigger: string, bytes: Map<ClientConnection<any>, { pending: Buffer; unsent: Buffer }>, skeleton?: boolean): StateDocument;
  snapshotSource(server: 'virtlockd' | 'admin'): ServerSnapshotSource<any> | null;
}

export class CrashStore {
  readonly store: FdStore;
  private journal: StateJournal | null = null;
  private dirty = false;
  /** The next write must be a full base (a change was not journalled, or nothing is written yet). */
  private needBase = true;
  private compactScheduled = false;
  private installed = false;
  private readonly clientNames = new WeakMap<ClientConnection<any>, string>();
  private heartbeat: NodeJS.Timeout | null = null;
  /** Stats for the bench: journal appends and bases written, bytes and time spent. */
  readonly stats = { writes: 0, bytes: 0, ms: 0, bases: 0, baseMs: 0 };
  /** Set after a recovery: how long the daemon was down. */
  recoveredAfterMs: number | null = null;
  private fullWarned = false;
  /** Test-only fault injection (fdstore/faultInjection.ts); null unless asked for. */
  private readonly crashAt: ((at: CrashPoint) => void) | null;
  /** The runner channel in the store: its name and the runner's channel generation. */
  private runnerStored: { name: string | null; generation: number } = { name: null, generation: -1 };

  private constructor(
    private readonly d: CrashStoreHost,
    config: FdStoreConfig,
    private readonly log: Logger,
    /** Stored fds passed to this process at start. */
    readonly passed: PassedFd[],
    env: NodeJS.ProcessEnv,
  ) {
    this.store = new FdStore(config, {
      deferred: (name, err) => this.log.warn({ fdName: name, err: err.message }, 'fd store: systemd is not taking datagrams now; retrying (this fd is not crash-safe until it is stored)'),
      full: (name) => {
        if (this.fullWarned) return;
        this.fullWarned = true;
        this.log.error({ fdName: name, max: config.max }, 'fd store full (FileDescriptorStoreMax=): new leases and clients are not crash-safe');
      },
    });
    for (const p of passed) this.store.known(p.name);
    this.crashAt = crashHook(env);
    // Hooked from the start, so nothing granted during boot escapes the store.
    for (const srv of [d.lockServer, d.adminServer]) if (srv) srv.storeHooks = { attached: (c: ClientConnection<any>) => this.clientAttached(c, srv.name), closed: (c: ClientConnection<any>) => this.clientClosed(c, srv.name) };
    d.manager.storeHooks = { added: (ls, r) => this.leaseAdded(ls, r), removed: (ls, r) => this.leaseRemoved(ls, r), changed: (ls, r) => this.leaseChanged(ls, r) };
    d.lockService.onStateChange = (conn) => this.clientChanged(conn, d.lockServer.name);
    if (this.hasStoredState) return; // recover() reuses the stored memfds
    // A fresh start, or a re-exec (whose image did not carry our memfds): replace any older ones.
    this.forceRemove(fdNames.state(0));
    this.forceRemove(fdNames.state(1));
    this.useSlots(new StateSlots());
    this.store.put(fdNames.state(0), this.journal!.slots.fds[0]);
    this.store.put(fdNames.state(1), this.journal!.slots.fds[1]);
    // Written as things happen during a fresh boot; a restore writes once it is complete.
    this.ready = !env.RELOCKD_REEXEC;
  }

  /** The state may be written (not while a restore is half done). */
  private ready = false;

  /** Under systemd with a store configured (FDSTORE=); null otherwise: nothing changes. */
  static create(d: CrashStoreHost, log: Logger, env: NodeJS.ProcessEnv = process.env): CrashStore | null {
    const config = fdStoreConfig(env);
    if (!config) return null;
    return new CrashStore(d, config, log.child({ component: 'fdstore' }), passedStoredFds(env), env);
  }

  /** A crash left state in the store: start() recovers instead of starting fresh. */
  get hasStoredState(): boolean {
    return this.passed.length > 0; // even without a state: safe mode keeps them
  }

  // ---- recovery ----------------------------------------------------------------

  /** Restores from the stored fds and state document (instead of a fresh start). */
  async recover(activated: ActivatedSockets | null, host: RecoveryHost): Promise<void> {
    const slotFds = this.passed.filter((p) => kindOfName(p.name) === 'state').map((p) => p.fd);
    const slot = newestSlot(slotFds);
    // Reuse the stored memfds (the store keeps them under their names).
    // The first base goes into the other slot: a crash while writing it leaves this one.
    if (slotFds.length === 2) this.useSlots(new StateSlots([slotFds[0]!, slotFds[1]!], slot?.seq ?? 0, slot ? slot.index : -1));
    let doc: StateDocument | null = null;
    let why = 'the fd store holds no complete state document';
    if (slot) {
      try {
        doc = replayJournal(JSON.parse(slot.text) as StateDocument, slot.records);
      } catch (err) {
        why = `the stored state is unreadable: ${(err as Error).message}`;
        doc = null;
      }
      if (slot.tornBytes > 0) this.log.warn({ tornBytes: slot.tornBytes, records: slot.records.length }, 'crash restart: the last journal record was torn by the crash (that turn\'s changes were never answered): ignored');
    }
    const downMs = slot ? Math.max(0, Date.now() - slot.alive) : null;
    this.recoveredAfterMs = downMs;
    if (!doc) {
      this.log.fatal({ storedFds: this.passed.length, why }, 'crash restart: stored state unreadable');
      await host.startSafeMode([`crash restart: ${why}`]);
      return;
    }
    const pool = [...this.passed.filter((p) => kindOfName(p.name) !== 'state')];
    for (const fd of [...(activated?.main ?? []), ...(activated?.admin ?? [])]) pool.push({ fd, name: 'activation' });
    let remap;
    try {
      remap = remapDocument(doc, pool, process.pid);
    } catch (err) {
      await host.startSafeMode([`crash restart: ${(err as Error).message}`]);
      return;
    }
    // Stored lease fds the document does not name were taken in the last turn
    // and never granted: released before the restore, whose clients dispatch
    // again the requests they had sent (one may be the acquire of that very
    // lease, which must not find it still locked by the leftover).
    for (const p of pool) {
      if (remap.used.has(p.fd) || kindOfName(p.name) !== 'lease') continue;
      this.log.warn({ fdName: p.name }, 'crash restart: a lease taken just before the crash was never granted: released');
      this.releaseLeftover(p.fd);
      remap.used.add(p.fd);
    }
    await host.startFromState(doc);
    // Owners whose own connection closed meanwhile: the path of a closed owner connection.
    for (const { owner, startTime } of remap.lostOwners) {
      if (this.d.manager.heldBy(owner.pid) === 0) continue;
      let handle = openProcessHandle(owner.pid, -1);
      if (handle && handle.startTime !== startTime) {
        closeProcessHandle(handle); // the pid is another process now: the owner is gone
        handle = null;
      }
      this.log.warn({ owner, alive: handle !== null }, 'crash restart: this owner\'s own connection closed while relockd was down');
      this.d.lockService.startTermination(owner, handle, Date.now());
    }
    // Leases whose release was under way: finish it (unlock, close, out of the store).
    for (const fd of remap.unlocked) this.releaseLeftover(fd);
    // Stored fds the document does not name: what the last turn before the crash did.
    for (const p of pool) {
      if (remap.used.has(p.fd)) continue;
      await this.adoptLeftover(p, host);
    }
    if (this.d.pidFile) {
      // Our pid now, in the file whose lock the store kept.
      ftruncateSync(this.d.pidFile.fd, 0);
      writeSync(this.d.pidFile.fd, String(process.pid), 0);
    }
    this.ready = true;
    const rec = this.d.lastReexec;
    if (rec && rec.trigger === CRASH_TRIGGER && downMs !== null) {
      rec.blackoutMs = downMs;
      this.d.metrics.lastBlackoutSeconds = downMs / 1000;
    }
    this.log.warn(
      { downMs, leases: this.d.manager.counts().resources, clients: this.d.lockServer.clients.size, dropped: remap.dropped, storedFds: this.passed.length, boot: this.d.boot },
      'recovered from a crash: leases and client connections kept by the fd store',
    );
  }

  private releaseLeftover(fd: number): void {
    try {
      const st = fstatSync(fd);
      this.store.remove(fdNames.lease(st.dev, st.ino));
    } catch {
      /* gone */
    }
    try {
      native.releaseFileSync(fd, { unlinkPath: null, onlyIfExclusive: false });
    } catch (err) {
      this.log.error({ fd, err: (err as Error).message }, 'cannot release a leftover stored lease fd');
    }
  }

  private async adoptLeftover(p: PassedFd, host: RecoveryHost): Promise<void> {
    const kind = p.name === 'activation' ? 'listen' : kindOfName(p.name);
    try {
      if (kind === 'lease') {
        // Taken in the last turn, never answered: nobody was granted it.
        this.log.warn({ fdName: p.name }, 'crash restart: a lease taken just before the crash was never granted: released');
        this.releaseLeftover(p.fd);
        return;
      }
      if (kind === 'client') {
        // Accepted in the last turn, never answered: a new client.
        const srv = this.d.lockServer;
        const peer = native.peerCred(p.fd);
        const net = await import('node:net');
        const sock = new net.default.Socket({ fd: p.fd, readable: true, writable: true });
        native.setCloexec(p.fd, true);
        srv.attach(sock, peer);
        return;
      }
      if (kind === 'listen') {
        const path = listenerPath(p.fd);
        const srv = path === this.d.opts.socketPath ? this.d.lockServer : path === this.d.opts.adminSocketPath ? this.d.adminServer : null;
        if (srv && srv.listeners.length === 0) {
          await srv.adopt(p.fd, path!, p.name !== 'activation');
          native.setCloexec(p.fd, true);
          return;
        }
        if (p.name === 'activation' || srv) {
          // A second copy of a socket we already listen on.
          if (p.name !== 'activation') this.store.remove(p.name);
          closeSync(p.fd);
          return;
        }
      }
      if (kind === 'runner') {
        // A runner channel the document does not name (spawned just before the crash): close it, the runner sees EOF and exits.
        this.store.remove(p.name);
        closeSync(p.fd);
        this.log.warn({ fdName: p.name }, 'crash restart: an action runner channel the state does not name: closed');
        return;
      }
      if (kind === 'pidfile' && !this.d.pidFile && this.d.opts.pidFile) {
        this.d.pidFile = PidFile.adopt(this.d.opts.pidFile, p.fd);
        return;
      }
    } catch (err) {
      this.log.error({ fdName: p.name, err: (err as Error).message }, 'crash restart: cannot adopt a stored fd; kept');
    }
    host.keepOrphan(p.fd);
  }

  // ---- while running -----------------------------------------------------------

  /** Stores everything held now, hooks every later change, writes the state. */
  install(): void {
    if (this.installed) return;
    this.installed = true;
    const d = this.d;
    if (!this.journal) this.useSlots(new StateSlots()); // a recovery that ended in safe mode
    const slots = this.journal!.slots;
    this.store.put(fdNames.state(0), slots.fds[0]);
    this.store.put(fdNames.state(1), slots.fds[1]);
    for (const srv of [d.lockServer, d.adminServer]) {
      if (!srv) continue;
      // systemd's own (socket-activated) listeners come back with the socket unit.
      for (const l of srv.listeners) if (l.unlinkOnClose) this.putFd(fdNames.listener, l.fd);
      for (const c of srv.clients.values()) if (!this.clientNames.has(c)) this.clientAttached(c, srv.name);
    }
    if (d.pidFile) this.store.put(fdNames.pidFile, d.pidFile.fd);
    this.syncRunner();
    for (const ls of d.manager.allSpaces()) for (const r of ls.resources.values()) this.store.put(fdNames.lease(r.dev, r.ino), r.fd);
    this.ready = true;
    this.needBase = true;
    this.writeState();
    let beats = 0;
    this.heartbeat = setInterval(() => this.beat(++beats), 250);
    this.heartbeat.unref();
    this.log.info({ stored: this.store.size, max: this.store.config.max }, 'fd store in use: leases and client connections survive a crash of relockd');
  }

  private forceRemove(name: string): void {
    try {
      native.sdNotify(this.store.config.socket, `FDSTOREREMOVE=1\nFDNAME=${name}`);
    } catch {
      /* nothing stored under it */
    }
  }

  private putFd(name: (ino: string) => string, fd: number): void {
    const ino = inoOf(fd);
    if (ino !== null) this.store.put(name(String(ino)), fd);
  }

  private leaseAdded(ls: LockSpace, r: Resource): void {
    this.store.put(fdNames.lease(r.dev, r.ino), r.fd);
    this.leaseChanged(ls, r);
    this.crashAt?.('grant');
  }

  private leaseRemoved(ls: LockSpace, r: Resource): void {
    this.store.remove(fdNames.lease(r.dev, r.ino));
    this.leaseChanged(ls, r);
  }

  private leaseChanged(ls: LockSpace, r: Resource): void {
    this.journal?.lease(ls, r.name);
    this.markDirty();
  }

  private clientAttached(c: ClientConnection<any>, server: string): void {
    const fd = handleFd(c.socket);
    if (fd < 0) return;
    let ino: string;
    try {
      ino = socketIdentity(c, fd).ino; // the one fstat of this connection, cached for every snapshot
    } catch {
      return;
    }
    const name = fdNames.client(ino);
    this.clientNames.set(c, name);
    c.onAsyncDispatch = () => this.clientChanged(c, server);
    // A request read from the socket would exist only in this process until
    // the state shows it: a crash before then lost it, and the client waited
    // forever. So bytes are peeked, recorded, and only then taken out of the
    // socket (a crash in between leaves them in both; the restart takes the
    // socket's copy out once) and dispatched; a crash-restart dispatches the
    // recorded ones again (after releasing what that turn left behind).
    if (this.d.lockServer.clients.get(c.id) === c) {
      c.onRead = () => {
        this.writeNow(c, server);
        this.crashAt?.('read');
      };
      c.usePeekReads();
    }
    this.store.put(name, fd);
    this.clientChanged(c, server);
  }

  private clientClosed(c: ClientConnection<any>, server: string): void {
    const name = this.clientNames.get(c);
    if (name) this.store.remove(name);
    this.clientChanged(c, server);
  }

  private clientChanged(c: ClientConnection<any>, server: string): void {
    this.journal?.client(c, server);
    this.markDirty();
  }

  /** Journals this client's read bytes now (mid-turn); a write already due at the end of this turn stays due. */
  private writeNow(c: ClientConnection<any>, server: string): void {
    this.journal?.client(c, server);
    const due = this.dirty;
    this.writeState();
    this.dirty = due;
  }

  /**
   * The change is journalled at the end of this turn, before any reply of
   * this turn goes out, and after the turn's log lines: so the record and the
   * replies are written by adjacent syscalls, and a SIGKILL between a lease's
   * record and its reply (the client would wait forever) has no room. The
   * lines go first because they are the slow write (a file, the journal).
   */
  markDirty(): void {
    if (this.dirty) return;
    this.dirty = true;
    atTurnEnd(() => {
      this.d.logging?.outputs.flush();
      this.writeState();
    });
  }

  /**
   * Keeps the runner's channel in the store (a new runner, or none after it
   * died): so a crash never gives the runner EOF, and the restarted image,
   * which cannot spawn one, adopts it. Cheap when nothing changed.
   */
  private syncRunner(): void {
    const r = this.d.health.runner;
    if (r.generation === this.runnerStored.generation && (this.runnerStored.name === null) === (r.fd() === null)) return;
    const fd = r.fd();
    const ino = fd === null ? null : inoOf(fd);
    const name = ino === null ? null : fdNames.runner(String(ino));
    if (this.runnerStored.name && this.runnerStored.name !== name) this.store.remove(this.runnerStored.name);
    if (name && fd !== null) this.store.put(name, fd);
    this.runnerStored = { name, generation: r.generation };
    this.journal?.skeleton(); // the document's health part names the channel
  }

  private useSlots(slots: StateSlots): void {
    this.journal = new StateJournal(slots, journalSource(this.d));
    this.needBase = true;
  }

  /** Appends this turn's record, or writes a full base when one is needed. */
  private writeState(): void {
    this.dirty = false;
    const j = this.journal;
    if (!j) return;
    if (this.ready && !this.d.reexecInProgress) this.syncRunner();
    if (!this.ready || this.d.reexecInProgress) {
      // Not journalled now: the next write is a full base, which shows it.
      this.needBase = true;
      return;
    }
    if (this.needBase) {
      this.compact();
      return;
    }
    this.append(j);
    if (j.compactionDue) this.scheduleCompaction();
  }

  private append(j: StateJournal): void {
    const t0 = performance.now();
    try {
      const n = j.flush();
      if (n) {
        this.stats.bytes += n;
        this.stats.writes++;
      }
    } catch (err) {
      this.needBase = true;
      this.log.error({ err: (err as Error).message }, 'fd store: cannot append to the state journal (retrying with a full document)');
      this.scheduleCompaction();
    }
    this.stats.ms += performance.now() - t0;
  }

  /** A new base in a turn of its own: the replies of the turn that asked go out first (the journal already shows their changes). */
  private scheduleCompaction(): void {
    if (this.compactScheduled) return;
    this.compactScheduled = true;
    setImmediate(() => {
      this.compactScheduled = false;
      const j = this.journal;
      if (!j || !this.ready || this.d.reexecInProgress) return;
      // Changes of this turn so far go into the old journal first: it then ends exactly where the new base begins.
      if (!this.needBase && j.hasChanges) this.append(j);
      this.compact();
    });
  }

  /** The memfds holding the state (tests and the bench read them). */
  get stateFds(): readonly [number, number] | null {
    return this.journal?.slots.fds ?? null;
  }

  /** The journal's own counters (records, bytes, compactions). */
  get journalStats(): StateJournal['stats'] | null {
    return this.journal?.stats ?? null;
  }

  private compact(): void {
    const j = this.journal;
    if (!j) return;
    const t0 = performance.now();
    try {
      this.stats.bytes += j.compact();
      this.stats.bases++;
      this.needBase = false;
    } catch (err) {
      this.needBase = true;
      this.log.error({ err: (err as Error).message }, 'fd store: cannot write the state document (a crash now would restart in safe mode)');
    }
    this.stats.baseMs += performance.now() - t0;
  }

  /** Every 250 ms: the alive stamp; every second, the skeleton if it changed (metrics, health). */
  private beat(n: number): void {
    const j = this.journal;
    if (!j) return;
    try {
      j.slots.heartbeat();
      if (n % 4 === 0 && this.ready && !this.needBase && !this.d.reexecInProgress) {
        j.refreshSkeleton();
        if (j.compactionDue) this.scheduleCompaction();
      }
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'fd store: heartbeat write failed');
    }
  }

  /**
   * A handback to virtlockd: the store is emptied in the last step before
   * execve (virtlockd never removes what it releases, so a stored copy would
   * keep its lock for nobody), and filled again if the exec fails.
   */
  async handback(target: ExecTarget, run: (t: ExecTarget) => Promise<ReexecOutcome>): Promise<ReexecOutcome> {
    let cleared = false;
    const wrapped: ExecTarget = {
      plan: (doc) => {
        const plan = target.plan(doc);
        this.clearForHandback();
        cleared = true;
        return plan;
      },
    };
    const result = await run(wrapped);
    if (cleared) this.install(); // still here: the exec failed
    return result;
  }

  private clearForHandback(): void {
    const d = this.d;
    for (const ls of d.manager.allSpaces()) for (const r of ls.resources.values()) this.store.remove(fdNames.lease(r.dev, r.ino));
    for (const srv of [d.lockServer, d.adminServer]) {
      if (!srv) continue;
      for (const c of srv.clients.values()) {
        const n = this.clientNames.get(c);
        if (n) this.store.remove(n);
      }
      for (const l of srv.listeners) {
        const ino = inoOf(l.fd);
        if (ino !== null) this.store.remove(fdNames.listener(String(ino)));
      }
    }
    this.store.remove(fdNames.pidFile);
    if (this.runnerStored.name) this.store.remove(this.runnerStored.name);
    this.runnerStored = { name: null, generation: -1 };
    this.store.remove(fdNames.state(0));
    this.store.remove(fdNames.state(1));
    this.installed = false;
    this.ready = false;
    if (this.heartbeat) clearInterval(this.heartbeat);
  }
}

/** What the journal reads of the daemon (also the bench's, bench/fdstore-state.ts). */
export function journalSource(d: CrashStoreHost): JournalSource {
  return {
    full: () => {
      const bytes = new Map<ClientConnection<any>, { pending: Buffer; unsent: Buffer }>();
      for (const c of d.lockServer.clients.values()) if (!c.isClosed) bytes.set(c, c.crashBytes());
      return d.stateSnapshot(CRASH_TRIGGER, bytes);
    },
    skeleton: () => d.stateSnapshot(CRASH_TRIGGER, new Map(), true),
    source: (server) => (server === 'virtlockd' || server === 'admin' ? d.snapshotSource(server) : null),
    // Only lock-protocol requests are dispatched again after a crash, as before the journal.
    crashBytes: (conn, server) => (server === d.lockServer.name ? conn.crashBytes() : undefined),
    skeletonKey: () => {
      let k = `${d.manager.spaces.size}`;
      for (const pid of d.lockService.terminations.keys()) k += `,${pid}`;
      return k;
    },
  };
}

/** What recovery needs from the daemon's boot code. */
export interface RecoveryHost {
  startFromState(doc: StateDocument): Promise<void>;
  startSafeMode(problems: string[]): Promise<void>;
  keepOrphan(fd: number): void;
}
