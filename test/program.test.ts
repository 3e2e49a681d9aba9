// The one row shape (src/rpc/program.ts) the three programs share: the order
// of the pre-checks, the program's flag-error domain, and that no row that
// takes flags can leave out its flags check.

import t from 'tap';
import { ANY_FLAGS, flagsCodec, rowOf, rowsProgram, voidCodec } from '../src/rpc/program.js';
import type { AnyRow, FlagsArgs } from '../src/rpc/program.js';
import { E } from '../src/util/errorCatalogue.js';
import { ErrorDomain, ProtocolError } from '../src/util/errors.js';
import { XdrReader, XdrWriter } from '../src/rpc/xdr.js';
import { lockspaceRows } from '../src/protocol/lockspace.js';
import { adminRows } from '../src/protocol/admin.js';
import { relockdAdminRows } from '../src/protocol/relockdAdmin.js';

type Ctx = { seen: string[] };
const row = rowOf<{ name: string }, Ctx>();
const SPEC = { name: 'test', prog: 1, vers: 1, flagsError: E.ADMIN_UNSUPPORTED_FLAGS };

const caught = (f: () => unknown): ProtocolError => {
  try {
    f();
  } catch (e) {
    if (e instanceof ProtocolError) return e;
    throw e;
  }
  throw new Error('did not throw');
};

t.test('resolve, then flags, then checks, then run; the key is the name', async (t) => {
  const rows = {
    DO_IT: row({
      proc: 7,
      fn: 'testDoIt',
      flagsMask: 1,
      args: flagsCodec,
      ret: { encode: (w: XdrWriter, v: string) => w.string(v), decode: (r: XdrReader) => r.string(100) },
      resolve: (b, a: FlagsArgs) => {
        if (a.flags === 8) throw E.NO_SERVER({ name: b.name });
        return b.name;
      },
      checks: [(c: Ctx) => c.seen.push('check')],
      run: (_b, c, a, resolved) => {
        c.seen.push('run');
        return `${resolved}:${a.flags}`;
      },
    }),
  };
  const prog = rowsProgram(SPEC, rows, { name: 'srv' });
  const p = prog.procedures.get(7)!;
  t.equal(p.name, 'DO_IT');
  const ctx: Ctx = { seen: [] };
  t.equal(p.handle(ctx, { flags: 1 }), 'srv:1');
  t.same(ctx.seen, ['check', 'run']);
  // The lookup comes before the flags (libvirt's admin dispatcher order).
  t.equal(caught(() => p.handle({ seen: [] }, { flags: 8 })).code, E.NO_SERVER.code);
  const bad = { seen: [] as string[] };
  const e = caught(() => p.handle(bad, { flags: 6 }));
  t.equal(e.message, 'unsupported flags (0x6) in function testDoIt');
  t.equal(e.domain, ErrorDomain.ADMIN, "the program's flag-error domain");
  t.same(bad.seen, [], 'no check and no run after a flag refusal');
  const w = new XdrWriter();
  p.encodeRet!(w, 'x');
  t.equal(new XdrReader(Buffer.from(w.bytes())).string(10), 'x');
});

t.test('ANY_FLAGS accepts every bit; a mask without fn is refused at build time', async (t) => {
  const prog = rowsProgram(SPEC, { A: row({ proc: 1, fn: 'f', flagsMask: ANY_FLAGS, args: flagsCodec, run: () => 'ok' }) }, { name: '' });
  t.equal(prog.procedures.get(1)!.handle({ seen: [] }, { flags: 0xffffffff }), 'ok');
  t.throws(() => rowsProgram(SPEC, { B: row({ proc: 1, flagsMask: 0, args: flagsCodec, run: () => {} }) }, { name: '' }), /B has a flags mask but no fn/);
});

t.test('every row of the three programs that takes arguments checks its flags', async (t) => {
  // Calls whose args have no flags field (virtlockd's CREATE_LOCKSPACE).
  const noFlagsField = new Set(['lockspace.CREATE_LOCKSPACE']);
  const tables: Record<string, Record<string, AnyRow<never, never>>> = { lockspace: lockspaceRows, admin: adminRows, relockd: relockdAdminRows };
  for (const [prog, rows] of Object.entries(tables)) {
    const procs = new Set<number>();
    for (const [name, r] of Object.entries(rows)) {
      t.notOk(procs.has(r.proc), `${prog}.${name}: number ${r.proc} unique`);
      procs.add(r.proc);
      if (r.args === voidCodec || noFlagsField.has(`${prog}.${name}`)) {
        t.equal(r.flagsMask, undefined, `${prog}.${name}: no flags to check`);
        continue;
      }
      t.type(r.flagsMask, 'number', `${prog}.${name}: has a flags mask`);
      t.type(r.fn, 'string', `${prog}.${name}: names its function`);
    }
  }
});
