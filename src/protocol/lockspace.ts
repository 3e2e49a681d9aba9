// virtlockd's lock-space program (0x0EA7BEEF v1), as a table. Each row says
// which flags it accepts, which pre-checks apply (in virtlockd's order:
// flags → restricted → registered, as lock_daemon_dispatch.c's handlers), how to decode its args, and
// what it does. All procedures return void.

import { E } from '../util/errorCatalogue.js';
import type { Program, ProgramSpec } from '../rpc/program.js';
import { flagsCodec, procNumbers, rowOf, rowsProgram } from '../rpc/program.js';
import type { XdrReader, XdrWriter } from '../rpc/xdr.js';
import type { LockManager, Owner } from '../locks/lockManager.js';

export const LOCKSPACE_PROGRAM = 0x0ea7beef;
export const LOCKSPACE_VERSION = 1;
/** VIR_LOCK_SPACE_PROTOCOL_STRING_MAX */
const LOCKSPACE_STRING_MAX = 65536;

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
  flags: flagsCodec,
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

// The pre-checks after the flags, in virtlockd's order (restricted, then registered).
const notRestricted = (st: LockClientState) => {
  if (st.restricted) throw E.RESTRICTED();
};
const registered = (st: LockClientState) => {
  if (!st.owner || st.owner.id === 0) throw E.NOT_REGISTERED();
};
const REGISTERED = [notRestricted, registered];

const row = rowOf<LockProgramDeps, LockClientState>();
const fnName = (s: string) => `virLockSpaceProtocolDispatch${s}`;

/** The lock-space program, one row per procedure (rpc/program.ts has the row shape). */
export const lockspaceRows = {
  REGISTER: row({
    proc: 1, fn: fnName('Register'), flagsMask: 0, checks: [notRestricted],
    args: codec.register,
    run: (deps, st, a) => {
      // virtlockd 9.0 reports id 0 with this (odd) text; re-registering overwrites.
      if (a.owner.id === 0) throw E.NOT_REGISTERED();
      st.owner = a.owner;
      deps.onRegister?.(st, a.owner);
    },
  }),
  RESTRICT: row({
    proc: 2, fn: fnName('Restrict'), flagsMask: 0, checks: REGISTERED,
    args: codec.flags,
    run: (deps, st) => {
      st.restricted = true;
      deps.onRestrict?.(st);
    },
  }),
  NEW: row({
    proc: 3, fn: fnName('New'), flagsMask: 0, checks: REGISTERED,
    args: codec.path,
    run: (deps, _st, a) => deps.manager.newLockSpace(a.path),
  }),
  CREATE_RESOURCE: row({
    proc: 4, fn: fnName('CreateResource'), flagsMask: 0, checks: REGISTERED,
    args: codec.resource,
    run: (deps, _st, a) => deps.manager.createResource(a.path, a.name),
  }),
  DELETE_RESOURCE: row({
    proc: 5, fn: fnName('DeleteResource'), flagsMask: 0, checks: REGISTERED,
    args: codec.resource,
    run: (deps, _st, a) => deps.manager.deleteResource(a.path, a.name),
  }),
  ACQUIRE_RESOURCE: row({
    proc: 6, fn: fnName('AcquireResource'), flagsMask: 3, checks: REGISTERED,
    args: codec.resource,
    run: (deps, st, a) => deps.manager.acquire(a.path, a.name, a.flags, st.owner!),
  }),
  RELEASE_RESOURCE: row({
    proc: 7, fn: fnName('ReleaseResource'), flagsMask: 0, checks: REGISTERED,
    args: codec.resource,
    run: (deps, st, a) => deps.manager.release(a.path, a.name, st.owner!),
  }),
  // No flags field; not registered either (libvirt creates lock spaces before REGISTER).
  CREATE_LOCKSPACE: row({
    proc: 8, checks: [notRestricted],
    args: codec.lockspace,
    run: async (deps, _st, a) => {
      await deps.manager.createLockSpace(a.path);
    },
  }),
};

export const Proc = procNumbers(lockspaceRows);

const SPEC: ProgramSpec = { name: 'lockspace', prog: LOCKSPACE_PROGRAM, vers: LOCKSPACE_VERSION, flagsError: E.UNSUPPORTED_FLAGS };

export function lockspaceProgram(deps: LockProgramDeps): Program<LockClientState> {
  return rowsProgram(SPEC, lockspaceRows, deps);
}
