// Lock-space health: watches every lock space whose storage can fail (not a
// known-local filesystem) while it carries leases, decides its state, and
// puts the owners of a failed lock space into a safe state, then brings them
// back when the storage returns (sanlock's model; docs/storage-failure.md).
//
//   healthy --probe fails--> failing --no good probe for failure timeout,
//   or a lease reported lost--> failed --probes good--> recovering --every
//   owner dealt with--> healthy
//
// Everything here runs on timers and promises: probes go to the pool with a
// deadline (probe.ts), programs are spawned, signals go through the existing
// terminator. The state (watches and per-owner records) is plain data, saved
// in the re-exec state document so that nothing is forgotten and no action
// runs twice across a re-exec.

import { statfs } from 'node:fs';
import type { Logger } from 'pino';
import type { LockManager, Owner, Resource } from '../locks/lockManager.js';
import { AcquireFlags } from '../util/acquireFlags.js';
import { isLocalFsType } from '../locks/storageClass.js';
import { ErrorCode, ProtocolError } from '../util/errors.js';
import { E } from '../util/errorCatalogue.js';
import type { HealthOptions, LockFailureAction } from './options.js';
import { effectiveFailureTimeoutMs } from './options.js';
import { StorageProber, mountLeaseTimeMs } from './probe.js';
import { ActionRunner } from './actionRunner.js';
import type { RunResult, RunnerSaved } from './actionRunner.js';
import * as native from '../native.js';
import type { ProbeOutcome, ProbeTarget } from './probe.js';

export type HealthState = 'healthy' | 'failing' | 'failed' | 'recovering';

/** Where an owner is in its lock-failure handling. */
export type ActionPhase =
  | 'ignored' // action ignore: logged and reported only
  | 'killpath' // the program runs or ran; kill_grace is counting
  | 'released' // the owner holds no lease in the lock space any more; waits for recovery
  | 'terminating' // SIGTERM/SIGKILL through the pidfd, then release
  | 'terminated'
  | 'unsafe' // could not be signalled (no pidfd taken while it was connected)
  | 'resuming' // leases re-acquired; the resume program runs
  | 'resumed'
  | 'resume-failed';

export interface LeaseRef {
  lockspace: string;
  name: string;
  flags: number;
}

/** One owner's handling in one failed lock space (saved across re-exec). */
export interface OwnerRecord {
  key: string;
  owner: Owner;
  action: LockFailureAction;
  phase: ActionPhase;
  startedAt: number;
  /** Leases it held here when the lock space failed. */
  leases: LeaseRef[];
  /** Epoch ms: SIGTERM if it still holds leases here by then (killpath, pause). */
  graceDeadline: number;
  /** Leases re-acquired for it in recovery that its own client may take back (libvirt's resume). */
  reacquired: LeaseRef[];
  /** Why it ended up where it is. */
  note?: string;
  /** The program the action runner runs for it now (its result may arrive after a re-exec). */
  program?: { id: number; event: 'fail' | 'resume'; sentAt: number; pid?: number };
}

/** One watched directory (saved across re-exec). */
export interface WatchRecord {
  /** The directory probed: a lock-space directory, or an image directory of the default lock space. */
  key: string;
  /** The lock space it belongs to ('' = default). */
  lockspace: string;
  state: HealthState;
  /** Epoch ms the state was entered. */
  since: number;
  /** Epoch ms the last good probe was sent (or the watch began). */
  lastGoodAt: number;
  lastError: string | null;
  /** Resources whose lock was reported lost (EIO through the holder's fd). */
  lost: string[];
  /** The mount's NFSv4 lease time, if it says. */
  leaseTimeMs: number | null;
  failures: number;
  /** How long the last failure lasted (last good probe before it to the first good one after), ms. */
  outageMs?: number;
}

export interface HealthDocument {
  watches: WatchRecord[];
  records: OwnerRecord[];
  /** The action runner, kept across the re-exec (actionRunner.ts). */
  runner?: RunnerSaved;
}

/** What the monitor needs from the daemon about owner processes. */
export interface OwnerControl {
  /** The registered owner whose pid this is (for names and uuids in logs), or null. */
  ownerOf(pid: number): Owner | null;
  /** False once the process is gone; null when there is no safe handle on it. */
  isAlive(owner: Owner): Promise<boolean | null>;
  isTerminating(pid: number): boolean;
  /** SIGTERM, SIGKILL after the grace, then release every lease; false: no pidfd to signal safely. */
  terminate(owner: Owner, reason: string): boolean;
}

