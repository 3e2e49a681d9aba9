// `relockctl leases`: the leases relockd holds, filtered by lock space or
// owner, as a table or JSON.

import { display, parseDisplay, toBuffer, unicode } from '../byteString.js';
import { AcquireFlags } from '../util/acquireFlags.js';
import { dirname } from 'node:path';
import type { HealthInfo, ResourceInfo } from '../protocol/relockdAdmin.js';
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
  const { all, health } = await withAdmin(a, async (c) => ({ all: await c.resources(null), health: await c.health().catch(() => [] as HealthInfo[]) }));
  let res = all;
  // --lockspace may use the \xHH escapes the table shows.
  if (a.lockspace !== undefined) res = res.filter((r) => sameLockspace(parseDisplay(a.lockspace!), r.lockspace));
  if (a.owner !== undefined) {
    const spec = a.owner;
    res = res
      .map((r) => ({ ...r, owners: r.owners.filter((o) => ownerMatches(spec, o.pid, o.owner)) }))
      .filter((r) => r.owners.length > 0);
  }
  if (a.json) {
    json(res.map((r) => ({ ...r, ...shownNames(r), mode: modeOf(r.flags), autocreate: (r.flags & AcquireFlags.AUTOCREATE) !== 0, health: healthOf(health, r)?.state ?? null })));
    return Exit.OK;
  }
  if (res.length === 0) {
    out('no leases held' + (a.lockspace !== undefined || a.owner !== undefined ? ' (matching the filter)' : ''));
    return Exit.OK;
  }
  out(renderLeases(res, Date.now(), health));
  return Exit.OK;
}

/** The health watch covering a lease, if its storage is watched. */
function healthOf(health: HealthInfo[], r: ResourceInfo): HealthInfo | undefined {
  return health.find((w) => (r.lockspace === '' ? w.lockspace === '' && w.dir === dirname(r.name) : w.lockspace === r.lockspace));
}

function renderLeases(res: ResourceInfo[], now = Date.now(), health: HealthInfo[] = []): string {
  const rows: string[][] = [];
  for (const r of res) {
    for (const o of r.owners) {
      rows.push([
        lockspaceLabel(r.lockspace),
        display(r.name),
        modeOf(r.flags),
        o.owner?.name ?? '?',
        String(o.pid),
        o.owner?.uuid ?? '-',
        `${formatTime(r.since)} (${formatDuration(now - r.since)})${o.terminating ? ' [owner terminating]' : ''}${storageNote(health, r)}`,
      ]);
    }
  }
  return formatTable(['LOCK SPACE', 'RESOURCE', 'MODE', 'OWNER', 'PID', 'UUID', 'SINCE'], rows);
}

/**
 * Names in JSON output: display() forms (UTF-8, or \xHH escapes for bytes
 * that are not UTF-8, and \\ for a backslash), plus the exact bytes in hex
 * (`nameHex`, ...) for any name that is not plain UTF-8 text.
 */
function shownNames(r: ResourceInfo): Record<string, string> {
  const o: Record<string, string> = {};
  for (const k of ['lockspace', 'name', 'path'] as const) {
    const v = r[k];
    o[k] = display(v);
    if (o[k] !== unicode(v)) o[`${k}Hex`] = toBuffer(v).toString('hex');
  }
  return o;
}

function storageNote(health: HealthInfo[], r: ResourceInfo): string {
  const w = healthOf(health, r);
  if (!w || w.state === 'healthy') return '';
  return ` [lock space ${w.state}${w.lost.includes(r.name) ? ', LOCK LOST' : ''}]`;
}
