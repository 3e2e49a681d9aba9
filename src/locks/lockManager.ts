// Lock spaces, resources and their owner lists (virlockspace.c's semantics,
// virLockSpaceAcquireResource, virLockSpaceReleaseResource). Pure bookkeeping plus policy; the kernel work goes
// through a FileLocker, and storage calls through a StorageGate.

import { dirname } from 'node:path';
import type { Logger } from 'pino';
import { E } from '../util/errorCatalogue.js';
import type { ProtocolError } from '../util/errors.js';
import * as errors from './errors.js';
import type { FileLocker, LockedFile } from './fileLocker.js';
import { KeyedMutex } from './keyedMutex.js';
import { StorageTimeoutError } from './storageGate.js';
import type { StorageGate } from './storageGate.js';
import type { StorageClassifier } from './storageClass.js';

import { AcquireFlags } from '../util/acquireFlags.js';
export { AcquireFlags };

/** Who a lease is for: the owner a client registered (a VM). */
export interface Owner {
  uuid: string;
  name: string;
  id: number;
  pid: number;
}

export interface Resource {
  readonly name: string;
  readonly path: string;
  readonly fd: number;
  /** Identity of the locked file, checked again after a re-exec. */
  readonly dev: number;
  readonly ino: number;
  /** Flags of the first acquirer: SHARED and/or AUTOCREATE. */
  readonly flags: number;
  /** Owner pids in acquisition order; duplicates allowed (as virLockSpaceAcquireResource). */
  readonly owners: number[];
  /** Epoch ms when the lock was taken. */
  readonly since: number;
  /**
   * A classic POSIX lock inherited from virtlockd's state (not an OFD lock):
   * it would be dropped if this process closed ANY fd of the same file, so
   * no file with this identity may be opened while it is held.
   */
  readonly classic?: boolean;
}

/** Epoch ms when this module loaded: `since` is kept relative to it, a small integer (no heap number per lease). */
const SINCE_BASE = Date.now();

/**
 * The same number, as a small integer when it is one. A number read from a
 * Float64Array (the addon's lock results) or computed from Date.now() is a
 * heap number even when integral; kept in a record field, that is a 16-byte
 * object per field and lease (seen for ~15 % of the records at 10k leases).
 */
const small = (x: number): number => (x | 0) === x ? x | 0 : x;

/**
 * A held resource as the lock table keeps it (issue 11: a few small fields,
 * not objects per owner). One owner, the common case, is its pid, not an
 * array; the path is derived from the lock space's directory string, which
 * all its resources share; the acquisition time is a small integer. The
 * rarer shapes are subclasses (AdoptedResource). `owners` builds an array
 * for readers; the lock manager itself uses the owner methods.
 */
export class HeldResource implements Resource {
  readonly fd: number;
  readonly dev: number;
  readonly ino: number;
  /** The owner's pid, or the pids in acquisition order when there are several. */
  private holders: number | number[];
  private readonly sinceRel: number;

  constructor(
    readonly name: string,
    /** The lock space's directory ('' for the default space). */
    private readonly dir: string,
    fd: number,
    dev: number,
    ino: number,
    readonly flags: number,
    owners: number | readonly number[],
    since: number,
  ) {
    this.fd = small(fd);
    this.dev = small(dev);
    this.ino = small(ino);
    this.holders = typeof owners === 'number' ? owners : owners.length === 1 ? owners[0]! : [...owners];
    this.sinceRel = small(since - SINCE_BASE);
  }

  get path(): string {
    return this.dir === '' ? this.name : `${this.dir}/${this.name}`;
  }

  get since(): number {
    return SINCE_BASE + this.sinceRel;
  }

  /** The path when it is not the one the lock space gives the name (only adopted resources have one). */
  get explicitPath(): string | null {
    return null;
  }

  get classic(): boolean {
    return false;
  }

  /** A copy: changing it does not change the lease. */
  get owners(): number[] {
    const h = this.holders;
    return typeof h === 'number' ? [h] : [...h];
  }

