// Wire drift check, part 2: golden byte fixtures. Client and server share
// one codec, so a round trip cannot see a wire change; these files can.
//
// - test/fixtures/wire/{lockspace,admin,relockd-admin}/: one call and one
//   reply per procedure of each program, and one error reply per program,
//   for the known values in test/wire/cases.ts. Each is checked three ways:
//   our codec encodes the values to exactly these bytes; our codec decodes
//   the bytes to exactly these values; and the .x definition
//   (protocol/…, test/lib/xdrSpec.ts, no code shared with src/rpc/xdr.ts)
//   decodes the payload completely into the same values, field by field.
// - test/fixtures/wire/captured/: traffic recorded from the REAL virt-admin
//   and the REAL virtlockd (libvirt 9.0; test/wire/capture.ts): bytes our
//   codec did not write. Each packet must decode completely with our codec,
//   re-encode to the same bytes, and decode by the .x to the same values.
//
// The test never writes a fixture. An intended wire change or a new
// procedure: add its values to test/wire/cases.ts, run `npm run wire:fixtures`
// and review the diff.

import t from 'tap';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { decodeHeader, HEADER_SIZE, LEN_WORD, MessageStatus, MessageType } from './../src/rpc/packet.js';
import { decodeWireError, encodeWireError } from '../src/rpc/wireError.js';
import { XdrReader, XdrWriter } from '../src/rpc/xdr.js';
import { xDecode } from './lib/xdrSpec.js';
import {
  FIXTURES,
  decodeWith,
  encodeWith,
  loadSpec,
  parseHexFixture,
  procStruct,
  semanticDiff,
  wirePrograms,
} from './lib/wirePrograms.js';
import type { WireProgram } from './lib/wirePrograms.js';
import { casesByKey } from './wire/cases.js';
import { REGENERATE, fixturePath, goldenFiles } from './wire/golden.js';

const payloadOf = (packet: Buffer) => packet.subarray(LEN_WORD + HEADER_SIZE);

/** The .x view of a payload: decoded completely, compared with the table's value. */
function xCheck(p: WireProgram, procName: string, which: 'args' | 'ret', payload: Buffer, value: unknown): string[] {
  const spec = loadSpec(p);
  const st = procStruct(spec, p, procName, which);
  if (!st) return payload.length === 0 ? [] : [`the .x says ${which} of ${procName} is void, the payload has ${payload.length} bytes`];
  try {
    return semanticDiff(spec, p, st.type, xDecode(spec, st.type, payload), value);
  } catch (e) {
    return [`the .x cannot decode it: ${(e as Error).message}`];
  }
}

