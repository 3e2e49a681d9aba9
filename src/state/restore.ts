// State document → live objects, in the new image after execve. Every fd is
// checked against the identity recorded before the exec (virtlockd trusts
// them blindly); each object that cannot be restored is reported as a
// problem, its fd is kept open (never closed: it may hold a lock), and the
// daemon goes into safe mode. Nothing here ever closes an inherited fd.

import { readFileSync, statSync } from 'node:fs';
import { display, fromDocText, toBuffer } from '../byteString.js';
import * as native from '../native.js';
import type { LockManager, LockSpace } from '../locks/lockManager.js';
import type { RpcServer } from '../rpc/server.js';
import type { ClientConnection } from '../rpc/connection.js';
import { adoptClientSocket } from '../rpc/adoptClient.js';
import type { ProcessHandle } from '../util/processHandle.js';
import type { FdIdentity, LockPrivateData, ServerState, StateDocument, TerminationState } from './document.js';
import { leaseRowsOf, type LeaseRows } from './documentFormat.js';

export interface RestoreTarget {
  lockServer: RpcServer<any>;
  adminServer: RpcServer<any> | null;
  manager: LockManager;
  /** Configured socket paths: used for listeners of documents without paths (virtlockd's). */
  socketPath: string;
  adminSocketPath: string | null;
  restoreLockContext(conn: ClientConnection<any>, d: LockPrivateData, process: ProcessHandle | null): void;
  openProcessHandle(pid: number, sockFd: number): ProcessHandle | null;
  /**
   * Lease fds on storage that failed (src/health/): fstat would block until
   * the server answers, so their recorded identity is trusted (execve keeps
   * the fd table as it was; the old image wrote the record moments ago).
   */
  unverifiable?: ReadonlySet<number>;
}

export interface RestoreReport {
  listeners: number;
  clients: number;
  resources: number;
  lockspaces: number;
  terminations: TerminationState[];
  /** Inherited fds that are kept open but could not be turned into objects. */
  orphans: FdIdentity[];
  /** The inherited, still locked pid file, when it checked out. */
  pidFile: { path: string; fd: number } | null;
  problems: string[];
}

/** The servers of any accepted document layout, by name. */
export function serversOf(doc: StateDocument): { virtlockd?: ServerState; admin?: ServerState } {
  const d = doc.daemon;
  if (d && 'servers' in d) {
    const s = d.servers;
    if (Array.isArray(s)) return { virtlockd: s[0] };
    return { virtlockd: s.virtlockd, admin: s.admin };
  }
  if (d) return { virtlockd: d as ServerState };
  return { virtlockd: doc.server };
}

type Kind = FdIdentity['kind'];

/** What fstat says of an fd: identity and file type, or the errno. */
interface FdStat {
  dev: number;
  ino: number;
  mode: number;
}

const S_IFMT = 0o170000;
const isType = (st: FdStat, t: number) => (st.mode & S_IFMT) === t;
const SOCK = 0o140000;
const REG = 0o100000;
const BLK = 0o060000;
const CHR = 0o020000;

/**
 * fstat (and set FD_CLOEXEC on) many fds in one addon call: a re-exec may
 * adopt tens of thousands of lease fds, and each one kept goes back to
 * close-on-exec anyway.
 */
function statAll(fds: number[]): Map<number, FdStat | { errno: number }> {
  const raw = native.fdInfo(Int32Array.from(fds), 1);
  const m = new Map<number, FdStat | { errno: number }>();
  fds.forEach((fd, i) => {
    const mode = raw[i * 3 + 2]!;
    m.set(fd, mode < 0 ? { errno: -mode } : { dev: raw[i * 3]!, ino: raw[i * 3 + 1]!, mode });
  });
  return m;
}

/**
 * Checks that `fd` is open and is the file recorded before the exec.
 * Returns the problem, or the fd's stat. dev/ino compare as doubles: the
 * addon reports them so, and a recorded value was rounded the same way.
 */
