// Listening sockets: bind (or adopt an inherited fd), accept, check the peer's
// credentials, and hand each connection to its service.

import { existsSync, lstatSync, chmodSync, unlinkSync } from 'node:fs';
import net from 'node:net';
import type { Logger } from 'pino';
import * as native from '../native.js';
import { ClientConnection } from './connection.js';
import type { PeerCred, Service } from './connection.js';

export class SocketInUseError extends Error {
  override name = 'SocketInUseError';
}

export interface ListenerInfo {
  path: string;
  /** Inherited from systemd or an earlier image: never unlinked by us. */
  adopted: boolean;
  /** We bound it ourselves and remove it at shutdown. */
  unlinkOnClose: boolean;
  server: net.Server;
}

export interface RpcServerOptions<Ctx> {
  name: string;
  service: Service<Ctx>;
  log: Logger;
  maxClients: number;
}

/** Raw fd behind a libuv handle (undocumented but stable on Linux). */
export function handleFd(h: net.Server | net.Socket): number {
  const handle = (h as unknown as { _handle?: { fd?: number } })._handle;
  return handle?.fd ?? -1;
}

/** Who may connect: root when we run as root, else our own euid (like virtlockd). */
export function peerAllowed(peer: PeerCred, euid = process.geteuid?.() ?? 0): boolean {
  return euid === 0 ? peer.uid === 0 : peer.uid === euid;
}

/**
 * Checks whether a daemon answers on `path`. A live socket is never
 * unlinked; a stale one (ECONNREFUSED) is.
 */
export function probeSocket(path: string): Promise<'live' | 'stale' | 'missing'> {
  if (!existsSync(path)) return Promise.resolve('missing');
  return new Promise((resolve, reject) => {
    const st = lstatSync(path);
    if (!st.isSocket()) {
      reject(new SocketInUseError(`${path} exists and is not a socket; refusing to remove it`));
      return;
    }
    const s = net.connect(path);
    s.once('connect', () => {
      s.destroy();
      resolve('live');
    });
    s.once('error', (err: NodeJS.ErrnoException) => {
      s.destroy();
      if (err.code === 'ECONNREFUSED') resolve('stale');
      else if (err.code === 'ENOENT') resolve('missing');
      else reject(err);
    });
  });
}

export class RpcServer<Ctx> {
  readonly name: string;
  readonly clients = new Map<number, ClientConnection<Ctx>>();
  readonly listeners: ListenerInfo[] = [];
  nextClientId = 1;
  maxClients: number;
  private readonly service: Service<Ctx>;
  private readonly log: Logger;

  constructor(opts: RpcServerOptions<Ctx>) {
    this.name = opts.name;
    this.service = opts.service;
    this.log = opts.log.child({ server: opts.name });
    this.maxClients = opts.maxClients;
  }

  /** Binds a new socket at `path` (mode 0700 by default), replacing only a stale one. */
  async bind(path: string, mode = 0o700): Promise<void> {
    const state = await probeSocket(path);
    if (state === 'live') throw new SocketInUseError(`another daemon is already serving ${path}; refusing to start`);
    if (state === 'stale') unlinkSync(path);
    const server = this.makeServer();
    const old = process.umask(0o077);
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen({ path, backlog: 30 }, () => {
          server.off('error', reject);
          resolve();
        });
      });
    } finally {
      process.umask(old);
    }
    chmodSync(path, mode);
    this.listeners.push({ path, adopted: false, unlinkOnClose: true, server });
    this.log.info({ socket: path }, 'listening');
  }

  /** Adopts an already-listening fd (socket activation, re-exec). */
  async adopt(fd: number, path: string, unlinkOnClose: boolean): Promise<void> {
    const server = this.makeServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ fd }, () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.listeners.push({ path, adopted: true, unlinkOnClose, server });
    this.log.info({ socket: path, fd }, 'adopted listening socket');
  }

  private makeServer(): net.Server {
    const server = net.createServer({ pauseOnConnect: true }, (sock) => this.onConnection(sock));
    server.on('error', (err) => this.log.error({ err }, 'listener error'));
    return server;
  }

  private onConnection(sock: net.Socket): void {
    const fd = handleFd(sock);
    let peer: PeerCred;
    try {
      peer = native.peerCred(fd);
    } catch (err) {
      this.log.warn({ err }, 'cannot read peer credentials; closing connection');
      sock.destroy();
      return;
    }
    if (!peerAllowed(peer)) {
      this.log.warn({ peer }, 'connection refused: peer uid not allowed');
      sock.destroy();
      return;
    }
    this.attach(sock, peer);
  }

  /** While set (quiescing for a re-exec), new connections are held at once. */
  holdNew = false;

  /** Wraps an accepted (or inherited) socket in a client connection. */
  attach(
    sock: net.Socket,
    peer: PeerCred,
    opts: { id?: number; connTime?: number; pending?: Buffer; unsent?: Buffer; restore?: (conn: ClientConnection<Ctx>) => void } = {},
  ): ClientConnection<Ctx> {
    const id = opts.id ?? this.nextClientId++;
    if (id >= this.nextClientId) this.nextClientId = id + 1;
    const conn = new ClientConnection(sock, this.wrapService(), { id, peer, logger: this.log, connTime: opts.connTime });
    this.clients.set(id, conn);
    opts.restore?.(conn);
    if (opts.restore) conn.log.debug({ peer }, 'client adopted');
    else conn.log.info({ peer }, 'client connected');
    if (this.holdNew) void conn.hold();
    conn.start(opts.pending, opts.unsent);
    return conn;
  }

  private wrapped?: Service<Ctx>;

  /** The service, plus our own bookkeeping on close. */
  private wrapService(): Service<Ctx> {
    if (!this.wrapped) {
      const inner = this.service;
      this.wrapped = {
        name: inner.name,
        programs: inner.programs,
        createContext: (c) => inner.createContext(c),
        onClose: (c) => {
          this.clients.delete(c.id);
          inner.onClose?.(c);
        },
      };
    }
    return this.wrapped;
  }

  /** Stops accepting; unlinks the sockets we bound ourselves. */
  async closeListeners(): Promise<void> {
    for (const l of this.listeners) {
      await new Promise<void>((resolve) => l.server.close(() => resolve()));
      if (l.unlinkOnClose) {
        try {
          unlinkSync(l.path);
        } catch {
          /* already gone */
        }
      }
    }
    this.listeners.length = 0;
  }
}
