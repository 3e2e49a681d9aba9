// `relockctl run`: acquires leases over the main socket as the owner of its
// own pid, restricts the connection, and execs the command so that it holds
// them for exactly its lifetime.

import { fromUnicode } from '../byteString.js';
import { randomUUID } from 'node:crypto';
import { accessSync, constants as fsConstants, statSync } from 'node:fs';
import { basename, delimiter, isAbsolute, join, resolve } from 'node:path';
import * as native from '../native.js';
import { AcquireFlags } from '../util/acquireFlags.js';
import { LockspaceClient } from '../protocol/lockspaceClient.js';
import { RemoteError } from '../rpc/client.js';
import { ErrorCode } from '../util/errors.js';
import { handleFd } from '../rpc/server.js';
import { CtlError, Exit } from './command.js';
import type { GlobalArgs } from './command.js';
import { connectionError, socketPaths, withAdmin, withTimeout } from './connection.js';
import { formatTime, modeOf } from './format.js';
import { ownerLabel, sameLockspace } from './owners.js';

export interface RunArgs extends GlobalArgs {
  lease: string[];
  lockspace?: string;
  name?: string;
  uuid?: string;
  command: string[];
}

interface LeaseSpec {
  /** '' = default lock space (name is an absolute path). */
  lockspace: string;
  name: string;
  shared: boolean;
  autocreate: boolean;
}

/** PATH[:shared|:exclusive]; with --lockspace, a bare NAME is a lease in that lock space. */
function parseLease(spec: string, lockspace: string | undefined, cwd = process.cwd()): LeaseSpec {
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
function resolveCommand(cmd: string, envPath = process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin'): string {
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
    // relockd reports names as bytes; ours came from argv as text.
    const r = res.find((x) => sameLockspace(fromUnicode(l.lockspace), x.lockspace) && x.name === fromUnicode(l.name));
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

export async function cmdRun(a: RunArgs): Promise<number> {
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
  const sock = socketPaths(a).socket;
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
