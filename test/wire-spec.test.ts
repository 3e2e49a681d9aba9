// Wire drift check, part 1: relockd's three program tables against their
// .x definitions — libvirt's own lock_protocol.x and admin_protocol.x
// (vendored under protocol/libvirt/) and relockd's protocol/relockd_admin_protocol.x.
// Like libvirt's check_protocols, but against the table's codecs: for every
// procedure, a value with distinct numbers and strings is encoded from the
// .x (test/lib/xdrSpec.ts, no code shared with src/rpc/xdr.ts), decoded by
// the table (args: the server's decodeArgs; rets: the client's decoder),
// compared field by field by name, and encoded back by the other side,
// which must give the same bytes. A field in the wrong order, of the wrong
// type or size, missing or extra, a procedure renumbered, added or dropped:
// each is a failure naming the procedure and field.

import t from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Program } from '../src/rpc/program.js';
import { xEncode, xSample } from './lib/xdrSpec.js';
import type { XSpec, XType } from './lib/xdrSpec.js';
import { ROOT, decodeWith, encodeWith, loadSpec, procStruct, semanticDiff, specProcedures, wirePrograms } from './lib/wirePrograms.js';
import type { WireProgram } from './lib/wirePrograms.js';

/** Our boolean typed parameter reads any non-zero int as true and sends 1. */
const hint = (path: string, _t: XType) => (path.endsWith('.b') ? 1 : undefined);

/** Every difference between a program's table and its .x; empty = none. */
function checkProgram(p: WireProgram, spec: XSpec, program: Program<any> = p.program): string[] {
  const problems: string[] = [];
  if (spec.consts.get(p.progConst) !== program.prog) {
    problems.push(`program number: .x ${p.progConst} = ${spec.consts.get(p.progConst)}, table ${program.prog}`);
  }
  if (spec.consts.get(p.versConst) !== program.vers) {
    problems.push(`program version: .x ${p.versConst} = ${spec.consts.get(p.versConst)}, table ${program.vers}`);
  }
  const procs = specProcedures(spec, p);
  for (const [name, num] of procs) {
    const row = program.procedures.get(num);
    if (!row) problems.push(`${name} = ${num} is in ${p.xFile} but not in the table`);
    else if (row.name !== name) problems.push(`procedure ${num}: .x ${name}, table ${row.name}`);
  }
  for (const [num, row] of program.procedures) {
    if (![...procs.values()].includes(num)) problems.push(`${row.name} = ${num} is in the table but not in ${p.xFile}`);
  }
  for (const [name, num] of procs) {
    const row = program.procedures.get(num);
    if (!row) continue;
    const client = p.client.get(num) ?? {};
    const where = `${name} (${num})`;
    const args = procStruct(spec, p, name, 'args');
    const ret = procStruct(spec, p, name, 'ret');
    try {
      if (!args) {
        const d = decodeWith(row.decodeArgs, Buffer.alloc(0));
        if (d.value !== undefined || client.encodeArgs) problems.push(`${where}: void args in the .x, the table has arguments`);
      } else {
        for (const variant of [0, 1] as const) {
          const sample = xSample(spec, args.type, variant, hint);
          const bytes = xEncode(spec, args.type, sample);
          const d = decodeWith(row.decodeArgs, bytes);
          if (d.rest !== 0) problems.push(`${where} args: the table's decoder left ${d.rest} of ${bytes.length} bytes (${args.name})`);
          for (const diff of semanticDiff(spec, p, args.type, sample, d.value)) problems.push(`${where} args ${args.name}: ${diff}`);
          const back = encodeWith(client.encodeArgs, d.value);
          if (!back.equals(bytes)) problems.push(`${where} args: the client encodes ${back.toString('hex')}, the .x ${bytes.toString('hex')}`);
        }
      }
      if (!ret) {
        if (row.encodeRet || client.decodeRet) problems.push(`${where}: void reply in the .x, the table has a reply`);
      } else if (!row.encodeRet || !client.decodeRet) {
        problems.push(`${where}: the .x has ${ret.name}, the table's reply is void`);
      } else {
        for (const variant of [0, 1] as const) {
          const sample = xSample(spec, ret.type, variant, hint);
          const bytes = xEncode(spec, ret.type, sample);
          const d = decodeWith(client.decodeRet, bytes);
          if (d.rest !== 0) problems.push(`${where} ret: the client's decoder left ${d.rest} of ${bytes.length} bytes (${ret.name})`);
          for (const diff of semanticDiff(spec, p, ret.type, sample, d.value)) problems.push(`${where} ret ${ret.name}: ${diff}`);
          const back = encodeWith(row.encodeRet, d.value);
          if (!back.equals(bytes)) problems.push(`${where} ret: the table encodes ${back.toString('hex')}, the .x ${bytes.toString('hex')}`);
        }
      }
    } catch (e) {
      problems.push(`${where}: ${(e as Error).message}`);
    }
  }
  return problems;
}