export interface MonitorDeps {
  manager: LockManager;
  log: Logger;
  options: () => HealthOptions;
  termGraceMs: () => number;
  /** The storage deadline (storage_timeout). */
  deadlineMs: () => number;
  owners: OwnerControl;
  /** sd_notify STATUS= line. */
  notifyStatus: (line: string) => void;
  /** Admin socket, told to killpath programs so they can release through relockctl. */
  adminSocket: string | null;
  /** argv of relockctl (program first), for the pause action. */
  relockctl: string[];
  prober?: StorageProber;
  /** argv that starts the action runner (runnerMain.ts). */
  runnerArgv: string[];
  /** True only while relockd holds no fd a child could block on (no lease, no storage call in flight). */
  canSpawn: () => boolean;
}

/** A killpath or resume program running longer than this (or kill_grace) is killed. */
const PROGRAM_TIMEOUT_MS = 30_000;

/** statfs f_type of NFS (v2, v3 and v4). */
const NFS_SUPER_MAGIC = 0x6969;

const done = (p: ActionPhase) => p === 'ignored' || p === 'terminated' || p === 'unsafe' || p === 'resumed' || p === 'resume-failed';

export class HealthMonitor {
  readonly watches = new Map<string, WatchRecord>();
  readonly records: OwnerRecord[] = [];
  private readonly probing = new Map<string, number>();
  private readonly lastProbeAt = new Map<string, number>();
  private readonly classes = new Map<string, { local: boolean | null; nfs: boolean; since: number }>();
  private readonly busy = new Set<string>();
  readonly runner: ActionRunner;
  private timer: NodeJS.Timeout | null = null;
  private readonly prober: StorageProber;

  constructor(private readonly d: MonitorDeps) {
    this.prober = d.prober ?? new StorageProber();
    this.runner = new ActionRunner(d.log.child({ part: 'action-runner' }), {
      started: (id, pid) => this.onProgramStarted(id, pid),
      result: (r) => this.onProgramResult(r),
    });
  }

  /**
   * Starts the action runner if there is none and relockd holds nothing a
   * child could block on (at a fresh start: before any lease exists). Never
   * otherwise: see actionRunner.ts.
   */
  ensureRunner(): void {
    if (this.runner.available || !this.d.canSpawn()) return;
    try {
      this.runner.spawn(this.d.runnerArgv);
    } catch (err) {
      this.log.error({ err: (err as Error).message }, 'cannot start the action runner');
    }
  }

  private get log(): Logger {
    return this.d.log;
  }