  /** Appends the owners to `out` (no array of its own per call); returns how many. */
  pushOwners(out: number[]): number {
    const h = this.holders;
    if (typeof h === 'number') {
      out.push(h);
      return 1;
    }
    for (const p of h) out.push(p);
    return h.length;
  }

  get ownerCount(): number {
    const h = this.holders;
    return typeof h === 'number' ? 1 : h.length;
  }

  hasOwner(pid: number): boolean {
    const h = this.holders;
    return typeof h === 'number' ? h === pid : h.includes(pid);
  }

  /** Appends an entry for `pid` (duplicates allowed, as virLockSpaceAcquireResource). */
  addOwner(pid: number): void {
    const h = this.holders;
    if (typeof h === 'number') this.holders = [h, pid];
    else h.push(pid);
  }

  /** Removes the first entry of `pid`; false if it has none. Removing the last leaves an empty list. */
  removeOwner(pid: number): boolean {
    const h = this.holders;
    if (typeof h === 'number') {
      if (h !== pid) return false;
      this.holders = [];
      return true;
    }
    const i = h.indexOf(pid);
    if (i < 0) return false;
    h.splice(i, 1);
    if (h.length === 1) this.holders = h[0]!;
    return true;
  }
}

/**
 * A resource from a state document whose path is not the one its lock space
 * gives its name, or whose lock is a classic POSIX lock inherited from
 * virtlockd: the fields only these need.
 */
class AdoptedResource extends HeldResource {
  constructor(base: Resource, dir: string, private readonly ownPath: string | null, private readonly inheritedClassic: boolean) {
    super(base.name, dir, base.fd, base.dev, base.ino, base.flags, base.owners, base.since);
  }

  override get path(): string {
    return this.ownPath ?? super.path;
  }

  override get explicitPath(): string | null {
    return this.ownPath;
  }

  override get classic(): boolean {
    return this.inheritedClassic;
  }
}

export class LockSpace {
  readonly resources = new Map<string, HeldResource>();
  /** `dir` is '' for the default lock space. */
  constructor(readonly dir: string) {}

  get isDefault(): boolean {
    return this.dir === '';
  }

  /** The file behind a resource name (virFileBuildPath). */
  pathOf(name: string): string {
    return this.isDefault ? name : `${this.dir}/${name}`;
  }

  /** Where a resource's storage lives, for the storage gate. */
  storageKeyOf(name: string): string {
    if (!this.isDefault) return this.dir;
    // One string per directory, not a fresh dirname() per call: that would
    // be hashed again by every map it is looked up in (classifier, gate),
    // several times per request. Nothing is kept per name (a map of names
    // cost ~60 B per lease), and the health tick calls this for every lease.
    if (name === this.lastName) return this.lastKey;
    let key: string | undefined;
    // dirname(name) is name.slice(0, i) when the last '/' is at i ≥ 2 and
    // is not the last character: a directory seen lately matches in place.
    const i = name.lastIndexOf('/');
    if (i >= 2 && i < name.length - 1) {
      for (const k of this.recentKeys) {
        if (k.length === i && name.startsWith(k)) {
          key = k;
          break;
        }
      }
    }
    if (key === undefined) {
      const d = dirname(name);
      key = this.keys.get(d);
      if (key === undefined) {
        if (this.keys.size >= 4096) this.keys.clear();
        this.keys.set(d, d);
        key = d;
      }
      this.recentKeys[this.recentNext] = key;
      this.recentNext = (this.recentNext + 1) % 8;
    }
    this.lastName = name;
    this.lastKey = key;
    return key;
  }

  /** The directory strings, each once. */
  private readonly keys = new Map<string, string>();
  /** Up to 8 directories seen lately, matched without making a string. */
  private readonly recentKeys: string[] = [];
  private recentNext = 0;
  private lastName: string | null = null;
  private lastKey = '';
}

