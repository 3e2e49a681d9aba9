// The state document on disk ↔ in memory. In memory (document.ts) every
// lease is two objects, as virtlockd 9.0 lays it out; relockd writes its own
// documents in format 2, where every lease is one entry in each column of
// relockd.leases (a few numbers and the name), and the lock spaces' resource
// lists stay empty. A re-exec at 10k leases writes, parses and validates
// half the bytes and none of the 20k objects per lease of format 1; the
// schema still checks every column's every entry. Reading accepts format 1
// (an older relockd re-exec'ing into this one) and virtlockd's documents
// unchanged: after validation they are the in-memory form already.

import type { LockspaceState, RelockdExtension, StateDocument } from './document.js';
import { validateState } from './validate.js';
import { ValidationError } from '../util/validator.js';

/** Format 2's lease columns (schemas/state.schema.json, relockd.leases). */
export interface LeaseColumns {
  /** Leases per lock space: defaultLockspace, then lockspaces[0], …; the leases are in that order. */
  counts: number[];
  name: string[];
  fd: number[];
  flags: number[];
  since: number[];
  dev: number[];
  ino: number[];
  /** Every lease's owners in order: one each, but for the leases in multiOwners. */
  owners: number[];
  /** [lease index, owner count] of the leases that do not have exactly one owner. */
  multiOwners: [number, number][];
  /** [lease index, path] where the path is not the lock space's directory + '/' + name (the name itself in the default space). */
  paths: [number, string][];
  /** fds of the leases whose lock is a classic POSIX one. */
  classic: number[];
}

type Extension = Omit<RelockdExtension, 'formatVersion' | 'resources'>;
/** What is written: the document with relockd's extension in format 2. */
type CompactExtension = Extension & { formatVersion: 2; leases: LeaseColumns };

const derivedPath = (dirText: string | undefined, name: string): string => (dirText === undefined ? name : `${dirText}/${name}`);

export const emptyColumns = (): LeaseColumns => ({ counts: [], name: [], fd: [], flags: [], since: [], dev: [], ino: [], owners: [], multiOwners: [], paths: [], classic: [] });

/**
 * A format-1 document's leases (relockd's in-memory form, an older relockd's
 * file, virtlockd's) as columns. A lease without a recorded identity with
 * it gets dev and ino -1 and since -1 (restore looks in the document's fd
 * list, then checks what it can), unless `strict`: what is written must
 * have them.
 */
export function leaseColumnsOf(doc: StateDocument, strict = false): LeaseColumns {
  const ext = doc.relockd;
  // buildState lists the extras in the lock spaces' order: look up by fd only when they are not.
  let byFd: Map<number, RelockdExtension['resources'][number]> | null = null;
  const extraOf = (j: number, fd: number) => {
    if (!ext) return undefined;
    const x = ext.resources[j];
    if (x?.fd === fd) return x;
    byFd ??= new Map(ext.resources.map((r) => [r.fd, r]));
    return byFd.get(fd);
  };
  let j = 0;
  const cols = emptyColumns();
  for (const ls of [doc.defaultLockspace, ...doc.lockspaces]) {
    cols.counts.push(ls.resources.length);
    for (const r of ls.resources) {
      const i = j;
      const x = extraOf(j++, r.fd);
      const id = x?.dev !== undefined && x.ino !== undefined ? x : undefined;
      if (strict && !id) throw new Error(`lease fd ${r.fd} has no recorded identity`);
      cols.name.push(r.name);
      cols.fd.push(r.fd);
      cols.flags.push(r.flags);
      cols.since.push(x?.since ?? -1);
      // Identities travel as doubles in memory (the addon reports them so); format 1 wrote their decimal text.
      cols.dev.push(id ? Number(id.dev) : -1);
      cols.ino.push(id ? Number(id.ino) : -1);
      for (const o of r.owners) cols.owners.push(o);
      if (r.owners.length !== 1) cols.multiOwners.push([i, r.owners.length]);
      if (r.path !== derivedPath(ls.directory, r.name)) cols.paths.push([i, r.path]);
      if (x?.classic) cols.classic.push(r.fd);
    }
  }
  return cols;
}

/**
 * The in-memory document in format 2; documents without a relockd extension
 * unchanged. `leases`: the columns already built from the lock tables (the
 * document's own lists are then empty, snapshot.ts tableColumns).
 */
export function encodeState(doc: StateDocument, leases?: LeaseColumns): unknown {
  const ext = doc.relockd;
  if (!ext) return doc;
  const cols = leases ?? leaseColumnsOf(doc, true);
  const { resources: _resources, formatVersion: _v, ...rest } = ext;
  const out: CompactExtension = { formatVersion: 2, ...rest, leases: cols };
  const empty = (ls: LockspaceState): LockspaceState => ({ ...ls, resources: [] });
  return { ...doc, defaultLockspace: empty(doc.defaultLockspace), lockspaces: doc.lockspaces.map(empty), relockd: out };
}

/** relockd's own document as the text of its state file: format 2, checked against the schema first. */
export function serialiseState(doc: StateDocument, leases?: LeaseColumns): string {
  const wire = encodeState(doc, leases);
  validateState(wire);
  return JSON.stringify(wire);
}

/** A document's leases, checked, as restore reads them (state/restore.ts). */
export interface LeaseRows {
  cols: LeaseColumns;
  /** Owner counts of the leases that do not have exactly one, by lease index. */
  ownerCount: Map<number, number>;
  /** Document-text paths of the leases whose path is not derived, by lease index. */
  paths: Map<number, string>;
  /** fds of the leases whose lock is a classic POSIX one. */
  classic: Set<number>;
  /** false for virtlockd's documents: the lock flavour is for the kernel to say. */
  flavourRecorded: boolean;
}