  start(): void {
    if (this.timer) return;
    this.timer = setInterval(() => this.tick(), Math.max(20, Math.min(250, this.d.options().checkIntervalMs / 4)));
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  // ---- hooks for the lock manager -----------------------------------------------------

  /** New acquisitions in a failed lock space are refused: its storage is known bad. */
  acquireRefusal(lockspace: string, storageKey: string): ProtocolError | null {
    const w = this.watches.get(lockspace === '' ? storageKey : lockspace);
    if (!w || w.state !== 'failed') return null;
    return E.LOCKSPACE_FAILED({ dir: w.key, since: new Date(w.lastGoodAt).toISOString(), error: w.lastError ? `: ${w.lastError}` : '' });
  }

  /** A lease re-acquired for `owner` in recovery goes back to its own client (libvirt's resume). */
  handover(lockspace: string, name: string, owner: Owner): boolean {
    for (const r of this.records) {
      if (r.owner.pid !== owner.pid) continue;
      const i = r.reacquired.findIndex((l) => l.lockspace === lockspace && l.name === name);
      if (i < 0) continue;
      r.reacquired.splice(i, 1);
      this.log.info({ owner: r.owner, lockspace, resource: name }, 'lease re-acquired after the storage failure handed back to its owner');
      return true;
    }
    return false;
  }

  // ---- the watch -----------------------------------------------------------------------

  /**
   * The watch keys with leases now, in the order the lock manager lists them,
   * each with its (first) lock space: what every tick needs, without a list of the
   * leases (the tick runs every 250 ms; with 10k leases those lists were
   * ~0.5 MB of garbage per tick).
   */
  private leaseKeys(): Map<string, string> {
    const out = new Map<string, string>();
    for (const ls of this.d.manager.allSpaces()) {
      if (!ls.isDefault) {
        if (ls.resources.size > 0 && !out.has(ls.dir)) out.set(ls.dir, ls.dir);
        continue;
      }
      for (const name of ls.resources.keys()) {
        const key = ls.storageKeyOf(name);
        if (!out.has(key)) out.set(key, ls.dir);
      }
    }
    return out;
  }

  /**
   * The leases of the given watch keys (a directory lock space's, or a
   * directory of default-space names), in one pass over the lock tables:
   * one pass per tick however many directories are watched.
   */
  private leasesOf(wanted: ReadonlySet<string>): Map<string, Resource[]> {
    const out = new Map<string, Resource[]>();
    if (wanted.size === 0) return out;
    const add = (key: string, r: Resource) => {
      let list = out.get(key);
      if (!list) out.set(key, (list = []));
      list.push(r);
    };
    for (const ls of this.d.manager.allSpaces()) {
      if (!ls.isDefault) {
        if (wanted.has(ls.dir)) for (const r of ls.resources.values()) add(ls.dir, r);
        continue;
      }
      for (const r of ls.resources.values()) {
        const key = ls.storageKeyOf(r.name);
        if (wanted.has(key)) add(key, r);
      }
    }
    return out;
  }

  private leasesIn(key: string): Resource[] {
    return this.leasesOf(new Set([key])).get(key) ?? [];
  }

  /** true: local (not watched); false: remote or unknown; null: being classified. */
  private isLocal(key: string): boolean | null {
    const c = this.classes.get(key);
    const now = Date.now();
    if (c && c.local !== null) return c.local;
    if (c) return now - c.since > this.d.deadlineMs() ? false : null; // statfs hangs: not local
    this.classes.set(key, { local: null, nfs: false, since: now });
    statfs(key, (err, st) => {
      const cur = this.classes.get(key);
      if (!cur) return;
      if (err) this.classes.delete(key); // missing directory and the like: ask again
      else {
        cur.local = isLocalFsType(Number(st.type));
        cur.nfs = Number(st.type) === NFS_SUPER_MAGIC;
      }
    });
    return null;
  }

  private tick(): void {
    const now = Date.now();
    if (!this.runner.available) this.ensureRunner();
    const opts = this.d.options();
    const keys = this.leaseKeys();
    for (const [key, lockspace] of keys) {
      if (this.watches.has(key)) continue;
      if (this.isLocal(key) !== false) continue;
      const w: WatchRecord = { key, lockspace, state: 'healthy', since: now, lastGoodAt: now, lastError: null, lost: [], leaseTimeMs: mountLeaseTimeMs(key), failures: 0 };
      this.watches.set(key, w);
      this.log.info({ lockspace, dir: key, leaseTimeMs: w.leaseTimeMs }, 'lock-space health watch started (storage not known to be local)');
      const eff = effectiveFailureTimeoutMs(opts, this.d.termGraceMs(), w.leaseTimeMs);
      if (eff < opts.failureTimeoutMs) {
        this.log.error({ dir: key, leaseTimeMs: w.leaseTimeMs, failureTimeoutMs: opts.failureTimeoutMs, usedMs: eff }, 'the server lease time is too short for lockspace_failure_timeout + kill_grace: using a shorter failure timeout here');
      }
    }
    const watchedHeld = new Set<string>();
    for (const key of this.watches.keys()) if (keys.has(key)) watchedHeld.add(key);
    const leases = this.leasesOf(watchedHeld);
    for (const w of this.watches.values()) {
      const held = keys.has(w.key);
      const mine = this.records.filter((r) => r.key === w.key);
      if (!held && w.state === 'healthy' && mine.length === 0) {
        this.watches.delete(w.key);
        this.log.info({ lockspace: w.lockspace, dir: w.key }, 'lock-space health watch ended (no leases)');
        continue;
      }
      const res = leases.get(w.key) ?? [];
      const last = this.lastProbeAt.get(w.key) ?? 0;
      if (!this.probing.has(w.key) && now - last >= opts.checkIntervalMs) this.startProbe(w, res);
      this.evaluate(w, res);
    }
  }

  private startProbe(w: WatchRecord, res: Resource[]): void {
    const started = Date.now();
    this.lastProbeAt.set(w.key, started);
    this.probing.set(w.key, started);
    const targets: ProbeTarget[] = res.map((r) => ({ name: r.name, fd: r.fd, shared: (r.flags & AcquireFlags.SHARED) !== 0, classic: r.classic === true }));
    // I/O through the lease fds only where a lost lock shows up there (NFS):
    // elsewhere (FUSE, cluster filesystems) the directory check is the probe,
    // and a read stuck on a lease's inode would hold that inode's lock.
    const leases = this.classes.get(w.key)?.nfs ? targets : [];
    void this.prober
      .probe(w.key, leases, this.d.deadlineMs(), () => this.probing.delete(w.key))
      .then((out) => this.onProbe(w, started, out));
  }

  private onProbe(w: WatchRecord, started: number, out: ProbeOutcome): void {
    if (this.watches.get(w.key) !== w) return;
    if (out.ok) {
      this.log.debug({ dir: w.key, ms: out.ms }, 'lock-space probe ok');
      if (w.state === 'failed') w.outageMs = started - w.lastGoodAt;
      w.lastGoodAt = started;
      w.lastError = null;
      w.failures = 0;
      if (w.state === 'failing') this.transition(w, 'healthy', `storage answers again (probe took ${out.ms} ms)`);
      else if (w.state === 'failed') this.transition(w, 'recovering', `storage answers again after ${+((Date.now() - w.since) / 1000).toFixed(1)} s failed`);
      return;
    }
    w.failures++;
    const errs = Object.entries(out.leaseErrors).map(([n, m]) => `${n}: ${m}`);
    w.lastError = out.dirError ?? (out.lost.length ? `lock lost on ${out.lost.join(', ')}` : errs.join('; '));
    this.log.warn({ lockspace: w.lockspace, dir: w.key, err: w.lastError, lost: out.lost, timedOut: out.timedOut, ms: out.ms, failures: w.failures }, 'lock-space probe failed');
    if (out.lost.length) {
      for (const n of out.lost) if (!w.lost.includes(n)) w.lost.push(n);
      if (w.state !== 'failed') this.transition(w, 'failed', `lock lost on ${out.lost.join(', ')} (I/O through the holder's fd fails with EIO: the server dropped the lock)`);
      return;
    }
    if (w.state === 'healthy') this.transition(w, 'failing', w.lastError);
    else if (w.state === 'recovering') this.transition(w, 'failed', `storage failed again during recovery: ${w.lastError}`);
  }

  private failureTimeoutFor(w: WatchRecord): number {
    return effectiveFailureTimeoutMs(this.d.options(), this.d.termGraceMs(), w.leaseTimeMs);
  }

  private evaluate(w: WatchRecord, res: Resource[]): void {
    const now = Date.now();
    if (w.state === 'failing' && now - w.lastGoodAt >= this.failureTimeoutFor(w)) {
      this.transition(w, 'failed', `no good probe for ${+((now - w.lastGoodAt) / 1000).toFixed(1)} s (lockspace_failure_timeout ${this.failureTimeoutFor(w) / 1000} s)`);
    }
    if (w.state === 'failed') {
      // Every owner holding a lease here gets the action, once (newcomers too).
      for (const [pid, leases] of this.ownersIn(res)) {
        if (this.records.some((r) => r.key === w.key && r.owner.pid === pid)) continue;
        this.startAction(w, this.d.owners.ownerOf(pid) ?? { uuid: '', name: '', id: 0, pid }, leases);
      }
    }
    for (const r of this.records) if (r.key === w.key) this.checkRecord(w, r);
    if (w.state === 'recovering') void this.recover(w);
  }

  private ownersIn(res: Resource[]): Map<number, LeaseRef[]> {
    const by = new Map<number, LeaseRef[]>();
    for (const r of res) {
      for (const pid of new Set(r.owners)) {
        const ls = this.lockspaceOfResource(r);
        by.set(pid, [...(by.get(pid) ?? []), { lockspace: ls, name: r.name, flags: r.flags }]);
      }
    }
    return by;
  }

  private lockspaceOfResource(r: Resource): string {
    for (const ls of this.d.manager.allSpaces()) if (ls.resources.get(r.name) === r) return ls.dir;
    return '';
  }

  /** Leases of `pid` in the watch `key` now. */
  private heldIn(key: string, pid: number): LeaseRef[] {
    return this.leasesIn(key).filter((r) => r.owners.includes(pid)).map((r) => ({ lockspace: this.lockspaceOfResource(r), name: r.name, flags: r.flags }));
  }

  private transition(w: WatchRecord, to: HealthState, why: string): void {
    const from = w.state;
    w.state = to;
    w.since = Date.now();
    const owners = [...this.ownersIn(this.leasesIn(w.key))].map(([pid, leases]) => ({ owner: this.d.owners.ownerOf(pid) ?? { pid }, resources: leases.map((l) => l.name) }));
    const level = to === 'failed' ? 'error' : to === 'healthy' ? 'info' : 'warn';
    this.log[level]({ lockspace: w.lockspace, dir: w.key, from, to, why, owners, lost: w.lost, lastGoodAt: new Date(w.lastGoodAt).toISOString() }, `lock space ${to}`);
    if (to === 'healthy') w.lost = [];
    this.d.notifyStatus(`lock space ${w.key}: ${to} (${why})`);
  }

  // ---- actions -------------------------------------------------------------------------

  private startAction(w: WatchRecord, owner: Owner, leases: LeaseRef[]): void {
    const o = this.d.options();
    const rec: OwnerRecord = { key: w.key, owner, action: o.action, phase: 'ignored', startedAt: Date.now(), leases, graceDeadline: Date.now() + o.killGraceMs, reacquired: [] };
    this.records.push(rec);
    const l = this.log.child({ owner, lockspace: w.lockspace, dir: w.key, resources: leases.map((x) => x.name), action: o.action });
    switch (o.action) {
      case 'ignore':
        rec.phase = 'ignored';
        l.warn('lock failure: action ignore, the owner keeps running and keeps its leases (nothing protects its disks now)');
        return;
      case 'terminate':
        this.terminateOwner(rec, 'lock failure action terminate');
        return;
      case 'killpath':
      case 'pause':
        rec.phase = 'killpath';
        l.warn({ killGraceMs: o.killGraceMs }, 'lock failure: running the killpath program; SIGTERM then SIGKILL if the owner still holds leases here after kill_grace');
        this.runProgram(rec, 'fail');
        return;
    }
  }

  /** The program and arguments for a record's action. */
  private programFor(rec: OwnerRecord): string[] | null {
    const o = this.d.options();
    if (rec.action === 'pause') return [...this.d.relockctl, 'libvirt-killpath', '--uri', o.libvirtUri, ...(this.d.adminSocket ? ['--admin-socket', this.d.adminSocket] : [])];
    return o.killpath;
  }

  private programLog(rec: OwnerRecord, event: string): Logger {
    return this.log.child({ owner: rec.owner, lockspace: this.watches.get(rec.key)?.lockspace ?? rec.key, dir: rec.key, event });
  }

  /**
   * Sends the record's program to the action runner (never spawned here:
   * relockd holds lease fds, see actionRunner.ts). Its result comes back
   * through onProgramResult, in this image or, after a re-exec, the next.
   */
  private runProgram(rec: OwnerRecord, event: 'fail' | 'resume'): void {
    const argv = this.programFor(rec);
    const l = this.programLog(rec, event);
    if (!argv) {
      l.error('no killpath program configured');
      this.programDone(rec, event, false, 'no killpath program configured');
      return;
    }
    const args = [...argv, event, rec.owner.uuid];
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(process.env)) if (v !== undefined) env[k] = v;
    Object.assign(env, {
      RELOCKD_EVENT: event,
      RELOCKD_OWNER_UUID: rec.owner.uuid,
      RELOCKD_OWNER_NAME: rec.owner.name,
      RELOCKD_OWNER_PID: String(rec.owner.pid),
      RELOCKD_LOCKSPACE: this.watches.get(rec.key)?.lockspace ?? rec.key,
      RELOCKD_LOCKSPACE_DIR: rec.key,
      RELOCKD_RESOURCES: rec.leases.map((x) => x.name).join('\n'),
      ...(this.d.adminSocket ? { RELOCKD_ADMIN_SOCKET: this.d.adminSocket } : {}),
    });
    // Safety never waits for the program (kill_grace escalates on its own);
    // the limit only stops one that hangs, e.g. on an unresponsive libvirtd.
    const limitMs = Math.max(PROGRAM_TIMEOUT_MS, this.d.options().killGraceMs);
    const id = this.runner.run(args, env, limitMs);
    if (id === null) {
      l.error({ program: argv[0] }, `killpath program (${event}) cannot run: no action runner`);
      this.programDone(rec, event, false, 'no action runner');
      return;
    }
    rec.program = { id, event, sentAt: Date.now() };
    l.info({ program: argv[0], args: args.slice(1), request: id, runner: this.runner.pid, limitMs }, `killpath program (${event}) sent to the action runner`);
  }

