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

/** The in-memory document (format 1 shape) in format 2; documents without a relockd extension unchanged. */
export function encodeState(doc: StateDocument): unknown {
  const ext = doc.relockd;
  if (!ext) return doc;
  // buildState lists the extras in the lock spaces' order: look up by fd only when they are not.
  let byFd: Map<number, RelockdExtension['resources'][number]> | null = null;
  const extraOf = (j: number, fd: number) => {
    const x = ext.resources[j];
    if (x?.fd === fd) return x;
    byFd ??= new Map(ext.resources.map((r) => [r.fd, r]));
    return byFd.get(fd);
  };
  let j = 0;
  const cols: LeaseColumns = { counts: [], name: [], fd: [], flags: [], since: [], dev: [], ino: [], owners: [], multiOwners: [], paths: [], classic: [] };
  const spaces = [doc.defaultLockspace, ...doc.lockspaces];
  for (const ls of spaces) {
    cols.counts.push(ls.resources.length);
    for (const r of ls.resources) {
      const i = j;
      const x = extraOf(j++, r.fd);
      if (x?.dev === undefined || x.ino === undefined) throw new Error(`lease fd ${r.fd} has no recorded identity`);
      cols.name.push(r.name);
      cols.fd.push(r.fd);
      cols.flags.push(r.flags);
      cols.since.push(x.since);
      // Identities travel as doubles in memory (the addon reports them so); format 1 wrote their decimal text.
      cols.dev.push(Number(x.dev));
      cols.ino.push(Number(x.ino));
      for (const o of r.owners) cols.owners.push(o);
      if (r.owners.length !== 1) cols.multiOwners.push([i, r.owners.length]);
      if (r.path !== derivedPath(ls.directory, r.name)) cols.paths.push([i, r.path]);
      if (x.classic) cols.classic.push(r.fd);
    }
  }
  const { resources: _resources, formatVersion: _v, ...rest } = ext;
  const out: CompactExtension = { formatVersion: 2, ...rest, leases: cols };
  const empty = (ls: LockspaceState): LockspaceState => ({ ...ls, resources: [] });
  return { ...doc, defaultLockspace: empty(doc.defaultLockspace), lockspaces: doc.lockspaces.map(empty), relockd: out };
}

/** relockd's own document as the text of its state file: format 2, checked against the schema first. */
export function serialiseState(doc: StateDocument): string {
  const wire = encodeState(doc);
  validateState(wire);
  return JSON.stringify(wire);
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
  return decodeLeases(parsed as StateDocument, ext.leases!);
}

function decodeLeases(doc: StateDocument, c: LeaseColumns): StateDocument {
  const n = c.fd.length;
  const bad = (why: string): never => {
    throw new ValidationError('state document', [`/relockd/leases: ${why}`]);
  };
  for (const k of ['name', 'flags', 'since', 'dev', 'ino'] as const) if (c[k].length !== n) bad(`column '${k}' has ${c[k].length} entries, 'fd' has ${n}`);
  const spaces = [doc.defaultLockspace, ...doc.lockspaces];
  if (c.counts.length !== spaces.length) bad(`'counts' has ${c.counts.length} entries for ${spaces.length} lock spaces`);
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
  const classic = new Set(c.classic);
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
