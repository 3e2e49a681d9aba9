// relockd's own admin program, next to libvirt's on the admin socket: what
// libvirt's admin protocol has no words for (lock spaces, resources and their
// owners, re-exec, totals). Same framing, same error structure
// (virNetMessageError, domain VIR_FROM_ADMIN for our own errors).
//
// Program number 0x52454C4B ("RELK"), version 1. The wire is defined in
// protocol/relockd_admin_protocol.x (rpcgen syntax): a new procedure or field
// goes there first; test/wire-spec.test.ts checks this table against it, and
// test/wire-fixtures.test.ts / wire-rpcgen.test.ts against golden bytes.
//
// Cleanup of lease files (relockctl cleanup) uses LIST_RESOURCES: dev/ino say
// which files relockd holds; a lock probe from relockctl covers everyone else.

import { E } from '../util/errorCatalogue.js';
import type { Codec, Program, ProgramSpec } from '../rpc/program.js';
import { flagsCodec, rowOf, rowsProgram } from '../rpc/program.js';
import type { XdrReader, XdrWriter } from '../rpc/xdr.js';
import type { AdminContext } from './admin.js';
import { uuidFromString, uuidToString } from './lockspace.js';

export const RELOCKD_ADMIN_PROGRAM = 0x52454c4b; // "RELK"
export const RELOCKD_ADMIN_VERSION = 1;
const RELOCKD_ADMIN_STRING_MAX = 4194304;
/** Bound on every list (the 32 MiB message limit comes first in practice). */
const RELOCKD_ADMIN_LIST_MAX = 4_000_000;

export interface HealthOwnerInfo {
  owner: OwnerInfo;
  action: string;
  phase: string;
  since: number;
  resources: string[];
  note: string | null;
}

export interface HealthInfo {
  dir: string;
  lockspace: string;
  state: string;
  since: number;
  lastGood: number;
  error: string | null;
  lost: string[];
  leaseTimeMs: number;
  owners: HealthOwnerInfo[];
}

export interface ReleaseOwnerArgs {
  pid: number;
  lockspace: string;
  flags: number;
}

// ---- types -------------------------------------------------------------------------

export interface OwnerInfo {
  uuid: string;
  name: string;
  id: number;
  pid: number;
}

export interface LeaseOwner {
  pid: number;
  owner: OwnerInfo | null;
  terminating: boolean;
}

export interface ResourceInfo {
  lockspace: string;
  name: string;
  path: string;
  flags: number;
  since: number;
  fd: number;
  dev: number;
  ino: number;
  owners: LeaseOwner[];
}

export interface LockspaceInfo {
  dir: string;
  resources: number;
  leases: number;
}

export interface ClientInfo {
  server: string;
  id: number;
  connTime: number;
  pid: number;
  uid: number;
  gid: number;
  owner: OwnerInfo | null;
  restricted: boolean;
  ownerConnection: boolean;
  leases: number;
}

export type ReexecResult = { ok: true; blackoutMs: number } | { ok: false; blackoutMs: number; error: string };

export interface LastReexec {
  at: number;
  result: ReexecResult;
  trigger: string;
  fromVersion: string;
  toVersion: string;
}

export interface TerminationInfo {
  owner: OwnerInfo;
  since: number;
  phase: string;
}

export interface DaemonInfo {
  version: string;
  pid: number;
  startedAt: number;
  uptimeMs: number;
  socket: string;
  adminSocket: string;
  lockClients: number;
  adminClients: number;
  lockspaces: number;
  resources: number;
  leases: number;
  boot: string;
  safeMode: boolean;
  daemonTimeout: number;
  reexecSupported: boolean;
  lastReexec: LastReexec | null;
  terminations: TerminationInfo[];
  /** Set while the configuration file has errors and the daemon runs with the settings it had before. */
  configError: string | null;
  /** A stop was requested and accepted while leases are held: the policy at work; null: not stopping. */
  stopping: string | null;
}

