// Reaching relockd from relockctl: socket paths from the global options,
// timeouts, admin connections, and connect failures turned into messages that
// name the socket and the fix (used for the main socket by `run` too).

import { statSync } from 'node:fs';
import { defaultPaths, pathsUnder } from '../daemon/paths.js';
import { AdminClient } from '../protocol/adminClient.js';
import { ConnectionClosedError, RemoteError, RpcClient } from '../rpc/client.js';
import { CtlError, Exit } from './command.js';
import type { GlobalArgs } from './command.js';

/** The main and admin socket paths: --socket/--admin-socket, else under --runtime-dir, else the defaults. */
export function socketPaths(a: GlobalArgs): { socket: string; adminSocket: string } {
  const base = defaultPaths();
  const p = a.runtimeDir ? pathsUnder(a.runtimeDir, base) : base;
  return { socket: a.socket ?? p.socket, adminSocket: a.adminSocket ?? p.adminSocket };
}

/** Turns a failed connect/first call into a message that names the socket and the fix. */
export function connectionError(e: unknown, path: string, what: string): CtlError {
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
    throw connectionError(e, path, 'admin');
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
