// Keeps the fd store's state current at O(change): the daemon tells it which
// lease, connection or other part changed; at the end of the turn flush()
// writes one framed record (journal.ts) with the current document entry of
// each, built by the snapshot's own functions. When the journal has grown
// past a multiple of its base, compact() writes a full document as the new
// base (into the other slot): amortised O(1) per change, and crashStore.ts
// runs it in a turn of its own, after the replies of the turn that asked.

import type { ClientConnection } from '../rpc/connection.js';
import type { LockSpace } from '../locks/lockManager.js';
import { toDocText } from '../byteString.js';
import { clientEntry, resourceEntry } from '../state/snapshot.js';
import type { ServerSnapshotSource } from '../state/snapshot.js';
import type { StateDocument } from '../state/document.js';
import { encodeRecord } from './journal.js';
import type { JournalOp } from './journal.js';
import type { StateSlots } from './stateSlots.js';

export interface JournalSource {
  /** A full document (the base), with each connection's unanswered bytes. */
  full(): StateDocument;
  /** Everything but leases and connections. */
  skeleton(): StateDocument;
  /** The snapshot source of a server, by its name. */
  source(server: string): ServerSnapshotSource<any> | null;
  /** The bytes of `conn` a restart must dispatch again (undefined: none are kept for this server). */
  crashBytes(conn: ClientConnection<any>, server: string): { pending: Buffer; unsent: Buffer } | undefined;
  /** Changes whenever a skeleton part that changes with leases and owners does (lock spaces, terminations); cheap. */
  skeletonKey(): string;
}

export interface JournalPolicy {
  /** Compact when the journal exceeds `ratio` × the base … */
  ratio: number;
  /** … and at least this many bytes. */
  minBytes: number;
}

const DEFAULT_POLICY: JournalPolicy = { ratio: 2, minBytes: 64 * 1024 };

export class StateJournal {
  private readonly leases = new Map<LockSpace, Set<string>>();
  /** Changed connections → their server's name. */
  private readonly clients = new Map<ClientConnection<any>, string>();
  /** Connections whose last record carried unanswered bytes: looked at again at every flush until it carries none. */
  private readonly inflight = new Map<ClientConnection<any>, string>();
  private skeletonDirty = false;
  private lastSkeletonKey = '';
  private lastSkeletonText = '';
  readonly stats = { records: 0, recordBytes: 0, compactions: 0, baseBytes: 0 };

  constructor(
    readonly slots: StateSlots,
    private readonly src: JournalSource,
    private readonly policy: JournalPolicy = DEFAULT_POLICY,
  ) {}

  lease(ls: LockSpace, name: string): void {
    let s = this.leases.get(ls);
    if (!s) this.leases.set(ls, (s = new Set()));
    s.add(name);
  }

  client(conn: ClientConnection<any>, server: string): void {
    this.clients.set(conn, server);
  }

  skeleton(): void {
    this.skeletonDirty = true;
  }

  get hasChanges(): boolean {
    return this.leases.size > 0 || this.clients.size > 0 || this.inflight.size > 0 || this.skeletonDirty;
  }

  /** The journal has outgrown its base. */
  get compactionDue(): boolean {
    const s = this.slots;
    return !s.hasBase || s.journalBytes > Math.max(this.policy.minBytes, this.policy.ratio * s.baseBytes);
  }

  /** Writes a full document as the new base; every pending change is in it. */
  compact(): number {
    this.forget();
    const doc = this.src.full();
    const bytes = this.slots.write(JSON.stringify(doc));
    this.stats.compactions++;
    this.stats.baseBytes = bytes;
    // Connections with unanswered bytes in the base: watched until a record shows them answered.
    for (const c of doc.relockd?.clients ?? []) {
      if (!c.pending && !c.unsent) continue;
      const conn = this.src.source(c.server)?.server.clients.get(c.id);
      if (conn) this.inflight.set(conn, c.server);
    }
    return bytes;
  }

  /** Drops what is pending (a base follows). */
  forget(): void {
    this.leases.clear();
    this.clients.clear();
    this.inflight.clear();
    this.skeletonDirty = false;
    this.lastSkeletonKey = this.src.skeletonKey();
    this.lastSkeletonText = '';
  }

  /** This turn's changes as one record (nothing when nothing changed); returns its bytes. */
  flush(): number {
    const ops: JournalOp[] = [];
    const key = this.src.skeletonKey();
    if (key !== this.lastSkeletonKey) this.skeletonDirty = true;
    if (this.skeletonDirty) ops.push(this.skeletonOp(key));
    for (const [ls, names] of this.leases) {
      const space = ls.isDefault ? null : toDocText(ls.dir);
      for (const name of names) {
        const r = ls.resources.get(name);
        if (r) {
          const e = resourceEntry(r);
          ops.push({ op: 'lease', space, state: e.state, extra: e.extra });
        } else ops.push({ op: 'unlease', space, name: toDocText(name) });
      }
    }
    this.leases.clear();
    for (const [c, server] of this.inflight) this.clients.set(c, server);
    for (const [conn, server] of this.clients) {
      const src = this.src.source(server);
      const e = src && !conn.isClosed ? clientEntry(src, conn, this.src.crashBytes(conn, server)) : null;
      if (e) {
        ops.push({ op: 'client', server, state: e.state, extra: e.extra, fds: e.fds, nextClientId: src!.server.nextClientId });
        if (e.extra.pending || e.extra.unsent) this.inflight.set(conn, server);
        else this.inflight.delete(conn);
      } else {
        ops.push({ op: 'unclient', server, id: conn.id });
        this.inflight.delete(conn);
      }
    }
    this.clients.clear();
    return this.write(ops);
  }

  /** The skeleton again if it changed since it was last written (the heartbeat's: metrics, health). */
  refreshSkeleton(): number {
    if (!this.slots.hasBase) return 0;
    const key = this.src.skeletonKey();
    const op = this.skeletonOp(key);
    const text = JSON.stringify(op);
    if (text === this.lastSkeletonText) return 0;
    return this.write([op], text);
  }

  private skeletonOp(key: string): JournalOp {
    const doc = this.src.skeleton();
    // The monotonic stamp of the snapshot means nothing after a crash; without it an idle skeleton compares equal.
    if (doc.relockd) doc.relockd.requestedAtNs = '0';
    this.skeletonDirty = false;
    this.lastSkeletonKey = key;
    return { op: 'skeleton', doc };
  }

  private write(ops: JournalOp[], skeletonText?: string): number {
    if (ops.length === 0) return 0;
    const payload = encodeRecord(ops);
    const n = this.slots.append(payload);
    const last = ops.filter((o) => o.op === 'skeleton').pop();
    if (last) this.lastSkeletonText = skeletonText ?? JSON.stringify(last);
    this.stats.records++;
    this.stats.recordBytes += n;
    return n;
  }
}