export interface HandbackArgs {
  path: string;
  args: string[];
  flags: number;
}

/** A refused handback (success has no reply: the connection closes at the exec). */
export interface HandbackRefused {
  transient: boolean;
  error: string;
  warnings: string[];
}

export interface FilterArgs {
  filter: string | null;
  flags: number;
}

// ---- codecs --------------------------------------------------------------------------

const str = (r: XdrReader) => r.string(RELOCKD_ADMIN_STRING_MAX);
/** Lock-space paths and resource names: byte strings (src/byteString.ts). */
const bytes = (r: XdrReader) => r.byteString(RELOCKD_ADMIN_STRING_MAX);
const optStr = (r: XdrReader) => r.optional(str);
const wOptStr = (w: XdrWriter, s: string | null) => w.optional(s, (wr, v) => wr.string(v));
const num = (b: bigint) => Number(b);

const owner = {
  encode: (w: XdrWriter, o: OwnerInfo) => {
    let uuid: Buffer;
    try {
      uuid = uuidFromString(o.uuid);
    } catch {
      uuid = Buffer.alloc(16);
    }
    w.fixedOpaque(uuid).string(o.name).u32(o.id).u32(o.pid);
  },
  decode: (r: XdrReader): OwnerInfo => ({ uuid: uuidToString(r.fixedOpaque(16)), name: str(r), id: r.u32(), pid: r.u32() }),
};

const leaseOwner = {
  encode: (w: XdrWriter, o: LeaseOwner) => {
    w.u32(o.pid);
    w.optional(o.owner, owner.encode);
    w.bool(o.terminating);
  },
  decode: (r: XdrReader): LeaseOwner => ({ pid: r.u32(), owner: r.optional(owner.decode), terminating: r.bool() }),
};

const resource = {
  encode: (w: XdrWriter, x: ResourceInfo) => {
    w.byteString(x.lockspace).byteString(x.name).byteString(x.path).u32(x.flags).i64(BigInt(Math.trunc(x.since))).i32(x.fd);
    w.u64(BigInt(Math.max(0, Math.trunc(x.dev)))).u64(BigInt(Math.max(0, Math.trunc(x.ino))));
    w.array(x.owners, leaseOwner.encode);
  },
  decode: (r: XdrReader): ResourceInfo => ({
    lockspace: bytes(r),
    name: bytes(r),
    path: bytes(r),
    flags: r.u32(),
    since: num(r.i64()),
    fd: r.i32(),
    dev: num(r.u64()),
    ino: num(r.u64()),
    owners: r.array(RELOCKD_ADMIN_LIST_MAX, leaseOwner.decode),
  }),
};

const lockspace = {
  encode: (w: XdrWriter, x: LockspaceInfo) => w.byteString(x.dir).u32(x.resources).u32(x.leases),
  decode: (r: XdrReader): LockspaceInfo => ({ dir: bytes(r), resources: r.u32(), leases: r.u32() }),
};

const client = {
  encode: (w: XdrWriter, c: ClientInfo) => {
    w.string(c.server).u64(BigInt(c.id)).i64(BigInt(c.connTime)).i32(c.pid).u32(c.uid).u32(c.gid);
    w.optional(c.owner, owner.encode);
    w.bool(c.restricted).bool(c.ownerConnection).u32(c.leases);
  },
  decode: (r: XdrReader): ClientInfo => ({
    server: str(r),
    id: num(r.u64()),
    connTime: num(r.i64()),
    pid: r.i32(),
    uid: r.u32(),
    gid: r.u32(),
    owner: r.optional(owner.decode),
    restricted: r.bool(),
    ownerConnection: r.bool(),
    leases: r.u32(),
  }),
};

