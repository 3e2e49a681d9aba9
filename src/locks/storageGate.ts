// Bounds what a hung filesystem can do to the daemon. Every storage call runs
// through a gate keyed by the storage it touches (a lock-space directory, or
// the image's directory in the default lock space):
//  - a call that does not finish within the deadline fails with a clear
//    error; its late result is handed to `onLate` (so a lock that arrives
//    after we gave up is released, not leaked);
//  - while a key has a call that overran its deadline, new calls on that key
//    fail at once instead of tying up more worker threads;
//  - at most `perKeyConcurrency` calls per key run at a time, so one dead
//    NFS mount cannot occupy the whole thread pool.
// Releases (closing a locked fd) are different: a release that never runs is
// a lock the daemon keeps although nobody holds it. They go through
// `runRelease`, which never refuses and never abandons a call (see there).

export class StorageTimeoutError extends Error {
  override name = 'StorageTimeoutError';
  constructor(
    readonly key: string,
    readonly ms: number,
    readonly stuck: boolean,
  ) {
    super(
      stuck
        ? `storage for '${key}' is not responding (an earlier call has not returned)`
        : `storage for '${key}' did not answer within ${+(ms / 1000).toFixed(1)} s`,
    );
  }
}

interface KeyState {
  running: number;
  overdue: number;
  queue: Array<() => void>;
  /** Release calls in flight, and those waiting for a free slot. */
  releasing: number;
  releaseQueue: Array<() => void>;
}

/**
 * Release calls in flight per key. Releases are never refused, so this is
 * what bounds the threads a hung mount can hold through them; the rest wait
 * in memory (no thread) and run as soon as the storage answers again.
 */
const RELEASES_PER_KEY = 2;

export interface GateOptions {
  timeoutMs: number;
  perKeyConcurrency: number;
}

export class StorageGate {
  private readonly keys = new Map<string, KeyState>();

  constructor(public options: GateOptions) {}

  /** No storage call running, overdue or queued anywhere (nothing holds or is about to hold an fd). */
  idle(): boolean {
    for (const s of this.keys.values()) if (s.running || s.overdue || s.releasing || s.queue.length || s.releaseQueue.length) return false;
    return true;
  }

  /** Keys with a call that overran its deadline and has not returned yet. */
  stuckKeys(): string[] {
    return [...this.keys].filter(([, s]) => s.overdue > 0).map(([k]) => k);
  }

  async run<T>(key: string, fn: () => Promise<T>, onLate?: (value: T) => void): Promise<T> {
    const st = this.state(key);
    if (st.overdue > 0) throw new StorageTimeoutError(key, this.options.timeoutMs, true);
    if (st.running >= this.options.perKeyConcurrency) {
      await new Promise<void>((resolve) => st.queue.push(resolve));
      if (st.overdue > 0) {
        this.next(key, st);
        throw new StorageTimeoutError(key, this.options.timeoutMs, true);
      }
    }
    st.running++;
    const op = fn();
    // Calls queued behind this one would otherwise wait for the storage
    // without any deadline: on expiry wake them, they fail fast (the key is stuck).
    const dl = this.deadline(key, st, () => {
      for (const wake of st.queue.splice(0)) wake();
    });
    const settle = () => {
      dl.done();
      st.running--;
      this.next(key, st);
    };
    op.then(
      (v) => {
        settle();
        if (dl.expired() && onLate) onLate(v);
      },
      () => settle(),
    );
    return Promise.race([op, dl.promise]);
  }

  /**
   * A release: never refused (not even while the key is stuck) and never
   * abandoned. It waits in memory for one of RELEASES_PER_KEY slots, then
   * runs to completion however long the storage takes. The returned promise
   * still fails after the deadline (the caller's answer; the key then counts
   * as stuck until the call returns), but the call itself goes on;
   * `onLate` hears how it ended.
   */
  async runRelease<T>(key: string, fn: () => Promise<T>, onLate?: (err: unknown, value?: T) => void): Promise<T> {
    const st = this.state(key);
    const dl = this.deadline(key, st);
    const op = (async () => {
      // A finishing release hands its slot straight to the next one waiting.
      if (st.releasing >= RELEASES_PER_KEY) await new Promise<void>((resolve) => st.releaseQueue.push(resolve));
      else st.releasing++;
      try {
        return await fn();
      } finally {
        dl.done();
        const wake = st.releaseQueue.shift();
        if (wake) wake();
        else {
          st.releasing--;
          this.next(key, st, true);
        }
      }
    })();
    op.then(
      (v) => dl.expired() && onLate?.(null, v),
      (e: unknown) => dl.expired() && onLate?.(e),
    );
    return Promise.race([op, dl.promise]);
  }

  /**
   * The caller's deadline on one call to `key`: rejects after timeoutMs and
   * counts the key as stuck (overdue) from then until `done()`, when the call
   * has really returned.
   */
  private deadline(key: string, st: KeyState, onExpire?: () => void): { promise: Promise<never>; expired: () => boolean; done: () => void } {
    let expired = false;
    let timer: NodeJS.Timeout | undefined;
    const promise = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        expired = true;
        st.overdue++;
        reject(new StorageTimeoutError(key, this.options.timeoutMs, false));
        onExpire?.();
      }, this.options.timeoutMs);
    });
    return {
      promise,
      expired: () => expired,
      done: () => {
        clearTimeout(timer);
        if (expired) st.overdue--;
      },
    };
  }

  private state(key: string): KeyState {
    let st = this.keys.get(key);
    if (!st) {
      st = { running: 0, overdue: 0, queue: [], releasing: 0, releaseQueue: [] };
      this.keys.set(key, st);
    }
    return st;
  }

  private next(key: string, st: KeyState, releaseDone = false): void {
    const wake = releaseDone ? undefined : st.queue.shift();
    if (wake) wake();
    else if (st.running === 0 && st.overdue === 0 && st.releasing === 0 && st.queue.length === 0 && st.releaseQueue.length === 0) this.keys.delete(key);
  }
}