/**
 * A parsed state file (any accepted format) → the in-memory document:
 * validated against the schema, then format 2's columns decoded. Throws a
 * ValidationError naming what is wrong.
 */
export function parseStateDocument(parsed: unknown): StateDocument {
  validateState(parsed);
  const ext = (parsed as { relockd?: { formatVersion: number; leases?: LeaseColumns } }).relockd;
  if (!ext || ext.formatVersion !== 2) return parsed as StateDocument;
  return decodeLeases(parsed as StateDocument, checkColumns(parsed as StateDocument, ext.leases!));
}

/**
 * What the new image restores from: the document validated as
 * parseStateDocument does, but format 2's leases stay columns (the lock
 * tables are built from them, with no object per lease in between) and the
 * document's lease lists stay empty. Other formats' leases are converted to
 * columns; their lists stay as they were.
 */
export function parseStateForRestore(parsed: unknown): { doc: StateDocument; leases: LeaseRows } {
  validateState(parsed);
  const ext = (parsed as { relockd?: { formatVersion: number; leases?: LeaseColumns } }).relockd;
  if (!ext || ext.formatVersion !== 2) {
    const doc = parsed as StateDocument;
    return { doc, leases: leaseRowsOf(doc) };
  }
  const doc = parsed as StateDocument;
  const leases = checkColumns(doc, ext.leases!);
  const { leases: _leases, formatVersion: _v, ...rest } = doc.relockd as unknown as CompactExtension;
  return { doc: { ...doc, relockd: { ...rest, formatVersion: 1, resources: [] } }, leases };
}

/** An in-memory (format 1) document's leases as restore reads them. */
export function leaseRowsOf(doc: StateDocument): LeaseRows {
  return { ...checkColumns(doc, leaseColumnsOf(doc)), flavourRecorded: doc.relockd !== undefined };
}

/** Format 2's columns checked against each other (the schema checks each entry). */
function checkColumns(doc: StateDocument, c: LeaseColumns): LeaseRows {
  const n = c.fd.length;
  const bad = (why: string): never => {
    throw new ValidationError('state document', [`/relockd/leases: ${why}`]);
  };
  for (const k of ['name', 'flags', 'since', 'dev', 'ino'] as const) if (c[k].length !== n) bad(`column '${k}' has ${c[k].length} entries, 'fd' has ${n}`);
  const spaces = 1 + doc.lockspaces.length;
  if (c.counts.length !== spaces) bad(`'counts' has ${c.counts.length} entries for ${spaces} lock spaces`);
  if (c.counts.reduce((a, b) => a + b, 0) !== n) bad(`'counts' adds up to ${c.counts.reduce((a, b) => a + b, 0)}, 'fd' has ${n}`);
  const ownerCount = new Map<number, number>();
  let owned = n;
  for (const [i, k] of c.multiOwners) {
    if (i >= n || ownerCount.has(i)) bad(`multiOwners: lease ${i} ${i >= n ? 'does not exist' : 'is listed twice'}`);
    ownerCount.set(i, k);
    owned += k - 1;
  }
  if (owned !== c.owners.length) bad(`the owner counts add up to ${owned}, 'owners' has ${c.owners.length}`);
  const paths = new Map<number, string>();
  for (const [i, p] of c.paths) {
    if (i >= n || paths.has(i)) bad(`paths: lease ${i} ${i >= n ? 'does not exist' : 'is listed twice'}`);
    paths.set(i, p);
  }
  return { cols: c, ownerCount, paths, classic: new Set(c.classic), flavourRecorded: true };
}

/** Format 2's columns → format 1's objects (for readers other than restore: tools, tests, the fd store). */
function decodeLeases(doc: StateDocument, rows: LeaseRows): StateDocument {
  const { cols: c, ownerCount, paths, classic } = rows;
  const n = c.fd.length;
  const spaces = [doc.defaultLockspace, ...doc.lockspaces];
  const extras: RelockdExtension['resources'] = new Array(n);
  const lists: LockspaceState['resources'][] = [];
  let i = 0;
  let o = 0;
  spaces.forEach((ls, k) => {
    const list: LockspaceState['resources'] = new Array(c.counts[k]!);
    for (let m = 0; m < list.length; m++, i++) {
      const name = c.name[i]!;
      const fd = c.fd[i]!;
      const owners = c.owners.slice(o, (o += ownerCount.get(i) ?? 1));
      list[m] = { name, path: paths.get(i) ?? derivedPath(ls.directory, name), fd, lockHeld: true, flags: c.flags[i]!, owners };
      const dev = String(c.dev[i]);
      const ino = String(c.ino[i]);
      extras[i] = classic.has(fd) ? { fd, since: c.since[i]!, dev, ino, classic: true } : { fd, since: c.since[i]!, dev, ino };
    }
    lists.push(list);
  });
  const { leases: _leases, formatVersion: _v, ...rest } = doc.relockd as unknown as CompactExtension;
  return {
    ...doc,
    defaultLockspace: { ...doc.defaultLockspace, resources: lists[0]! },
    lockspaces: doc.lockspaces.map((ls, k) => ({ ...ls, resources: lists[k + 1]! })),
    relockd: { ...rest, formatVersion: 1, resources: extras },
  };
}
