// What keeping the fd store's state document current costs per write, by
// the number of leases held: the re-exec snapshot of the whole daemon,
// JSON.stringify, and one write(2) into a memfd (daemon/crashStore.ts does
// this at most once per event-loop turn that changed something).
//   node dist/bench/fdstore-state.js [--leases 10,100,1000,10000] [--reps 50]

import { parseArgs } from 'node:util';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { Daemon } from '../src/daemon/daemon.js';
import type { DaemonOptions } from '../src/daemon/options.js';
import { DEFAULT_HEALTH } from '../src/health/options.js';
import { StateSlots } from '../src/fdstore/stateSlots.js';

const { values } = parseArgs({ options: { leases: { type: 'string', default: '10,100,1000,10000' }, reps: { type: 'string', default: '50' } } });
const counts = values.leases!.split(',').map(Number);
const reps = Number(values.reps);
const dir = mkdtempSync(join(tmpdir(), 'fdstore-state-'));
const opts: DaemonOptions = {
  socketPath: join(dir, 's'), adminSocketPath: null, adminMaxClients: 1, runtimeDir: dir, stateFile: join(dir, 'state.json'), maxClients: 1024,
  termination: { termGraceMs: 3000, killWarnMs: 10000, pollMs: 100 }, storageTimeoutMs: 30000, storagePerKeyConcurrency: 1, quiesceTimeoutMs: 1000,
  pidFile: null, shutdownPolicy: 'drain', timeoutSec: null, lockspaces: [], storageInline: 'local', health: { ...DEFAULT_HEALTH },
};
const median = (a: number[]) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)]!;
console.log('leases  doc bytes  snapshot ms  stringify ms  write ms  total ms (medians)');
for (const n of counts) {
  const d = new Daemon(opts, pino({ level: 'silent' }));
  const ls = d.manager.defaultSpace;
  for (let i = 0; i < n; i++) {
    const name = `/var/lib/libvirt/images/vm${Math.floor(i / 4)}-disk${i % 4}.qcow2`;
    d.manager.adoptResource(ls, { name, path: name, fd: 1000 + i, dev: 2049, ino: 100000 + i, flags: 0, owners: [4000 + Math.floor(i / 4)], since: Date.now() });
  }
  const slots = new StateSlots();
  const snap: number[] = [], str: number[] = [], wr: number[] = [];
  let bytes = 0;
  for (let r = 0; r < reps; r++) {
    const t0 = performance.now();
    const doc = d.stateSnapshot('crash-restart', new Map());
    const t1 = performance.now();
    const text = JSON.stringify(doc);
    const t2 = performance.now();
    bytes = slots.write(text);
    const t3 = performance.now();
    snap.push(t1 - t0);
    str.push(t2 - t1);
    wr.push(t3 - t2);
  }
  const tot = median(snap) + median(str) + median(wr);
  console.log(`${String(n).padStart(6)}  ${String(bytes).padStart(9)}  ${median(snap).toFixed(3).padStart(11)}  ${median(str).toFixed(3).padStart(12)}  ${median(wr).toFixed(3).padStart(8)}  ${tot.toFixed(3).padStart(8)}`);
}
rmSync(dir, { recursive: true, force: true });
process.exit(0);
