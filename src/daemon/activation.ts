// systemd socket activation (sd_listen_fds): fds 3..3+n-1 passed with
// LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES. Names map fds to servers; relockd
// accepts its own unit names and virtlockd's, so it can take over
// virtlockd's socket units unchanged.

import { isStoredFdName } from '../fdstore/fdStore.js';

export const SD_LISTEN_FDS_START = 3;

export interface ActivatedSockets {
  main: number[];
  admin: number[];
}

export class ActivationError extends Error {
  override name = 'ActivationError';
}

const MAIN_NAMES = new Set(['relockd.socket', 'virtlockd.socket']);
const ADMIN_NAMES = new Set(['relockd-admin.socket', 'virtlockd-admin.socket']);

/**
 * Reads and unsets the LISTEN_* variables (so children never inherit them).
 * Returns null when we were not socket-activated.
 */
export function takeActivation(env: NodeJS.ProcessEnv = process.env, pid = process.pid): ActivatedSockets | null {
  const lpid = env.LISTEN_PID;
  const lfds = env.LISTEN_FDS;
  const lnames = env.LISTEN_FDNAMES;
  delete env.LISTEN_PID;
  delete env.LISTEN_FDS;
  delete env.LISTEN_FDNAMES;
  if (lpid === undefined || lfds === undefined) return null;
  if (lpid !== String(pid)) return null; // meant for another process
  const n = Number(lfds);
  if (!Number.isInteger(n) || n < 0) throw new ActivationError(`LISTEN_FDS is not a number: '${lfds}'`);
  const names = lnames !== undefined ? lnames.split(':') : [];
  if (lnames !== undefined && names.length !== n) {
    throw new ActivationError(`LISTEN_FDNAMES has ${names.length} names for ${n} file descriptors`);
  }
  const out: ActivatedSockets = { main: [], admin: [] };
  const unclaimed: string[] = [];
  for (let i = 0; i < n; i++) {
    const fd = SD_LISTEN_FDS_START + i;
    // Without names (older systemd, bare LISTEN_FDS=1) a single fd is the main socket.
    const name = names[i] ?? (n === 1 ? 'relockd.socket' : undefined);
    if (name !== undefined && isStoredFdName(name)) continue; // the fd store's (daemon/crashStore.ts)
    if (name !== undefined && MAIN_NAMES.has(name)) out.main.push(fd);
    else if (name !== undefined && ADMIN_NAMES.has(name)) out.admin.push(fd);
    else unclaimed.push(`fd ${fd} named '${name ?? '(no name)'}'`);
  }
  if (unclaimed.length) {
    throw new ActivationError(
      `some activation file descriptors are unclaimed: ${unclaimed.join(', ')}; expected names ${[...MAIN_NAMES, ...ADMIN_NAMES].join(', ')} (FileDescriptorName= in the socket unit)`,
    );
  }
  return out;
}