/**
 * A lock-space directory must be absolute: the daemon runs in '/', and a
 * relative path would name a different directory than the client meant.
 */
function checkLockSpacePath(path: string): void {
  if (!path.startsWith('/')) throw errors.relativeLockspacePath(path);
}

export interface LockManagerOptions {
  locker: FileLocker;
  gate: StorageGate;
  log: Logger;
  /** Decides which storage may be touched on the event loop; null: none. */
  classifier?: StorageClassifier | null;
}

export class LockManager {
  readonly defaultSpace = new LockSpace('');
  /** Directory lock spaces, keyed by the exact path string (no normalisation). */
  readonly spaces = new Map<string, LockSpace>();
  /** When set, new acquisitions are refused with this error (safe mode, draining). */
  acquireRefusal: (() => ProtocolError) | null = null;
  /** Per lock space refusal of new acquisitions (a failed lock space, src/health/); null: allowed. */
  acquireCheck: ((lockspace: string, storageKey: string) => ProtocolError | null) | null = null;
  /** A lease held for this owner (re-acquired after a storage failure) that it may take back; true: granted. */
  handover: ((lockspace: string, name: string, owner: Owner) => boolean) | null = null;
  private readonly mutex = new KeyedMutex();
  private readonly locker: FileLocker;
  private readonly gate: StorageGate;
  private readonly log: Logger;
  private readonly classifier: StorageClassifier | null;
  /** Held resources with inherited classic locks (they disable the fast path). */
  private classicCount = 0;

  constructor(opts: LockManagerOptions) {
    this.locker = opts.locker;
    this.gate = opts.gate;
    this.log = opts.log;
    this.classifier = opts.classifier ?? null;
  }

  /** All lock spaces, directory spaces first (the order virtlockd frees in). */
  allSpaces(): LockSpace[] {
    return [...this.spaces.values(), this.defaultSpace];
  }

  lookup(path: string): LockSpace {
    if (path === '') return this.defaultSpace;
    const ls = this.spaces.get(path);
    if (!ls) throw errors.lockspaceNotFound(path);
    return ls;
  }

  /** CREATE_LOCKSPACE: idempotent; `mkdir -p` 0700 when missing. */
  async createLockSpace(path: string): Promise<LockSpace> {
    if (path === '') return this.defaultSpace;
    const known = this.spaces.get(path);
    if (!known) checkLockSpacePath(path);
    if (known) return known;
    return this.mutex.run(`space\0${path}`, async () => {
      const again = this.spaces.get(path);
      if (again) return again;
      await this.ensureDirectory(path);
      const ls = new LockSpace(path);
      this.spaces.set(path, ls);
      this.classifier?.isHostLocal(path); // classify now: releases ask whether to unlink
      this.log.info({ lockspace: path }, 'lockspace created');
      return ls;
    });
  }

  /** NEW: like CREATE_LOCKSPACE, but an existing space is an error. */
  async newLockSpace(path: string): Promise<void> {
    if (path === '') throw errors.defaultLockspaceExists();
    if (this.spaces.has(path)) throw errors.lockspaceExists(path);
    checkLockSpacePath(path);
    await this.mutex.run(`space\0${path}`, async () => {
      if (this.spaces.has(path)) throw errors.lockspaceExists(path);
      await this.ensureDirectory(path);
      this.spaces.set(path, new LockSpace(path));
      this.classifier?.isHostLocal(path);
      this.log.info({ lockspace: path }, 'lockspace created');
    });
  }

  private async ensureDirectory(path: string): Promise<void> {
    let kind: 'dir' | 'other' | 'missing';
    try {
      kind = await this.gate.run(path, () => this.locker.kind(path));
    } catch (err) {
      throw errors.storageError(E.STORAGE_CREATE_LOCKSPACE, { path }, err);
    }
    if (kind === 'other') throw errors.notADirectory(path);
    if (kind === 'missing') {
      try {
        await this.gate.run(path, () => this.locker.mkdirp(path, 0o700));
      } catch (err) {
        throw errors.storageError(E.STORAGE_CREATE_LOCKSPACE, { path }, err);
      }
    }
  }

