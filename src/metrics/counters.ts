// The daemon's running totals for Prometheus. Kept as plain numbers in
// plain objects: the hot path (every ACQUIRE and RELEASE, every storage
// call) only does `x.y++`; nothing is formatted, hashed or allocated there.
// The exposition text is built from these at scrape time (exposition.ts).
// Totals are carried across a re-exec in the state document
// (`relockd.metrics`), so rates do not jump when a package is upgraded.

/** Upper bounds (seconds) of the storage-latency histogram. Local calls take µs; hung NFS hits the deadline. */
export const STORAGE_BUCKETS: readonly number[] = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30];

/** What happened to one ACQUIRE_RESOURCE. */
export type AcquireResult = 'granted' | 'busy' | 'refused' | 'error';
export const ACQUIRE_RESULTS: readonly AcquireResult[] = ['granted', 'busy', 'refused', 'error'];
/** What happened to one RELEASE_RESOURCE. */
export type ReleaseResult = 'released' | 'error';
export const RELEASE_RESULTS: readonly ReleaseResult[] = ['released', 'error'];
/** How a lease-holding owner whose lock connection closed ended (terminator.ts outcomes, and cleanup failures). */
export type TerminationOutcome = 'gone' | 'exited_on_term' | 'exited_on_kill' | 'error';
export const TERMINATION_OUTCOMES: readonly TerminationOutcome[] = ['gone', 'exited_on_term', 'exited_on_kill', 'error'];

export interface StorageSeries {
  /** Cumulative counts are computed at scrape time; these are per-bucket (non-cumulative), plus +Inf last. */
  buckets: number[];
  sum: number;
  count: number;
  timeouts: number;
}

/** The serialisable part: what survives a re-exec. */
export interface MetricsState {
  acquisitions: Record<AcquireResult, number>;
  releases: Record<ReleaseResult, number>;
  terminations: Record<TerminationOutcome, number>;
  reexecs: { ok: number; failed: number };
  /** Last successful re-exec's blackout, seconds (null: none yet). */
  lastBlackoutSeconds: number | null;
  /** By lock-space label ('default' or the directory). */
  storage: Record<string, StorageSeries>;
}

const zero = <K extends string>(keys: readonly K[]): Record<K, number> => Object.fromEntries(keys.map((k) => [k, 0])) as Record<K, number>;

export class DaemonMetrics {
  readonly acquisitions = zero(ACQUIRE_RESULTS);
  readonly releases = zero(RELEASE_RESULTS);
  readonly terminations = zero(TERMINATION_OUTCOMES);
  readonly reexecs = { ok: 0, failed: 0 };
  lastBlackoutSeconds: number | null = null;
  /** Series by lock-space label; Map for cheap lookup on the storage path. */
  readonly storage = new Map<string, StorageSeries>();

  /** One storage call's duration; `ms` as measured with performance.now(). */
  observeStorage(lockspace: string, ms: number): void {
    const s = this.series(lockspace);
    const sec = ms / 1000;
    let i = 0;
    while (i < STORAGE_BUCKETS.length && sec > STORAGE_BUCKETS[i]!) i++;
    s.buckets[i]!++;
    s.sum += sec;
    s.count++;
  }

  storageTimeout(lockspace: string): void {
    this.series(lockspace).timeouts++;
  }

  private series(lockspace: string): StorageSeries {
    let s = this.storage.get(lockspace);
    if (!s) {
      s = { buckets: new Array<number>(STORAGE_BUCKETS.length + 1).fill(0), sum: 0, count: 0, timeouts: 0 };
      this.storage.set(lockspace, s);
    }
    return s;
  }

  save(): MetricsState {
    return {
      acquisitions: { ...this.acquisitions },
      releases: { ...this.releases },
      terminations: { ...this.terminations },
      reexecs: { ...this.reexecs },
      lastBlackoutSeconds: this.lastBlackoutSeconds,
      storage: Object.fromEntries([...this.storage].map(([k, s]) => [k, { ...s, buckets: [...s.buckets] }])),
    };
  }

  /**
   * Adds a carried state (a re-exec's document) to this image's totals.
   * Tolerant: a document from an older relockd without some series, or with
   * other bucket bounds, loses only what does not fit, never the rest.
   */
  restore(st: Partial<MetricsState> | undefined): void {
    if (!st || typeof st !== 'object') return;
    const add = <K extends string>(into: Record<K, number>, from: unknown) => {
      if (!from || typeof from !== 'object') return;
      for (const k of Object.keys(into) as K[]) {
        const v = (from as Record<string, unknown>)[k];
        if (typeof v === 'number' && Number.isFinite(v) && v >= 0) into[k] += v;
      }
    };
    add(this.acquisitions, st.acquisitions);
    add(this.releases, st.releases);
    add(this.terminations, st.terminations);
    add(this.reexecs, st.reexecs);
    if (typeof st.lastBlackoutSeconds === 'number') this.lastBlackoutSeconds = st.lastBlackoutSeconds;
    for (const [k, s] of Object.entries(st.storage ?? {})) {
      if (!s || !Array.isArray(s.buckets) || s.buckets.length !== STORAGE_BUCKETS.length + 1) continue;
      const mine = this.series(k);
      s.buckets.forEach((n, i) => (mine.buckets[i]! += Number(n) || 0));
      mine.sum += Number(s.sum) || 0;
      mine.count += Number(s.count) || 0;
      mine.timeouts += Number(s.timeouts) || 0;
    }
  }
}
