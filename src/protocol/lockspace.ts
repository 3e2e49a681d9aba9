// virtlockd's lock-space program (0x0EA7BEEF v1), as a table. Each row says
// which flags it accepts, which pre-checks apply (in virtlockd's order:
// flags → restricted → registered, spec 3.4), how to decode its args, and
// what it does. All procedures return void.

import { ErrorCode, ErrorDomain, ProtocolError } from '../rpc/errors.js';
import type { Procedure, Program } from '../rpc/program.js';
import { defineProgram } from '../rpc/program.js';
import type { XdrReader, XdrWriter } from '../rpc/xdr.js';
import type { LockManager, Owner } from '../locks/lockManager.js';

export const LOCKSPACE_PROGRAM = 0x0ea7beef;
export const LOCKSPACE_VERSION = 1;
/** VIR_LOCK_SPACE_PROTOCOL_STRING_MAX */
export const LOCKSPACE_STRING_MAX = 65536;

export const Proc = {
  REGISTER: 1,
  RESTRICT: 2,
  NEW: 3,
  CREATE_RESOURCE: 4,
  DELETE_RESOURCE: 5,
  ACQUIRE_RESOURCE: 6,
  RELEASE_RESOURCE: 7,
  CREATE_LOCKSPACE: 8,
} as const;

/** Per-connection state (virLockDaemonClient). */
export interface LockClientState {
  restricted: boolean;
  /** Registered iff non-null with a non-zero id. */
  owner: Owner | null;
}

/** What handlers need from the daemon. */
export interface LockProgramDeps {
  manager: LockManager;
  /** Called after a successful REGISTER (the daemon tracks owner identity). */
  onRegister?(state: LockClientState, owner: Owner): void;
  /** Called after a successful RESTRICT. */
  onRestrict?(state: LockClientState): void;
}

// ---- argument types and codecs -------------------------------------------

export interface RegisterArgs {
  owner: Owner;
  flags: number;
}
export interface FlagsArgs {
  flags: number;
}
export interface PathArgs {
  path: string;
  flags: number;
}
export interface ResourceArgs {
  path: string;
  name: string;
  flags: number;
}
export interface LockspaceArgs {
  path: string;
}

const str = (r: XdrReader) => r.string(LOCKSPACE_STRING_MAX);
/** Paths and resource names are bytes: byte strings (src/byteString.ts), exact both ways. */
const bytes = (r: XdrReader) => r.byteString(LOCKSPACE_STRING_MAX);

