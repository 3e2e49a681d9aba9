// Naming and matching lease owners and lock spaces (filters and labels
// shared by leases, cleanup and run).

import { resolve } from 'node:path';

export function ownerLabel(o: { pid: number; owner: { name: string } | null }): string {
  return o.owner ? `${o.owner.name} (pid ${o.pid})` : `pid ${o.pid}`;
}

/** Does `spec` (NAME, UUID with or without dashes, or PID) name this owner? */
export function ownerMatches(spec: string, pid: number, owner: { name: string; uuid: string } | null): boolean {
  if (/^\d+$/.test(spec) && Number(spec) === pid) return true;
  if (!owner) return false;
  if (owner.name === spec) return true;
  const hex = (s: string) => s.replace(/-/g, '').toLowerCase();
  return /^[0-9a-fA-F-]{32,36}$/.test(spec) && hex(spec) === hex(owner.uuid);
}

export function sameLockspace(filter: string, dir: string): boolean {
  if (filter === dir) return true;
  if (filter === '' || dir === '') return false;
  return resolve(filter) === resolve(dir);
}
