// The main server's service: the lock-space program plus what happens when a
// connection closes (spec 3.6). When the connection an owner made for itself
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
import { closeProcessHandle, openProcessHandle, terminate } from './terminator.js';
import type { ProcessHandle, TerminationOptions } from './terminator.js';

export interface LockClient extends LockClientState {
  readonly conn: ClientConnection<LockClient>;
  /** Identity of the peer, taken when it registered itself as the owner. */
  process: Promise<ProcessHandle | null> | null;
}

export interface Termination {
  owner: Owner;
  started: number;
  handle: ProcessHandle | null;
  done: Promise<void>;
}

export class LockService implements Service<LockClient> {
  readonly name = 'virtlockd';
  readonly programs;
  /** Owners being terminated, by pid. */
  readonly terminations = new Map<number, Termination>();

  constructor(
    private readonly manager: LockManager,
    public termination: TerminationOptions,
    private readonly log: Logger,
  ) {
    this.programs = [
      lockspaceProgram({
        manager,
        onRegister: (st, owner) => this.onRegister(st as LockClient, owner),
      }),
    ];
  }

  createContext(conn: ClientConnection<LockClient>): LockClient {
    return { conn, restricted: false, owner: null, process: null };
  }

  private onRegister(c: LockClient, owner: Owner): void {
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
      void c.process?.then((h) => h && closeProcessHandle(h));
      return;
    }
    const t: Termination = { owner, started: Date.now(), handle: null, done: Promise.resolve() };
    t.done = this.endOwner(c, owner, t).finally(() => this.terminations.delete(owner.pid));
    this.terminations.set(owner.pid, t);
  }

  private async endOwner(c: LockClient, owner: Owner, t: Termination): Promise<void> {
    const log = this.log.child({ client: c.conn.id, owner });
    const handle = c.process ? await c.process : null;
    t.handle = handle;
    try {
      const outcome = handle ? await terminate(handle, owner, this.termination, log) : 'gone';
      const n = await this.manager.releaseOwner(owner.pid, owner);
      log.info({ outcome, released: n, ms: Date.now() - t.started }, 'owner connection closed: leases released');
    } catch (err) {
      log.error({ err }, 'owner cleanup failed');
    } finally {
      if (handle) closeProcessHandle(handle);
    }
  }
}
