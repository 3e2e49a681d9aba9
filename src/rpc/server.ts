// Listening sockets: bind (or adopt an inherited fd), accept, check the peer's
// credentials, and hand each connection to its service.

import { closeSync, existsSync, lstatSync, chmodSync, renameSync, unlinkSync } from 'node:fs';
import net from 'node:net';
import { dirname } from 'node:path';
import type { Logger } from 'pino';
import * as native from '../native.js';
import { ClientConnection } from './connection.js';
import type { PeerCred, Service } from './connection.js';

class SocketInUseError extends Error {
  override name = 'SocketInUseError';
}

export interface ListenerInfo {
  path: string;
  /**
   * Our own fd of the listening socket: never handed to libuv, so the socket
   * and its backlog survive while accepting is paused. Re-exec carries it.
   */
  fd: number;
  /** Inherited from systemd or an earlier image. */
  adopted: boolean;
  /** We bound it ourselves and remove it at shutdown. */
  unlinkOnClose: boolean;
  /** libuv's handle on a dup of `fd`; null while accepting is paused. */
  server: net.Server | null;
}

export interface RpcServerOptions<Ctx> {
  name: string;
  service: Service<Ctx>;
  log: Logger;
  maxClients: number;
}

function listen(server: net.Server, opts: net.ListenOptions | { fd: number }): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts as net.ListenOptions, () => {
      server.off('error', reject);
      resolve();
    });
  });
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
function probeSocket(path: string): Promise<'live' | 'stale' | 'missing'> {
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

  /**
   * Binds a new socket at `path` (mode 0700 by default), replacing only a
   * stale one. It is bound under a temporary name and renamed into place, so
   * the path never shows a socket nobody accepts on, and libuv never learns
   * the final name (it would unlink it whenever its handle closes).
   */
  async bind(path: string, mode = 0o700): Promise<void> {
    const state = await probeSocket(path);
    if (state === 'live') throw new SocketInUseError(`another daemon is already serving ${path}; refusing to start`);
    if (state === 'stale') unlinkSync(path);
    // Said plainly: listen() would report EACCES or ENOENT on the temporary name.
    if (!existsSync(dirname(path))) throw new Error(`cannot create socket ${path}: directory ${dirname(path)} does not exist`);
    const tmp = `${path}.${process.pid}.tmp`;
    const binder = net.createServer();
    const old = process.umask(0o077);
    try {
      await listen(binder, { path: tmp, backlog: 30 });
    } finally {
      process.umask(old);
    }
    chmodSync(tmp, mode);
    renameSync(tmp, path);
    const fd = native.dup(handleFd(binder));
    binder.close(); // closes libuv's fd (and unlinks the temp name, long gone)
    const l: ListenerInfo = { path, fd, adopted: false, unlinkOnClose: true, server: null };
    this.listeners.push(l);
    await this.startAccepting(l);
    this.log.info({ socket: path, fd }, 'listening');
  }

  /** Adopts an already-listening fd (socket activation, re-exec). */
  async adopt(fd: number, path: string, unlinkOnClose: boolean): Promise<void> {
    const l: ListenerInfo = { path, fd, adopted: true, unlinkOnClose, server: null };
    await this.startAccepting(l);
    this.listeners.push(l);
    this.log.info({ socket: path, fd }, 'adopted listening socket');
  }

  /** Hands libuv a fresh dup of the listener. */
  private async startAccepting(l: ListenerInfo): Promise<void> {
    if (l.server) return;
    const server = net.createServer({ pauseOnConnect: true }, (sock) => this.onConnection(sock));
    const dupFd = native.dup(l.fd);
    try {
      await listen(server, { fd: dupFd });
    } catch (err) {
      closeSync(dupFd);
      throw err;
    }
    server.on('error', (err: NodeJS.ErrnoException) => this.onListenerError(err));
    l.server = server;
  }

  /** Closes libuv's dup: connections wait in the kernel backlog meanwhile. */
  private stopAccepting(l: ListenerInfo): void {
    l.server?.close();
    l.server = null;
  }

  /** Why accepting is paused, if it is. */
  private pausedFor: 'limit' | 'fds' | null = null;

  /**
   * Set by the daemon: true when the process is close to RLIMIT_NOFILE.
   * libuv's own EMFILE handling accepts and drops connections; pausing
   * before we get there keeps them waiting in the backlog instead.
   */
  fdsExhausted: () => boolean = () => false;

  private pauseAccepting(why: 'limit' | 'fds'): void {
    if (this.pausedFor) return;
    this.pausedFor = why;
    for (const l of this.listeners) this.stopAccepting(l);
    this.log.warn({ why, clients: this.clients.size, maxClients: this.maxClients }, 'accepting paused');
  }

  private resumeAccepting(): void {
    if (!this.pausedFor) return;
    this.pausedFor = null;
    for (const l of this.listeners) {
      this.startAccepting(l).catch((err) => this.log.error({ err, socket: l.path }, 'cannot resume accepting'));
    }
    this.log.info({ clients: this.clients.size }, 'accepting resumed');
  }

  /** Re-checks the client and fd limits (after any change of either). */
  checkLimit(): void {
    if (this.clients.size >= this.maxClients) {
      if (this.pausedFor !== 'limit') {
        this.pausedFor = null;
        this.pauseAccepting('limit');
      }
    } else if (this.fdsExhausted()) this.pauseAccepting('fds');
    else if (this.pausedFor) this.resumeAccepting();
  }

  private onListenerError(err: NodeJS.ErrnoException): void {
    if (err.code === 'EMFILE' || err.code === 'ENFILE') {
      // Out of fds anyway: stop accepting for a moment rather than spin or crash.
      this.pauseAccepting('fds');
      setTimeout(() => this.checkLimit(), 1000).unref();
      return;
    }
    this.log.error({ err }, 'listener error');
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

  /** Told of every connection attached and closed (the fd store, daemon/crashStore.ts). */
  storeHooks: { attached(conn: ClientConnection<Ctx>): void; closed(conn: ClientConnection<Ctx>): void } | null = null;

  /** Wraps an accepted (or inherited) socket in a client connection. */
  attach(
    sock: net.Socket,
    peer: PeerCred,
    opts: { id?: number; connTime?: number; pending?: Buffer; unsent?: Buffer; inKernel?: number; restore?: (conn: ClientConnection<Ctx>) => void } = {},
  ): ClientConnection<Ctx> {
    const id = opts.id ?? this.nextClientId++;
    if (id >= this.nextClientId) this.nextClientId = id + 1;
    const conn = new ClientConnection(sock, this.wrapService(), { id, peer, logger: this.log, connTime: opts.connTime });
    this.clients.set(id, conn);
    opts.restore?.(conn);
    this.storeHooks?.attached(conn);
    if (opts.restore) conn.log.debug({ peer }, 'client adopted');
    else conn.log.info({ peer }, 'client connected');
    if (this.holdNew) void conn.hold();
    conn.start(opts.pending, opts.unsent, opts.inKernel);
    this.checkLimit();
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
          this.storeHooks?.closed(c);
          this.checkLimit();
          inner.onClose?.(c);
        },
      };
    }
    return this.wrapped;
  }

  /** Stops accepting; unlinks the sockets we bound ourselves. */
  async closeListeners(): Promise<void> {
    this.pausedFor = null;
    for (const l of this.listeners) {
      const server = l.server;
      l.server = null;
      if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
      try {
        closeSync(l.fd);
      } catch {
        /* already closed */
      }
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
