// `relockctl leases`: the leases relockd holds, filtered by lock space or
// owner, as a table or JSON.

import { AcquireFlags } from '../locks/lockManager.js';
import type { ResourceInfo } from '../protocol/relockdAdmin.js';
import { Exit } from './command.js';
import type { GlobalArgs } from './command.js';
import { withAdmin } from './connection.js';
import { formatDuration, formatTable, formatTime, lockspaceLabel, modeOf } from './format.js';
import { json, out } from './output.js';
import { ownerMatches, sameLockspace } from './owners.js';

export interface LeasesArgs extends GlobalArgs {
  lockspace?: string;
  owner?: string;
}

export async function cmdLeases(a: LeasesArgs): Promise<number> {
  let res = await withAdmin(a, (c) => c.resources(null));
  if (a.lockspace !== undefined) res = res.filter((r) => sameLockspace(a.lockspace!, r.lockspace));
  if (a.owner !== undefined) {
    const spec = a.owner;
    res = res
      .map((r) => ({ ...r, owners: r.owners.filter((o) => ownerMatches(spec, o.pid, o.owner)) }))
      .filter((r) => r.owners.length > 0);
  }
  if (a.json) {
    json(res.map((r) => ({ ...r, mode: modeOf(r.flags), autocreate: (r.flags & AcquireFlags.AUTOCREATE) !== 0 })));
    return Exit.OK;
  }
  if (res.length === 0) {
    out('no leases held' + (a.lockspace !== undefined || a.owner !== undefined ? ' (matching the filter)' : ''));
    return Exit.OK;
  }
  out(renderLeases(res));
  return Exit.OK;
}

export function renderLeases(res: ResourceInfo[], now = Date.now()): string {
  const rows: string[][] = [];
  for (const r of res) {
    for (const o of r.owners) {
      rows.push([
        lockspaceLabel(r.lockspace),
        r.name,
        modeOf(r.flags),
        o.owner?.name ?? '?',
        String(o.pid),
        o.owner?.uuid ?? '-',
        `${formatTime(r.since)} (${formatDuration(now - r.since)})${o.terminating ? ' [owner terminating]' : ''}`,
      ]);
    }
  }
  return formatTable(['LOCK SPACE', 'RESOURCE', 'MODE', 'OWNER', 'PID', 'UUID', 'SINCE'], rows);
}
