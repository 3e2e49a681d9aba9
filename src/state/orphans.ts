// When the state document cannot be trusted at all (unreadable, invalid),
// the new image still must not drop a single lock. It keeps every inherited
// fd that can hold a lock or a client (regular files, sockets, pidfds), and
// finds its own listening sockets among them through /proc/net/unix, so that
// it stays reachable for release and inspection in safe mode.

import { fstatSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import type { FdIdentity } from './document.js';

export interface InheritedFds {
  /** Listening UNIX sockets with their bound path. */
  listeners: Array<{ fd: number; path: string }>;
  /** Connected sockets (clients of the old image), with the path of the
   *  listener they were accepted on (accepted sockets carry its name). */
  sockets: Array<{ fd: number; path: string | null }>;
  /** Everything else worth keeping: regular files (locks) and pidfds. */
  others: FdIdentity[];
}

/** Unix sockets by socket inode → bound path (from /proc/net/unix). */
function unixSockets(): { listening: Map<string, string>; named: Map<string, string> } {
  const listening = new Map<string, string>();
  const named = new Map<string, string>();
  let text = '';
  try {
    text = readFileSync('/proc/net/unix', 'utf8');
  } catch {
    return { listening, named };
  }
  for (const line of text.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    // Num RefCount Protocol Flags Type St Inode Path
    if (f.length < 8) continue;
    const flags = parseInt(f[3]!, 16);
    // RpcServer.bind() binds under PATH.<pid>.tmp and renames it into place:
    // the kernel keeps the name it was bound with.
    const path = f.slice(7).join(' ').replace(/\.\d+\.tmp$/, '');
    if ((flags & 0x10000) !== 0) listening.set(f[6]!, path); // __SO_ACCEPTCON
    else named.set(f[6]!, path);
  }
  return { listening, named };
}

function listeningUnixSockets(): Map<string, string> {
  return unixSockets().listening;
}

/** The bound path of a listening UNIX socket fd, or null. */
export function listenerPath(fd: number): string | null {
  try {
    const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/self/fd/${fd}`));
    return m ? (listeningUnixSockets().get(m[1]!) ?? null) : null;
  } catch {
    return null;
  }
}

/**
 * Inherited fds above stdio, excluding `exclude` (fds this image opened
 * itself) and Node's own anonymous inodes and pipes.
 */
export function scanInheritedFds(exclude: Set<number> = new Set()): InheritedFds {
  const res: InheritedFds = { listeners: [], sockets: [], others: [] };
  const { listening, named } = unixSockets();
  let entries: string[] = [];
  try {
    entries = readdirSync('/proc/self/fd');
  } catch {
    return res;
  }
  for (const e of entries) {
    const fd = Number(e);
    if (!(fd > 2) || exclude.has(fd)) continue;
    let target: string;
    try {
      target = readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      continue;
    }
    const sock = /^socket:\[(\d+)\]$/.exec(target);
    if (sock) {
      const path = listening.get(sock[1]!);
      if (path !== undefined) res.listeners.push({ fd, path });
      else res.sockets.push({ fd, path: named.get(sock[1]!) ?? null });
      continue;
    }
    let st;
    try {
      st = fstatSync(fd, { bigint: true });
    } catch {
      continue;
    }
    if (st.isFile() || target === 'anon_inode:[pidfd]') {
      res.others.push({ fd, kind: st.isFile() ? 'resource' : 'pidfd', dev: st.dev.toString(), ino: st.ino.toString() });
    }
  }
  return res;
}
