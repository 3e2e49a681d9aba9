// Counts what the lock manager and the storage gate do, without touching
// their code: the entry points the daemon calls are wrapped once, at
// construction. Each wrapper adds one call and one `x.y++` (measured in
// README "Metrics": no difference within noise on the lock benchmark).

import { ErrorCode, ProtocolError } from '../util/errors.js';
import type { LockManager } from '../locks/lockManager.js';
import type { StorageGate } from '../locks/storageGate.js';
import { StorageTimeoutError } from '../locks/storageGate.js';
import type { StorageClassifier } from '../locks/storageClass.js';
import type { AcquireResult, DaemonMetrics } from './counters.js';

export const DEFAULT_LOCKSPACE_LABEL = 'default';

function acquireResult(err: unknown): AcquireResult {
  if (err instanceof ProtocolError) {
    if (err.code === ErrorCode.RESOURCE_BUSY) return 'busy';
    if (err.code === ErrorCode.OPERATION_DENIED) return 'refused';
  }
  return 'error';
}

/**
 * The lock-space label of a storage key: the gate keys calls by lock-space
 * directory, or by the image's directory in the default lock space (which
 * would be a label per directory of images: folded into 'default').
 */
function lockspaceLabel(manager: LockManager, key: string): string {
  return manager.spaces.has(key) ? key : DEFAULT_LOCKSPACE_LABEL;
}

export function instrument(m: DaemonMetrics, manager: LockManager, gate: StorageGate, classifier: StorageClassifier): void {
  const acq = m.acquisitions;
  const rel = m.releases;

  const acquire = manager.acquire.bind(manager);
  manager.acquire = (path, name, flags, owner) => {
    let r: void | Promise<void>;
    try {
      r = acquire(path, name, flags, owner);
    } catch (err) {
      acq[acquireResult(err)]++;
      throw err;
    }
    if (r === undefined) {
      acq.granted++;
      return;
    }
    return r.then(
      () => void acq.granted++,
      (err: unknown) => {
        acq[acquireResult(err)]++;
        throw err;
      },
    );
  };

  const release = manager.release.bind(manager);
  manager.release = (path, name, owner) => {
    let r: void | Promise<void>;
    try {
      r = release(path, name, owner);
    } catch (err) {
      rel.error++;
      throw err;
    }
    if (r === undefined) {
      rel.released++;
      return;
    }
    return r.then(
      () => void rel.released++,
      (err: unknown) => {
        rel.error++;
        throw err;
      },
    );
  };

  // Off-thread calls: timed from the moment the gate starts the call (queue
  // time excluded) to its real end, even when that is after the deadline.
  const run = gate.run.bind(gate);
  gate.run = <T>(key: string, fn: () => Promise<T>, onLate?: (value: T) => void): Promise<T> => {
    const label = lockspaceLabel(manager, key);
    const timed = () => {
      const t0 = performance.now();
      const op = fn();
      const done = () => m.observeStorage(label, performance.now() - t0);
      op.then(done, done);
      return op;
    };
    const p = run(key, timed, onLate);
    p.catch((err: unknown) => {
      if (err instanceof StorageTimeoutError && !err.stuck) m.storageTimeout(label);
    });
    return p;
  };

  // Inline calls (local filesystems) report their time to the classifier.
  const observe = classifier.observe.bind(classifier);
  classifier.observe = (dir, ms) => {
    observe(dir, ms);
    m.observeStorage(lockspaceLabel(manager, dir), ms);
  };
}
