// `relockctl cleanup`: finds the lease files in a directory that nobody
// holds (relockd's record by inode, then an exclusive lock probe) and, with
// --apply, unlinks them while holding that lock.

import { statSync } from 'node:fs';
import { lstat, opendir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import * as native from '../native.js';
import { display, fromUnicode, toBuffer, unicode } from '../byteString.js';
import type { ResourceInfo } from '../protocol/relockdAdmin.js';
import { CtlError, Exit } from './command.js';
import type { GlobalArgs } from './command.js';
import { withAdmin } from './connection.js';
import { formatTable } from './format.js';
import { err, json, out } from './output.js';
import { ownerLabel, sameLockspace } from './owners.js';

export interface CleanupArgs extends GlobalArgs {
  dir: string;
  apply: boolean;
  includeNonempty: boolean;
  verbose: boolean;
  progress?: boolean;
}

type CleanupStatus = 'held-by-relockd' | 'locked' | 'removable' | 'removed' | 'nonempty' | 'vanished' | 'error';

interface CleanupEntry {
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

export async function cmdCleanup(a: CleanupArgs): Promise<number> {
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
  // File names are bytes: read them as byte strings (latin1, one char per
  // byte, as relockd keeps names), so names that are not UTF-8 are handled
  // exactly; they are shown with display().
  const bdir = fromUnicode(dir);
  const knownSpace = resources.some((r) => r.lockspace !== '' && sameLockspace(r.lockspace, bdir));

  const names: string[] = [];
  const d = await opendir(dir, { encoding: 'latin1' });
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
      const path = join(bdir, name);
      let e: CleanupEntry | null;
      try {
        const ls = await lstat(toBuffer(path), { bigint: true });
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
    const files = entries.map((e) => (display(e.name) === unicode(e.name) ? { ...e, name: unicode(e.name) } : { ...e, name: display(e.name), nameHex: toBuffer(e.name).toString('hex') }));
    json({ dir, apply: a.apply, knownLockspace: knownSpace, daemon: daemonNote ? 'unavailable' : 'consulted', counts, files });
  } else {
    const shown = a.verbose ? entries : entries.filter((e) => e.status === 'removable' || e.status === 'removed' || e.status === 'error');
    if (shown.length) out(formatTable(['FILE', 'STATUS', 'DETAIL'], shown.map((e) => [display(e.name), STATUS_TEXT[e.status], e.detail ?? ''])));
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
