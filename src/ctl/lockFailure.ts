// relockctl's lock-failure commands (docs/storage-failure.md):
//  - `health`: the lock spaces relockd watches, their state and the owners
//    being handled;
//  - `release-leases`: what a killpath program runs once it has made an
//    owner safe (e.g. paused the VM): relockd may release that owner's
//    leases in the failed lock space;
//  - `libvirt-killpath`: the killpath program relockd ships for libvirt
//    hosts (lock_failure_action = pause runs it): `fail` suspends the domain
//    by uuid (virsh -c URI suspend UUID) and releases its leases; `resume`
//    resumes it (virsh -c URI resume UUID).

import { execFile } from 'node:child_process';
import type { HealthInfo, ResourceInfo } from '../protocol/relockdAdmin.js';
import { CtlError, Exit } from './command.js';
import type { GlobalArgs } from './command.js';
import { withAdmin } from './connection.js';
import { formatDuration, formatTable, formatTime, lockspaceLabel } from './format.js';
import { json, out } from './output.js';
import { ownerMatches, sameLockspace } from './owners.js';

export async function cmdHealth(a: GlobalArgs): Promise<number> {
  const h = await withAdmin(a, (c) => c.health());
  if (a.json) {
    json(h);
    return Exit.OK;
  }
  out(h.length ? renderHealth(h) : 'no lock space on remote storage carries leases (nothing watched)\n');
  return Exit.OK;
}

export function renderHealth(h: HealthInfo[], now = Date.now()): string {
  const rows = h.map((w) => [
    lockspaceLabel(w.lockspace),
    w.dir,
    w.state.toUpperCase() === 'HEALTHY' ? 'healthy' : w.state.toUpperCase(),
    `${formatDuration(now - w.since)}`,
    `${formatDuration(now - w.lastGood)} ago`,
    w.lost.length ? `lost: ${w.lost.join(', ')}` : (w.error ?? '-'),
  ]);
  const lines = [formatTable(['LOCK SPACE', 'DIRECTORY', 'STATE', 'FOR', 'LAST GOOD PROBE', 'ERROR'], rows).trimEnd()];
  const owners = h.flatMap((w) => w.owners.map((o) => [w.dir, `${o.owner.name || '?'} (pid ${o.owner.pid})`, o.owner.uuid, o.action, o.phase, formatTime(o.since), o.note ?? '']));
  if (owners.length) lines.push('', formatTable(['DIRECTORY', 'OWNER', 'UUID', 'ACTION', 'PHASE', 'SINCE', 'NOTE'], owners).trimEnd());
  return lines.join('\n') + '\n';
}

export interface ReleaseArgs extends GlobalArgs {
  owner?: string;
  lockspace?: string;
}

/** The owner spec from --owner, or the killpath environment (RELOCKD_OWNER_PID). */
async function resolvePid(a: GlobalArgs, spec: string, lockspace: string): Promise<number> {
  if (/^\d+$/.test(spec)) return Number(spec);
  const res: ResourceInfo[] = await withAdmin(a, (c) => c.resources(null));
  const pids = new Set<number>();
  for (const r of res) if (sameLockspace(lockspace, r.lockspace)) for (const o of r.owners) if (ownerMatches(spec, o.pid, o.owner)) pids.add(o.pid);
  if (pids.size === 0) throw new CtlError(`no owner '${spec}' holds leases in lock space '${lockspace}'`, Exit.ERROR);
  if (pids.size > 1) throw new CtlError(`'${spec}' names several owners (pids ${[...pids].join(', ')}); give the pid`, Exit.USAGE);
  return [...pids][0]!;
}

export async function cmdReleaseLeases(a: ReleaseArgs): Promise<number> {
  const spec = a.owner ?? process.env.RELOCKD_OWNER_PID;
  const lockspace = a.lockspace ?? process.env.RELOCKD_LOCKSPACE;
  if (!spec || lockspace === undefined) throw new CtlError('give --owner and --lockspace (a killpath program gets them as RELOCKD_OWNER_PID and RELOCKD_LOCKSPACE)', Exit.USAGE);
  const pid = await resolvePid(a, spec, lockspace);
  const n = await withAdmin(a, (c) => c.releaseOwnerLeases(pid, lockspace));
  if (a.json) json({ pid, lockspace, released: n });
  else out(`released ${n} lease${n === 1 ? '' : 's'} of pid ${pid} in ${lockspaceLabel(lockspace)}\n`);
  return Exit.OK;
}

export interface LibvirtKillpathArgs extends GlobalArgs {
  uri: string;
  event: string;
  uuid?: string;
}

function virsh(args: string[], timeoutMs: number): Promise<{ code: number; output: string }> {
  return new Promise((resolve) => {
    execFile('virsh', args, { timeout: timeoutMs }, (err, stdout, stderr) => {
      const output = `${stdout}${stderr}`.trim();
      if (!err) return resolve({ code: 0, output });
      const e = err as NodeJS.ErrnoException & { code?: number | string };
      resolve({ code: typeof e.code === 'number' ? e.code : 127, output: output || e.message });
    });
  });
}

export async function cmdLibvirtKillpath(a: LibvirtKillpathArgs): Promise<number> {
  const uuid = a.uuid ?? process.env.RELOCKD_OWNER_UUID;
  if (!uuid) throw new CtlError('no domain uuid (argument or RELOCKD_OWNER_UUID)', Exit.USAGE);
  const limit = Math.max(5, a.timeout) * 1000;
  if (a.event === 'resume') {
    const r = await virsh(['-c', a.uri, 'resume', uuid], limit);
    if (r.code !== 0) throw new CtlError(`virsh -c ${a.uri} resume ${uuid} failed (${r.code}): ${r.output}`, Exit.ERROR);
    out(`resumed domain ${uuid}\n`);
    return Exit.OK;
  }
  if (a.event !== 'fail') throw new CtlError(`unknown event '${a.event}' (fail or resume)`, Exit.USAGE);
  const r = await virsh(['-c', a.uri, 'suspend', uuid], limit);
  if (r.code !== 0) throw new CtlError(`virsh -c ${a.uri} suspend ${uuid} failed (${r.code}): ${r.output}; relockd terminates the owner after kill_grace`, Exit.ERROR);
  // libvirt releases a paused domain's leases itself; release what is left
  // in the failed lock space (nothing, when libvirt got there first).
  const pid = process.env.RELOCKD_OWNER_PID;
  const lockspace = process.env.RELOCKD_LOCKSPACE;
  let n = 0;
  if (pid && lockspace !== undefined) n = await withAdmin(a, (c) => c.releaseOwnerLeases(Number(pid), lockspace));
  out(`suspended domain ${uuid}; released ${n} lease${n === 1 ? '' : 's'}\n`);
  return Exit.OK;
}