function checkFd(fd: number, kind: Kind, recorded: Map<number, FdIdentity>, known?: FdStat | { errno: number }): { why: string } | { st: FdStat } {
  return checkIdentity(fd, kind, recorded.get(fd), known);
}

/** checkFd against one recorded identity (`kind` absent: recorded as this kind). */
function checkIdentity(fd: number, kind: Kind, want: { kind?: Kind; dev: string; ino: string } | undefined, known?: FdStat | { errno: number }): { why: string } | { st: FdStat } {
  const st = known ?? statAll([fd]).get(fd)!;
  if ('errno' in st) return { why: `fd ${fd} (${kind}) is not open` };
  if (want) {
    if (want.kind !== undefined && want.kind !== kind) return { why: `fd ${fd} was recorded as ${want.kind}, expected ${kind}` };
    return sameFile(fd, kind, st, Number(want.dev), Number(want.ino));
  }
  // Documents without identities (virtlockd's): check the type at least.
  if ((kind === 'listener' || kind === 'client') && !isType(st, SOCK)) return { why: `fd ${fd} (${kind}) is not a socket` };
  if (kind === 'resource' && !isType(st, REG) && !isType(st, BLK) && !isType(st, CHR)) return { why: `fd ${fd} (resource) is not a file` };
  return { st };
}

/**
 * The flavour of the lock an inherited fd holds, from /proc/self/fdinfo
 * ("lock: 1: OFDLCK ..." or "POSIX"); 'unknown' counts as classic, the
 * cautious choice (classic locks are never upgraded as OFD ones).
 */
export function inheritedLockFlavour(fd: number): 'ofd' | 'classic' | 'unknown' {
  let text: string;
  try {
    text = readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8');
  } catch {
    return 'unknown';
  }
  if (/^lock:\s+\d+:\s+OFDLCK\b/m.test(text)) return 'ofd';
  if (/^lock:\s+\d+:\s+POSIX\b/m.test(text)) return 'classic';
  return 'unknown';
}

/** Whether `st` is the file recorded as dev/ino. */
function sameFile(fd: number, kind: Kind, st: FdStat, dev: number, ino: number): { why: string } | { st: FdStat } {
  return st.dev !== dev || st.ino !== ino ? { why: `fd ${fd} (${kind}) is not the file it was before the exec (dev/ino changed)` } : { st };
}

const problem = (r: { why: string } | { st: FdStat }): string | null => ('why' in r ? r.why : null);

/** What the per-object restores share: the recorded identities, the report, and the fd keeper. */
interface RestoreRun {
  readonly doc: StateDocument;
  readonly ext: StateDocument['relockd'];
  readonly target: RestoreTarget;
  readonly recorded: Map<number, FdIdentity>;
  readonly report: RestoreReport;
  /** An fd we cannot use is still never closed: it may hold a lock. */
  keep(fd: number, kind: Kind): void;
}

/**
 * Rebuilds every object from the document, each kind by its own function in
 * the order of the numbered steps (as libvirt's per-object
 * …PostExecRestart functions do): resources first (they are the locks), then
 * listeners and clients, the pid file, and owner terminations.
 */
