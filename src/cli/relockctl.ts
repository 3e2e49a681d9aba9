// `relockctl`: the operator's view of relockd, over the admin socket
// (relockd's own admin program), plus `run` (hold leases for a command's
// lifetime, over the main socket) and `cleanup` (remove lease files nobody
// holds). Every command prints an aligned table for people, or one JSON
// document with --json. See docs/admin.md.

import { randomUUID } from 'node:crypto';
import { accessSync, constants as fsConstants, statSync } from 'node:fs';
import { lstat, opendir } from 'node:fs/promises';
import { basename, delimiter, isAbsolute, join, resolve } from 'node:path';
import yargs from 'yargs';
import type { Argv } from 'yargs';
import * as native from '../native.js';
import { defaultPaths, pathsUnder } from '../daemon/paths.js';
import { AdminClient } from '../protocol/adminClient.js';
import type { ClientInfo, DaemonInfo, LockspaceInfo, ReexecResult, ResourceInfo } from '../protocol/relockdAdmin.js';
import { LockspaceClient } from '../protocol/lockspaceClient.js';
import { AcquireFlags } from '../locks/lockManager.js';
import { ConnectionClosedError, RemoteError } from '../rpc/client.js';
import { ErrorCode } from '../rpc/errors.js';
import { handleFd } from '../rpc/server.js';
import { VERSION } from '../version.js';

/** Exit statuses (sysexits.h where one fits). */
export const Exit = {
  OK: 0,
  ERROR: 1,
  USAGE: 2,
  /** EX_UNAVAILABLE: relockd is not running. */
  UNAVAILABLE: 69,
  /** EX_TEMPFAIL: a lease is busy (run). */
  BUSY: 75,
  /** EX_NOPERM */
  NOPERM: 77,
  /** The command cannot be executed / was not found (run; as shells do). */
  CANNOT_EXEC: 126,
  NOT_FOUND: 127,
} as const;

/** An error meant for the user: a message, an exit status, details for --json. */
export class CtlError extends Error {
  override name = 'CtlError';
  constructor(
    message: string,
    readonly exitCode: number = Exit.ERROR,
    readonly details: Record<string, unknown> = {},
  ) {
    super(message);
  }
}

interface GlobalArgs {
  socket?: string;
  adminSocket?: string;
  runtimeDir?: string;
  json: boolean;
  timeout: number;
}

// ---- output -----------------------------------------------------------------------

const out = (s: string) => process.stdout.write(s.endsWith('\n') ? s : `${s}\n`);
const err = (s: string) => process.stderr.write(s.endsWith('\n') ? s : `${s}\n`);
const json = (v: unknown) => out(JSON.stringify(v, null, 2));

/** Aligned columns, two spaces apart; no trailing blanks. */
export function formatTable(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  return [line(headers), ...rows.map(line)].join('\n') + '\n';
}

function pad2(n: number): string {
  return String(n).padStart(2, '0');
}

/** Local time, second precision: 2025-01-31 14:05:09. */
export function formatTime(ms: number): string {
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
}

