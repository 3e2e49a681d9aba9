// Which storage may be touched on the event loop. Lease calls on local
// filesystems (ext4, xfs, btrfs, tmpfs, ...) return in microseconds, and
// handing each one to a pool thread and back cost ~40% of relockd's CPU in
// the benchmark. Network and cluster filesystems (NFS, CIFS, FUSE, Ceph,
// GFS2, OCFS2, ...) can hang for minutes, so they always go off-thread with
// deadlines (StorageGate). Each directory is classified once by its statfs
// type, off the event loop; unknown types count as remote. Local calls that
// turn out slow demote their directory to the off-thread path for good:
// several slow ones in a row, or one very slow one. A single call over the
// threshold is not enough: on a loaded host the scheduler alone can preempt
// an open() for more than 50 ms, and demoting for that would move a healthy
// directory to worker threads (twice the CPU per call) for the daemon's life.

import { promises as fsp } from 'node:fs';
import type { Logger } from 'pino';
import { toBuffer } from '../byteString.js';

/** statfs f_type magic numbers of filesystems that never wait on a network. */
const LOCAL_FS: ReadonlyMap<number, string> = new Map([
  [0xef53, 'ext2/3/4'],
  [0x58465342, 'xfs'],
  [0x9123683e, 'btrfs'],
  [0x01021994, 'tmpfs'],
  [0x858458f6, 'ramfs'],
  [0x2fc12fc1, 'zfs'],
  [0xf2f52010, 'f2fs'],
  [0x794c7630, 'overlayfs'],
  [0x52654973, 'reiserfs'],
  [0x3153464a, 'jfs'],
  [0xca451a4e, 'bcachefs'],
]);

/** True for a statfs f_type of a filesystem that never waits on a network. */
export function isLocalFsType(type: number): boolean {
  return LOCAL_FS.has(type);
}

export type StorageMode = 'inline' | 'offload';

/**
 * One directory's verdict as the state document carries it across a
 * re-exec: 'local' (inline), 'demoted' (local, but off-thread since it was
 * slow), 'remote' (network, cluster, FUSE or unknown: off-thread).
 */
export type StorageVerdict = [dir: string, verdict: 'local' | 'demoted' | 'remote'];

/** 'local': classify by filesystem type; 'never': every call off-thread. */
export type InlinePolicy = 'local' | 'never';

export class StorageClassifier {
  private readonly modes = new Map<string, StorageMode>();
  /** By filesystem type only (a slow call or the policy never changes it). */
  private readonly hostLocal = new Map<string, boolean>();
  private readonly pending = new Set<string>();

  constructor(
    private readonly log: Logger,
    public policy: InlinePolicy = 'local',
    /** An inline call slower than this counts as slow. */
    public slowMs = 50,
    /** This many slow inline calls in a row (no fast one between) demote the directory. */
    public slowInARow = 3,
    /** One inline call slower than this demotes its directory at once. */
    public verySlowMs = 1000,
  ) {}

  /** Slow inline calls in a row, per directory (absent: the last call was fast). */
  private readonly slowRuns = new Map<string, number>();

  /** Every directory classified so far, for the state document. */
  save(): StorageVerdict[] {
    const out: StorageVerdict[] = [];
    for (const [dir, local] of this.hostLocal) out.push([dir, !local ? 'remote' : this.modes.get(dir) === 'inline' ? 'local' : 'demoted']);
    return out;
  }

  /**
   * The old image's verdicts. A directory is classified once for the
   * daemon's life, and a re-exec does not end that life: without them every
   * directory's first request after a re-exec would go off-thread while a
   * statfs runs (starting libuv's thread pool inside the blackout: ~6 ms),
   * and a demotion would be forgotten.
   */
  restore(verdicts: readonly StorageVerdict[]): void {
    for (const [dir, v] of verdicts) {
      this.hostLocal.set(dir, v !== 'remote');
      this.modes.set(dir, v === 'local' ? 'inline' : 'offload');
    }
  }

  /** The mode for `dir` now; unknown directories are offloaded while being classified. */
  mode(dir: string): StorageMode {
    if (this.policy === 'never') {
      if (!this.hostLocal.has(dir)) this.classify(dir);
      return 'offload';
    }
    const m = this.modes.get(dir);
    if (m) return m;
    this.classify(dir);
    return 'offload';
  }

  private classify(dir: string): void {
    if (this.pending.has(dir)) return;
    this.pending.add(dir);
    // statfs itself can hang on a dead NFS server: it runs on the pool, and
    // until it answers the directory stays on the off-thread path.
    fsp.statfs(toBuffer(dir)).then(
      (st) => {
        const fs = LOCAL_FS.get(Number(st.type));
        this.modes.set(dir, fs ? 'inline' : 'offload');
        this.hostLocal.set(dir, fs !== undefined);
        const mode = fs && this.policy !== 'never' ? 'inline' : 'offload';
        this.log.debug({ dir, fsType: `0x${Number(st.type).toString(16)}`, fs: fs ?? 'remote or unknown', mode, hostLocal: fs !== undefined }, 'storage classified');
      },
      () => {
        /* missing directory and the like: try again next time */
      },
    ).finally(() => this.pending.delete(dir));
  }

  /**
   * True only for a directory whose filesystem type is known to be one
   * host's own (ext4, xfs, tmpfs, ...). Network, cluster, FUSE and unknown
   * filesystems, and directories not classified yet, are treated as shared
   * with other hosts. Autocreated lease files are unlinked on release only
   * on host-local storage (see lockManager.ts, releaseRequest).
   */
  isHostLocal(dir: string): boolean {
    const v = this.hostLocal.get(dir);
    if (v === undefined) this.classify(dir);
    return v === true;
  }

  /**
   * Records how long an inline call took. `slowInARow` slow calls in a row,
   * or one slower than `verySlowMs`, demote the directory; a fast call
   * clears the count (on the hot path: one comparison, no map access).
   */
  observe(dir: string, ms: number): void {
    if (ms <= this.slowMs) {
      if (this.slowRuns.size !== 0) this.slowRuns.delete(dir);
      return;
    }
    if (this.modes.get(dir) !== 'inline') return;
    const run = (this.slowRuns.get(dir) ?? 0) + 1;
    if (run < this.slowInARow && ms <= this.verySlowMs) {
      this.slowRuns.set(dir, run);
      this.log.info({ dir, ms, slowInARow: run }, 'inline storage call was slow (preempted on a busy host, or slow storage?)');
      return;
    }
    this.slowRuns.delete(dir);
    this.modes.set(dir, 'offload');
    this.log.warn({ dir, ms, slowInARow: run }, 'slow storage call on the event loop: this directory is handled off-thread from now on');
  }
}