export async function restoreState(doc: StateDocument, target: RestoreTarget, leases: LeaseRows = leaseRowsOf(doc)): Promise<RestoreReport> {
  const ext = doc.relockd;
  // Resource identities travel with their resource records (one record per lease): restoreResource checks those.
  const recorded = new Map<number, FdIdentity>((ext?.fds ?? []).map((f) => [f.fd, f]));
  const report: RestoreReport = { listeners: 0, clients: 0, resources: 0, lockspaces: 0, terminations: [], orphans: [], problems: [], pidFile: null };
  const run: RestoreRun = {
    doc,
    ext,
    target,
    recorded,
    report,
    keep: (fd, kind) => {
      const st = statAll([fd]).get(fd)!;
      if (!('errno' in st)) report.orphans.push({ fd, kind, dev: String(st.dev), ino: String(st.ino) });
    },
  };
  restoreOrphans(run);
  restoreLockSpaces(run, leases); // 1.
  const servers = serversOf(doc);
  await restoreServer(run, 'virtlockd', servers.virtlockd, target.lockServer, target.socketPath); // 2.
  await restoreServer(run, 'admin', servers.admin, target.adminServer, target.adminSocketPath);
  restorePidFile(run); // 3.
  for (const t of ext?.terminations ?? []) restoreTermination(run, t); // 4.
  return report;
}

/** Orphans carried from an earlier safe-mode image stay orphans. */
function restoreOrphans({ ext, report }: RestoreRun): void {
  for (const o of ext?.orphans ?? []) {
    const why = problem(checkFd(o.fd, o.kind, new Map([[o.fd, o]])));
    if (why) report.problems.push(`orphan ${why}`);
    else {
      report.orphans.push(o);
      native.setCloexec(o.fd, true);
    }
  }
}

/**
 * 1. Resources first: they are the locks. Re-mark them close-on-exec so
 * children never inherit them. Read from the columns (format 2 as written,
 * other formats converted): one table record per lease, nothing in between.
 */
function restoreLockSpaces(run: RestoreRun, rows: LeaseRows): void {
  const { doc } = run;
  const c = rows.cols;
  // Names in the document are text with non-UTF-8 bytes as \udcXX (byteString.ts).
  const dirs = ['', ...doc.lockspaces.map((l) => fromDocText(l.directory!))];
  const skip = run.target.unverifiable ?? new Set<number>();
  // One addon call for every lease fd (fstat + close-on-exec), read by index: at 10k leases a Map of stat objects was a third of adoption.
  // Most of it was done in the background while this image loaded, when the old image named the fds (fdPrescan.ts).
  const fds = skip.size ? c.fd.filter((fd) => !skip.has(fd)) : c.fd;
  const raw = native.fdInfoTake(Int32Array.from(fds), 1);
  let i = 0; // lease
  let k = 0; // fdInfo result
  let o = 0; // first owner of lease i
  dirs.forEach((dir, s) => {
    const ls = run.target.manager.adoptLockSpace(dir);
    if (dir) run.report.lockspaces++;
    for (const end = i + c.counts[s]!; i < end; i++) {
      const fd = c.fd[i]!;
      const n = rows.ownerCount.get(i) ?? 1;
      const owners = n === 1 ? c.owners[o]! : c.owners.slice(o, o + n);
      o += n;
      let known: FdStat | { errno: number } | undefined;
      if (skip.has(fd)) known = trustedLease(run, fd, c.dev[i]!, c.ino[i]!);
      else {
        const mode = raw[k * 3 + 2]!;
        known = mode < 0 ? { errno: -mode } : { dev: raw[k * 3]!, ino: raw[k * 3 + 1]!, mode };
        k++;
      }
      restoreLease(run, ls, dir, rows, i, owners, known);
    }
  });
}

/** A lease fd on failed storage: its recorded identity stands in for fstat (which would block). */
function trustedLease(run: RestoreRun, fd: number, dev: number, ino: number): FdStat | undefined {
  const rec = run.recorded.get(fd);
  const want = dev >= 0 ? { dev, ino } : rec?.kind === 'resource' ? { dev: Number(rec.dev), ino: Number(rec.ino) } : undefined;
  if (!want) return undefined;
  native.setCloexec(fd, true);
  return { ...want, mode: REG };
}

/** checkIdentity for a lease's identity from the columns, as numbers (the addon's and the document's doubles): no object per lease. */
function checkRecorded(fd: number, dev: number, ino: number, known: FdStat | { errno: number } | undefined): { why: string } | { st: FdStat } {
  const st = known ?? statAll([fd]).get(fd)!;
  if ('errno' in st) return { why: `fd ${fd} (resource) is not open` };
  return sameFile(fd, 'resource', st, dev, ino);
}

