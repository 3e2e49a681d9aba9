// Wire drift check, part 3: the fixtures through libvirt's own toolchain.
// libvirt builds its wire code with rpcgen from the .x files; this test does
// the same with the three vendored/written .x files (so relockd_admin_protocol.x
// must be valid rpcgen input, and compile), links the generated xdr_* routines
// (glibc/libtirpc XDR runtime) into a small checker, and passes it every
// golden and recorded payload: each must decode completely with the rpcgen
// routine of its args/ret struct and encode back to the same bytes. This is
// independent of both src/rpc/xdr.ts and test/lib/xdrSpec.ts.
// Needs rpcgen (Debian rpcsvc-proto), gcc and libtirpc-dev; .ci/run installs them.

import t from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { HEADER_SIZE, LEN_WORD, MessageStatus, MessageType, decodeHeader } from '../src/rpc/packet.js';
import { C_CONSTANTS } from './lib/xdrSpec.js';
import { FIXTURES, ROOT, loadSpec, parseHexFixture, procStruct, wirePrograms } from './lib/wirePrograms.js';
import type { WireProgram } from './lib/wirePrograms.js';

const TIRPC = '/usr/include/tirpc/rpc/rpc.h';
const missing = ['/usr/bin/rpcgen', '/usr/bin/gcc', TIRPC].filter((f) => !existsSync(f));

/** Builds the checker for one program; returns a function checking (struct, payload) pairs. */
function buildChecker(dir: string, p: WireProgram, structs: string[]): (items: Array<{ struct: string; payload: Buffer }>) => string[] {
  const base = basename(p.xFile, '.x');
  copyFileSync(join(ROOT, p.xFile), join(dir, `${base}.x`));
  // The C headers the .x files %#include, reduced to the constants they use.
  mkdirSync(join(dir, 'libvirt'), { recursive: true });
  const defs = Object.entries(C_CONSTANTS).map(([k, v]) => `#define ${k} ${v}\n`).join('');
  for (const h of ['internal.h', 'lock_driver_lockd.h', 'virxdrdefs.h', 'libvirt/libvirt-admin.h']) writeFileSync(join(dir, h), defs);
  execFileSync('rpcgen', ['-h', '-o', `${base}.h`, `${base}.x`], { cwd: dir });
  execFileSync('rpcgen', ['-c', '-o', `${base}.c`, `${base}.x`], { cwd: dir });
  const table = structs.map((s) => `  { "${s}", (xdrproc_t) xdr_${s}, sizeof(${s}) },`).join('\n');
  writeFileSync(
    join(dir, 'check.c'),
    `#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <rpc/rpc.h>
#include "${base}.h"
struct entry { const char *name; xdrproc_t proc; size_t size; };
static struct entry table[] = {
${table}
};
static int nib(char c) { return c <= '9' ? c - '0' : (c | 32) - 'a' + 10; }
int main(void) {
  char *line = NULL; size_t cap = 0;
  while (getline(&line, &cap, stdin) > 0) {
    char *name = strtok(line, " \\n"), *hex = strtok(NULL, " \\n");
    if (!name) continue;
    size_t len = hex && strcmp(hex, "-") ? strlen(hex) / 2 : 0;
    unsigned char *in = malloc(len + 1), *out = malloc(len + 64);
    for (size_t i = 0; i < len; i++) in[i] = nib(hex[2 * i]) << 4 | nib(hex[2 * i + 1]);
    struct entry *e = NULL;
    for (size_t i = 0; i < sizeof table / sizeof *table; i++) if (!strcmp(table[i].name, name)) e = &table[i];
    if (!e) { printf("fail no struct %s\\n", name); continue; }
    void *obj = calloc(1, e->size);
    XDR x;
    xdrmem_create(&x, (char *) in, len, XDR_DECODE);
    if (!e->proc(&x, obj, 0)) { printf("fail %s: rpcgen's decoder refused the bytes\\n", name); fflush(stdout); continue; }
    unsigned pos = xdr_getpos(&x);
    if (pos != len) { printf("fail %s: %zu trailing bytes after the struct\\n", name, len - pos); fflush(stdout); continue; }
    XDR y;
    xdrmem_create(&y, (char *) out, len + 64, XDR_ENCODE);
    if (!e->proc(&y, obj, 0)) { printf("fail %s: re-encoding failed\\n", name); continue; }
    unsigned n = xdr_getpos(&y);
    printf("ok ");
    for (unsigned i = 0; i < n; i++) printf("%02x", out[i]);
    printf("\\n");
    fflush(stdout);
    xdr_free(e->proc, obj);
    free(obj); free(in); free(out);
  }
  return 0;
}
`,
  );
  execFileSync('gcc', ['-O0', '-w', '-I.', '-I/usr/include/tirpc', '-o', 'check', 'check.c', `${base}.c`, '-ltirpc'], { cwd: dir });
  return (items) => {
    const input = items.map((i) => `${i.struct} ${i.payload.length ? i.payload.toString('hex') : '-'}\n`).join('');
    const r = spawnSync(join(dir, 'check'), [], { input, encoding: 'utf8', timeout: 30_000 });
    if (r.status !== 0) throw new Error(`checker exited ${r.status ?? r.signal}: ${r.stderr}`);
    const lines = r.stdout.trim().split('\n');
    return items.map((item, k) => {
      const l = lines[k] ?? 'fail no answer';
      if (!l.startsWith('ok ')) return l;
      return l.slice(3) === item.payload.toString('hex') ? 'ok' : `fail ${item.struct}: rpcgen re-encodes ${l.slice(3)}`;
    });
  };
}