for (const p of wirePrograms) {
  t.test(`${p.key}: golden fixtures`, async (t) => {
    const golden = goldenFiles(p);
    const { cases } = casesByKey[p.key];
    // Every procedure of the table has known values (and so fixtures), and only those.
    t.same(
      cases.map((c) => c.proc).sort((a, b) => a - b),
      [...p.program.procedures.keys()].sort((a, b) => a - b),
      `test/wire/cases.ts covers exactly the table's procedures (a new one: add its values, then \`${REGENERATE}\`)`,
    );
    for (const c of cases) t.equal(p.program.procedures.get(c.proc)?.name, c.name, `procedure ${c.proc} is ${c.name}`);
    const onDisk = readdirSync(join(FIXTURES, p.key)).sort();
    t.same(onDisk, golden.map((g) => g.file.split('/')[1]).sort(), `test/fixtures/wire/${p.key}/ holds exactly the expected files (\`${REGENERATE}\` to update)`);

    for (const g of golden) {
      const path = fixturePath(g);
      if (!existsSync(path)) {
        t.fail(`${g.file} is missing: \`${REGENERATE}\``);
        continue;
      }
      const fixture = parseHexFixture(readFileSync(path, 'utf8'));
      // 1. encode known values → the same bytes
      if (!fixture.equals(g.bytes)) {
        t.fail(`${g.file}: our codec now writes different bytes — a wire change. If intended, \`${REGENERATE}\` and review the diff`, {
          found: g.bytes.toString('hex'),
          wanted: fixture.toString('hex'),
        });
      } else t.pass(`${g.file}: encoding the known values gives the fixture's bytes`);

      // 2. decode the fixture → the known values
      t.equal(fixture.readUInt32BE(0), fixture.length, `${g.file}: length word`);
      const h = decodeHeader(fixture.subarray(LEN_WORD));
      t.same(
        h,
        {
          prog: p.program.prog,
          vers: p.program.vers,
          proc: g.proc,
          type: g.kind === 'call' ? MessageType.CALL : MessageType.REPLY,
          serial: g.proc,
          status: g.kind === 'error' ? MessageStatus.ERROR : MessageStatus.OK,
        },
        `${g.file}: header`,
      );
      const payload = payloadOf(fixture);
      const row = p.program.procedures.get(g.proc)!;
      const client = p.client.get(g.proc) ?? {};
      if (g.kind === 'error') {
        const r = new XdrReader(payload);
        t.same(decodeWireError(r), casesByKey[p.key].error.wire, `${g.file}: decodes to the known error`);
        t.equal(r.remaining, 0, `${g.file}: error decoded completely`);
        continue;
      }
      const c = g.case!;
      const which = g.kind === 'call' ? 'args' : 'ret';
      const d = decodeWith(g.kind === 'call' ? row.decodeArgs : client.decodeRet, payload);
      t.same(d.value, g.kind === 'call' ? c.args : c.ret, `${g.file}: our codec decodes it to the known values`);
      t.equal(d.rest, 0, `${g.file}: decoded completely`);

      // 3. the .x agrees, independently of our codec
      t.same(xCheck(p, c.name, which, payload, g.kind === 'call' ? c.args : c.ret), [], `${g.file}: the .x decodes it to the same values`);
    }
  });
}

// ---- recorded from the real libvirt -------------------------------------------------------

const capturedDir = join(FIXTURES, 'captured');

t.test('captured traffic of the real virt-admin and virtlockd', async (t) => {
  const files = existsSync(capturedDir) ? readdirSync(capturedDir).filter((f) => f.endsWith('.hex')).sort() : [];
  t.ok(files.length > 0, `${files.length} recorded packets in test/fixtures/wire/captured/`);
  const seen = new Set<string>();
  for (const f of files) {
    const packet = parseHexFixture(readFileSync(join(capturedDir, f), 'utf8'));
    t.equal(packet.readUInt32BE(0), packet.length, `${f}: length word`);
    const h = decodeHeader(packet.subarray(LEN_WORD));
    const p = wirePrograms.find((x) => x.program.prog === h.prog && x.program.vers === h.vers);
    if (!p) {
      t.fail(`${f}: program 0x${h.prog.toString(16)} v${h.vers} is none of ours`);
      continue;
    }
    const row = p.program.procedures.get(h.proc);
    if (!row) {
      t.fail(`${f}: ${p.key} procedure ${h.proc} is not in the table`);
      continue;
    }
    const payload = payloadOf(packet);
    const client = p.client.get(h.proc) ?? {};
    if (h.status === MessageStatus.ERROR) {
      const r = new XdrReader(payload);
      const e = decodeWireError(r);
      t.equal(r.remaining, 0, `${f}: virNetMessageError decoded completely (${e.message})`);
      const w = new XdrWriter();
      encodeWireError(w, e);
      t.same(Buffer.from(w.bytes()), payload, `${f}: our encoder writes the same error bytes`);
      seen.add(`${p.key} error`);
      continue;
    }
    const isCall = h.type === MessageType.CALL;
    const d = decodeWith(isCall ? row.decodeArgs : client.decodeRet, payload);
    t.equal(d.rest, 0, `${f}: ${p.key} ${row.name} ${isCall ? 'call' : 'reply'} decoded completely by our codec`);
    const back = encodeWith(isCall ? client.encodeArgs : row.encodeRet, d.value);
    t.same(back, payload, `${f}: our codec re-encodes the decoded value to the recorded bytes`);
    t.same(xCheck(p, row.name, isCall ? 'args' : 'ret', payload, d.value), [], `${f}: the .x decodes it to the same values`);
    seen.add(`${p.key} ${row.name}`);
  }
  t.ok(seen.size >= 10, `recordings cover ${seen.size} distinct procedure/program pairs: ${[...seen].join(', ')}`);
});