  private recordOfProgram(id: number): OwnerRecord | undefined {
    return this.records.find((r) => r.program?.id === id);
  }

  private onProgramStarted(id: number, pid: number): void {
    const rec = this.recordOfProgram(id);
    if (!rec?.program) return;
    rec.program.pid = pid;
    this.programLog(rec, rec.program.event).info({ programPid: pid, request: id, ms: Date.now() - rec.program.sentAt }, `killpath program started (${rec.program.event})`);
  }

  private onProgramResult(r: RunResult): void {
    const rec = this.recordOfProgram(r.id);
    if (!rec?.program) return;
    const { event, sentAt } = rec.program;
    rec.program = undefined;
    const ok = r.code === 0;
    this.programLog(rec, event)[ok ? 'info' : 'error'](
      { code: r.code, signal: r.signal, err: r.err, timedOut: r.timedOut, ms: r.ms, sinceSentMs: Date.now() - sentAt, output: r.output || undefined },
      `killpath program (${event}) ${ok ? 'succeeded' : r.timedOut ? 'timed out and was killed' : 'failed'}`,
    );
    this.programDone(rec, event, ok, ok ? undefined : (r.err ?? (r.timedOut ? 'timed out' : `exit ${r.code ?? r.signal}`)));
  }

  /** What a program's end means for its record. */
  private programDone(rec: OwnerRecord, event: 'fail' | 'resume', ok: boolean, why?: string): void {
    if (event === 'fail') {
      // A program that could not run at all makes nobody safe: do not wait
      // for kill_grace. One that ran and failed: kill_grace still counts.
      if (!ok && rec.phase === 'killpath' && (why === 'no action runner' || why === 'no killpath program configured' || why === 'the action runner died before reporting')) {
        this.terminateOwner(rec, `the killpath program could not run (${why})`);
      }
      return;
    }
    if (ok) {
      rec.phase = 'resumed';
      this.log.warn({ owner: rec.owner, dir: rec.key, reacquired: rec.reacquired.map((x) => x.name), ms: Date.now() - rec.startedAt }, 'recovery: owner resumed');
    } else {
      rec.phase = 'resume-failed';
      rec.note = `the resume program failed (${why}); the owner stays paused with its leases`;
      this.log.error({ owner: rec.owner, dir: rec.key, why }, 'recovery: resume failed; the owner stays paused (it holds its leases; resume or stop it by hand)');
    }
    rec.reacquired = [];
  }

