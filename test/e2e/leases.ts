// Lease checks from a SEPARATE process (python3 fcntl.lockf on byte 0,
// length 1 — the classic POSIX lock virtlockd takes): a lease is proven held
// only when another process fails to take it. See test/lib/probe.ts (its
// Hammer is used for the re-exec step).

import { existsSync } from 'node:fs';
import { run } from './proc.js';

export const PYTHON = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';

const PROBE = `
import fcntl, os, sys, json
mode = sys.argv[1]
res = {}
for p in sys.argv[2:]:
    try:
        fd = os.open(p, os.O_RDWR)
    except OSError as e:
        res[p] = 'missing' if e.errno == 2 else 'error:' + (e.strerror or str(e)); continue
    try:
        fcntl.lockf(fd, (fcntl.LOCK_EX if mode == 'write' else fcntl.LOCK_SH) | fcntl.LOCK_NB, 1, 0)
        res[p] = 'free'
    except OSError:
        res[p] = 'held'
    os.close(fd)
print(json.dumps(res))
`;

/** 'missing' = no such file (an AUTOCREATE lease file that was removed, i.e. free). */
export type Probe = 'free' | 'held' | 'missing' | `error:${string}`;

export async function probe(paths: string[], mode: 'write' | 'read'): Promise<Record<string, Probe>> {
  const r = await run(PYTHON, ['-c', PROBE, mode, ...paths], { timeoutMs: 20_000 });
  if (r.code !== 0) throw new Error(`lock probe failed: ${r.stderr.trim()}`);
  return JSON.parse(r.stdout) as Record<string, Probe>;
}

export async function probeOne(path: string, mode: 'write' | 'read'): Promise<Probe> {
  return (await probe([path], mode))[path]!;
}

// Opens the lease, checks that it is held, SIGKILLs the QEMU pid and spins on
// F_SETLK until it gets the lock: the time from kill(2) to the lease being
// free, measured by one process without any scheduling gap in between.
const KILL_AND_WAIT = `
import fcntl, os, sys, time, json, signal
pid = int(sys.argv[1]); path = sys.argv[2]; limit = float(sys.argv[3])
fd = os.open(path, os.O_RDWR)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
    print(json.dumps({"error": "lease was not held before the kill"})); sys.exit(0)
except OSError:
    pass
t0 = time.monotonic()
os.kill(pid, signal.SIGKILL)
n = 0
while True:
    n += 1
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
        break
    except OSError:
        if time.monotonic() - t0 > limit:
            print(json.dumps({"error": "lease still held %.1f s after kill -9" % limit})); sys.exit(0)
ms = (time.monotonic() - t0) * 1000
fcntl.lockf(fd, fcntl.LOCK_UN, 1, 0)
print(json.dumps({"ms": ms, "attempts": n}))
`;

/** kill -9 `pid` and time until `leasePath` can be locked by this (separate) process. */
export async function killAndTimeRelease(pid: number, leasePath: string, limitS = 15): Promise<number> {
  const r = await run(PYTHON, ['-c', KILL_AND_WAIT, String(pid), leasePath, String(limitS)], { timeoutMs: (limitS + 10) * 1000 });
  if (r.code !== 0) throw new Error(`kill probe failed: ${r.stderr.trim()}`);
  const res = JSON.parse(r.stdout) as { ms?: number; error?: string };
  if (res.error !== undefined || res.ms === undefined) throw new Error(`kill -9 ${pid}: ${res.error}`);
  return res.ms;
}