const reexecResult: Codec<ReexecResult> = {
  encode: (w: XdrWriter, x: ReexecResult) => {
    w.bool(x.ok).u32(Math.max(0, Math.round(x.blackoutMs)));
    wOptStr(w, x.ok ? null : x.error);
  },
  decode: (r: XdrReader): ReexecResult => {
    const ok = r.bool();
    const blackoutMs = r.u32();
    const error = optStr(r);
    return ok ? { ok: true, blackoutMs } : { ok: false, blackoutMs, error: error ?? 'unknown error' };
  },
};

const termination = {
  encode: (w: XdrWriter, t: TerminationInfo) => {
    owner.encode(w, t.owner);
    w.i64(BigInt(Math.trunc(t.since))).string(t.phase);
  },
  decode: (r: XdrReader): TerminationInfo => ({ owner: owner.decode(r), since: num(r.i64()), phase: str(r) }),
};

const daemonInfo: Codec<DaemonInfo> = {
  encode: (w: XdrWriter, d: DaemonInfo) => {
    w.string(d.version).u32(d.pid).i64(BigInt(Math.trunc(d.startedAt))).u64(BigInt(Math.max(0, Math.trunc(d.uptimeMs))));
    w.string(d.socket).string(d.adminSocket);
    w.u32(d.lockClients).u32(d.adminClients).u32(d.lockspaces).u32(d.resources).u32(d.leases);
    w.string(d.boot).bool(d.safeMode).u32(d.daemonTimeout).bool(d.reexecSupported);
    w.optional(d.lastReexec, (wr, l) => {
      wr.i64(BigInt(Math.trunc(l.at)));
      reexecResult.encode(wr, l.result);
      wr.string(l.trigger).string(l.fromVersion).string(l.toVersion);
    });
    w.array(d.terminations, termination.encode);
    wOptStr(w, d.configError);
    wOptStr(w, d.stopping);
  },
  decode: (r: XdrReader): DaemonInfo => ({
    version: str(r),
    pid: r.u32(),
    startedAt: num(r.i64()),
    uptimeMs: num(r.u64()),
    socket: str(r),
    adminSocket: str(r),
    lockClients: r.u32(),
    adminClients: r.u32(),
    lockspaces: r.u32(),
    resources: r.u32(),
    leases: r.u32(),
    boot: str(r),
    safeMode: r.bool(),
    daemonTimeout: r.u32(),
    reexecSupported: r.bool(),
    lastReexec: r.optional((rd) => ({ at: num(rd.i64()), result: reexecResult.decode(rd), trigger: str(rd), fromVersion: str(rd), toVersion: str(rd) })),
    terminations: r.array(RELOCKD_ADMIN_LIST_MAX, termination.decode),
    // Appended fields: a daemon older than this relockctl (e.g. during a
    // package upgrade, before its re-exec) does not send them.
    configError: r.remaining > 0 ? optStr(r) : null,
    stopping: r.remaining > 0 ? optStr(r) : null,
  }),
};

const healthOwner = {
  encode: (w: XdrWriter, h: HealthOwnerInfo) => {
    owner.encode(w, h.owner);
    w.string(h.action).string(h.phase).i64(BigInt(Math.trunc(h.since)));
    w.array(h.resources, (wr, x) => wr.byteString(x)); // resource names are bytes
    wOptStr(w, h.note);
  },
  decode: (r: XdrReader): HealthOwnerInfo => ({
    owner: owner.decode(r),
    action: str(r),
    phase: str(r),
    since: num(r.i64()),
    resources: r.array(RELOCKD_ADMIN_LIST_MAX, bytes),
    note: optStr(r),
  }),
};

