// The golden wire fixtures as relockd's codecs produce them from the known
// values in cases.ts: full packets (length word, header, payload). Shared by
// the test (which compares) and regenerate.ts (which writes).

import { join } from 'node:path';
import { MessageStatus, MessageType, encodePacket } from '../../src/rpc/packet.js';
import { encodeWireError } from '../../src/rpc/wireError.js';
import { XdrWriter } from '../../src/rpc/xdr.js';
import { FIXTURES, encodeWith } from '../lib/wirePrograms.js';
import type { WireProgram } from '../lib/wirePrograms.js';
import { casesByKey } from './cases.js';
import type { WireCase } from './cases.js';

export interface GoldenFile {
  /** Path relative to test/fixtures/wire/. */
  file: string;
  kind: 'call' | 'reply' | 'error';
  case?: WireCase;
  proc: number;
  comment: string[];
  bytes: Buffer;
}

export const REGENERATE = 'npm run wire:fixtures';

const pad2 = (n: number) => String(n).padStart(2, '0');

export function goldenFiles(p: WireProgram): GoldenFile[] {
  const { cases, error } = casesByKey[p.key];
  const { prog, vers } = p.program;
  const out: GoldenFile[] = [];
  const hdr = (proc: number, type: number, status: number) => ({ prog, vers, proc, type, serial: proc, status });
  for (const c of cases) {
    const row = p.program.procedures.get(c.proc);
    const client = p.client.get(c.proc) ?? {};
    const base = `${p.key}/${pad2(c.proc)}-${c.name}`;
    out.push({
      file: `${base}.call.hex`,
      kind: 'call',
      case: c,
      proc: c.proc,
      comment: [`${p.key} program 0x${prog.toString(16)} v${vers}, procedure ${c.proc} ${c.name}: CALL (serial ${c.proc})`, `values: test/wire/cases.ts; written by \`${REGENERATE}\``],
      bytes: encodePacket(hdr(c.proc, MessageType.CALL, MessageStatus.OK), encodeWith(client.encodeArgs, c.args)),
    });
    out.push({
      file: `${base}.reply.hex`,
      kind: 'reply',
      case: c,
      proc: c.proc,
      comment: [`${p.key} program 0x${prog.toString(16)} v${vers}, procedure ${c.proc} ${c.name}: REPLY OK (serial ${c.proc})`, `values: test/wire/cases.ts; written by \`${REGENERATE}\``],
      bytes: encodePacket(hdr(c.proc, MessageType.REPLY, MessageStatus.OK), encodeWith(row?.encodeRet, c.ret)),
    });
  }
  const w = new XdrWriter();
  encodeWireError(w, error.wire);
  out.push({
    file: `${p.key}/error.reply.hex`,
    kind: 'error',
    proc: error.proc,
    comment: [`${p.key} program 0x${prog.toString(16)} v${vers}, procedure ${error.proc}: REPLY ERROR (virNetMessageError), serial ${error.proc}`, `values: test/wire/cases.ts; written by \`${REGENERATE}\``],
    bytes: encodePacket(hdr(error.proc, MessageType.REPLY, MessageStatus.ERROR), Buffer.from(w.bytes())),
  });
  return out;
}

export const fixturePath = (g: GoldenFile) => join(FIXTURES, g.file);
