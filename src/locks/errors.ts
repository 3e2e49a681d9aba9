// The lock domain's errors, by the names the lock code uses. Codes, domains
// and texts (virtlockd's for the same situation) are the catalogue's
// (util/errorCatalogue.ts); handlers simply let these propagate to the client.

import { E } from '../util/errorCatalogue.js';
import type { ProtocolError } from '../util/errors.js';
import { strerror } from '../native.js';
import { StorageTimeoutError } from './storageGate.js';

export const lockspaceNotFound = (path: string) => E.LOCKSPACE_NOT_FOUND({ path });
export const lockspaceExists = (path: string) => E.LOCKSPACE_EXISTS({ path });
export const defaultLockspaceExists = () => E.DEFAULT_LOCKSPACE_EXISTS();
export const resourceLocked = (name: string) => E.RESOURCE_LOCKED({ name });
export const resourceNotLocked = (name: string) => E.RESOURCE_NOT_LOCKED({ name });
export const notOwner = (pid: number) => E.NOT_OWNER({ pid });
export const notADirectory = (path: string) => E.NOT_A_DIRECTORY({ path });
/** relockd only: names that would leave their lock-space directory. */
export const badResourceName = (name: string, dir: string) => E.BAD_RESOURCE_NAME({ name, dir });
/** relockd only: default-lockspace resources must be absolute paths. */
export const relativeResourcePath = (name: string) => E.RELATIVE_RESOURCE_PATH({ name });
/** relockd only: CREATE_LOCKSPACE/NEW with a relative directory. */
export const relativeLockspacePath = (path: string) => E.RELATIVE_LOCKSPACE_PATH({ path });
/** relockd only: new acquisitions are refused while the daemon is in safe mode. */
export const safeModeRefusal = () => E.SAFE_MODE();
/** relockd only: a draining daemon (stop requested) takes no new leases. */
export const stoppingRefusal = () => E.STOPPING();

const ETIMEDOUT = 110;

/**
 * A storage failure (an E.STORAGE_* entry) as virtlockd reports it: "<detail>: <strerror>", code 38.
 * Deadline overruns (relockd only) use the same shape with our own text.
 */
export function storageError<V>(failure: (vars: V, errno: number, errText: string) => ProtocolError, vars: V, err: unknown): ProtocolError {
  if (err instanceof StorageTimeoutError) return failure(vars, ETIMEDOUT, err.message);
  const e = err as { errno?: number; code?: string; message?: string };
  const errno = typeof e.errno === 'number' ? Math.abs(e.errno) : 0;
  return failure(vars, errno, errno ? strerror(errno) : String(e.message ?? err));
}
