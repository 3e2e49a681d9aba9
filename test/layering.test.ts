// The layering of src/, checked: every import in src/ against the layer table
// of docs/architecture.md (the one place the order is written). A module may
// import from its own layer and the layers its row lists; a new folder must be
// given a row; no two layers may import each other, even through others.

import t from 'tap';
import ts from 'typescript';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const src = join(root, 'src');

/** The ```layers block of docs/architecture.md: `layer : allowed layers…`. */
function readLayerTable(markdown: string): Map<string, Set<string>> {
  const block = /```layers\n([\s\S]*?)```/.exec(markdown);
  if (!block) throw new Error('docs/architecture.md has no ```layers block');
  const table = new Map<string, Set<string>>();
  for (const line of block[1]!.split('\n')) {
    if (!line.trim()) continue;
    const m = /^\s*([a-z]+)\s*:\s*(.*)$/.exec(line);
    if (!m) throw new Error(`bad layer line: ${line}`);
    table.set(m[1]!, new Set(m[2]!.split(/\s+/).filter(Boolean)));
  }
  return table;
}

/** src/*.ts and src/util/ are the base layer; every other folder is its own. */
function layerOf(file: string): string {
  const parts = relative(src, file).split('/');
  return parts.length === 1 || parts[0] === 'util' ? 'base' : parts[0]!;
}

function sourceFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((e) => {
    const p = join(dir, e);
    return statSync(p).isDirectory() ? sourceFiles(p) : p.endsWith('.ts') ? [p] : [];
  });
}

/** Relative imports of a module: static, export-from, import(), require()/lazyRequire(), type-only too. */
function importsOf(file: string, text: string): string[] {
  const specs = ts.preProcessFile(text, true, true).importedFiles.map((i) => i.fileName);
  for (const m of text.matchAll(/\b(?:lazyRequire|require)\(\s*['"]([^'"]+)['"]\s*\)/g)) specs.push(m[1]!);
  return specs.filter((s) => s.startsWith('.')).map((s) => resolve(dirname(file), s.replace(/\.js$/, '.ts')));
}

interface Violation {
  from: string;
  to: string;
  why: string;
}

/** Every import the table does not allow, for the given files' texts. */
function check(files: Map<string, string>, table: Map<string, Set<string>>): Violation[] {
  const out: Violation[] = [];
  const layerEdges = new Map<string, Set<string>>();
  for (const [file, text] of files) {
    const from = layerOf(file);
    const allowed = table.get(from);
    if (!allowed) {
      out.push({ from: relative(root, file), to: '', why: `layer '${from}' is not in docs/architecture.md's table` });
      continue;
    }
    for (const target of importsOf(file, text)) {
      if (!target.startsWith(src + '/')) continue;
      const to = layerOf(target);
      if (to === from) continue;
      if (!layerEdges.has(from)) layerEdges.set(from, new Set());
      layerEdges.get(from)!.add(to);
      if (!allowed.has(to)) out.push({ from: relative(root, file), to: relative(root, target), why: `${from} may not import ${to}` });
    }
  }
  // The table itself must be a one-way order: no layer reaches one that reaches it.
  const reaches = (a: string, b: string, seen = new Set<string>()): boolean => {
    if (seen.has(a)) return false;
    seen.add(a);
    for (const n of table.get(a) ?? []) if (n === b || reaches(n, b, seen)) return true;
    return false;
  };
  for (const [layer] of table) if (reaches(layer, layer)) out.push({ from: layer, to: layer, why: `the layer table has a cycle through ${layer}` });
  return out;
}

/** Import cycles between modules (type-only imports included), each as its modules. */
function cycles(files: Map<string, string>): string[][] {
  const graph = new Map([...files].map(([f, text]) => [f, importsOf(f, text).filter((x) => files.has(x))]));
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const out: string[][] = [];
  let next = 0;
  const visit = (v: string) => {
    index.set(v, next);
    low.set(v, next++);
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v)!) {
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
    }
    if (low.get(v) === index.get(v)) {
      const scc: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        scc.push(relative(root, w));
      } while (w !== v);
      if (scc.length > 1) out.push(scc.sort());
    }
  };
  for (const v of graph.keys()) if (!index.has(v)) visit(v);
  return out;
}

const table = readLayerTable(readFileSync(join(root, 'docs', 'architecture.md'), 'utf8'));
const files = new Map(sourceFiles(src).map((f) => [f, readFileSync(f, 'utf8')] as const));

t.test('every import in src/ goes down the layer table of docs/architecture.md', async (t) => {
  t.ok(files.size > 50, `${files.size} modules read`);
  const bad = check(files, table);
  t.same(bad, [], bad.map((v) => `${v.from} -> ${v.to}: ${v.why}`).join('\n') || 'no upward import');
});

t.test('the check catches what it is for', async (t) => {
  const lockManager = join(src, 'locks', 'lockManager.ts');
  const upward = new Map(files);
  upward.set(lockManager, `${files.get(lockManager)}\nimport type { Daemon } from '../daemon/daemon.js';\n`);
  t.match(check(upward, table), [{ from: 'src/locks/lockManager.ts', to: 'src/daemon/daemon.ts', why: 'locks may not import daemon' }], 'an upward type import');
  const lazy = new Map(files);
  lazy.set(join(src, 'rpc', 'server.ts'), `const m = lazyRequire('../services/metrics.js');\n`);
  t.match(check(lazy, table), [{ why: 'rpc may not import services' }], 'an upward lazyRequire');
  const dynamic = new Map(files);
  dynamic.set(join(src, 'ctl', 'x.ts'), `export const m = () => import('../locks/lockManager.js');\n`);
  t.match(check(dynamic, table), [{ why: 'ctl may not import locks' }], 'an upward import()');
  const newFolder = new Map(files);
  newFolder.set(join(src, 'switchover', 'plan.ts'), `export {};\n`);
  t.match(check(newFolder, table), [{ why: "layer 'switchover' is not in docs/architecture.md's table" }], 'a folder without a row');
  const cyclic = new Map(table);
  cyclic.set('rpc', new Set(['base', 'daemon']));
  t.match(check(files, cyclic), [{ why: /cycle/ }], 'a cycle in the table');
});

t.test('no import cycle between modules (the daemon no longer sits in one with its services)', async (t) => {
  t.same(cycles(files), [], 'no cycle');
  const injected = new Map(files);
  const options = join(src, 'daemon', 'options.ts');
  injected.set(options, `${files.get(options)}\nimport type { Daemon } from './daemon.js';\n`);
  t.ok(cycles(injected).some((c) => c.includes('src/daemon/daemon.ts') && c.includes('src/daemon/options.ts')), 'an injected cycle is caught');
});
