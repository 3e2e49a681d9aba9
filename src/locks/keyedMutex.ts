// Runs async operations one at a time per key. Lease operations are async
// (storage calls run off the event loop), so two clients acquiring the same
// name, or an acquire racing with the close of the previous holder's fd, must
// be ordered exactly as virtlockd's single thread would order them.

export class KeyedMutex {
  private readonly tails = new Map<string, Promise<void>>();

  /** True if an operation on `key` is running or queued. */
  busy(key: string): boolean {
    return this.tails.has(key);
  }

  /** True when no operation is running or queued on any key. */
  get idle(): boolean {
    return this.tails.size === 0;
  }

  /** Resolves once every operation queued so far has settled. */
  async settled(): Promise<void> {
    while (this.tails.size) await Promise.all([...this.tails.values()]);
  }

  run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.tails.get(key);
    const result = prev ? prev.then(fn) : fn();
    const tail = result.then(
      () => undefined,
      () => undefined,
    );
    this.tails.set(key, tail);
    void tail.then(() => {
      if (this.tails.get(key) === tail) this.tails.delete(key);
    });
    return result;
  }
}