  private checkName(ls: LockSpace, name: string): void {
    if (ls.isDefault) {
      if (!name.startsWith('/')) throw errors.relativeResourcePath(name);
    } else if (name === '' || name === '.' || name === '..' || name.includes('/')) {
      throw errors.badResourceName(name, ls.dir);
    }
  }

  private key(ls: LockSpace, name: string): string {
    return `res\0${ls.dir}\0${name}`;
  }

  /** Nothing running or queued on this resource (no key built when nothing runs at all: the hot path). */
  private unqueued(ls: LockSpace, name: string): boolean {
    return this.mutex.idle || !this.mutex.busy(this.key(ls, name));
  }

  /**
   * ACQUIRE_RESOURCE for `owner.pid`. On local storage with nothing queued
   * for this resource it completes synchronously (no promise, no thread
   * hop); otherwise it is ordered behind earlier operations on the resource
   * and its storage calls run off the event loop with a deadline.
   */
  acquire(path: string, name: string, flags: number, owner: Owner): void | Promise<void> {
    const ls = this.lookup(path);
    this.checkName(ls, name);
    if (this.acquireRefusal) throw this.acquireRefusal();
    const refusal = this.acquireCheck?.(ls.dir, ls.storageKeyOf(name));
    if (refusal) throw refusal;
    const shared = (flags & AcquireFlags.SHARED) !== 0;
    if (this.unqueued(ls, name) && this.classicCount === 0) {
      if (this.tryJoinHeld(ls, name, shared, owner)) return;
      if (this.inline(ls, name)) return this.lockInline(ls, name, flags, owner);
    }
    return this.mutex.run(this.key(ls, name), async () => {
      if (this.tryJoinHeld(ls, name, shared, owner)) return;
      const create = (flags & AcquireFlags.AUTOCREATE) !== 0;
      const file = ls.pathOf(name);
      await this.guardClassic(ls, name, file);
      let locked: LockedFile;
      try {
        locked = await this.gate.run(
          ls.storageKeyOf(name),
          () => this.locker.lock(file, { shared, create }),
          (late) => {
            this.log.warn({ owner, lockspace: ls.dir, resource: name }, 'lock arrived after the storage deadline; releasing it');
            void this.free(ls, { name, path: file, fd: late.fd, dev: late.dev, ino: late.ino, flags, owners: [], since: Date.now() });
          },
        );
      } catch (err) {
        throw this.refused(ls, name, flags, owner, err);
      }
      this.stored(ls, name, flags, owner, locked);
    });
  }

  /**
   * A logger with the owner bound: pino serializes child bindings once, so
   * the owner is not re-serialized on every lease line (cheaper at 'info',
   * the default level, where every acquire and release is logged).
   */
  private ownerLog(owner: Owner): Logger {
    let l = this.ownerLogs.get(owner);
    if (!l) {
      l = this.log.child({ owner });
      this.ownerLogs.set(owner, l);
    }
    return l;
  }

  private readonly ownerLogs = new WeakMap<Owner, Logger>();

  /** Whether calls for this resource may run on the event loop. */
  private inline(ls: LockSpace, name: string): boolean {
    return this.classifier !== null && this.classifier.mode(ls.storageKeyOf(name)) === 'inline';
  }

  /**
   * The resource is already in our table: a shared request joins a shared
   * lease (no kernel call); anything else is refused, even for the same owner.
   */
  private tryJoinHeld(ls: LockSpace, name: string, shared: boolean, owner: Owner): boolean {
    const held = ls.resources.get(name);
    if (!held) return false;
    if (shared && (held.flags & AcquireFlags.SHARED) !== 0) {
      held.addOwner(owner.pid);
      this.storeHooks?.changed(ls, held);
      this.ownerLog(owner).info({ lockspace: ls.dir, resource: name, shared, owners: held.ownerCount }, 'lease acquired (shared)');
      return true;
    }
    if (held.hasOwner(owner.pid) && this.handover?.(ls.dir, name, owner)) return true;
    this.ownerLog(owner).info({ lockspace: ls.dir, resource: name, shared }, 'lease refused: held by this daemon');
    throw errors.resourceLocked(name);
  }

