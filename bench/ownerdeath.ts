// ownerdeath: how soon after an owner's death its lease is free, relockd
// against the real virtlockd in the same run (issue 9 §5).
//
//   npm run build && node dist/bench/ownerdeath.js [--runs 30] [--targets relockd,virtlockd]
//
// Per run a real owner process (node) connects, REGISTERs itself (its own
// pid, as QEMU does on its inherited connection) and acquires one file in
// the default lock space; then it ends in one of two ways:
//   exit      it exits by itself (a VM shutting down: the usual case);
//   sigterm   it closes its lock connection and keeps running; the daemon
//             sends SIGTERM, which the owner handles by exiting.
// A prober (python3, another process) watches the owner's pidfd and tries
// the file's lock (fcntl.lockf, non-blocking) in a loop with 20 µs naps; the
// figure is the time from "pidfd readable" (the exit is complete) to "lock
// taken" (the daemon closed its fd), both CLOCK_MONOTONIC in the prober.
// The cells alternate (relockd, virtlockd, virtlockd, relockd, …) so drift
// in the machine's load hits both. Medians and the 90th percentile.

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { ROOT, startRelockd } from '../test/lib/relockd.js';
import { startVirtlockd, virtlockdAvailable, virtlockdUnavailableReason, visibleTmpDir } from '../test/lib/virtlockd.js';

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '30' },
    targets: { type: 'string', default: 'relockd,virtlockd' },
    modes: { type: 'string', default: 'exit,sigterm' },
    json: { type: 'boolean', default: false },
  },
});
const runs = Number(values.runs);
const modes = values.modes!.split(',') as Array<'exit' | 'sigterm'>;

const PROBER = `
import os, sys, fcntl, select, time, json
pid, path = int(sys.argv[1]), sys.argv[2]
pfd = os.pidfd_open(pid)
fd = os.open(path, os.O_RDWR)
p = select.poll(); p.register(pfd, select.POLLIN)
sys.stdout.write('ready\\n'); sys.stdout.flush()
t_exit = None
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    if t_exit is None and p.poll(0):
        t_exit = time.monotonic_ns()
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
        t_free = time.monotonic_ns()
        if t_exit is None and p.poll(0): t_exit = t_free
        # None: the lease was free while the owner still ran (released before the kill)
        print(json.dumps({'ms': (t_free - t_exit) / 1e6 if t_exit else None}))
        sys.exit(0)
    except OSError:
        time.sleep(0.00002)
print(json.dumps({'ms': None, 'timeout': True}))
`;

function ownerCode(socket: string, img: string): string {
  return `
    const { LockspaceClient } = await import(${JSON.stringify(`${ROOT}/dist/src/protocol/lockspaceClient.js`)});
    process.on('SIGTERM', () => process.exit(0));
    const c = await LockspaceClient.connect(${JSON.stringify(socket)});
    await c.register({ uuid: '11112222-3333-4444-5555-666677778888', name: 'bench', id: 1, pid: process.pid });
    await c.acquire('', ${JSON.stringify(img)}, 0);
    await c.restrict(); // as libvirt's lockd plugin does in QEMU's process
    process.stdout.write('ready\\n');
    process.stdin.on('data', (d) => (String(d).startsWith('exit') ? process.exit(0) : c.close()));
    setInterval(() => {}, 1 << 30);
  `;
}

const lineOf = (s: NodeJS.ReadableStream) => new Promise<string>((r) => s.once('data', (d) => r(String(d))));

async function oneRun(socket: string, img: string, mode: 'exit' | 'sigterm'): Promise<number | null> {
  const owner = spawn('/usr/bin/env', ['-u', 'NODE_OPTIONS', process.execPath, '--input-type=module', '-e', ownerCode(socket, img)], { stdio: ['pipe', 'pipe', 'inherit'] });
  await lineOf(owner.stdout!);
  const prober = spawn('python3', ['-c', PROBER, String(owner.pid), img], { stdio: ['ignore', 'pipe', 'inherit'] });
  await lineOf(prober.stdout!);
  const result = lineOf(prober.stdout!);
  owner.stdin!.write(mode === 'exit' ? 'exit\n' : 'drop\n');
  const r = JSON.parse(await result) as { ms: number | null };
  await new Promise((res) => (owner.exitCode !== null || owner.signalCode !== null ? res(null) : owner.once('exit', res)));
  await new Promise((res) => (prober.exitCode !== null ? res(null) : prober.once('exit', res)));
  return r.ms;
}

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((s.length * p) / 100))]!;
};

async function main(): Promise<void> {
  const wanted = values.targets!.split(',');
  const daemons: Array<{ name: string; socket: string; stop: () => Promise<void> }> = [];
  if (wanted.includes('relockd')) {
    const d = await startRelockd({ logLevel: 'warn', args: ['--term-grace', '10'] });
    daemons.push({ name: 'relockd', socket: d.socketPath, stop: () => d.stop() });
  }
  if (wanted.includes('virtlockd')) {
    if (virtlockdAvailable()) {
      const v = await startVirtlockd();
      daemons.push({ name: 'virtlockd', socket: v.socketPath, stop: () => v.stop() });
    } else {
      process.stderr.write(`virtlockd skipped: ${virtlockdUnavailableReason()}\n`);
    }
  }
  const dir = mkdtempSync(join(visibleTmpDir(), 'ownerexit-'));
  const results: Record<string, Record<string, number[]>> = {};
  try {
    for (const mode of modes) {
      for (let i = 0; i < runs; i++) {
        const order = i % 2 === 0 ? daemons : [...daemons].reverse();
        for (const d of order) {
          const img = join(dir, `${d.name}-${mode}-${i}.img`);
          writeFileSync(img, '');
          const ms = await oneRun(d.socket, img, mode);
          ((results[d.name] ??= {})[mode] ??= []).push(ms ?? NaN);
        }
      }
    }
  } finally {
    for (const d of daemons) await d.stop();
    rmSync(dir, { recursive: true, force: true });
  }
  const rows: string[] = [`owner death -> lease free (ms), ${runs} runs per cell, pidfd readable -> lock taken, in the prober`];
  rows.push(`${'daemon'.padEnd(10)} ${'mode'.padEnd(8)} ${'median'.padStart(8)} ${'p90'.padStart(8)} ${'max'.padStart(8)}  free while the owner still ran`);
  for (const [name, byMode] of Object.entries(results)) {
    for (const [mode, xs] of Object.entries(byMode)) {
      const ok = xs.filter((x) => Number.isFinite(x));
      const f = (x: number | undefined) => (x === undefined || !Number.isFinite(x) ? '-' : x.toFixed(2)).padStart(8);
      rows.push(`${name.padEnd(10)} ${mode.padEnd(8)} ${f(pct(ok, 50))} ${f(pct(ok, 90))} ${f(ok.length ? Math.max(...ok) : undefined)}  ${xs.length - ok.length} of ${xs.length}`);
    }
  }
  process.stderr.write(`${rows.join('\n')}\n`);
  if (values.json) process.stdout.write(`${JSON.stringify(results)}\n`);
}

void main();