export function uuidToString(b: Buffer): string {
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export function uuidFromString(s: string): Buffer {
  const hex = s.replace(/[-\s]/g, '');
  if (!/^[0-9a-fA-F]{32}$/.test(hex)) throw new Error(`bad uuid '${s}'`);
  return Buffer.from(hex, 'hex');
}

export const codec = {
  register: {
    decode: (r: XdrReader): RegisterArgs => {
      const uuid = uuidToString(r.fixedOpaque(16));
      const name = str(r);
      const id = r.u32();
      const pid = r.u32();
      return { owner: { uuid, name, id, pid }, flags: r.u32() };
    },
    encode: (w: XdrWriter, a: RegisterArgs) =>
      w.fixedOpaque(uuidFromString(a.owner.uuid)).string(a.owner.name).u32(a.owner.id).u32(a.owner.pid).u32(a.flags),
  },
  flags: {
    decode: (r: XdrReader): FlagsArgs => ({ flags: r.u32() }),
    encode: (w: XdrWriter, a: FlagsArgs) => w.u32(a.flags),
  },
  path: {
    decode: (r: XdrReader): PathArgs => ({ path: bytes(r), flags: r.u32() }),
    encode: (w: XdrWriter, a: PathArgs) => w.byteString(a.path).u32(a.flags),
  },
  resource: {
    decode: (r: XdrReader): ResourceArgs => ({ path: bytes(r), name: bytes(r), flags: r.u32() }),
    encode: (w: XdrWriter, a: ResourceArgs) => w.byteString(a.path).byteString(a.name).u32(a.flags),
  },
  lockspace: {
    decode: (r: XdrReader): LockspaceArgs => ({ path: bytes(r) }),
    encode: (w: XdrWriter, a: LockspaceArgs) => w.byteString(a.path),
  },
};

// ---- the table -------------------------------------------------------------

interface Row<A> {
  proc: number;
  name: string;
  /** C function virtlockd names in its flag-check error. */
  fn: string;
  /** Accepted flag bits; undefined when the call has no flags field. */
  flagsMask?: number;
  /** Requires a registered owner (all but REGISTER and CREATE_LOCKSPACE). */
  registered: boolean;
  decode: (r: XdrReader) => A;
  run: (deps: LockProgramDeps, st: LockClientState, args: A) => void | Promise<void>;
}

const notRegistered = () =>
  ProtocolError.report(ErrorCode.OPERATION_INVALID, ErrorDomain.RPC, 'lock owner details have not been registered');

const restricted = () =>
  ProtocolError.report(ErrorCode.OPERATION_DENIED, ErrorDomain.RPC, 'lock manager connection has been restricted');

const fnName = (s: string) => `virLockSpaceProtocolDispatch${s}`;

const rows: Array<Row<any>> = [
  {
    proc: Proc.REGISTER, name: 'REGISTER', fn: fnName('Register'), flagsMask: 0, registered: false,
    decode: codec.register.decode,
    run: (deps, st, a: RegisterArgs) => {
      // virtlockd 9.0 reports id 0 with this (odd) text; re-registering overwrites.
      if (a.owner.id === 0) throw notRegistered();
      st.owner = a.owner;
      deps.onRegister?.(st, a.owner);
    },
  },
  {
    proc: Proc.RESTRICT, name: 'RESTRICT', fn: fnName('Restrict'), flagsMask: 0, registered: true,
    decode: codec.flags.decode,
    run: (deps, st) => {
      st.restricted = true;
      deps.onRestrict?.(st);
    },
  },
  {
    proc: Proc.NEW, name: 'NEW', fn: fnName('New'), flagsMask: 0, registered: true,
    decode: codec.path.decode,
    run: (deps, _st, a: PathArgs) => deps.manager.newLockSpace(a.path),
  },
  {
    proc: Proc.CREATE_RESOURCE, name: 'CREATE_RESOURCE', fn: fnName('CreateResource'), flagsMask: 0, registered: true,
    decode: codec.resource.decode,
    run: (deps, _st, a: ResourceArgs) => deps.manager.createResource(a.path, a.name),
  },
  {
    proc: Proc.DELETE_RESOURCE, name: 'DELETE_RESOURCE', fn: fnName('DeleteResource'), flagsMask: 0, registered: true,
    decode: codec.resource.decode,
    run: (deps, _st, a: ResourceArgs) => deps.manager.deleteResource(a.path, a.name),
  },
  {
    proc: Proc.ACQUIRE_RESOURCE, name: 'ACQUIRE_RESOURCE', fn: fnName('AcquireResource'), flagsMask: 3, registered: true,
    decode: codec.resource.decode,
    run: (deps, st, a: ResourceArgs) => deps.manager.acquire(a.path, a.name, a.flags, st.owner!),
  },
  {
    proc: Proc.RELEASE_RESOURCE, name: 'RELEASE_RESOURCE', fn: fnName('ReleaseResource'), flagsMask: 0, registered: true,
    decode: codec.resource.decode,
    run: (deps, st, a: ResourceArgs) => deps.manager.release(a.path, a.name, st.owner!),
  },
  {
    proc: Proc.CREATE_LOCKSPACE, name: 'CREATE_LOCKSPACE', fn: fnName('CreateLockSpace'), registered: false,
    decode: codec.lockspace.decode,
    run: async (deps, _st, a: LockspaceArgs) => {
      await deps.manager.createLockSpace(a.path);
    },
  },
];

/** Turns a row into a generic procedure with the pre-checks in front. */
function procedure<A extends Partial<FlagsArgs>>(deps: LockProgramDeps, row: Row<A>): Procedure<LockClientState, A, void> {
  return {
    proc: row.proc,
    name: row.name,
    decodeArgs: row.decode,
    handle: (st, args) => {
      if (row.flagsMask !== undefined) {
        const bad = (args.flags ?? 0) & ~row.flagsMask;
        if (bad) throw ProtocolError.unsupportedFlags(bad, row.fn);
      }
      if (st.restricted) throw restricted();
      if (row.registered && (!st.owner || st.owner.id === 0)) throw notRegistered();
      return row.run(deps, st, args);
    },
  };
}

export function lockspaceProgram(deps: LockProgramDeps): Program<LockClientState> {
  return defineProgram(
    'lockspace',
    LOCKSPACE_PROGRAM,
    LOCKSPACE_VERSION,
    rows.map((r) => procedure(deps, r)),
  );
}

/** Procedure names by number, for clients and logs. */
export const procedureNames: ReadonlyMap<number, string> = new Map(rows.map((r) => [r.proc, r.name]));