const health = {
  encode: (w: XdrWriter, h: HealthInfo) => {
    w.byteString(h.dir).byteString(h.lockspace).string(h.state).i64(BigInt(Math.trunc(h.since))).i64(BigInt(Math.trunc(h.lastGood)));
    wOptStr(w, h.error);
    w.array(h.lost, (wr, x) => wr.byteString(x));
    w.i32(h.leaseTimeMs);
    w.array(h.owners, healthOwner.encode);
  },
  decode: (r: XdrReader): HealthInfo => ({
    dir: bytes(r),
    lockspace: bytes(r),
    state: str(r),
    since: num(r.i64()),
    lastGood: num(r.i64()),
    error: optStr(r),
    lost: r.array(RELOCKD_ADMIN_LIST_MAX, bytes),
    leaseTimeMs: r.i32(),
    owners: r.array(RELOCKD_ADMIN_LIST_MAX, healthOwner.decode),
  }),
};

export const relockdCodec = {
  flags: flagsCodec,
  health: {
    encode: (w: XdrWriter, v: HealthInfo[]) => w.array(v, health.encode),
    decode: (r: XdrReader): HealthInfo[] => r.array(RELOCKD_ADMIN_LIST_MAX, health.decode),
  },
  releaseOwner: {
    decode: (r: XdrReader): ReleaseOwnerArgs => ({ pid: r.u32(), lockspace: str(r), flags: r.u32() }),
    encode: (w: XdrWriter, a: ReleaseOwnerArgs) => w.u32(a.pid).string(a.lockspace).u32(a.flags),
  },
  count: {
    decode: (r: XdrReader): number => r.u32(),
    encode: (w: XdrWriter, n: number) => w.u32(n),
  },
  filter: {
    // A lock-space path (LIST_RESOURCES) or a server name: a byte string.
    decode: (r: XdrReader): FilterArgs => ({ filter: r.optional(bytes), flags: r.u32() }),
    encode: (w: XdrWriter, a: FilterArgs) => w.optional(a.filter, (wr, v) => wr.byteString(v)).u32(a.flags),
  },
  daemonInfo,
  lockspaces: {
    encode: (w: XdrWriter, v: LockspaceInfo[]) => w.array(v, lockspace.encode),
    decode: (r: XdrReader): LockspaceInfo[] => r.array(RELOCKD_ADMIN_LIST_MAX, lockspace.decode),
  },
  resources: {
    encode: (w: XdrWriter, v: ResourceInfo[]) => w.array(v, resource.encode),
    decode: (r: XdrReader): ResourceInfo[] => r.array(RELOCKD_ADMIN_LIST_MAX, resource.decode),
  },
  clients: {
    encode: (w: XdrWriter, v: ClientInfo[]) => w.array(v, client.encode),
    decode: (r: XdrReader): ClientInfo[] => r.array(RELOCKD_ADMIN_LIST_MAX, client.decode),
  },
  reexecResult,
  handbackArgs: {
    decode: (r: XdrReader): HandbackArgs => ({ path: str(r), args: r.array(1024, str), flags: r.u32() }),
    encode: (w: XdrWriter, a: HandbackArgs) => w.string(a.path).array(a.args, (wr, v) => wr.string(v)).u32(a.flags),
  },
  handbackRefused: {
    decode: (r: XdrReader): HandbackRefused => ({ transient: r.bool(), error: str(r), warnings: r.array(RELOCKD_ADMIN_LIST_MAX, str) }),
    encode: (w: XdrWriter, x: HandbackRefused) => w.bool(x.transient).string(x.error).array(x.warnings, (wr, v) => wr.string(v)),
  },
  text: {
    encode: (w: XdrWriter, v: string) => w.string(v),
    decode: (r: XdrReader): string => str(r),
  },
};

// ---- what the table needs ------------------------------------------------------------

export interface RelockdAdminBackend {
  daemonInfo(): DaemonInfo;
  lockspaces(): LockspaceInfo[];
  /** filter: a lock-space directory ('' = default), or null for all. */
  resources(filter: string | null): ResourceInfo[];
  /** filter: a server name, or null for all. */
  clients(filter: string | null): ClientInfo[];
  /**
   * Re-execs; `caller` is the asking connection, whose reply the new image
   * sends. Absent when this build cannot re-exec.
   */
  reexec?: (caller: AdminContext) => Promise<ReexecResult>;
  /** Execs virtlockd in place; resolves only with a refusal. */
  handback?: (caller: AdminContext, args: HandbackArgs) => Promise<HandbackRefused>;
  /** The Prometheus exposition text. */
  metrics?: () => Promise<string>;
  /** Lock-space health watches (docs/storage-failure.md). */
  health(): HealthInfo[];
  /** A killpath program made this owner safe: release its leases in the lock space. */
  releaseOwnerLeases(pid: number, lockspace: string): Promise<number>;
}

