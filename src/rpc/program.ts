// An RPC program is a declarative table: procedure number → args decoder,
// ret encoder, handler. The dispatcher (dispatch.ts) is the only code that
// walks it; adding a procedure is adding a row.

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
export function defineProgram<Ctx>(
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
export const noArgs = (): undefined => undefined;