export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.max(0, Math.round(ms))}ms`;
  let s = Math.floor(ms / 1000);
  const d = Math.floor(s / 86400);
  s -= d * 86400;
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  const parts = [d && `${d}d`, h && `${h}h`, m && `${m}m`, `${s}s`].filter(Boolean) as string[];
  return parts.slice(0, 3).join(' ');
}

const formatMs = (ms: number) => (ms < 10 ? `${ms.toFixed(1)} ms` : `${Math.round(ms)} ms`);
const lockspaceLabel = (dir: string) => (dir === '' ? '(default)' : dir);
const modeOf = (flags: number) => ((flags & AcquireFlags.SHARED) !== 0 ? 'shared' : 'exclusive');

// ---- connecting ----------------------------------------------------------------------

function paths(a: GlobalArgs): { socket: string; adminSocket: string } {
  const base = defaultPaths();
  const p = a.runtimeDir ? pathsUnder(a.runtimeDir, base) : base;
  return { socket: a.socket ?? p.socket, adminSocket: a.adminSocket ?? p.adminSocket };
}

/** Turns a failed connect/first call into a message that names the socket and the fix. */
function connectionError(e: unknown, path: string, what: string): CtlError {
  const code = (e as NodeJS.ErrnoException).code;
  if (code === 'ENOENT' || code === 'ECONNREFUSED') {
    return new CtlError(`relockd is not running: nothing listens on ${what} socket ${path} (${code})`, Exit.UNAVAILABLE, { socket: path, errno: code });
  }
  if (code === 'EACCES' || code === 'EPERM') {
    return new CtlError(`permission denied on ${what} socket ${path}: run relockctl as the user relockd runs as (root for the system daemon)`, Exit.NOPERM, {
      socket: path,
      errno: code,
    });
  }
  // The daemon accepts, checks the peer's uid, and closes at once: we see EOF, EPIPE or ECONNRESET.
  if (e instanceof ConnectionClosedError || code === 'EPIPE' || code === 'ECONNRESET') {
    let owner = '';
    try {
      owner = ` (the socket belongs to uid ${statSync(path).uid})`;
    } catch {
      /* gone */
    }
    return new CtlError(
      `relockd closed the connection on ${what} socket ${path} at once: your uid ${process.geteuid?.() ?? '?'} is not allowed; it accepts only its own uid, or root when it runs as root${owner}`,
      Exit.NOPERM,
      { socket: path },
    );
  }
  return new CtlError(`cannot talk to relockd on ${what} socket ${path}: ${(e as Error).message}`, Exit.UNAVAILABLE, { socket: path, errno: code });
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  if (!(ms > 0)) return p;
  let timer: NodeJS.Timeout;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new CtlError(`relockd did not answer ${what} within ${ms / 1000} s`, Exit.UNAVAILABLE)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

async function connectAdmin(a: GlobalArgs): Promise<AdminClient> {
  const path = paths(a).adminSocket;
  try {
    return await withTimeout(AdminClient.connect(path, a.timeout * 1000), a.timeout * 1000, 'CONNECT_OPEN');
  } catch (e) {
    if (e instanceof CtlError) throw e;
    throw connectionError(e, path, 'admin');
  }
}

async function withAdmin<T>(a: GlobalArgs, f: (c: AdminClient) => Promise<T>): Promise<T> {
  const c = await connectAdmin(a);
  try {
    return await withTimeout(f(c), a.timeout * 1000, 'the request');
  } catch (e) {
    if (e instanceof RemoteError) throw new CtlError(`relockd: ${e.message}`, Exit.ERROR, { code: e.code, domain: e.domain });
    if (e instanceof ConnectionClosedError) throw new CtlError(`relockd closed the admin connection: ${e.message}`, Exit.UNAVAILABLE);
    throw e;
  } finally {
    c.close();
  }
}

// ---- owners ------------------------------------------------------------------------------

function ownerLabel(o: { pid: number; owner: { name: string } | null }): string {
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

function sameLockspace(filter: string, dir: string): boolean {
  if (filter === dir) return true;
  if (filter === '' || dir === '') return false;
  return resolve(filter) === resolve(dir);
}

// ---- status -----------------------------------------------------------------------------------

async function cmdStatus(a: GlobalArgs): Promise<number> {
  const { info, lockspaces } = await withAdmin(a, async (c) => ({ info: await c.daemonInfo(), lockspaces: await c.lockspaces() }));
  if (a.json) {
    json({ daemon: info, lockspaces });
    return Exit.OK;
  }
  out(renderStatus(info, lockspaces));
  return Exit.OK;
}

export function renderStatus(info: DaemonInfo, lockspaces: LockspaceInfo[], now = Date.now()): string {
  const lines: string[] = [];
  const kv = (k: string, v: string) => lines.push(`${`${k}:`.padEnd(14)}${v}`);
  kv('relockd', `${info.version}, pid ${info.pid}, up ${formatDuration(info.uptimeMs)} (since ${formatTime(info.startedAt)}), boot: ${info.boot}`);
  kv('sockets', `${info.socket} (main), ${info.adminSocket || '-'} (admin)`);
  kv('clients', `${info.lockClients} on the main socket, ${info.adminClients} on the admin socket`);
  kv('leases', `${info.leases} held on ${info.resources} resource${info.resources === 1 ? '' : 's'} in ${info.lockspaces} lock space${info.lockspaces === 1 ? '' : 's'}`);
  if (info.safeMode) kv('SAFE MODE', 'a restore went wrong: every inherited lock is kept, new acquisitions are refused (send SIGUSR1 or run `relockctl reexec` to retry)');
  const l = info.lastReexec;
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
  return lines.join('\n') + '\n';
}

// ---- leases ------------------------------------------------------------------------------------

interface LeasesArgs extends GlobalArgs {
  lockspace?: string;
  owner?: string;
}

async function cmdLeases(a: LeasesArgs): Promise<number> {
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

// ---- clients --------------------------------------------------------------------------------------

interface ClientsArgs extends GlobalArgs {
  server?: string;
}

async function cmdClients(a: ClientsArgs): Promise<number> {
  const list = await withAdmin(a, (c) => c.clients(a.server && a.server !== 'all' ? a.server : null));
  if (a.json) {
    json(list);
    return Exit.OK;
  }
  if (list.length === 0) {
    out('no clients');
    return Exit.OK;
  }
  out(renderClients(list));
  return Exit.OK;
}

export function renderClients(list: ClientInfo[]): string {
  const rows = list.map((c) => [
    c.server,
    String(c.id),
    String(c.pid),
    String(c.uid),
    formatTime(c.connTime * 1000),
    c.owner ? c.owner.name : '-',
    c.owner ? String(c.owner.pid) : '-',
    c.owner ? c.owner.uuid : '-',
    c.server === 'admin' ? '-' : c.restricted ? 'yes' : 'no',
    c.owner ? `${c.leases}${c.ownerConnection ? ' (owner connection)' : ''}` : '-',
  ]);
  return formatTable(['SERVER', 'ID', 'PID', 'UID', 'CONNECTED', 'OWNER', 'OWNER PID', 'OWNER UUID', 'RESTRICTED', 'LEASES'], rows);
}

// ---- reexec --------------------------------------------------------------------------------------------

async function cmdReexec(a: GlobalArgs): Promise<number> {
  const requested = Date.now();
  const c = await connectAdmin(a);
  let result: ReexecResult | null = null;
  let version = '';
  let pid = 0;
  try {
    result = await withTimeout(c.reexec(), Math.max(a.timeout, 60) * 1000, 'REEXEC');
  } catch (e) {
    if (e instanceof RemoteError) {
      c.close();
      throw new CtlError(`re-exec refused: ${e.message}`, Exit.ERROR, { code: e.code, domain: e.domain });
    }
    // The reply can be lost with the old image; the daemon's record says what happened.
  } finally {
    c.close();
  }
  const info = await waitForRecord(a, requested, result !== null);
  if (info) {
    version = info.version;
    pid = info.pid;
    if (!result && info.lastReexec) result = info.lastReexec.result;
  }
  if (!result) throw new CtlError('re-exec outcome unknown: relockd did not answer and recorded no re-exec', Exit.ERROR);
  if (a.json) {
    json({ ...result, ...(result.ok ? {} : { error: result.error }), version, pid });
  } else if (result.ok) {
    out(`re-exec succeeded: blackout ${formatMs(result.blackoutMs)}${version ? ` (relockd ${version}, pid ${pid})` : ''}`);
  } else {
    err(`relockctl: re-exec failed: ${result.error}\nrelockd keeps serving in its old image with every lease held.`);
  }
  return result.ok ? Exit.OK : Exit.ERROR;
}

/** After a re-exec: the daemon info once it answers again (the record made at or after `since`). */
async function waitForRecord(a: GlobalArgs, since: number, haveResult: boolean): Promise<DaemonInfo | null> {
  const deadline = Date.now() + Math.max(a.timeout, 60) * 1000;
  for (;;) {
    try {
      const info = await withAdmin({ ...a, timeout: 5 }, (c) => c.daemonInfo());
      if (haveResult || (info.lastReexec && info.lastReexec.at >= since - 1000)) return info;
    } catch (e) {
      if (Date.now() > deadline) throw e;
    }
    if (Date.now() > deadline) return null;
    await new Promise((r) => setTimeout(r, 100));
  }
}

// ---- cleanup ---------------------------------------------------------------------------------------------

interface CleanupArgs extends GlobalArgs {
  dir: string;
  apply: boolean;
  includeNonempty: boolean;
  verbose: boolean;
  progress?: boolean;
}

export type CleanupStatus = 'held-by-relockd' | 'locked' | 'removable' | 'removed' | 'nonempty' | 'vanished' | 'error';

export interface CleanupEntry {
  name: string;
  status: CleanupStatus;
  detail?: string;
}

const STATUS_TEXT: Record<CleanupStatus, string> = {
  'held-by-relockd': 'held by relockd',
  locked: 'locked by another process or host',
  removable: 'removable',
  removed: 'removed',
  nonempty: 'skipped: not empty',
  vanished: 'gone meanwhile',
  error: 'error',
};

/**
 * One lease file: removed only while we hold an exclusive lock on it, and
 * only if the path still names the file we locked (native releaseFile
 * re-checks the inode right before unlinking). An acquire racing with us
 * either fails to lock (busy, retried by its caller) or, with AUTOCREATE,
 * notices the unlink after locking and creates the file afresh: a file that
 * someone holds is never removed.
 */
async function cleanOne(path: string, name: string, apply: boolean): Promise<CleanupEntry> {
  let locked: native.LockFileResult;
  try {
    locked = await native.lockFileP(path, { shared: false, create: false });
  } catch (e) {
    const ne = e as native.NativeError;
    if (ne.stage === 'lock' && (ne.code === 'EAGAIN' || ne.code === 'EACCES')) return { name, status: 'locked' };
    if (ne.code === 'ENOENT') return { name, status: 'vanished' };
    return { name, status: 'error', detail: ne.message };
  }
  const r = await native.releaseFileP(locked.fd, { unlinkPath: apply ? path : null, onlyIfExclusive: false });
  if (!apply) return { name, status: 'removable' };
  if (r.unlinked) return { name, status: 'removed' };
  if (r.unlinkError) return { name, status: 'error', detail: `unlink: ${r.unlinkError}` };
  return { name, status: 'vanished' };
}

async function cmdCleanup(a: CleanupArgs): Promise<number> {
  const dir = resolve(a.dir);
  let st;
  try {
    st = statSync(dir);
  } catch (e) {
    throw new CtlError(`cannot read ${dir}: ${(e as Error).message}`, Exit.ERROR);
  }
  if (!st.isDirectory()) throw new CtlError(`${dir} is not a directory`, Exit.USAGE);

  // What relockd holds (by inode, so any path spelling matches); names its owners.
  // Without a daemon the probe alone decides: it conflicts with relockd's locks too.
  let resources: ResourceInfo[] = [];
  let daemonNote = '';
  try {
    resources = await withAdmin(a, (c) => c.resources(null));
  } catch (e) {
    if (!(e instanceof CtlError) || e.exitCode !== Exit.UNAVAILABLE) throw e;
    daemonNote = `${e.message}; only the lock probe decides`;
    err(`relockctl: note: ${daemonNote}`);
  }
  const held = new Map<string, ResourceInfo>();
  for (const r of resources) held.set(`${r.dev}:${r.ino}`, r);
  const knownSpace = resources.some((r) => r.lockspace !== '' && sameLockspace(r.lockspace, dir));

  const names: string[] = [];
  const d = await opendir(dir);
  for await (const ent of d) names.push(ent.name);
  names.sort();

  const total = names.length;
  const showProgress = a.progress ?? total >= 1000;
  const tty = process.stderr.isTTY === true;
  let done = 0;
  let lastProgress = 0;
  const entries: CleanupEntry[] = [];
  const progress = (final = false) => {
    if (!showProgress) return;
    const now = Date.now();
    if (!final && now - lastProgress < (tty ? 200 : 2000)) return;
    lastProgress = now;
    const removable = entries.filter((e) => e.status === 'removable' || e.status === 'removed').length;
    const line = `cleanup: ${done}/${total} checked, ${removable} ${a.apply ? 'removed' : 'removable'}`;
    process.stderr.write(tty ? `\r${line}${final ? '\n' : ''}` : `${line}\n`);
  };

  let next = 0;
  const worker = async () => {
    while (next < names.length) {
      const name = names[next++]!;
      const path = join(dir, name);
      let e: CleanupEntry | null;
      try {
        const ls = await lstat(path, { bigint: true });
        if (!ls.isFile()) e = null; // directories, symlinks, sockets: never lease files
        else if (held.has(`${Number(ls.dev)}:${Number(ls.ino)}`)) {
          const r = held.get(`${Number(ls.dev)}:${Number(ls.ino)}`)!;
          e = { name, status: 'held-by-relockd', detail: r.owners.map(ownerLabel).join(', ') };
        } else if (ls.size > 0n && !a.includeNonempty) e = { name, status: 'nonempty', detail: `${ls.size} bytes (lease files are empty; --include-nonempty to consider it)` };
        else e = await cleanOne(path, name, a.apply);
      } catch (x) {
        const code = (x as NodeJS.ErrnoException).code;
        e = code === 'ENOENT' ? { name, status: 'vanished' } : { name, status: 'error', detail: (x as Error).message };
      }
      if (e) entries.push(e);
      done++;
      progress();
    }
  };
  await Promise.all(Array.from({ length: 8 }, worker));
  progress(true);
  entries.sort((x, y) => (x.name < y.name ? -1 : x.name > y.name ? 1 : 0));

  const counts: Record<CleanupStatus, number> = { 'held-by-relockd': 0, locked: 0, removable: 0, removed: 0, nonempty: 0, vanished: 0, error: 0 };
  for (const e of entries) counts[e.status]++;
  if (a.json) {
    json({ dir, apply: a.apply, knownLockspace: knownSpace, daemon: daemonNote ? 'unavailable' : 'consulted', counts, files: entries });
  } else {
    const shown = a.verbose ? entries : entries.filter((e) => e.status === 'removable' || e.status === 'removed' || e.status === 'error');
    if (shown.length) out(formatTable(['FILE', 'STATUS', 'DETAIL'], shown.map((e) => [e.name, STATUS_TEXT[e.status], e.detail ?? ''])));
    const parts = [
      `${entries.length} file${entries.length === 1 ? '' : 's'} in ${dir}`,
      `${counts['held-by-relockd']} held by relockd`,
      `${counts.locked} locked elsewhere`,
      a.apply ? `${counts.removed} removed` : `${counts.removable} removable`,
    ];
    if (counts.nonempty) parts.push(`${counts.nonempty} not empty (skipped)`);
    if (counts.error) parts.push(`${counts.error} errors`);
    out(parts.join(', ') + (a.apply || counts.removable === 0 ? '' : '\ndry run: nothing was removed; use --apply to remove the files listed'));
    if (!knownSpace && !daemonNote) err(`note: relockd has no lock space ${dir}; the lock probe decided for every file`);
  }
  return counts.error ? Exit.ERROR : Exit.OK;
}

// ---- run ------------------------------------------------------------------------------------------------------

interface RunArgs extends GlobalArgs {
  lease: string[];
  lockspace?: string;
  name?: string;
  uuid?: string;
  command: string[];
}

export interface LeaseSpec {
  /** '' = default lock space (name is an absolute path). */
  lockspace: string;
  name: string;
  shared: boolean;
  autocreate: boolean;
}

/** PATH[:shared|:exclusive]; with --lockspace, a bare NAME is a lease in that lock space. */
export function parseLease(spec: string, lockspace: string | undefined, cwd = process.cwd()): LeaseSpec {
  let s = spec;
  let shared = false;
  const m = /^(.*):(shared|exclusive)$/.exec(s);
  if (m) {
    s = m[1]!;
    shared = m[2] === 'shared';
  }
  if (!s) throw new CtlError(`--lease '${spec}': empty lease`, Exit.USAGE);
  if (lockspace !== undefined && !s.includes('/')) {
    if (s === '.' || s === '..') throw new CtlError(`--lease '${spec}': not a valid lease name`, Exit.USAGE);
    return { lockspace: resolve(cwd, lockspace), name: s, shared, autocreate: true };
  }
  return { lockspace: '', name: resolve(cwd, s), shared, autocreate: false };
}

/** execvp's search, done here because we exec directly. */
export function resolveCommand(cmd: string, envPath = process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin'): string {
  const check = (p: string): boolean => {
    try {
      const st = statSync(p);
      if (!st.isFile()) return false;
      accessSync(p, fsConstants.X_OK);
      return true;
    } catch {
      return false;
    }
  };
  if (cmd.includes('/')) {
    const p = resolve(cmd);
    try {
      statSync(p);
    } catch {
      throw new CtlError(`${cmd}: command not found`, Exit.NOT_FOUND);
    }
    if (!check(p)) throw new CtlError(`${cmd}: not an executable file (permission denied)`, Exit.CANNOT_EXEC);
    return p;
  }
  for (const dir of envPath.split(delimiter)) {
    const p = join(dir || '.', cmd);
    if (check(p)) return isAbsolute(p) ? p : resolve(p);
  }
  throw new CtlError(`${cmd}: command not found in PATH`, Exit.NOT_FOUND);
}

/** Who holds a lease relockd refused: relockd's own record, or "someone else". */
async function describeHolder(a: GlobalArgs, l: LeaseSpec): Promise<{ text: string; holders: unknown[] }> {
  try {
    const res = await withAdmin({ ...a, timeout: 5 }, (c) => c.resources(null));
    const r = res.find((x) => sameLockspace(l.lockspace, x.lockspace) && x.name === l.name);
    if (r) {
      return {
        text: `held by ${r.owners.map(ownerLabel).join(', ')} (${modeOf(r.flags)}, since ${formatTime(r.since)})`,
        holders: r.owners,
      };
    }
    return { text: 'held by another process or host (not through this relockd)', holders: [] };
  } catch {
    return { text: 'holder unknown (the admin socket is not reachable)', holders: [] };
  }
}

async function cmdRun(a: RunArgs): Promise<number> {
  if (!a.command.length) throw new CtlError('run: no command given (relockctl run --lease PATH -- COMMAND [ARGS...])', Exit.USAGE);
  if (!a.lease.length) throw new CtlError('run: give at least one --lease', Exit.USAGE);
  if (a.lockspace !== undefined && !a.lockspace) throw new CtlError('run: --lockspace needs a directory', Exit.USAGE);
  const leases = a.lease.map((s) => parseLease(s, a.lockspace));
  const seen = new Set<string>();
  for (const l of leases) {
    const key = `${l.lockspace}\0${l.name}`;
    if (seen.has(key)) throw new CtlError(`run: lease ${l.lockspace ? `${l.name} in ${l.lockspace}` : l.name} given twice`, Exit.USAGE);
    seen.add(key);
  }
  if (a.uuid !== undefined && !/^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$/.test(a.uuid)) {
    throw new CtlError(`run: --uuid '${a.uuid}' is not a UUID`, Exit.USAGE);
  }
  const file = resolveCommand(a.command[0]!);
  const sock = paths(a).socket;
  const owner = { uuid: a.uuid ?? randomUUID(), name: a.name ?? basename(a.command[0]!), id: 1, pid: process.pid };

  let c: LockspaceClient;
  try {
    c = await withTimeout(LockspaceClient.connect(sock), a.timeout * 1000, 'connect');
    await withTimeout(c.register(owner), a.timeout * 1000, 'REGISTER');
  } catch (e) {
    if (e instanceof CtlError) throw e;
    throw connectionError(e, sock, 'main');
  }
  const acquired: LeaseSpec[] = [];
  try {
    for (const dir of new Set(leases.filter((l) => l.lockspace !== '').map((l) => l.lockspace))) await c.createLockspace(dir);
    for (const l of leases) {
      const flags = (l.shared ? AcquireFlags.SHARED : 0) | (l.autocreate ? AcquireFlags.AUTOCREATE : 0);
      await c.acquire(l.lockspace, l.name, flags);
      acquired.push(l);
    }
    await c.restrict();
  } catch (e) {
    // Not restricted yet: give back what we took, then say why.
    for (const l of acquired.reverse()) await c.release(l.lockspace, l.name).catch(() => undefined);
    c.close();
    if (e instanceof RemoteError && e.code === ErrorCode.RESOURCE_BUSY) {
      const l = leases[acquired.length]!;
      const who = await describeHolder(a, l);
      const label = l.lockspace ? `${l.name} in lock space ${l.lockspace}` : l.name;
      throw new CtlError(`lease ${label} is busy: ${who.text}`, Exit.BUSY, { lease: l, holders: who.holders });
    }
    if (e instanceof RemoteError) throw new CtlError(`relockd refused the lease: ${e.message}`, Exit.ERROR, { code: e.code, domain: e.domain });
    throw connectionError(e, sock, 'main');
  }
  execHolding(c, file, a.command);
}

/**
 * Becomes the command: same pid (the registered owner), with the restricted
 * lock connection inherited. When the command exits, for whatever reason, the
 * connection closes and relockd releases the leases (libvirt does this for
 * QEMU). Node's process state that would leak into the command is undone:
 * FD_CLOEXEC on 0-2, O_NONBLOCK on stdout/stderr, ignored SIGPIPE/SIGXFSZ.
 */
function execHolding(c: LockspaceClient, file: string, argv: string[]): never {
  const fd = handleFd(c.rpc.socket);
  if (fd < 0) throw new CtlError('run: cannot find the lock connection fd', Exit.ERROR);
  for (const s of [process.stdout, process.stderr]) {
    (s as unknown as { _handle?: { setBlocking?: (b: boolean) => void } })._handle?.setBlocking?.(true);
  }
  for (const std of [0, 1, 2]) {
    try {
      native.setCloexec(std, false);
    } catch {
      /* not open */
    }
  }
  // A caught signal is reset to SIG_DFL by execve; an ignored one stays ignored.
  process.on('SIGPIPE', () => {});
  process.on('SIGXFSZ', () => {});
  native.setCloexec(fd, false);
  const env = { ...process.env, RELOCKCTL_LEASE_FD: String(fd) };
  try {
    return native.execve(file, argv, Object.entries(env).map(([k, v]) => `${k}=${v}`));
  } catch (e) {
    // Nothing to give back by hand: exiting closes the connection, and relockd releases.
    const code = (e as native.NativeError).code;
    throw new CtlError(`${argv[0]}: cannot execute: ${(e as Error).message}`, code === 'ENOENT' ? Exit.NOT_FOUND : Exit.CANNOT_EXEC);
  }
}

// ---- the command line ------------------------------------------------------------------------------------------

function globalOptions(y: Argv): Argv<GlobalArgs> {
  return y
    .option('socket', { type: 'string', describe: 'main socket of relockd (used by run)' })
    .option('admin-socket', { type: 'string', describe: 'admin socket of relockd' })
    .option('runtime-dir', { type: 'string', describe: "relockd's --runtime-dir: sockets are looked up there" })
    .option('json', { type: 'boolean', default: false, describe: 'print one JSON document (errors too) instead of text' })
    .option('timeout', { type: 'number', default: 30, describe: 'seconds to wait for relockd to answer' }) as unknown as Argv<GlobalArgs>;
}

type Handler = (a: any) => Promise<number>;

export function buildParser(argv: string[], onCommand: (h: Handler, a: unknown) => void): Argv {
  const y = globalOptions(yargs(argv))
    .scriptName('relockctl')
    .usage('$0 <command> [options]\n\nInspect and operate relockd (see docs/admin.md).')
    .parserConfiguration({ 'populate--': true })
    .command('status', 'daemon, clients, leases by lock space, last re-exec', {}, (a) => onCommand(cmdStatus, a))
    .command(
      'leases',
      'leases held, with owners and since when',
      (c) =>
        c
          .option('lockspace', { type: 'string', describe: "only this lock space ('' for the default one)" })
          .option('owner', { type: 'string', describe: 'only leases of this owner: NAME, UUID or PID' }),
      (a) => onCommand(cmdLeases, a),
    )
    .command(
      'clients',
      'connections, with their registered owner and restriction',
      (c) => c.option('server', { type: 'string', choices: ['virtlockd', 'admin', 'all'], default: 'all', describe: 'which socket' }),
      (a) => onCommand(cmdClients, a),
    )
    .command('reexec', 're-exec relockd in place (no lease is dropped); prints the blackout time', {}, (a) => onCommand(cmdReexec, a))
    .command(
      'cleanup <dir>',
      'list (or with --apply remove) lease files in DIR that nobody holds',
      (c) =>
        c
          .positional('dir', { type: 'string', demandOption: true, describe: 'lock-space directory' })
          .option('apply', { type: 'boolean', default: false, describe: 'remove the files (default: dry run)' })
          .option('include-nonempty', { type: 'boolean', default: false, describe: 'also consider files that are not empty' })
          .option('verbose', { alias: 'v', type: 'boolean', default: false, describe: 'list every file, not only removable ones' })
          .option('progress', { type: 'boolean', describe: 'progress line on stderr (default: for 1000 files or more)' }),
      (a) => onCommand(cmdCleanup, a),
    )
    .command(
      'run',
      'run a command holding leases for exactly its lifetime: run --lease PATH[:shared] ... -- COMMAND [ARGS...]',
      (c) =>
        c
          .option('lease', { type: 'string', array: true, default: [] as string[], describe: 'PATH[:shared]; with --lockspace, NAME[:shared] is a lease file in that directory (created as needed)' })
          .option('lockspace', { type: 'string', describe: 'lock-space directory for bare lease names' })
          .option('name', { type: 'string', describe: 'owner name shown by leases/clients (default: the command name)' })
          .option('uuid', { type: 'string', describe: 'owner UUID (default: random)' }),
      (a) => onCommand(cmdRun, { ...a, command: ((a as Record<string, unknown>)['--'] as string[] | undefined)?.map(String) ?? [] }),
    )
    .demandCommand(1, 'give a command: status, leases, clients, reexec, cleanup or run')
    .version('version', 'show version', `relockctl (relockd) ${VERSION}`)
    .alias('version', 'V')
    .help('help')
    .alias('help', 'h')
    .strict()
    .wrap(Math.min(110, process.stdout.columns ?? 80));
  return y;
}

/** Runs relockctl; resolves with the exit status (run: only on failure). */
export async function runCli(argv: string[]): Promise<number> {
  let chosen: { h: Handler; a: unknown } | null = null;
  // Only relockctl's own arguments: what follows `--` belongs to run's command.
  const own = argv.includes('--') ? argv.slice(0, argv.indexOf('--')) : argv;
  const wantsJson = own.includes('--json');
  try {
    let usageError: string | null = null;
    await buildParser(argv, (h, a) => (chosen = { h, a }))
      .fail((msg, e) => {
        usageError = e ? e.message : msg;
      })
      .parseAsync();
    if (usageError) throw new CtlError(usageError, Exit.USAGE);
    if (!chosen) return Exit.OK; // --help, --version
    const { h, a } = chosen as { h: Handler; a: unknown };
    return await h(a);
  } catch (e) {
    const ce =
      e instanceof CtlError
        ? e
        : e instanceof RemoteError
          ? new CtlError(`relockd: ${e.message}`, Exit.ERROR, { code: e.code, domain: e.domain })
          : new CtlError((e as Error).message ?? String(e), Exit.ERROR);
    if (wantsJson) {
      const doc = JSON.stringify({ error: { message: ce.message, exitCode: ce.exitCode, ...ce.details } }, null, 2);
      // run's stdout belongs to the command; everything else reports on stdout.
      if (own.includes('run')) err(doc);
      else out(doc);
    } else {
      err(`relockctl: ${ce.message}`);
    }
    return ce.exitCode;
  }
}

export async function main(argv: string[]): Promise<void> {
  process.stdout.on('error', () => {});
  process.exitCode = await runCli(argv);
}
