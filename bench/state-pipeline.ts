// The re-exec's state phases in one process, by lease count and document
// format, without the exec: the old image's snapshot, encode + validate +
// JSON.stringify (what daemon/reexec.ts writes), and the new image's
// JSON.parse, validate (+ decode) and adoption (state/restore.ts on real
// fds: one per lease, opened here), in CPU time. Format 1 is the per-lease-object layout
// written before the compact one; format 2 is what relockd writes now.
//   node dist/bench/state-pipeline.js [--leases 1000,10000] [--reps 9] [--formats 1,2] [--dump DIR]
// Needs RLIMIT_NOFILE above the largest count (prlimit --nofile=20000:20000 …).

import { parseArgs } from 'node:util';
import { closeSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { Daemon } from '../src/daemon/daemon.js';
import type { DaemonOptions } from '../src/daemon/options.js';
import { DEFAULT_HEALTH } from '../src/health/options.js';
import { leaseRowsOf, parseStateDocument, parseStateForRestore, serialiseState } from '../src/state/documentFormat.js';
import type { LeaseColumns, LeaseRows } from '../src/state/documentFormat.js';
import { tableColumns } from '../src/state/snapshot.js';
import { restoreState } from '../src/state/restore.js';
import { validateState } from '../src/state/validate.js';
import type { StateDocument } from '../src/state/document.js';
import * as native from '../src/native.js';

const { values } = parseArgs({ options: { leases: { type: 'string', default: '1000,10000' }, reps: { type: 'string', default: '9' }, formats: { type: 'string', default: '1,2' }, dump: { type: 'string' } } });
const formats = values.formats!.split(',').map(Number);
const counts = values.leases!.split(',').map(Number);
const reps = Number(values.reps);
const dir = mkdtempSync(join(tmpdir(), 'state-pipeline-'));
const opts = (sub: string): DaemonOptions => ({
  socketPath: join(dir, sub, 's'), adminSocketPath: null, adminMaxClients: 1, runtimeDir: join(dir, sub), stateFile: join(dir, sub, 'state.json'), maxClients: 1024,
  termination: { termGraceMs: 3000, killWarnMs: 10000, pollMs: 100 }, storageTimeoutMs: 30000, storagePerKeyConcurrency: 1, quiesceTimeoutMs: 1000,
  pidFile: null, shutdownPolicy: 'drain', timeoutSec: null, lockspaces: [], storageInline: 'local', health: { ...DEFAULT_HEALTH },
});
const median = (a: number[]) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)]!;
// CPU time (user + system) of the process, not wall time: on a loaded machine wall time is mostly waiting for a core.
const cpuMs = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};
const time = (f: () => void): number => {
  const t0 = cpuMs();
  f();
  return cpuMs() - t0;
};
const fmt = (ms: number) => ms.toFixed(2).padStart(8);

console.log('leases  format  bytes      snapshot  write-side  parse  validate+decode  adopt  (CPU ms, medians of ' + reps + ')');
for (const n of counts) {
  const src = new Daemon(opts('src'), pino({ level: 'silent' }));
  const ls = src.manager.defaultSpace;
  const fds: number[] = [];
  for (let i = 0; i < n; i++) {
    const path = join(dir, `vm${Math.floor(i / 4)}-disk${i % 4}.qcow2`);
    const fd = openSync(path, 'w');
    fds.push(fd);
    const id = native.fdInfo(Int32Array.of(fd), 0);
    src.manager.adoptResource(ls, { name: path, path, fd, dev: id[0]!, ino: id[1]!, flags: 0, owners: [4000 + Math.floor(i / 4)], since: Date.now() });
  }
  for (const format of formats) {
    const snap: number[] = [], write: number[] = [], parse: number[] = [], check: number[] = [], adopt: number[] = [];
    let bytes = 0;
    for (let r = 0; r < reps; r++) {
      // Format 2 as the re-exec does it: leases as columns straight from the tables, read back as columns.
      let doc!: StateDocument;
      let cols: LeaseColumns | undefined;
      snap.push(time(() => {
        doc = src.stateSnapshot('bench', new Map(), false, format === 2);
        if (format === 2) cols = tableColumns(src.manager);
      }));
      let text = '';
      write.push(time(() => {
        if (format === 1) {
          validateState(doc);
          text = JSON.stringify(doc);
        } else text = serialiseState(doc, cols);
      }));
      bytes = text.length;
      if (values.dump && r === 0) writeFileSync(join(values.dump, `state-${n}-f${format}.json`), text);
      let parsed: unknown;
      parse.push(time(() => (parsed = JSON.parse(text))));
      let restored!: { doc: StateDocument; leases: LeaseRows };
      check.push(time(() => (restored = format === 1 ? { doc: parseStateDocument(parsed), leases: undefined! } : parseStateForRestore(parsed))));
      const dst = new Daemon(opts(`dst${format}-${r}`), pino({ level: 'silent' }));
      const t0 = cpuMs();
      const target = { lockServer: dst.lockServer, adminServer: null, manager: dst.manager, socketPath: '', adminSocketPath: null, restoreLockContext: () => {}, openProcessHandle: () => null };
      const report = await restoreState(restored.doc, target, restored.leases ?? leaseRowsOf(restored.doc));
      adopt.push(cpuMs() - t0);
      if (report.resources !== n || report.problems.length) throw new Error(`restore: ${report.resources} of ${n}, ${report.problems.slice(0, 3).join('; ')}`);
    }
    console.log(`${String(n).padStart(6)}  ${String(format).padStart(6)}  ${String(bytes).padStart(9)}  ${fmt(median(snap))}  ${fmt(median(write))}  ${fmt(median(parse))}  ${fmt(median(check))}  ${fmt(median(adopt))}`);
  }
  for (const fd of fds) closeSync(fd);
}
rmSync(dir, { recursive: true, force: true });
process.exit(0);
