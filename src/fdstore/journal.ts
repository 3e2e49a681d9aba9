// The fd store's journal, at the level of the state document's objects
// (state/document.ts), never of its JSON layout: a record is the current
// document entry of one lease or one connection (built by the snapshot's
// own functions, state/snapshot.ts), its removal, or the "skeleton" (the
// whole document but leases and connections: listeners, terminations,
// settings, health, history…). Replay applies them in order to the base
// document and gives the document a full snapshot taken at that moment
// would have been, for the restore code as it is.
//
// Every record upserts or removes one entity by its key, so a record says
// what the entity is now, not what happened to it: replaying one twice, or
// a record of a change the base already shows, changes nothing.

import { serversOf } from '../state/restore.js';
import type { ClientState, FdIdentity, LockspaceState, RelockdClientExtra, RelockdExtension, ResourceState, ServerState, StateDocument } from '../state/document.js';

/** A lock space in the document: null for the default one, else its `directory`. */
export type SpaceKey = string | null;
type ResourceExtra = RelockdExtension['resources'][number];

export type JournalOp =
  | { op: 'lease'; space: SpaceKey; state: ResourceState; extra: ResourceExtra }
  | { op: 'unlease'; space: SpaceKey; name: string }
  | { op: 'client'; server: string; state: ClientState; extra: RelockdClientExtra; fds: FdIdentity[]; nextClientId: number | undefined }
  | { op: 'unclient'; server: string; id: number }
  | { op: 'skeleton'; doc: StateDocument };

/** One turn's records, as framed in the memfd (stateSlots.ts). */
export function encodeRecord(ops: JournalOp[]): Buffer {
  return Buffer.from(JSON.stringify(ops), 'utf8');
}

export class JournalError extends Error {
  override name = 'JournalError';
}

function decodeRecord(payload: Buffer, index: number): JournalOp[] {
  let ops: unknown;
  try {
    ops = JSON.parse(payload.toString('utf8'));
  } catch (err) {
    throw new JournalError(`journal record ${index} is not JSON: ${(err as Error).message}`);
  }
  return checkOps(ops, index);
}

function checkOps(ops: unknown, index: number): JournalOp[] {
  if (!Array.isArray(ops)) throw new JournalError(`journal record ${index} is not a list of changes`);
  for (const o of ops) {
    const k = (o as { op?: unknown })?.op;
    if (k !== 'lease' && k !== 'unlease' && k !== 'client' && k !== 'unclient' && k !== 'skeleton') throw new JournalError(`journal record ${index} has an unknown change ${JSON.stringify(k)}`);
  }
  return ops as JournalOp[];
}

interface ClientEntry {
  state: ClientState;
  extra: RelockdClientExtra | undefined;
  fds: FdIdentity[];
}

/**
 * A document taken apart by entity: what replay changes. `skeleton` keeps
 * the rest (its lock spaces' and servers' entity lists are refilled by
 * toDocument()).
 */
class DocumentModel {
  private skeleton!: StateDocument;
  /** Lock space → resource name (document text) → entry, in document order. */
  private readonly spaces = new Map<SpaceKey, Map<string, { state: ResourceState; extra: ResourceExtra | undefined }>>();
  /** Server name → client id → entry. */
  private readonly clients = new Map<string, Map<number, ClientEntry>>();
  private readonly nextIds = new Map<string, number>();

  constructor(base: StateDocument) {
    const ext = base.relockd;
    const extraByFd = new Map<number, ResourceExtra>();
    for (const r of ext?.resources ?? []) extraByFd.set(r.fd, r);
    for (const ls of [base.defaultLockspace, ...base.lockspaces]) {
      const key = ls === base.defaultLockspace ? null : (ls.directory ?? '');
      const m = this.space(key);
      for (const r of ls.resources) m.set(r.name, { state: r, extra: extraByFd.get(r.fd) });
    }
    // Client fds leave the skeleton's identity list (one occurrence each): they come back with their client.
    const fdList = [...(ext?.fds ?? [])];
    const take = (fd: number, kind: FdIdentity['kind']): FdIdentity[] => {
      const i = fdList.findIndex((f) => f.fd === fd && f.kind === kind);
      return i < 0 ? [] : fdList.splice(i, 1);
    };
    const extraOf = new Map<string, RelockdClientExtra>();
    for (const c of ext?.clients ?? []) extraOf.set(`${c.server}\0${c.id}`, c);
    for (const [name, st] of Object.entries(serversOf(base))) {
      if (!st) continue;
      const m = this.serverClients(name);
      for (const c of st.clients) {
        const extra = c.id !== undefined ? extraOf.get(`${name}\0${c.id}`) : undefined;
        const fds = [...take(c.sock.fd, 'client'), ...(extra?.process && extra.process.pidfd >= 0 ? take(extra.process.pidfd, 'pidfd') : [])];
        m.set(c.id ?? -m.size - 1, { state: c, extra, fds });
      }
      if (st.next_client_id !== undefined) this.nextIds.set(name, st.next_client_id);
    }
    if (ext) ext.fds = fdList;
    this.setSkeleton(base);
  }