/** Every golden and recorded packet of program p with its .x struct (void and error payloads left out). */
function payloads(p: WireProgram): Array<{ file: string; struct: string; payload: Buffer }> {
  const spec = loadSpec(p);
  const out: Array<{ file: string; struct: string; payload: Buffer }> = [];
  for (const dir of [p.key, 'captured']) {
    for (const f of readdirSync(join(FIXTURES, dir)).filter((x) => x.endsWith('.hex'))) {
      const packet = parseHexFixture(readFileSync(join(FIXTURES, dir, f), 'utf8'));
      const h = decodeHeader(packet.subarray(LEN_WORD));
      if (h.prog !== p.program.prog || h.status === MessageStatus.ERROR) continue;
      const name = p.program.procedures.get(h.proc)?.name;
      if (!name) continue;
      const st = procStruct(spec, p, name, h.type === MessageType.CALL ? 'args' : 'ret');
      if (st) out.push({ file: `${dir}/${f}`, struct: st.name, payload: packet.subarray(LEN_WORD + HEADER_SIZE) });
    }
  }
  return out;
}

if (missing.length && process.env.RELOCKD_CI) t.fail(`rpcgen check cannot run: missing ${missing.join(', ')}`);

t.test('fixtures through rpcgen-generated XDR routines', { skip: missing.length ? `missing ${missing.join(', ')} (Debian rpcsvc-proto, gcc, libtirpc-dev)` : false }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'relockd-rpcgen-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  for (const p of wirePrograms) {
    const items = payloads(p);
    const sub = join(dir, p.key);
    mkdirSync(sub);
    const check = buildChecker(sub, p, [...new Set(items.map((i) => i.struct))]);
    t.ok(items.length >= 7, `${p.key}: ${items.length} payloads for rpcgen's ${basename(p.xFile)} routines`);
    check(items).forEach((res, k) => t.equal(res, 'ok', `${items[k]!.file} (${items[k]!.struct}): decoded completely and re-encoded identically`));
    // Controls: one byte string too long or cut short must be refused.
    const sample = items.find((i) => i.payload.length >= 8)!;
    const [longer, shorter] = check([
      { struct: sample.struct, payload: Buffer.concat([sample.payload, Buffer.alloc(4)]) },
      { struct: sample.struct, payload: sample.payload.subarray(0, sample.payload.length - 4) },
    ]);
    t.match(longer, /trailing bytes/, `${p.key} control: 4 extra bytes are reported`);
    t.match(shorter, /refused/, `${p.key} control: 4 missing bytes are reported`);
  }
});