  private lockInline(ls: LockSpace, name: string, flags: number, owner: Owner): void {
    const file = ls.pathOf(name);
    const t0 = performance.now();
    let locked: LockedFile;
    try {
      locked = this.locker.lockSync(file, { shared: (flags & AcquireFlags.SHARED) !== 0, create: (flags & AcquireFlags.AUTOCREATE) !== 0 });
    } catch (err) {
      throw this.refused(ls, name, flags, owner, err);
    } finally {
      this.classifier!.observe(ls.storageKeyOf(name), performance.now() - t0);
    }
    this.stored(ls, name, flags, owner, locked);
  }

  private refused(ls: LockSpace, name: string, flags: number, owner: Owner, err: unknown) {
    const e = this.acquireError(err, name, ls.pathOf(name), (flags & AcquireFlags.AUTOCREATE) !== 0);
    this.ownerLog(owner).info({ lockspace: ls.dir, resource: name, shared: (flags & AcquireFlags.SHARED) !== 0, err: e.message }, 'lease refused');
    return e;
  }

  private stored(ls: LockSpace, name: string, flags: number, owner: Owner, locked: LockedFile): void {
    const res = new HeldResource(name, ls.dir, locked.fd, locked.dev, locked.ino, flags, owner.pid, Date.now());
    ls.resources.set(name, res);
    this.storeHooks?.added(ls, res);
    this.ownerLog(owner).info({ lockspace: ls.dir, resource: name, shared: (flags & AcquireFlags.SHARED) !== 0, autocreate: (flags & AcquireFlags.AUTOCREATE) !== 0, fd: locked.fd, ...((locked.attempts ?? 1) > 1 ? { attempts: locked.attempts, retried: locked.retried } : {}) }, 'lease acquired');
  }

  /**
   * Opening (and, on failure, closing) a file that one of our inherited
   * classic locks covers would drop that lock. Such a file is reported busy
   * without ever being opened. Only stat is used, which touches no lock.
   */
  private async guardClassic(ls: LockSpace, name: string, file: string): Promise<void> {
    const classic: Resource[] = [];
    for (const sp of this.allSpaces()) for (const r of sp.resources.values()) if (r.classic) classic.push(r);
    if (classic.length === 0) return;
    let id: { dev: number; ino: number } | null;
    try {
      id = await this.gate.run(ls.storageKeyOf(name), () => this.locker.identity(file));
    } catch {
      id = null;
    }
    if (id && classic.some((r) => r.dev === id!.dev && r.ino === id!.ino)) throw errors.resourceLocked(name);
  }

  private acquireError(err: unknown, name: string, file: string, create: boolean) {
    const e = err as { code?: string; stage?: string };
    if (e.stage === 'lock' && (e.code === 'EAGAIN' || e.code === 'EACCES')) return errors.resourceLocked(name);
    if (e.stage === 'open') {
      return errors.storageError(create ? E.STORAGE_OPEN_CREATE_RESOURCE : E.STORAGE_OPEN_RESOURCE, { file }, err);
    }
    return errors.storageError(E.STORAGE_ACQUIRE, { file }, err);
  }

  /** RELEASE_RESOURCE: removes the first entry of `owner.pid` (synchronous on local storage). */
  release(path: string, name: string, owner: Owner): void | Promise<void> {
    const ls = this.lookup(path);
    if (this.unqueued(ls, name)) {
      const res = this.dropOwner(ls, name, owner);
      if (!res) return;
      if (this.inline(ls, name)) return this.freeInline(ls, res);
      return this.mutex.run(this.key(ls, name), () => this.free(ls, res, true));
    }
    return this.mutex.run(this.key(ls, name), async () => {
      const res = this.dropOwner(ls, name, owner);
      if (res) await this.free(ls, res, true);
    });
  }

