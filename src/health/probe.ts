// One bounded health probe of a lock space's storage, off the event loop.
//
// What reaches the server (measured in the NFS lab, docs/storage-failure.md):
//  - statx(dir, AT_STATX_FORCE_SYNC): a GETATTR the attribute cache cannot
//    answer, so a hung or partitioned server makes it hang (or fail);
//  - pread of the first block through the lease's own open file description
//    with O_DIRECT: a READ with the lock's stateid; an NFSv4 client that lost
//    the lock fails it with EIO (Linux >= 3.12). Without O_DIRECT, a read at
//    the end of a zero-length lease file never leaves the client.
// The probe uses each lease's own fd; releases of an fd in use wait for the
// probe (FdGuard), so the worker never uses an fd number that a concurrent
// release closed and that was reused.

import { readFileSync } from 'node:fs';
import type { FileLocker } from '../locks/fileLocker.js';
import * as native from '../native.js';
import type { NativeError } from '../native.js';

export interface ProbeTarget {
  /** The resource's name, for logs and results. */
  name: string;
  fd: number;
  shared: boolean;
  /** Classic POSIX locks (inherited from virtlockd) are not probed: closing a dup would drop them. */
  classic: boolean;
}

export interface ProbeOutcome {
  /** Storage answered every call. */
  ok: boolean;
  /** The probe did not finish within the deadline (it may still be running). */
  timedOut: boolean;
  /** The directory (server) check failed: message. */
  dirError: string | null;
  /** Leases whose I/O failed with EIO (or whose lock is now someone else's): lost. */
  lost: string[];
  /** Other per-lease errors (name: message). */
  leaseErrors: Record<string, string>;
  ms: number;
}

/** Probe methods in use by default (see the header). */
const DEFAULT_PROBE_METHODS = native.ProbeMethod.DIR_STATX | native.ProbeMethod.DIRECT_READ;

/** Errors that mean the lock itself is gone, not merely that the server is slow. */
function isLost(e: NativeError): boolean {
  return e.code === 'EIO' || ((e.syscall ?? '').startsWith('fcntl') && (e.code === 'EAGAIN' || e.code === 'EACCES' || e.code === 'ENOLCK'));
}

/**
 * Lease fds a probe is using. The probe works on the lease's own fd (a dup
 * would be one more fd to close, and closing it at an exec or in a child's
 * exec waits for a dead server); a release of such an fd waits until the
 * probe is done with it, so the fd number is never closed and reused under
 * the probe.
 */
export class FdGuard {
  private readonly busy = new Map<number, { n: number; waiters: Array<() => void> }>();

  hold(fd: number): void {
    const b = this.busy.get(fd);
    if (b) b.n++;
    else this.busy.set(fd, { n: 1, waiters: [] });
  }

  drop(fd: number): void {
    const b = this.busy.get(fd);
    if (!b) return;
    if (--b.n > 0) return;
    this.busy.delete(fd);
    for (const w of b.waiters) w();
  }

  isBusy(fd: number): boolean {
    return this.busy.has(fd);
  }

  /** Resolves once no probe uses `fd`. */
  idle(fd: number): Promise<void> {
    const b = this.busy.get(fd);
    if (!b) return Promise.resolve();
    return new Promise((resolve) => b.waiters.push(resolve));
  }
}

/** A FileLocker whose releases wait for probes using the fd (see FdGuard). */
export function guardedLocker(inner: FileLocker, guard: FdGuard): FileLocker {
  return {
    lock: (path, req) => inner.lock(path, req),
    lockSync: (path, req) => inner.lockSync(path, req),
    release: async (fd, req) => {
      await guard.idle(fd);
      return inner.release(fd, req);
    },
    // Inline calls are for local storage only, which is never probed.
    releaseSync: (fd, req) => inner.releaseSync(fd, req),
    touch: (path) => inner.touch(path),
    unlink: (path) => inner.unlink(path),
    kind: (path) => inner.kind(path),
    mkdirp: (path, mode) => inner.mkdirp(path, mode),
    identity: (path) => inner.identity(path),
  };
}