  private space(key: SpaceKey) {
    let m = this.spaces.get(key);
    if (!m) this.spaces.set(key, (m = new Map()));
    return m;
  }

  private serverClients(name: string) {
    let m = this.clients.get(name);
    if (!m) this.clients.set(name, (m = new Map()));
    return m;
  }

  private setSkeleton(doc: StateDocument): void {
    this.skeleton = doc;
    for (const ls of doc.lockspaces) this.space(ls.directory ?? '');
    for (const [name, st] of Object.entries(serversOf(doc))) {
      if (!st) continue;
      this.serverClients(name);
      if (st.next_client_id !== undefined) this.nextIds.set(name, Math.max(st.next_client_id, this.nextIds.get(name) ?? 0));
    }
  }

  apply(op: JournalOp): void {
    switch (op.op) {
      case 'lease':
        this.space(op.space).set(op.state.name, { state: op.state, extra: op.extra });
        return;
      case 'unlease':
        this.spaces.get(op.space)?.delete(op.name);
        return;
      case 'client':
        this.serverClients(op.server).set(op.state.id ?? -1, { state: op.state, extra: op.extra, fds: op.fds });
        if (op.nextClientId !== undefined) this.nextIds.set(op.server, op.nextClientId);
        return;
      case 'unclient':
        this.clients.get(op.server)?.delete(op.id);
        return;
      case 'skeleton':
        this.setSkeleton(op.doc);
        return;
    }
  }

  /** The document as a full snapshot would have written it (this object is spent afterwards). */
  toDocument(): StateDocument {
    const doc = this.skeleton;
    const ext = doc.relockd;
    const extras: ResourceExtra[] = [];
    const fill = (ls: LockspaceState, key: SpaceKey) => {
      const m = this.spaces.get(key);
      ls.resources = [];
      for (const e of m?.values() ?? []) {
        ls.resources.push(e.state);
        if (e.extra) extras.push(e.extra);
      }
    };
    fill(doc.defaultLockspace, null);
    const listed = new Set<string>();
    for (const ls of doc.lockspaces) {
      fill(ls, ls.directory ?? '');
      listed.add(ls.directory ?? '');
    }
    for (const key of this.spaces.keys()) {
      if (key === null || listed.has(key)) continue;
      const ls: LockspaceState = { directory: key, resources: [] };
      fill(ls, key);
      doc.lockspaces.push(ls);
    }
    const clientExtras: RelockdClientExtra[] = [];
    const clientFds: FdIdentity[] = [];
    const servers = serversOf(doc) as Record<string, ServerState | undefined>;
    for (const [name, st] of Object.entries(servers)) {
      if (!st) continue;
      st.clients = [];
      for (const e of this.clients.get(name)?.values() ?? []) {
        st.clients.push(e.state);
        if (e.extra) clientExtras.push(e.extra);
        clientFds.push(...e.fds);
      }
      const next = this.nextIds.get(name);
      if (next !== undefined) st.next_client_id = next;
    }
    if (ext) {
      ext.resources = extras;
      ext.clients = clientExtras;
      ext.fds = [...ext.fds, ...clientFds];
    }
    return doc;
  }
}

/** Base document + journal records (payloads, in order) → the document to restore. */
export function replayJournal(base: StateDocument, records: Buffer[]): StateDocument {
  if (records.length === 0) return base;
  const model = new DocumentModel(base);
  records.forEach((payload, i) => {
    for (const op of decodeRecord(payload, i)) model.apply(op);
  });
  return model.toDocument();
}
