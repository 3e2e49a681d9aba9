// The main server's service: the lock-space program plus what happens when a
// connection closes (libvirt: virLockDaemonClientFree, lock_daemon.c). When the connection an owner made for itself
// (peer pid == registered pid, i.e. QEMU's inherited connection) closes and
// that owner still holds leases, the owner must not keep running without
// them: relockd terminates it first and releases its leases once it is gone,
// so there is no moment where the VM runs unprotected. A dead owner (the
// usual case: QEMU exited) is released at once.

import type { Logger } from 'pino';
import type { ClientConnection, Service } from '../rpc/connection.js';
import { handleFd } from '../rpc/server.js';
import type { LockManager, Owner } from '../locks/lockManager.js';
import { lockspaceProgram } from '../protocol/lockspace.js';
import type { LockClientState } from '../protocol/lockspace.js';
import type { LockPrivateData } from '../state/document.js';
import { terminate } from './terminator.js';
import { closeProcessHandle, openProcessHandle } from '../util/processHandle.js';
import type { ProcessHandle } from '../util/processHandle.js';
import type { Freeze, TerminationOptions } from './terminator.js';
import { logOwnerExit } from './ownerExit.js';

export interface LockClient extends LockClientState {
  readonly conn: ClientConnection<LockClient>;
  /** Identity of the peer, taken when it registered itself as the owner. */
  process: ProcessHandle | null;
}

export interface Termination {
  owner: Owner;
  started: number;
  handle: ProcessHandle | null;
  /** 'terminating' can be carried across a re-exec; 'releasing' must finish first. */
  phase: 'terminating' | 'releasing';
  done: Promise<void>;
}

const NIL_UUID = '00000000-0000-0000-0000-000000000000';

export class LockService implements Service<LockClient>, Freeze {
  readonly name = 'virtlockd';
  readonly programs;
  /** Owners being terminated, by pid. */
  readonly terminations = new Map<number, Termination>();
  /** Told how each termination ended (metrics). */
  onTerminated: ((outcome: 'gone' | 'exited_on_term' | 'exited_on_kill' | 'error') => void) | null = null;
  private isFrozen = false;
  private readonly freezeListeners = new Set<() => void>();
  /** Set while quiescing for re-exec: running terminations stop at once. */
  get frozen(): boolean {
    return this.isFrozen;
  }
  set frozen(on: boolean) {
    this.isFrozen = on;
    if (on) for (const cb of [...this.freezeListeners]) cb();
  }
  /** Freeze: wakes terminations waiting for an exit when a re-exec freezes them. */
  onFreeze(cb: () => void): () => void {
    this.freezeListeners.add(cb);
    return () => this.freezeListeners.delete(cb);
  }

  constructor(
    private readonly manager: LockManager,
    public termination: TerminationOptions,
    private readonly log: Logger,
  ) {
    this.programs = [
      lockspaceProgram({
        manager,
        onRegister: (st, owner) => this.onRegister(st as LockClient, owner),
        onRestrict: (st) => this.onStateChange?.((st as LockClient).conn),
      }),
    ];
  }

  createContext(conn: ClientConnection<LockClient>): LockClient {
    return { conn, restricted: false, owner: null, process: null };
  }

  /** A client's registration or restriction changed (the fd store rewrites its state). */
  onStateChange: ((conn: ClientConnection<LockClient>) => void) | null = null;

  private onRegister(c: LockClient, owner: Owner): void {
    this.onStateChange?.(c.conn);
    c.conn.log.info({ owner }, 'owner registered');
    if (owner.pid === c.conn.peer.pid && owner.pid > 0 && !c.process) {
      c.process = openProcessHandle(owner.pid, handleFd(c.conn.socket));
    }
  }

  onClose(conn: ClientConnection<LockClient>): void {
    const c = conn.ctx;
    const owner = c.owner;
    const isOwnerConnection = owner !== null && owner.id !== 0 && owner.pid === conn.peer.pid && owner.pid > 0;
    if (!isOwnerConnection || this.manager.heldBy(owner.pid) === 0) {
      if (c.process) closeProcessHandle(c.process);
      return;
    }
    this.startTermination(owner, c.process, Date.now(), conn.id);
  }

  /** Terminates `owner` (if it still runs), then releases its leases. */
  startTermination(owner: Owner, handle: ProcessHandle | null, started: number, clientId?: number): void {
    const t: Termination = { owner, started, handle, phase: 'terminating', done: Promise.resolve() };
    const log = this.log.child({ client: clientId, owner });
    t.done = (async () => {
      try {
        const outcome = handle ? await terminate(handle, this.termination, log, this, started) : 'gone';
        if (outcome === 'frozen') return; // carried across the re-exec
        t.phase = 'releasing';
        const n = await this.manager.releaseOwner(owner.pid, owner);
        log.info({ outcome, released: n, ms: Date.now() - started }, 'owner connection closed: leases released');
        this.onTerminated?.(outcome === 'gone' ? 'gone' : outcome === 'exited-on-term' ? 'exited_on_term' : 'exited_on_kill');
      } catch (err) {
        log.error({ err }, 'owner cleanup failed');
        this.onTerminated?.('error');
      }
      this.terminations.delete(owner.pid);
      // Released first; how the owner ended is for the log, and may take a
      // moment (the kernel has it once the owner's parent reaps it).
      if (handle && handle.pidfd >= 0) logOwnerExit(handle.pidfd, owner.pid, log, () => closeProcessHandle(handle));
      else if (handle) closeProcessHandle(handle);
    })();
    this.terminations.set(owner.pid, t);
  }

  // ---- state document ------------------------------------------------------

  /** virtlockd's privateData; unregistered clients are written with id 0. */
  saveContext(c: LockClient): LockPrivateData {
    const o = c.owner;
    return {
      restricted: c.restricted,
      ownerPid: o?.pid ?? 0,
      ownerId: o?.id ?? 0,
      ownerName: o?.name ?? '',
      ownerUUID: o?.uuid ?? NIL_UUID,
    };
  }

  restoreContext(c: LockClient, d: LockPrivateData, process: ProcessHandle | null): void {
    c.restricted = d.restricted;
    c.owner = d.ownerId !== 0 ? { pid: d.ownerPid, id: d.ownerId, name: d.ownerName, uuid: normaliseUuid(d.ownerUUID) } : null;
    c.process = process;
  }
}

/** virtlockd's reader accepts 32 hex digits with optional '-' or spaces. */
function normaliseUuid(s: string): string {
  const h = s.replace(/[-\s]/g, '').toLowerCase();
  if (!/^[0-9a-f]{32}$/.test(h)) return s;
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
