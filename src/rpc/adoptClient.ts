// An inherited, already accepted client socket back on its server, after a
// re-exec: written once for the restore (state/restore.ts) and the safe mode
// (daemon/boot.ts). The fd is only wrapped once everything about it checked
// out; on a throw it is untouched and still open (the caller keeps it).

import net from 'node:net';
import * as native from '../native.js';
import type { ClientConnection, PeerCred } from './connection.js';
import type { RpcServer } from './server.js';

type AttachOptions<Ctx> = NonNullable<Parameters<RpcServer<Ctx>['attach']>[2]>;

export function adoptClientSocket<Ctx>(
  srv: RpcServer<Ctx>,
  fd: number,
  /** How to attach it, knowing its peer; may throw to refuse it. */
  options: (peer: PeerCred) => AttachOptions<Ctx>,
): ClientConnection<Ctx> {
  const peer = native.peerCred(fd);
  const opts = options(peer);
  // Paused: nothing is read before the connection decides how it reads
  // (peek reads, and bytes a crashed image recorded, see ClientConnection.start).
  const sock = new net.Socket({ fd, readable: true, writable: true, pauseOnCreate: true } as net.SocketConstructorOpts);
  native.setCloexec(fd, true);
  return srv.attach(sock, peer, opts);
}
