// metrics-overhead: what counting costs on the lease hot path. One process,
// a real LockManager with the native locker on a local directory (the
// inline path: ACQUIRE and RELEASE complete synchronously in the addon, the
// cheapest a cycle gets, so the wrappers' share is largest here), with and
// without src/metrics/instrument.ts, interleaved rounds, medians.
//
//   npm run build && node --allow-addons dist/bench/metrics-overhead.js [--cycles 100000] [--rounds 7]

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { LockManager } from '../src/locks/lockManager.js';
import { NativeFileLocker } from '../src/locks/fileLocker.js';
import { StorageGate } from '../src/locks/storageGate.js';
import { StorageClassifier } from '../src/locks/storageClass.js';
import { createLogger } from '../src/log.js';
import { DaemonMetrics } from '../src/metrics/counters.js';
import { instrument } from '../src/metrics/instrument.js';

const { values } = parseArgs({ options: { cycles: { type: 'string', default: '100000' }, rounds: { type: 'string', default: '7' } } });
const CYCLES = Number(values.cycles);
const ROUNDS = Number(values.rounds);
const dir = mkdtempSync(join(tmpdir(), 'metrics-overhead-'));
const file = join(dir, 'disk.img');
writeFileSync(file, '');
const log = createLogger('silent');
const owner = { uuid: '00112233-4455-6677-8899-aabbccddeeff', name: 'bench', id: 1, pid: 4_000_000 };

async function setup(withMetrics: boolean) {
  const gate = new StorageGate({ timeoutMs: 30000, perKeyConcurrency: 4 });
  const classifier = new StorageClassifier(log, 'local', 1e9); // never demote: a preempted call on a loaded host must not change the path
  const manager = new LockManager({ locker: new NativeFileLocker(), gate, log, classifier });
  if (withMetrics) instrument(new DaemonMetrics(), manager, gate, classifier);
  // classify the directory (statfs off-thread), so cycles run inline
  for (let i = 0; i < 200; i++) {
    const a = manager.acquire('', file, 0, owner);
    await a;
    await manager.release('', file, owner);
    if (!a) return manager;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`${dir} is not handled inline (not a local filesystem?)`);
}

function run(m: LockManager): number {
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < CYCLES; i++) {
    const a = m.acquire('', file, 0, owner);
    if (a) throw new Error('not inline');
    void m.release('', file, owner); // inline: checked above that acquire is
  }
  return Number(process.hrtime.bigint() - t0) / CYCLES;
}

const plain = await setup(false);
const counted = await setup(true);
run(plain);
run(counted); // warm-up
const a: number[] = [];
const b: number[] = [];
for (let r = 0; r < ROUNDS; r++) {
  a.push(run(plain));
  b.push(run(counted));
}
const med = (x: number[]) => [...x].sort((p, q) => p - q)[Math.floor(x.length / 2)]!;
console.log(`acquire+release cycle, inline path, ${CYCLES} cycles x ${ROUNDS} rounds (median ns/cycle)`);
console.log(`  without metrics: ${med(a).toFixed(0)} ns   [${a.map((x) => x.toFixed(0)).join(' ')}]`);
console.log(`  with metrics:    ${med(b).toFixed(0)} ns   [${b.map((x) => x.toFixed(0)).join(' ')}]`);
console.log(`  difference:      ${(med(b) - med(a)).toFixed(0)} ns/cycle (${(((med(b) - med(a)) / med(a)) * 100).toFixed(1)}%)`);
rmSync(dir, { recursive: true, force: true });