  /** Removes one entry of the owner; returns the resource if that was the last. */
  private dropOwner(ls: LockSpace, name: string, owner: Owner): Resource | null {
    const res = ls.resources.get(name);
    if (!res) throw errors.resourceNotLocked(name);
    if (!res.removeOwner(owner.pid)) throw errors.notOwner(owner.pid);
    this.storeHooks?.changed(ls, res);
    const left = res.ownerCount;
    this.ownerLog(owner).info({ lockspace: ls.dir, resource: name, owners: left }, 'lease released');
    if (left > 0) return null;
    ls.resources.delete(name);
    this.storeHooks?.removed(ls, res);
    if (res.classic) this.classicCount--;
    return res;
  }

  private releaseRequest(ls: LockSpace, res: Resource) {
    const autocreate = (res.flags & AcquireFlags.AUTOCREATE) !== 0;
    const unlink = autocreate && this.unlinksLeaseFiles(ls, res.name);
    return { unlinkPath: unlink ? res.path : null, onlyIfExclusive: (res.flags & AcquireFlags.SHARED) !== 0, classic: res.classic === true };
  }

  /**
   * Autocreated lease files are unlinked on release only on host-local
   * storage. On storage other hosts may share (NFS, CIFS, Ceph, GFS2, OCFS2,
   * FUSE, unknown), unlink-then-close lets an acquirer on another host lock
   * the unlinked file while a later acquirer creates a new one: two holders
   * (docs/nfs-crosshost.md). Kept files are removed by `relockctl cleanup`.
   */
  private unlinksLeaseFiles(ls: LockSpace, name: string): boolean {
    if (!this.classifier) return true;
    const dir = ls.storageKeyOf(name);
    if (this.classifier.isHostLocal(dir)) return true;
    if (!this.keptNoticed.has(dir)) {
      this.keptNoticed.add(dir);
      this.log.info({ lockspace: ls.dir, dir }, 'lease files on storage other hosts may share are kept on release (remove unused ones with relockctl cleanup)');
    }
    return false;
  }

  private readonly keptNoticed = new Set<string>();

  private freeInline(ls: LockSpace, res: Resource): void {
    const t0 = performance.now();
    try {
      const out = this.locker.releaseSync(res.fd, this.releaseRequest(ls, res), res);
      if (out.unlinkError) this.log.warn({ lockspace: ls.dir, resource: res.name, err: out.unlinkError }, 'could not unlink lease file');
    } catch (err) {
      this.log.error({ lockspace: ls.dir, resource: res.name, fd: res.fd, err }, 'closing lease fd failed');
      throw errors.storageError(E.STORAGE_RELEASE, { file: res.path }, err);
    } finally {
      this.classifier!.observe(ls.storageKeyOf(res.name), performance.now() - t0);
    }
  }

  /**
   * Closes a resource's fd, which drops the lock; autocreated lease files
   * are unlinked first (a shared one only if we can upgrade to exclusive,
   * i.e. nobody on another host still shares it). Releases bypass the
   * gate's fail-fast (StorageGate.runRelease): on hung storage the call
   * waits and still runs once the storage answers, so the lock is never
   * kept for nobody. Past the deadline the caller gets the error, and the
   * completion is logged when it comes.
   */
  private async free(ls: LockSpace, res: Resource, reportErrors = false): Promise<void> {
    const started = Date.now();
    const onLate = (err: unknown) => {
      if (err) this.log.error({ lockspace: ls.dir, resource: res.name, fd: res.fd, err }, 'late release failed');
      else this.log.warn({ lockspace: ls.dir, resource: res.name, fd: res.fd, ms: Date.now() - started }, 'late release completed: lock dropped');
    };
    try {
      const out = await this.gate.runRelease(ls.storageKeyOf(res.name), () => this.locker.release(res.fd, this.releaseRequest(ls, res)), onLate);
      if (out.unlinkError) this.log.warn({ lockspace: ls.dir, resource: res.name, err: out.unlinkError }, 'could not unlink lease file');
    } catch (err) {
      this.log.error({ lockspace: ls.dir, resource: res.name, fd: res.fd, err }, err instanceof StorageTimeoutError ? 'release timed out: it still runs and drops the lock when the storage answers' : 'closing lease fd failed');
      if (reportErrors) throw errors.storageError(E.STORAGE_RELEASE, { file: res.path }, err);
    }
  }

