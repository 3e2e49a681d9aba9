// Summarises a V8 .cpuprofile (from `node --cpu-prof`, e.g. lockbench's
// --cpu-prof DIR): where the main thread's time goes, by function (self and
// inclusive) and by source (relockd file, dependency, node internals).
//
//   node dist/bench/profsummary.js PROFILE.cpuprofile [--top 30] [--focus SUBSTRING]
//
// Only the main JS thread is sampled; time on libuv pool threads (the
// addon's lockFile/releaseFile) does not appear here: lockbench's "off-main"
// column shows how much of the daemon's CPU that is.

import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
  columnNumber: number;
}
interface ProfNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}
interface Profile {
  nodes: ProfNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

function shortUrl(url: string): string {
  if (!url) return '';
  const u = url.replace(/^file:\/\//, '');
  const nm = u.lastIndexOf('/node_modules/');
  if (nm >= 0) return u.slice(nm + '/node_modules/'.length);
  const d = u.indexOf('/dist/');
  if (d >= 0) return u.slice(d + '/dist/'.length);
  return u;
}

function sourceOf(f: CallFrame): string {
  const u = f.url;
  if (!u) return f.functionName.startsWith('(') ? f.functionName : '(native/builtin)';
  if (u.startsWith('node:')) return u;
  const nm = u.lastIndexOf('/node_modules/');
  if (nm >= 0) {
    const rest = u.slice(nm + '/node_modules/'.length).split('/');
    return `dep:${rest[0]!.startsWith('@') ? `${rest[0]}/${rest[1]}` : rest[0]}`;
  }
  return shortUrl(u);
}

function label(f: CallFrame): string {
  const name = f.functionName || '(anonymous)';
  const u = shortUrl(f.url);
  return u ? `${name}  ${u}:${f.lineNumber + 1}` : name;
}

function main(): void {
  const { values, positionals } = parseArgs({
    options: { top: { type: 'string', default: '30' }, focus: { type: 'string' } },
    allowPositionals: true,
  });
  if (positionals.length !== 1) {
    process.stderr.write('usage: profsummary PROFILE.cpuprofile [--top N] [--focus SUBSTRING]\n');
    process.exit(2);
  }
  const top = Number(values.top);
  const p = JSON.parse(readFileSync(positionals[0]!, 'utf8')) as Profile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);

  const self = new Map<number, number>();
  let total = 0;
  for (let i = 0; i < p.samples.length; i++) {
    const dt = p.timeDeltas[i] ?? 0;
    self.set(p.samples[i]!, (self.get(p.samples[i]!) ?? 0) + dt);
    total += dt;
  }
  const idleIds = new Set(p.nodes.filter((n) => n.callFrame.functionName === '(idle)').map((n) => n.id));
  let idle = 0;
  for (const id of idleIds) idle += self.get(id) ?? 0;
  const busy = total - idle;

  // Self time by function (merged across call sites), inclusive by function
  // (counted once per sample even under recursion), and self by source.
  const selfFn = new Map<string, number>();
  const inclFn = new Map<string, number>();
  const bySource = new Map<string, number>();
  for (const [id, t] of self) {
    if (idleIds.has(id)) continue;
    const f = byId.get(id)!.callFrame;
    const key = label(f);
    selfFn.set(key, (selfFn.get(key) ?? 0) + t);
    const src = sourceOf(f);
    bySource.set(src, (bySource.get(src) ?? 0) + t);
    const seen = new Set<string>();
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const k = label(byId.get(cur)!.callFrame);
      if (seen.has(k)) continue;
      seen.add(k);
      inclFn.set(k, (inclFn.get(k) ?? 0) + t);
    }
  }
  const ms = (us: number) => (us / 1000).toFixed(0).padStart(7);
  const share = (us: number) => `${((100 * us) / (busy || 1)).toFixed(1).padStart(5)}%`;
  const print = (title: string, m: Map<string, number>, n: number, filter?: (k: string) => boolean) => {
    process.stdout.write(`\n${title}\n`);
    const rows = [...m].filter(([k]) => !filter || filter(k)).sort((a, b) => b[1] - a[1]).slice(0, n);
    for (const [k, t] of rows) process.stdout.write(`${ms(t)} ms ${share(t)}  ${k}\n`);
  };
  process.stdout.write(
    `profile: ${((p.endTime - p.startTime) / 1e6).toFixed(1)} s wall, ${(busy / 1e6).toFixed(2)} s busy on the main thread, ${(idle / 1e6).toFixed(2)} s idle (shares below are of busy time)\n`,
  );
  print('by source (self time):', bySource, top);
  print('by function, self time:', selfFn, top);
  print('by function, inclusive time:', inclFn, top, (k) => !k.startsWith('(root)') && !k.startsWith('(program)'));
  if (values.focus) print(`inclusive, matching '${values.focus}':`, inclFn, top, (k) => k.includes(values.focus!));
}

main();
