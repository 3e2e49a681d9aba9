// The error catalogue is the one source of what relockd sends (as fastify's
// errors test): docs/errors.md lists exactly its entries and the exit codes,
// nothing in src/ builds a wire error outside it, every code and domain of the
// enums is used and every entry is thrown somewhere, and each entry's factory
// sends the code, domain and text the catalogue (and so the doc) says.

import t from 'tap';
import { readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { E, catalogue } from '../src/util/errorCatalogue.js';
import { ErrorCode, ErrorDomain, ProtocolError } from '../src/util/errors.js';
import { END, START, messageOf, renderErrorsDoc } from './lib/errorsDoc.js';

const ROOT = join(import.meta.dirname, '..');
const DOC = join(ROOT, 'docs/errors.md');

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? sources(p) : p.endsWith('.ts') ? [p] : [];
  });
}

t.test('docs/errors.md lists exactly the catalogue and the exit codes', async (t) => {
  const doc = readFileSync(DOC, 'utf8');
  const a = doc.indexOf(START);
  const b = doc.indexOf(END);
  t.ok(a >= 0 && b > a, 'the generated part is marked');
  const want = renderErrorsDoc();
  if (process.env.RELOCKD_WRITE_ERRORS_DOC === '1') {
    writeFileSync(DOC, doc.slice(0, a) + want + doc.slice(b + END.length));
    t.comment('docs/errors.md rewritten');
    return;
  }
  t.equal(doc.slice(a, b + END.length), want, 'generated part is up to date (RELOCKD_WRITE_ERRORS_DOC=1 npx tap test/errors.test.ts)');
  // And nothing outside it claims another error name.
  const names = new Set(catalogue().map((e) => e.name));
  const rows = [...doc.slice(a, b).matchAll(/^\| ([A-Z_]+) \| VIR_ERR_/gm)].map((m) => m[1]!);
  t.same(rows, [...names], 'one row per entry, in catalogue order');
});

t.test('nothing in src/ builds a wire error outside the catalogue', async (t) => {
  const allowed = new Set(['src/util/errors.ts', 'src/util/errorCatalogue.ts']);
  const builders = /new ProtocolError\b|ProtocolError\.(report|formatted|system|unsupportedFlags|rpc|unset)\(/;
  const offenders: string[] = [];
  for (const f of sources(join(ROOT, 'src'))) {
    const rel = relative(ROOT, f);
    if (allowed.has(rel)) continue;
    readFileSync(f, 'utf8')
      .split('\n')
      .forEach((line, i) => {
        if (builders.test(line)) offenders.push(`${rel}:${i + 1}: ${line.trim()}`);
      });
  }
  t.same(offenders, [], 'every error comes from E.*');
});

t.test('every code and domain of the enums is sent, every entry is thrown somewhere', async (t) => {
  const entries = catalogue();
  const codes = new Set(entries.map((e) => e.code));
  const domains = new Set(entries.map((e) => e.domain));
  for (const [n, v] of Object.entries(ErrorCode)) t.ok(codes.has(v), `ErrorCode.${n} is used`);
  for (const [n, v] of Object.entries(ErrorDomain)) t.ok(domains.has(v), `ErrorDomain.${n} is used`);
  for (const e of entries) {
    t.ok(Object.values(ErrorCode).includes(e.code as never), `${e.name}: code in ErrorCode`);
    t.ok(Object.values(ErrorDomain).includes(e.domain as never), `${e.name}: domain in ErrorDomain`);
  }
  const src = sources(join(ROOT, 'src'))
    .filter((f) => !f.endsWith('errorCatalogue.ts'))
    .map((f) => readFileSync(f, 'utf8'))
    .join('\n');
  for (const e of entries) t.match(src, new RegExp(`\\bE\\.${e.name}\\b`), `E.${e.name} is used`);
});

t.test('each entry sends the code, domain and text it lists', async (t) => {
  for (const e of catalogue()) {
    const make = E[e.name] as unknown as (...a: unknown[]) => ProtocolError;
    // Fill each placeholder with its own name, so the message equals the template.
    const vars = Object.fromEntries([...e.detail.matchAll(/\{(\w+)\}/g)].map((m) => [m[1]!, `{${m[1]}}`]));
    let err: ProtocolError;
    switch (e.kind) {
      case 'system':
        err = Object.keys(vars).length ? make(vars, 2, '<strerror(errno)>') : make(2, '<strerror(errno)>');
        t.equal(err.wire.int1, 2, `${e.name}: errno in int1`);
        break;
      case 'flags':
        err = make(4, 'someFunction');
        t.equal(err.message, 'unsupported flags (0x4) in function someFunction', `${e.name}: message`);
        t.equal(err.wire.str1, 'someFunction', `${e.name}: str1 is the function`);
        t.equal(err.code, e.code);
        t.equal(err.domain, e.domain);
        continue;
      default:
        err = Object.keys(vars).length ? make(vars) : make();
    }
    t.ok(err instanceof ProtocolError, `${e.name}: a ProtocolError`);
    t.equal(err.code, e.code, `${e.name}: code`);
    t.equal(err.domain, e.domain, `${e.name}: domain`);
    t.equal(err.message, messageOf(e), `${e.name}: message`);
    if (e.kind === 'report') t.equal(err.wire.str1, e.format, `${e.name}: str1 is the info format`);
  }
});
