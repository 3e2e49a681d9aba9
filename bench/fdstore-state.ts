// What keeping the fd store's state current costs, by the number of leases
// held. A full document (the base, written at a compaction; before the
// journal, at every turn that changed something): the re-exec snapshot of
// the whole daemon, JSON.stringify, one write(2) into a memfd. One journal
// append (what a turn that changed one lease costs now): the lease's
// document entry, its record, one pwrite. Recovery: reading the newer slot
// and replaying its journal when it is as long as it gets (just before a
// compaction is due), against reading a base alone.
//   node dist/bench/fdstore-state.js [--leases 10,100,1000,10000] [--reps 50]

import { parseArgs } from 'node:util';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { Daemon } from '../src/daemon/daemon.js';
import type { DaemonOptions } from '../src/daemon/options.js';
import { DEFAULT_HEALTH } from '../src/health/options.js';
import { StateSlots, newestSlot } from '../src/fdstore/stateSlots.js';
import { StateJournal } from '../src/fdstore/stateJournal.js';
import { replayJournal } from '../src/fdstore/journal.js';
import { journalSource } from '../src/daemon/crashStore.js';
import type { StateDocument } from '../src/state/document.js';

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
const rows: string[] = [];
console.log('full document (a compaction; before the journal: every changing turn), medians');
console.log('leases  doc bytes  snapshot ms  stringify ms  write ms  total ms');
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

  // The journal: one changed lease per turn, appended; then recovery from a journal at its longest.
  const journal = new StateJournal(slots, journalSource(d));
  const compactMs: number[] = [];
  for (let r = 0; r < Math.min(reps, 10); r++) {
    const t0 = performance.now();
    journal.compact();
    compactMs.push(performance.now() - t0);
  }
  const names = [...ls.resources.keys()];
  const appendMs: number[] = [];
  let recBytes = 0;
  let k = 0;
  while (!journal.compactionDue) {
    const res = ls.resources.get(names[k++ % names.length]!)!;
    res.owners.push(res.owners[0]!); // a shared join, as a change to record
    const t0 = performance.now();
    journal.lease(ls, res.name);
    recBytes = journal.flush();
    appendMs.push(performance.now() - t0);
    res.owners.pop();
  }
  const records = appendMs.length;
  const journalBytes = slots.journalBytes;
  const replayMs: number[] = [];
  let replayed: StateDocument | null = null;
  for (let r = 0; r < Math.min(reps, 10); r++) {
    const t0 = performance.now();
    const slot = newestSlot([...slots.fds])!;
    replayed = replayJournal(JSON.parse(slot.text) as StateDocument, slot.records);
    replayMs.push(performance.now() - t0);
  }
  if (replayed!.defaultLockspace.resources.length !== n) throw new Error('replay lost leases');
  journal.compact();
  const baseMs: number[] = [];
  for (let r = 0; r < Math.min(reps, 10); r++) {
    const t0 = performance.now();
    const slot = newestSlot([...slots.fds])!;
    JSON.parse(slot.text);
    baseMs.push(performance.now() - t0);
  }
  rows.push(`${String(n).padStart(6)}  ${median(appendMs).toFixed(4).padStart(9)}  ${String(recBytes).padStart(9)}  ${median(compactMs).toFixed(3).padStart(10)}  ${String(records).padStart(7)}  ${String(journalBytes).padStart(11)}  ${median(replayMs).toFixed(2).padStart(9)}  ${median(baseMs).toFixed(2).padStart(7)}`);
}
console.log('\njournal (medians): one append = one changed lease in a turn; replay = read the newer slot + replay a journal at its longest (compaction due)');
console.log('leases  append ms  rec bytes  compact ms  records  journal B  replay ms  base ms');
for (const r of rows) console.log(r);
rmSync(dir, { recursive: true, force: true });
process.exit(0);