  private terminateOwner(rec: OwnerRecord, reason: string): void {
    const l = this.log.child({ owner: rec.owner, dir: rec.key });
    if (this.d.owners.isTerminating(rec.owner.pid)) {
      rec.phase = 'terminating';
      rec.note = reason;
      return;
    }
    if (this.d.owners.terminate(rec.owner, reason)) {
      rec.phase = 'terminating';
      rec.note = reason;
      l.warn({ reason }, 'lock failure: terminating the owner (SIGTERM, then SIGKILL after owner_term_grace), then releasing its leases');
    } else {
      rec.phase = 'unsafe';
      rec.note = `${reason}; but no pidfd was taken while it was connected, so it cannot be signalled safely`;
      l.error({ reason }, 'lock failure: cannot terminate the owner safely (no pidfd taken while it was connected); its leases are kept');
    }
  }

  private checkRecord(w: WatchRecord, rec: OwnerRecord): void {
    if (rec.phase === 'terminating' && !this.d.owners.isTerminating(rec.owner.pid)) {
      rec.phase = 'terminated';
      this.log.warn({ owner: rec.owner, dir: rec.key, reason: rec.note }, 'lock failure: owner terminated and its leases released');
      return;
    }
    if (rec.phase !== 'killpath' && rec.phase !== 'released') return;
    const held = this.heldIn(rec.key, rec.owner.pid);
    if (rec.phase === 'killpath' && held.length === 0) {
      rec.phase = 'released';
      this.log.warn({ owner: rec.owner, dir: rec.key, released: rec.leases.map((x) => x.name), ms: Date.now() - rec.startedAt }, 'lock failure: owner made safe, its leases here are released');
      return;
    }
    if (rec.phase === 'killpath' && Date.now() >= rec.graceDeadline && (w.state === 'failed' || w.state === 'failing')) {
      this.terminateOwner(rec, `still holds ${held.map((x) => x.name).join(', ')} after kill_grace`);
    }
  }

