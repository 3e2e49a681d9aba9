// `relockctl status`: the daemon's info and its lock spaces, as a summary
// for people or one JSON document.

import type { DaemonInfo, HealthInfo, LockspaceInfo } from '../protocol/relockdAdmin.js';
import { renderHealth } from './lockFailure.js';
import { Exit } from './command.js';
import type { GlobalArgs } from './command.js';
import { withAdmin } from './connection.js';
import { formatDuration, formatMs, formatTable, formatTime, lockspaceLabel } from './format.js';
import { json, out } from './output.js';

export async function cmdStatus(a: GlobalArgs): Promise<number> {
  const { info, lockspaces, health } = await withAdmin(a, async (c) => ({
    info: await c.daemonInfo(),
    lockspaces: await c.lockspaces(),
    // An older relockd has no health procedure.
    health: await c.health().catch(() => [] as HealthInfo[]),
  }));
  if (a.json) {
    json({ daemon: info, lockspaces, health });
    return Exit.OK;
  }
  out(renderStatus(info, lockspaces, Date.now(), health));
  return Exit.OK;
}

function renderStatus(info: DaemonInfo, lockspaces: LockspaceInfo[], now = Date.now(), health: HealthInfo[] = []): string {
  const lines: string[] = [];
  const kv = (k: string, v: string) => lines.push(`${`${k}:`.padEnd(14)}${v}`);
  kv('relockd', `${info.version}, pid ${info.pid}, up ${formatDuration(info.uptimeMs)} (since ${formatTime(info.startedAt)}), boot: ${info.boot}`);
  kv('sockets', `${info.socket} (main), ${info.adminSocket || '-'} (admin)`);
  kv('clients', `${info.lockClients} on the main socket, ${info.adminClients} on the admin socket`);
  kv('leases', `${info.leases} held on ${info.resources} resource${info.resources === 1 ? '' : 's'} in ${info.lockspaces} lock space${info.lockspaces === 1 ? '' : 's'}`);
  if (info.stopping) {
    const what: Record<string, string> = {
      drain: `draining: new acquisitions are refused; exits when the last of ${info.leases} lease${info.leases === 1 ? '' : 's'} is released`,
      'kill-owners': 'stopping: terminating the lease-holding owners, then releasing and exiting',
      refuse: `stop deferred: still serving everything; exits once the last of ${info.leases} lease${info.leases === 1 ? '' : 's'} is released`,
    };
    kv('STOPPING', `${what[info.stopping] ?? info.stopping} (shutdown policy ${info.stopping})`);
  }
  if (info.configError) kv('CONFIG ERROR', `running with the settings in force before; the file has errors (fix it, then SIGHUP): ${info.configError.replace(/\n/g, '; ')}`);
  if (info.safeMode) kv('SAFE MODE', 'a restore went wrong: every inherited lock is kept, new acquisitions are refused (send SIGUSR1 or run `relockctl reexec` to retry)');
  const l = info.lastReexec;
  // A restart after relockd itself died, restored from systemd's fd store (daemon/crashStore.ts).
  if (l && l.trigger === 'crash-restart' && l.result.ok) kv('CRASH', `recovered from a crash of relockd ${formatDuration(now - l.at)} ago: it was down ${formatMs(l.result.blackoutMs)}; leases and connections were kept in systemd's fd store`);
  if (!l) kv('last re-exec', 'none');
  else {
    const how = l.result.ok ? `ok, blackout ${formatMs(l.result.blackoutMs)}` : `FAILED: ${l.result.error}`;
    const versions = l.fromVersion || l.toVersion ? `, ${l.fromVersion || '?'} -> ${l.toVersion || '?'}` : '';
    kv('last re-exec', `${formatTime(l.at)} (${formatDuration(now - l.at)} ago), ${how} [${l.trigger || '?'}${versions}]`);
  }
  kv('idle timeout', info.daemonTimeout ? `${info.daemonTimeout} s` : 'none');
  for (const t of info.terminations) kv('terminating', `${t.owner.name} (pid ${t.owner.pid}) for ${formatDuration(now - t.since)} [${t.phase}]`);
  lines.push('');
  const rows = lockspaces.map((ls) => [lockspaceLabel(ls.dir), String(ls.resources), String(ls.leases)]);
  lines.push(formatTable(['LOCK SPACE', 'RESOURCES', 'LEASES'], rows).trimEnd());
  const bad = health.filter((w) => w.state !== 'healthy');
  if (bad.length) kv('STORAGE', `${bad.map((w) => `${w.dir} ${w.state.toUpperCase()}`).join('; ')} (see relockctl health)`);
  if (health.length) lines.push('', renderHealth(health, now).trimEnd());
  return lines.join('\n') + '\n';
}
