// The lock domain's errors, each carrying the libvirt code, domain and text
// virtlockd uses for the same situation (spec appendix B), so handlers can
// simply let them propagate to the client.

import { ErrorCode, ErrorDomain, ProtocolError } from '../util/errors.js';
import { strerror } from '../native.js';
import { StorageTimeoutError } from './storageGate.js';

export const lockspaceNotFound = (path: string) =>
  ProtocolError.report(ErrorCode.INTERNAL_ERROR, ErrorDomain.RPC, `Lockspace for path ${path} does not exist`);

export const lockspaceExists = (path: string) =>
  ProtocolError.report(ErrorCode.INTERNAL_ERROR, ErrorDomain.RPC, `Lockspace for path ${path} already exists`);

export const defaultLockspaceExists = () =>
  ProtocolError.report(ErrorCode.OPERATION_INVALID, ErrorDomain.RPC, 'the default lockspace already exists');

export const resourceLocked = (name: string) =>
  ProtocolError.report(ErrorCode.RESOURCE_BUSY, ErrorDomain.LOCKSPACE, `Lockspace resource '${name}' is locked`);

export const resourceNotLocked = (name: string) =>
  ProtocolError.report(ErrorCode.RESOURCE_BUSY, ErrorDomain.LOCKSPACE, `Lockspace resource '${name}' is not locked`);

export const notOwner = (pid: number) =>
  ProtocolError.report(ErrorCode.INTERNAL_ERROR, ErrorDomain.LOCKSPACE, `owner ${pid} does not hold the resource lock`);

export const notADirectory = (path: string) =>
  ProtocolError.report(ErrorCode.INTERNAL_ERROR, ErrorDomain.LOCKSPACE, `Lockspace location ${path} exists, but is not a directory`);

/** relockd only: names that would leave their lock-space directory. */
export const badResourceName = (name: string, dir: string) =>
  ProtocolError.report(
    ErrorCode.INVALID_ARG,
    ErrorDomain.LOCKSPACE,
    `Lockspace resource name '${name}' is not valid in lockspace ${dir}: it must be a single path component (no '/', not '.' or '..')`,
  );

/** relockd only: default-lockspace resources must be absolute paths. */
export const relativeResourcePath = (name: string) =>
  ProtocolError.report(ErrorCode.INVALID_ARG, ErrorDomain.LOCKSPACE, `Lockspace resource '${name}' is not an absolute path`);

/** relockd only: CREATE_LOCKSPACE/NEW with a relative directory. */
export const relativeLockspacePath = (path: string) =>
  ProtocolError.report(ErrorCode.INVALID_ARG, ErrorDomain.LOCKSPACE, `Lockspace path '${path}' is not an absolute path`);

/** relockd only: new acquisitions are refused while the daemon is in safe mode. */
export const safeModeRefusal = () =>
  ProtocolError.report(
    ErrorCode.OPERATION_DENIED,
    ErrorDomain.LOCKSPACE,
    'relockd is in safe mode after a failed restore: existing leases are kept, new acquisitions are refused',
  );

/** relockd only: a draining daemon (stop requested) takes no new leases. */
export const stoppingRefusal = () =>
  ProtocolError.report(
    ErrorCode.OPERATION_DENIED,
    ErrorDomain.LOCKSPACE,
    'relockd is stopping (draining): existing leases are kept until released, new acquisitions are refused',
  );

const ETIMEDOUT = 110;

/**
 * A storage failure as virtlockd reports it: "<detail>: <strerror>", code 38.
 * Deadline overruns (relockd only) use the same shape with our own text.
 */
export function storageError(domain: number, detail: string, err: unknown): ProtocolError {
  if (err instanceof StorageTimeoutError) return ProtocolError.system(domain, ETIMEDOUT, err.message, detail);
  const e = err as { errno?: number; code?: string; message?: string };
  const errno = typeof e.errno === 'number' ? Math.abs(e.errno) : 0;
  return ProtocolError.system(domain, errno, errno ? strerror(errno) : String(e.message ?? err), detail);
}
