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
}

export interface GateOptions {
  timeoutMs: number;
  perKeyConcurrency: number;
}

export class StorageGate {
  private readonly keys = new Map<string, KeyState>();

  constructor(public options: GateOptions) {}

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
    let timedOut = false;
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        timedOut = true;
        st.overdue++;
        reject(new StorageTimeoutError(key, this.options.timeoutMs, false));
      }, this.options.timeoutMs);
    });
    const settle = () => {
      clearTimeout(timer);
      st.running--;
      if (timedOut) st.overdue--;
      this.next(key, st);
    };
    op.then(
      (v) => {
        settle();
        if (timedOut && onLate) onLate(v);
      },
      () => settle(),
    );
    return Promise.race([op, deadline]);
  }

  private state(key: string): KeyState {
    let st = this.keys.get(key);
    if (!st) {
      st = { running: 0, overdue: 0, queue: [] };
      this.keys.set(key, st);
    }
    return st;
  }

  private next(key: string, st: KeyState): void {
    const wake = st.queue.shift();
    if (wake) wake();
    else if (st.running === 0 && st.overdue === 0) this.keys.delete(key);
  }
}
