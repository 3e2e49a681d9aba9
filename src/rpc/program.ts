// An RPC program is a declarative table: one row per procedure. Every program
// (lock space, libvirt admin, relockd admin) uses the same row shape:
//
//   (key)             the upper-case protocol name, e.g. ACQUIRE_RESOURCE
//   proc              the procedure number
//   args, ret         the XDR codecs of the call and reply (both directions:
//                     the daemon decodes args / encodes ret, clients the reverse)
//   resolve           lookups libvirt does before virCheckFlags (the admin
//                     dispatcher's get_nonnull_server/client); its result is run's
//   flagsMask, fn     virCheckFlags: accepted bits, and the C function named
//                     in the error; no mask = the call has no flags to check
//   checks            the program's pre-checks, after the flags (virtlockd:
//                     restricted, registered)
//   run               the procedure itself, on the program's backend
//
// rowsProgram() turns a table into the dispatcher's Procedure map; the
// dispatcher (rpc/connection.ts) is the only code that walks that. Adding a
// procedure is adding a row (plus, usually, its backend method).

import type { ProtocolError } from '../util/errors.js';
import type { XdrReader, XdrWriter } from './xdr.js';

export interface Procedure<Ctx, Args = unknown, Ret = unknown> {
  readonly proc: number;
  /** Upper-case protocol name, e.g. ACQUIRE_RESOURCE; used in logs. */
  readonly name: string;
  readonly decodeArgs: (r: XdrReader) => Args;
  /** Omitted for procedures that return void (an empty payload). */
  readonly encodeRet?: (w: XdrWriter, ret: Ret) => void;
  readonly handle: (ctx: Ctx, args: Args) => Ret | Promise<Ret>;
}

export interface Program<Ctx> {
  readonly name: string;
  readonly prog: number;
  readonly vers: number;
  readonly procedures: ReadonlyMap<number, Procedure<Ctx, any, any>>;
}

/** Builds a program from its rows, refusing duplicate procedure numbers. */
function defineProgram<Ctx>(
  name: string,
  prog: number,
  vers: number,
  rows: ReadonlyArray<Procedure<Ctx, any, any>>,
): Program<Ctx> {
  const procedures = new Map<number, Procedure<Ctx, any, any>>();
  for (const row of rows) {
    if (procedures.has(row.proc)) throw new Error(`${name}: procedure ${row.proc} defined twice`);
    procedures.set(row.proc, row);
  }
  return { name, prog, vers, procedures };
}

/** Args decoder for procedures without arguments. */
const noArgs = (): undefined => undefined;

// ---- the one row shape ---------------------------------------------------------

/** Both directions of one XDR type. */
export interface Codec<T> {
  readonly decode: (r: XdrReader) => T;
  readonly encode: (w: XdrWriter, v: T) => void;
}

/** A call without arguments (an empty payload). */
export const voidCodec: Codec<undefined> = { decode: noArgs, encode: () => {} };

/** `unsigned int flags` as the only argument: the one flags codec of all programs. */
export interface FlagsArgs {
  flags: number;
}
export const flagsCodec: Codec<FlagsArgs> = {
  decode: (r) => ({ flags: r.u32() }),
  encode: (w, a) => w.u32(a.flags),
};

/** flagsMask for a call whose flags libvirt checks against NULL: every bit accepted. */
export const ANY_FLAGS = 0xffffffff;

/** A program's virCheckFlags error (E.UNSUPPORTED_FLAGS or E.ADMIN_UNSUPPORTED_FLAGS). */
export type FlagsError = (unsupported: number, fn: string) => ProtocolError;

/** virCheckFlags: refuses the bits outside `mask`, naming the C function `fn`. */
function checkFlags(flags: number, mask: number, fn: string, refuse: FlagsError): void {
  const bad = (flags & ~mask) >>> 0;
  if (bad) throw refuse(bad, fn);
}

export interface Row<B, Ctx, A, R, L = undefined> {
  readonly proc: number;
  readonly args: Codec<A>;
  /** Omitted for procedures that return void. */
  readonly ret?: Codec<R>;
  readonly resolve?: (b: B, args: A) => L;
  /** Accepted flag bits; omitted when the call has no flags field (or none to check). */
  readonly flagsMask?: number;
  /** The C function named in the flag-check error (libvirt's, or relockd's own). */
  readonly fn?: string;
  readonly checks?: ReadonlyArray<(ctx: Ctx, args: A) => void>;
  readonly run: (b: B, ctx: Ctx, args: A, resolved: L) => R | Promise<R>;
}

export type AnyRow<B, Ctx> = Row<B, Ctx, any, any, any>;

/** What a program's table says about the program itself. */
export interface ProgramSpec {
  readonly name: string;
  readonly prog: number;
  readonly vers: number;
  /** This program's virCheckFlags error (its domain: virtlockd's RPC, the admin programs' ADMIN). */
  readonly flagsError: FlagsError;
}

/** The arguments' flags, for rows with a mask. */
const flagsOf = (a: unknown): number => (a as Partial<FlagsArgs> | undefined)?.flags ?? 0;

function procedureOf<B, Ctx>(spec: ProgramSpec, b: B, name: string, row: AnyRow<B, Ctx>): Procedure<Ctx, unknown, unknown> {
  const { resolve, flagsMask, checks, run } = row;
  if (flagsMask !== undefined && row.fn === undefined) throw new Error(`${spec.name}: ${name} has a flags mask but no fn`);
  const fn = row.fn ?? '';
  return {
    proc: row.proc,
    name,
    decodeArgs: row.args.decode,
    ...(row.ret ? { encodeRet: row.ret.encode } : {}),
    handle: (ctx, args) => {
      const resolved = resolve ? resolve(b, args) : undefined;
      if (flagsMask !== undefined) checkFlags(flagsOf(args), flagsMask, fn, spec.flagsError);
      if (checks) for (const check of checks) check(ctx, args);
      return run(b, ctx, args, resolved);
    },
  };
}

/** A program from its table, bound to the backend its rows run on. */
export function rowsProgram<B, Ctx>(spec: ProgramSpec, rows: Readonly<Record<string, AnyRow<B, Ctx>>>, backend: B): Program<Ctx> {
  return defineProgram(
    spec.name,
    spec.prog,
    spec.vers,
    Object.entries(rows).map(([name, r]) => procedureOf(spec, backend, name, r)),
  );
}

/**
 * The row builder of a program whose rows run on B with per-connection Ctx:
 * `const row = rowOf<Backend, Ctx>()`, then `NAME: row({ ... })` infers each
 * row's argument and reply types from its codecs (clients call rows too).
 */
export function rowOf<B, Ctx>() {
  return <A, R = void, L = undefined>(r: Row<B, Ctx, A, R, L>): Row<B, Ctx, A, R, L> => r;
}

/** Procedure numbers by name, from a table (the `…Proc` constants clients use). */
export function procNumbers<T extends Readonly<Record<string, { proc: number }>>>(rows: T): { readonly [K in keyof T]: number } {
  return Object.fromEntries(Object.entries(rows).map(([k, r]) => [k, r.proc])) as { [K in keyof T]: number };
}