  /** CREATE_RESOURCE: touch the file unless the resource is held. */
  async createResource(path: string, name: string): Promise<void> {
    const ls = this.lookup(path);
    this.checkName(ls, name);
    await this.mutex.run(this.key(ls, name), async () => {
      if (ls.resources.has(name)) throw errors.resourceLocked(name);
      const file = ls.pathOf(name);
      await this.guardClassic(ls, name, file);
      try {
        await this.gate.run(ls.storageKeyOf(name), () => this.locker.touch(file));
      } catch (err) {
        throw errors.storageError(E.STORAGE_CREATE_FILE, { file }, err);
      }
    });
  }

  /** DELETE_RESOURCE: unlink unless held; a missing file is fine. */
  async deleteResource(path: string, name: string): Promise<void> {
    const ls = this.lookup(path);
    this.checkName(ls, name);
    await this.mutex.run(this.key(ls, name), async () => {
      if (ls.resources.has(name)) throw errors.resourceLocked(name);
      const file = ls.pathOf(name);
      try {
        if (this.classifier && !this.classifier.isHostLocal(ls.storageKeyOf(name))) return await this.deleteShared(ls, name, file);
        await this.gate.run(ls.storageKeyOf(name), () => this.locker.unlink(file));
      } catch (err) {
        if ((err as ProtocolError).code === errors.resourceLocked(name).code) throw err;
        throw errors.storageError(E.STORAGE_DELETE_RESOURCE, { file }, err);
      }
    });
  }

  /**
   * DELETE_RESOURCE on storage other hosts may share: a plain unlink could
   * remove a lease file another host holds (the next acquirer would create a
   * new one: two holders). As relockctl cleanup does, take an exclusive lock
   * first (busy if anyone holds it) and unlink while holding it.
   */
  private async deleteShared(ls: LockSpace, name: string, file: string): Promise<void> {
    await this.guardClassic(ls, name, file);
    let locked: LockedFile;
    try {
      locked = await this.gate.run(
        ls.storageKeyOf(name),
        () => this.locker.lock(file, { shared: false, create: false }),
        (late) => void this.locker.release(late.fd, { unlinkPath: null, onlyIfExclusive: false }).catch(() => undefined),
      );
    } catch (err) {
      const e = err as { code?: string; stage?: string };
      if (e.code === 'ENOENT') return;
      if (e.stage === 'lock' && (e.code === 'EAGAIN' || e.code === 'EACCES')) throw errors.resourceLocked(name);
      throw err;
    }
    await this.gate.run(ls.storageKeyOf(name), () => this.locker.release(locked.fd, { unlinkPath: file, onlyIfExclusive: false }));
  }

  /** Number of resources whose owner list contains `pid`. */
  heldBy(pid: number): number {
    let n = 0;
    for (const ls of this.allSpaces()) for (const r of ls.resources.values()) if (r.hasOwner(pid)) n++;
    return n;
  }