/** Lease i of the columns → the lock table, once its fd checks out. */
function restoreLease(run: RestoreRun, ls: LockSpace, dir: string, rows: LeaseRows, i: number, owners: number | number[], known: FdStat | { errno: number } | undefined): void {
  const { report } = run;
  const c = rows.cols;
  const fd = c.fd[i]!;
  const name = fromDocText(c.name[i]!);
  const pathText = rows.paths.get(i);
  const path = pathText === undefined ? null : fromDocText(pathText);
  // dev -1: no identity with the lease (virtlockd's documents; an older
  // relockd's may have it in its fd list).
  const dev = c.dev[i]!;
  const want = dev >= 0 ? null : run.recorded.get(fd);
  const checked = dev >= 0 ? checkRecorded(fd, dev, c.ino[i]!, known) : checkIdentity(fd, 'resource', want ?? undefined, known);
  if ('why' in checked) {
    report.problems.push(`resource '${display(name)}' in lockspace '${display(dir)}': ${checked.why}`);
    run.keep(fd, 'resource');
    return;
  }
  const fst = checked.st;
  if (want === undefined) {
    // virtlockd documents: the fd must still be the file at `path`, if it exists.
    const at = path ?? ls.pathOf(name);
    let mismatch = false;
    try {
      const pst = statSync(toBuffer(at), { bigint: true });
      mismatch = Number(pst.ino) !== fst.ino || Number(pst.dev) !== fst.dev;
    } catch {
      /* lease file gone: the fd still holds the lock */
    }
    if (mismatch) {
      // Not the file the document names: keep the fd (it may hold some
      // lock), but never pass it off as this resource.
      report.problems.push(`resource '${display(name)}' in lockspace '${display(dir)}': fd ${fd} is not the file at ${display(at)}`);
      run.keep(fd, 'resource');
      return;
    }
  }
  const since = c.since[i]!;
  // virtlockd takes classic POSIX locks, but after a handback it also holds
  // relockd's OFD locks: the kernel says which (relockd documents record it).
  const classic = rows.flavourRecorded ? rows.classic.has(fd) : inheritedLockFlavour(fd) !== 'ofd';
  try {
    // close-on-exec was set by fdInfoTake
    run.target.manager.adoptLease(ls, name, path, fd, fst.dev, fst.ino, c.flags[i]!, owners, since >= 0 ? since : Date.now(), classic);
    report.resources++;
  } catch (err) {
    report.problems.push((err as Error).message);
    run.keep(fd, 'resource');
  }
}

/** 2. A server's listeners, then its clients. */
async function restoreServer(run: RestoreRun, name: 'virtlockd' | 'admin', st: ServerState | undefined, srv: RpcServer<any> | null, defaultPath: string | null): Promise<void> {
  if (!st) return;
  if (!srv) {
    // e.g. an admin server in the document but none configured: keep its fds.
    for (const svc of st.services) for (const s of svc.socks) run.keep(s.fd, 'listener');
    for (const c of st.clients) run.keep(c.sock.fd, 'client');
    return;
  }
  if (st.next_client_id && st.next_client_id > srv.nextClientId) srv.nextClientId = st.next_client_id;
  const pathOf = new Map((run.ext?.listeners ?? []).map((l) => [l.fd, l]));
  for (const svc of st.services) for (const s of svc.socks) await restoreListener(run, name, srv, s, pathOf.get(s.fd), defaultPath);
  const extraClients = new Map((run.ext?.clients ?? []).filter((c) => c.server === name).map((c) => [c.id, c]));
  for (const c of st.clients) restoreClient(run, name, srv, c, c.id !== undefined ? extraClients.get(c.id) : undefined);
}