const byKey = (k: WireProgram['key']) => wirePrograms.find((p) => p.key === k)!;
const source = (p: WireProgram) => readFileSync(join(ROOT, p.xFile), 'utf8');

for (const p of wirePrograms) {
  t.test(`${p.key}: table matches ${p.xFile}`, async (t) => {
    const spec = loadSpec(p);
    const procs = specProcedures(spec, p);
    t.ok(procs.size >= 7, `${procs.size} procedures parsed from the .x`);
    t.same(checkProgram(p, spec), [], 'procedure numbers, names, args and ret layouts agree');
  });
}

// ---- the check must fail on drift: injected changes, each caught ----------------------

t.test('an injected drift is caught', async (t) => {
  const expectCaught = (p: WireProgram, what: string, mutate: (src: string) => string, match: RegExp, program?: Program<any>) => {
    const src = source(p);
    const changed = mutate(src);
    t.not(changed, src, `${what}: the mutation applies`);
    const problems = checkProgram(p, loadSpec(p, changed), program);
    t.ok(problems.some((x) => match.test(x)), `${what}: reported (${problems[0] ?? 'nothing'})`);
  };
  const ls = byKey('lockspace');
  const admin = byKey('admin');
  const ours = byKey('relockd-admin');

  expectCaught(ls, 'two fields of the owner swapped in lock_protocol.x',
    (s) => s.replace('unsigned int id;\n    unsigned int pid;', 'unsigned int pid;\n    unsigned int id;'), /REGISTER.*number differs/);
  expectCaught(ls, 'a procedure renumbered',
    (s) => s.replace('PROC_CREATE_LOCKSPACE = 8', 'PROC_CREATE_LOCKSPACE = 9'), /CREATE_LOCKSPACE = 9 is in/);
  expectCaught(ls, 'a field appended to the args',
    (s) => s.replace('struct virLockSpaceProtocolCreateLockSpaceArgs {\n    virLockSpaceProtocolNonNullString path;',
      'struct virLockSpaceProtocolCreateLockSpaceArgs {\n    virLockSpaceProtocolNonNullString path;\n    unsigned int flags;'), /CREATE_LOCKSPACE.*(left|flags)/);
  expectCaught(admin, 'a field type changed (unsigned hyper id → unsigned int id)',
    (s) => s.replace('    unsigned hyper id;\n    hyper timestamp;', '    unsigned int id;\n    hyper timestamp;'), /CLIENT/);
  expectCaught(admin, 'a reply struct added to a void procedure',
    (s) => s.replace('struct admin_connect_set_daemon_timeout_args', 'struct admin_connect_set_daemon_timeout_ret { unsigned int old; };\nstruct admin_connect_set_daemon_timeout_args'),
    /SET_DAEMON_TIMEOUT.*reply is void/);
  expectCaught(ours, 'a procedure added to relockd_admin_protocol.x but not to the table',
    (s) => s.replace('RELOCKD_ADMIN_PROC_GET_METRICS = 16', 'RELOCKD_ADMIN_PROC_GET_METRICS = 16,\n    RELOCKD_ADMIN_PROC_FROBNICATE = 40'), /FROBNICATE = 40 is in/);
  expectCaught(ours, 'two bools of the client struct swapped',
    (s) => s.replace('    bool restricted;\n    bool owner_connection;', '    bool owner_connection;\n    bool restricted;\n'), /table key|differs/, undefined);

  // A codec drift with the .x unchanged: the table's decoder reads timeout and flags swapped.
  const base = admin.program;
  const procs = new Map(base.procedures);
  const row = procs.get(19)!;
  procs.set(19, { ...row, decodeArgs: (r) => ({ flags: r.u32(), timeout: r.u32() }) });
  expectCaught(admin, 'the table decodes SET_DAEMON_TIMEOUT\'s fields swapped', (s) => `${s}\n`, /SET_DAEMON_TIMEOUT.*number differs/, { ...base, procedures: procs });
});