export class StorageProber {
  constructor(
    readonly guard: FdGuard = new FdGuard(),
    public methods: number = DEFAULT_PROBE_METHODS,
    /** Test hook: the native call. */
    private readonly run = native.probeStorageP,
  ) {}

  /**
   * Probes `dir` and the given leases; resolves by the deadline at the
   * latest. `onSettled` runs when the native call really returns (a timed
   * out probe keeps a pool thread, and its leases' fds, until then).
   */
  probe(dir: string, leases: ProbeTarget[], deadlineMs: number, onSettled: () => void): Promise<ProbeOutcome> {
    const t0 = performance.now();
    const probed = leases.filter((l) => !l.classic && !this.guard.isBusy(l.fd));
    const args: native.ProbeLeaseArg[] = probed.map((l) => ({ fd: l.fd, lock: l.shared ? 'read' : 'write' }));
    for (const a of args) this.guard.hold(a.fd);
    const settled = () => {
      for (const a of args) this.guard.drop(a.fd);
      onSettled();
    };
    return new Promise((resolve) => {
      let done = false;
      const timer = setTimeout(() => {
        done = true;
        resolve({ ok: false, timedOut: true, dirError: `storage did not answer within ${+(deadlineMs / 1000).toFixed(1)} s`, lost: [], leaseErrors: {}, ms: +(performance.now() - t0).toFixed(2) });
      }, deadlineMs);
      let call: Promise<native.ProbeStorageResult>;
      try {
        call = this.run(dir, args, this.methods | native.ProbeMethod.KEEP_FDS);
      } catch (err) {
        call = Promise.reject(err as Error);
      }
      call.then(
        (res) => {
          settled();
          if (done) return;
          clearTimeout(timer);
          const lost: string[] = [];
          const leaseErrors: Record<string, string> = {};
          res.leases.forEach((r, i) => {
            const name = probed[i]!.name;
            if (!r.error) return;
            if (isLost(r.error)) lost.push(name);
            else leaseErrors[name] = r.error.message;
          });
          const dirError = res.dirError ? res.dirError.message : null;
          resolve({ ok: !dirError && lost.length === 0 && Object.keys(leaseErrors).length === 0, timedOut: false, dirError, lost, leaseErrors, ms: +(performance.now() - t0).toFixed(2) });
        },
        (err: Error) => {
          settled();
          if (done) return;
          clearTimeout(timer);
          resolve({ ok: false, timedOut: false, dirError: err.message, lost: [], leaseErrors: {}, ms: +(performance.now() - t0).toFixed(2) });
        },
      );
    });
  }
}

/**
 * The NFSv4 lease time the client learnt from the server for the mount
 * holding `dir` (/proc/self/mountstats, "lease_time=N", Linux >= 5.x), or
 * null. procfs only: this never touches the NFS server.
 */
export function mountLeaseTimeMs(dir: string, mountstats = '/proc/self/mountstats'): number | null {
  let text: string;
  try {
    text = readFileSync(mountstats, 'utf8');
  } catch {
    return null;
  }
  let best: { len: number; lease: number | null } | null = null;
  for (const block of text.split(/\n(?=device )/)) {
    const m = /^device \S+ mounted on (\S+) with fstype (\S+)/.exec(block);
    if (!m) continue;
    const mnt = m[1]!.replace(/\\040/g, ' ');
    if (!(dir === mnt || dir.startsWith(mnt.endsWith('/') ? mnt : `${mnt}/`))) continue;
    const lease = /lease_time=(\d+)/.exec(block);
    if (!best || mnt.length > best.len) best = { len: mnt.length, lease: lease ? Number(lease[1]) * 1000 : null };
  }
  return best?.lease ?? null;
}