type SockRecord = ServerState['services'][number]['socks'][number];
type ListenerExtra = NonNullable<StateDocument['relockd']>['listeners'][number];
type ClientRecord = ServerState['clients'][number];
type ClientExtra = NonNullable<StateDocument['relockd']>['clients'][number];

async function restoreListener(run: RestoreRun, name: string, srv: RpcServer<any>, s: SockRecord, info: ListenerExtra | undefined, defaultPath: string | null): Promise<void> {
  const why = problem(checkFd(s.fd, 'listener', run.recorded));
  if (why) {
    run.report.problems.push(`${name} listener: ${why}`);
    run.keep(s.fd, 'listener');
    return;
  }
  try {
    await srv.adopt(s.fd, info?.path ?? defaultPath ?? '', info?.unlinkOnClose ?? s.unlinkUNIX ?? !s.isClient);
    native.setCloexec(s.fd, true);
    run.report.listeners++;
  } catch (err) {
    run.report.problems.push(`${name} listener fd ${s.fd}: ${(err as Error).message}`);
    run.keep(s.fd, 'listener');
  }
}

function restoreClient(run: RestoreRun, name: 'virtlockd' | 'admin', srv: RpcServer<any>, c: ClientRecord, extra: ClientExtra | undefined): void {
  const { report, recorded, target } = run;
  const fd = c.sock.fd;
  const why = problem(checkFd(fd, 'client', recorded));
  if (why) {
    report.problems.push(`${name} client ${c.id ?? '?'}: ${why}`);
    run.keep(fd, 'client');
    return;
  }
  try {
    adoptClientSocket(srv, fd, (peer) => {
      const pd = c.privateData as LockPrivateData;
      let process: ProcessHandle | null = null;
      if (name === 'virtlockd' && pd.ownerId !== 0 && pd.ownerPid === peer.pid) {
        if (extra?.process && extra.process.pidfd >= 0) {
          const pwhy = problem(checkFd(extra.process.pidfd, 'pidfd', recorded));
          if (pwhy) report.problems.push(`client ${c.id} owner handle: ${pwhy}`);
          else {
            process = { pid: pd.ownerPid, pidfd: extra.process.pidfd, startTime: extra.process.startTime };
            native.setCloexec(extra.process.pidfd, true);
          }
        }
        process ??= target.openProcessHandle(pd.ownerPid, fd);
      }
      return {
        id: c.id,
        connTime: c.conn_time,
        pending: extra ? Buffer.from(extra.pending, 'base64') : undefined,
        unsent: extra ? Buffer.from(extra.unsent, 'base64') : undefined,
        inKernel: extra?.inKernel,
        restore: name === 'virtlockd' ? (conn) => target.restoreLockContext(conn, pd, process) : undefined,
      };
    });
    report.clients++;
  } catch (err) {
    report.problems.push(`${name} client ${c.id ?? '?'} fd ${fd}: ${(err as Error).message}`);
    run.keep(fd, 'client');
  }
}

/** 3. The pid file (its lock is ours for as long as the fd is open). */
function restorePidFile({ ext, recorded, report }: RestoreRun): void {
  if (!ext?.pidFile) return;
  const why = problem(checkFd(ext.pidFile.fd, 'pidfile', recorded));
  if (why) report.problems.push(`pid file: ${why}`);
  else report.pidFile = ext.pidFile;
}

/** 4. An owner termination in progress: the caller resumes it. */
function restoreTermination({ recorded, report }: RestoreRun, t: TerminationState): void {
  if (t.pidfd >= 0) {
    const why = problem(checkFd(t.pidfd, 'pidfd', recorded));
    if (why) {
      report.problems.push(`termination of pid ${t.owner.pid}: ${why}`);
      report.terminations.push({ ...t, pidfd: -1 });
      return;
    }
    native.setCloexec(t.pidfd, true);
  }
  report.terminations.push(t);
}