  /**
   * RELEASE_OWNER_LEASES (relockctl release-leases, from a killpath
   * program): the owner was made safe; its leases in `lockspace` may go.
   * Only for an owner that relockd asked to be made safe there.
   */
  async releaseForOwner(pid: number, lockspace: string): Promise<number> {
    const recs = this.records.filter((r) => r.owner.pid === pid && (this.watches.get(r.key)?.lockspace ?? r.key) === lockspace && !done(r.phase));
    if (recs.length === 0) {
      throw E.NOT_MADE_SAFE({ pid, lockspace });
    }
    let n = 0;
    for (const rec of recs) {
      for (const l of this.heldIn(rec.key, pid)) {
        try {
          await this.d.manager.release(l.lockspace, l.name, rec.owner);
          n++;
        } catch (err) {
          // The entry left our table (the owner no longer holds it); only closing the fd failed.
          const still = this.heldIn(rec.key, pid).some((x) => x.name === l.name);
          if (still) throw err;
          n++;
          this.log.warn({ owner: rec.owner, lockspace: l.lockspace, resource: l.name, err: (err as Error).message }, 'lease released for a lock failure; closing its fd did not complete yet');
        }
      }
      this.log.warn({ owner: rec.owner, dir: rec.key, released: n }, 'lock failure: leases released at the killpath program\'s request');
      const w = this.watches.get(rec.key);
      if (w) this.checkRecord(w, rec);
    }
    return n;
  }

