// Reaching relockd from relockctl: socket paths from the global options,
// timeouts, admin connections, and connect failures turned into messages that
// name the socket and the fix (used for the main socket by `run` too).

import { lstatSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { defaultPaths, isPrivileged, pathsUnder } from '../util/paths.js';
import { AdminClient } from '../protocol/adminClient.js';
import { ConnectionClosedError, RemoteError, RpcClient } from '../rpc/client.js';
import { CtlError, Exit } from './command.js';
import type { GlobalArgs } from './command.js';

/** relockd's own units (units/relockd*.socket) put their sockets here, under these names. */
const RELOCKD_UNITS_RUNTIME_DIR = '/run/relockd';
const UNIT_NAMES = { socket: 'relockd-sock', adminSocket: 'relockd-admin-sock' } as const;

/**
 * Where relockctl looks, in order: --socket/--admin-socket; else in
 * --runtime-dir both names a relockd uses there (virtlockd's, when started
 * with --runtime-dir, and relockd.socket's); else, for root, relockd's own
 * units' (/run/relockd), then virtlockd's default paths (the takeover).
 */
export function socketCandidates(a: GlobalArgs, base = defaultPaths(), privileged = isPrivileged()): { socket: string[]; adminSocket: string[] } {
  const units = (dir: string) => ({ socket: join(dir, UNIT_NAMES.socket), adminSocket: join(dir, UNIT_NAMES.adminSocket) });
  const places: Array<{ socket: string; adminSocket: string }> = [];
  if (a.runtimeDir) places.push(pathsUnder(a.runtimeDir, base), units(a.runtimeDir));
  else {
    // /run/relockd first: only relockd creates it, while virtlockd's path may
    // belong to the real virtlockd (libvirt's socket units), which a connect
    // would even start.
    if (privileged) places.push(units(RELOCKD_UNITS_RUNTIME_DIR), pathsUnder(RELOCKD_UNITS_RUNTIME_DIR, base));
    places.push(base);
  }
  return { socket: a.socket ? [a.socket] : places.map((p) => p.socket), adminSocket: a.adminSocket ? [a.adminSocket] : places.map((p) => p.adminSocket) };
}

const isSocket = (p: string) => {
  try {
    return lstatSync(p).isSocket();
  } catch {
    return false;
  }
};

/** The first candidate that exists as a socket (else the first: the error then names it). */
export function socketPaths(a: GlobalArgs): { socket: string; adminSocket: string } {
  const c = socketCandidates(a);
  return { socket: c.socket.find(isSocket) ?? c.socket[0]!, adminSocket: c.adminSocket.find(isSocket) ?? c.adminSocket[0]! };
}

/** Turns a failed connect/first call into a message that names the socket and the fix. */
export function connectionError(e: unknown, path: string, what: string, tryList: string[] = []): CtlError {
  const code = (e as NodeJS.ErrnoException).code;
  if (code === 'ENOENT' || code === 'ECONNREFUSED') {
    const tried = what === 'admin' && tryList.length > 1 ? ` (looked for ${tryList.join(', ')}; give --runtime-dir or --admin-socket)` : '';
    return new CtlError(`relockd is not running: nothing listens on ${what} socket ${path} (${code})${tried}`, Exit.UNAVAILABLE, { socket: path, errno: code });
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

export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  if (!(ms > 0)) return p;
  let timer: NodeJS.Timeout;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new CtlError(`relockd did not answer ${what} within ${ms / 1000} s`, Exit.UNAVAILABLE)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

export async function connectAdmin(a: GlobalArgs): Promise<AdminClient> {
  const path = socketPaths(a).adminSocket;
  let c: AdminClient | null = null;
  try {
    c = new AdminClient(await RpcClient.connect(path, a.timeout * 1000));
    await withTimeout(c.open(), a.timeout * 1000, 'CONNECT_OPEN');
    return c;
  } catch (e) {
    // A daemon that accepted (or whose backlog did) but never answers: close
    // our end, or the open socket keeps relockctl running after its message.
    c?.close();
    if (e instanceof CtlError) throw e;
    throw connectionError(e, path, 'admin', socketCandidates(a).adminSocket);
  }
}

export async function withAdmin<T>(a: GlobalArgs, f: (c: AdminClient) => Promise<T>): Promise<T> {
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