  /**
   * Connection-close cleanup (virLockSpaceReleaseResourcesForOwner): removes one occurrence of `pid` from
   * every resource in every lock space; frees those left without owners.
   * Returns how many resources listed the pid.
   */
  async releaseOwner(pid: number, owner?: Owner): Promise<number> {
    const work: Promise<boolean>[] = [];
    for (const ls of this.allSpaces()) {
      for (const res of ls.resources.values()) {
        if (!res.hasOwner(pid)) continue;
        work.push(
          this.mutex.run(this.key(ls, res.name), async () => {
            const cur = ls.resources.get(res.name);
            if (!cur || !cur.removeOwner(pid)) return false;
            this.storeHooks?.changed(ls, cur);
            const left = cur.ownerCount;
            this.ownerLog(owner ?? { uuid: '', name: '', id: 0, pid }).info({ lockspace: ls.dir, resource: cur.name, owners: left }, 'lease released: owner gone');
            if (left === 0) {
              ls.resources.delete(cur.name);
              this.storeHooks?.removed(ls, cur);
              if (cur.classic) this.classicCount--;
              // Local storage: close right here, no thread hop (an owner's
              // death should free its leases at once).
              if (this.inline(ls, cur.name)) {
                try {
                  this.freeInline(ls, cur);
                } catch {
                  /* logged by freeInline */
                }
              } else await this.free(ls, cur);
            }
            return true;
          }),
        );
      }
    }
    const done = await Promise.all(work);
    return done.filter(Boolean).length;
  }

  /** True when no lease operation is running or queued. */
  get idle(): boolean {
    return this.mutex.idle;
  }

  /** Resolves when every lease operation started so far has finished. */
  settled(): Promise<void> {
    return this.mutex.settled();
  }

  /** Told of every lease taken, released or changed (the fd store, daemon/crashStore.ts). */
  storeHooks: { added(ls: LockSpace, r: Resource): void; removed(ls: LockSpace, r: Resource): void; changed(ls: LockSpace, r: Resource): void } | null = null;

  /** Re-creates a directory lock space from a state document (no mkdir). */
  adoptLockSpace(dir: string): LockSpace {
    if (dir === '') return this.defaultSpace;
    let ls = this.spaces.get(dir);
    if (!ls) {
      ls = new LockSpace(dir);
      this.spaces.set(dir, ls);
      this.classifier?.isHostLocal(dir);
    }
    return ls;
  }

  /** Re-creates a held resource from a state document; its fd holds the lock. */
  adoptResource(ls: LockSpace, r: Resource): void {
    this.adoptLease(ls, r.name, r.path, r.fd, r.dev, r.ino, r.flags, r.owners, r.since, r.classic === true);
  }

  /**
   * adoptResource from the fields themselves (a state document's columns:
   * no Resource object per lease). `path` null: the one the lock space gives
   * the name. `owners`: one pid, or the pids in acquisition order.
   */
  adoptLease(ls: LockSpace, name: string, path: string | null, fd: number, dev: number, ino: number, flags: number, owners: number | readonly number[], since: number, classic: boolean): void {
    if (ls.resources.has(name)) throw new Error(`resource ${name} in lockspace '${ls.dir}' listed twice`);
    const explicit = path !== null && path !== ls.pathOf(name) ? path : null;
    // Copied into the table's own shape: the document's objects can go.
    const rec =
      explicit === null && !classic
        ? new HeldResource(name, ls.dir, fd, dev, ino, flags, owners, since)
        : new AdoptedResource({ name, path: explicit ?? ls.pathOf(name), fd, dev, ino, flags, owners: typeof owners === 'number' ? [owners] : [...owners], since }, ls.dir, explicit, classic);
    ls.resources.set(name, rec);
    if (classic) this.classicCount++;
    if (flags & AcquireFlags.AUTOCREATE) this.classifier?.isHostLocal(ls.storageKeyOf(name));
  }

  /** Totals, for status lines and logs. */
  counts(): { lockspaces: number; resources: number; leases: number } {
    let resources = 0;
    let leases = 0;
    for (const ls of this.allSpaces()) {
      resources += ls.resources.size;
      for (const r of ls.resources.values()) leases += r.ownerCount;
    }
    return { lockspaces: this.spaces.size + 1, resources, leases };
  }
}