  // ---- recovery ------------------------------------------------------------------------

  private async recover(w: WatchRecord): Promise<void> {
    if (this.busy.has(w.key)) return;
    this.busy.add(w.key);
    try {
      for (const rec of this.records.filter((r) => r.key === w.key)) {
        if (w.state !== 'recovering') return;
        await this.recoverOwner(w, rec);
      }
      const left = this.records.filter((r) => r.key === w.key && !done(r.phase));
      if (w.state === 'recovering' && left.length === 0) {
        const summary = this.records.filter((r) => r.key === w.key).map((r) => ({ owner: r.owner, action: r.action, outcome: r.phase, note: r.note }));
        for (let i = this.records.length - 1; i >= 0; i--) if (this.records[i]!.key === w.key) this.records.splice(i, 1);
        this.transition(w, 'healthy', `recovered: ${summary.length} owner(s) dealt with`);
        if (summary.length) this.log.info({ dir: w.key, owners: summary }, 'lock-space recovery summary');
      }
    } finally {
      this.busy.delete(w.key);
    }
  }

  private async recoverOwner(w: WatchRecord, rec: OwnerRecord): Promise<void> {
    if (done(rec.phase) || rec.phase === 'resuming' || rec.phase === 'terminating') return;
    if (rec.program) return; // the fail program is still running: let it finish first
    const l = this.log.child({ owner: rec.owner, lockspace: w.lockspace, dir: w.key });
    const alive = await this.d.owners.isAlive(rec.owner);
    if (alive === false) {
      rec.phase = 'terminated';
      rec.note = 'owner exited during the failure';
      l.info('recovery: owner is gone; nothing to resume');
      return;
    }
    const held = this.heldIn(w.key, rec.owner.pid);
    const missing = rec.leases.filter((x) => !held.some((h) => h.name === x.name && h.lockspace === x.lockspace));
    const lostHeld = held.filter((h) => w.lost.includes(h.name));
    if (lostHeld.length) {
      // It kept a lease whose lock the server dropped: another host may have written meanwhile.
      this.terminateOwner(rec, `its lock on ${lostHeld.map((x) => x.name).join(', ')} was lost while it kept running`);
      return;
    }
    if (rec.phase === 'killpath' && missing.length === 0) {
      // Made safe without releasing (e.g. a killpath that only paused): nothing was lost, resume it.
      l.info('recovery: owner kept its leases; running resume');
    }
    for (const m of missing) {
      try {
        await this.d.manager.acquire(m.lockspace, m.name, m.flags, rec.owner);
        rec.reacquired.push(m);
        l.info({ resource: m.name }, 'recovery: lease re-acquired for the paused owner');
      } catch (err) {
        const e = err as Error;
        const busy = e instanceof ProtocolError && e.code === ErrorCode.RESOURCE_BUSY;
        if (busy) {
          l.error({ resource: m.name, err: e.message }, 'recovery: lease was taken by someone else during the failure; the owner must never run again');
          rec.reacquired = [];
          this.terminateOwner(rec, `lease ${m.name} was taken by someone else during the storage failure`);
          return;
        }
        l.warn({ resource: m.name, err: e.message }, 'recovery: cannot re-acquire yet; will retry');
        return;
      }
    }
    // Without lease generations, a lease we got back is only proven untouched
    // if the outage was shorter than the lease time: after that the server
    // may have given it to another host, which may have written and released.
    const leaseTime = w.leaseTimeMs ?? this.d.options().nfsLeaseTimeMs;
    if (missing.length && w.outageMs !== undefined && w.outageMs >= leaseTime) {
      rec.reacquired = [];
      this.terminateOwner(rec, `the storage was unreachable for ${+(w.outageMs / 1000).toFixed(1)} s, longer than the lease time (${leaseTime / 1000} s): another host may have held and written its disks meanwhile`);
      return;
    }
    rec.phase = 'resuming';
    this.runProgram(rec, 'resume');
  }