// ---- the table ------------------------------------------------------------------------------

const row = rowOf<RelockdAdminBackend, AdminContext>();
/** relockd's own "C function" names in flag-check errors, libvirt style. */
const fnName = (s: string) => `relockdAdminDispatch${s}`;

/**
 * relockd's admin program, one row per procedure. A new procedure is one row
 * here (its number, args and ret codecs, flags, run) plus its backend method;
 * clients call it through the row (AdminClient.call).
 */
export const relockdAdminRows = {
  GET_DAEMON_INFO: row({
    proc: 1, fn: fnName('GetDaemonInfo'), flagsMask: 0,
    args: flagsCodec, ret: daemonInfo,
    run: (b) => b.daemonInfo(),
  }),
  LIST_LOCKSPACES: row({
    proc: 2, fn: fnName('ListLockspaces'), flagsMask: 0,
    args: flagsCodec, ret: relockdCodec.lockspaces,
    run: (b) => b.lockspaces(),
  }),
  LIST_RESOURCES: row({
    proc: 3, fn: fnName('ListResources'), flagsMask: 0,
    args: relockdCodec.filter, ret: relockdCodec.resources,
    run: (b, _c, a) => b.resources(a.filter),
  }),
  LIST_CLIENTS: row({
    proc: 4, fn: fnName('ListClients'), flagsMask: 0,
    args: relockdCodec.filter, ret: relockdCodec.clients,
    run: (b, _c, a) => b.clients(a.filter),
  }),
  REEXEC: row({
    proc: 5, fn: fnName('Reexec'), flagsMask: 0,
    args: flagsCodec, ret: reexecResult,
    run: (b, c) => {
      if (!b.reexec) throw E.REEXEC_UNSUPPORTED();
      return b.reexec(c);
    },
  }),
  HANDBACK: row({
    proc: 6, fn: fnName('Handback'), flagsMask: 0,
    args: relockdCodec.handbackArgs, ret: relockdCodec.handbackRefused,
    run: (b, c, a) => {
      if (!b.handback) throw E.REEXEC_UNSUPPORTED();
      return b.handback(c, a);
    },
  }),
  GET_METRICS: row({
    proc: 16, fn: fnName('GetMetrics'), flagsMask: 0,
    args: flagsCodec, ret: relockdCodec.text,
    run: (b) => {
      if (!b.metrics) throw E.METRICS_UNSUPPORTED();
      return b.metrics();
    },
  }),
  LIST_HEALTH: row({
    proc: 20, fn: fnName('ListHealth'), flagsMask: 0,
    args: flagsCodec, ret: relockdCodec.health,
    run: (b) => b.health(),
  }),
  RELEASE_OWNER_LEASES: row({
    proc: 21, fn: fnName('ReleaseOwnerLeases'), flagsMask: 0,
    args: relockdCodec.releaseOwner, ret: relockdCodec.count,
    run: (b, _c, a) => b.releaseOwnerLeases(a.pid, a.lockspace),
  }),
};

const SPEC: ProgramSpec = { name: 'relockd-admin', prog: RELOCKD_ADMIN_PROGRAM, vers: RELOCKD_ADMIN_VERSION, flagsError: E.ADMIN_UNSUPPORTED_FLAGS };

export function relockdAdminProgram(backend: RelockdAdminBackend): Program<AdminContext> {
  return rowsProgram(SPEC, relockdAdminRows, backend);
}