  // ---- reporting and state -------------------------------------------------------------

  /** A summary for the daemon's STATUS= line ('' when every watched lock space is healthy). */
  statusSuffix(): string {
    const bad = [...this.watches.values()].filter((w) => w.state !== 'healthy');
    return bad.map((w) => `lock space ${w.key} ${w.state}`).join('; ');
  }

  save(): HealthDocument {
    const runner = this.runner.save();
    return {
      watches: [...this.watches.values()].map((w) => ({ ...w, lost: [...w.lost] })),
      records: this.records.map((r) => ({ ...r, leases: [...r.leases], reacquired: [...r.reacquired], ...(r.program ? { program: { ...r.program } } : {}) })),
      ...(runner ? { runner } : {}),
    };
  }

  /** The fds a re-exec must keep open (the runner's channel). */
  fdsToKeep(): number[] {
    const fd = this.runner.fd();
    return fd === null ? [] : [fd];
  }

  /**
   * From a re-exec state document. The action runner and its channel came
   * through the exec: a program it runs for a record reports to this image,
   * so nothing runs twice and no result is lost. Without the runner (an old
   * image's document, or it died), a pending program's result is lost: its
   * record goes on as if it failed (kill_grace still applies).
   */
  restore(doc: HealthDocument): void {
    for (const w of doc.watches) {
      this.watches.set(w.key, { ...w });
      this.lastProbeAt.set(w.key, 0);
    }
    // Records first: results the old image had half-read are dispatched at adopt.
    for (const r of doc.records) this.records.push({ ...r });
    if (doc.runner) {
      try {
        native.setCloexec(doc.runner.fd, true);
      } catch {
        /* adopt() reports it */
      }
      this.runner.adopt(doc.runner);
    }
    for (const rec of this.records) {
      if (rec.program && !this.runner.isPending(rec.program.id)) {
        const { event } = rec.program;
        rec.program = undefined;
        this.programDone(rec, event, false, 'result lost across the re-exec (no action runner carried over)');
      }
    }
    if (doc.watches.length || doc.records.length) {
      this.log.info({ watches: doc.watches.map((w) => ({ dir: w.key, state: w.state })), records: doc.records.map((r) => ({ owner: r.owner, dir: r.key, phase: r.phase, program: r.program })) }, 'lock-space health carried over the re-exec');
    }
  }
}
