// A libvirt RPC client over a UNIX socket: used by relockctl, the tests and
// the benchmarks. Calls may be pipelined; replies are matched by serial
// (libvirt's client matches prog, vers and serial: virNetClientCallDispatchReply).

import net from 'node:net';
import { decodeWireError } from './wireError.js';
import type { WireError } from '../util/errors.js';
import { FrameReader, HEADER_SIZE, MessageStatus, MessageType, encodePacket } from './packet.js';
import type { Header, Packet } from './packet.js';
import { KEEPALIVE_PING, KEEPALIVE_PONG, KEEPALIVE_PROGRAM, KEEPALIVE_VERSION } from './connection.js';
import { XdrReader, XdrWriter } from './xdr.js';

/** An error reply from the daemon. */
export class RemoteError extends Error {
  override name = 'RemoteError';
  constructor(
    readonly wire: WireError,
    readonly header: Header,
  ) {
    super(wire.message ?? `remote error ${wire.code}`);
  }
  get code(): number {
    return this.wire.code;
  }
  get domain(): number {
    return this.wire.domain;
  }
}

export class ConnectionClosedError extends Error {
  override name = 'ConnectionClosedError';
}

interface Pending {
  prog: number;
  vers: number;
  proc: number;
  resolve: (p: Packet) => void;
  reject: (e: Error) => void;
}

export class RpcClient {
  private serial = 0;
  private readonly pending = new Map<number, Pending>();
  private readonly reader = new FrameReader();
  private pongWaiters: Array<() => void> = [];
  private closedErr: Error | null = null;
  /** Packets that matched no call (for tests of stray replies). */
  readonly unmatched: Packet[] = [];

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (d: Buffer) => this.onData(d));
    socket.on('error', (e) => this.fail(e));
    socket.on('close', () => this.fail(new ConnectionClosedError('connection closed by the daemon')));
  }

  static connect(path: string, timeoutMs = 10000): Promise<RpcClient> {
    return new Promise((resolve, reject) => {
      const s = net.connect(path);
      const timer = setTimeout(() => {
        s.destroy();
        reject(new Error(`timed out connecting to ${path}`));
      }, timeoutMs);
      s.once('connect', () => {
        clearTimeout(timer);
        s.removeListener('error', reject);
        resolve(new RpcClient(s));
      });
      s.once('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
    });
  }

  get closed(): boolean {
    return this.closedErr !== null;
  }

  /** Resolves when the daemon closes the connection. */
  waitClosed(): Promise<void> {
    if (this.closedErr) return Promise.resolve();
    return new Promise((resolve) => this.socket.once('close', () => resolve()));
  }

  private onData(d: Buffer): void {
    this.reader.push(d);
    for (;;) {
      let p: Packet | null;
      try {
        p = this.reader.next();
      } catch (e) {
        this.fail(e as Error);
        this.socket.destroy();
        return;
      }
      if (!p) return;
      this.onPacket(p);
    }
  }

  private onPacket(p: Packet): void {
    const h = p.header;
    if (h.prog === KEEPALIVE_PROGRAM && h.type === MessageType.MESSAGE) {
      if (h.proc === KEEPALIVE_PONG) {
        const w = this.pongWaiters.shift();
        if (w) w();
      } else if (h.proc === KEEPALIVE_PING) {
        this.socket.write(encodePacket({ prog: KEEPALIVE_PROGRAM, vers: KEEPALIVE_VERSION, proc: KEEPALIVE_PONG, type: MessageType.MESSAGE, serial: 0, status: 0 }));
      }
      return;
    }
    const call = this.pending.get(h.serial);
    if (!call || call.prog !== h.prog || call.vers !== h.vers || h.type !== MessageType.REPLY) {
      this.unmatched.push(p);
      return;
    }
    this.pending.delete(h.serial);
    call.resolve(p);
  }

  private fail(e: Error): void {
    if (this.closedErr) return;
    this.closedErr = e;
    for (const c of this.pending.values()) c.reject(e);
    this.pending.clear();
  }

  /** Sends raw bytes (for malformed-input tests). */
  writeRaw(b: Buffer): void {
    this.socket.write(b);
  }

  /** Sends a call and resolves with the raw reply packet. */
  callRaw(prog: number, vers: number, proc: number, payload?: Buffer, opts: { type?: number; status?: number; serial?: number } = {}): Promise<Packet> {
    if (this.closedErr) return Promise.reject(this.closedErr);
    const serial = opts.serial ?? this.serial++;
    const pkt = encodePacket({ prog, vers, proc, type: opts.type ?? MessageType.CALL, serial, status: opts.status ?? MessageStatus.OK }, payload);
    return new Promise((resolve, reject) => {
      this.pending.set(serial, { prog, vers, proc, resolve, reject });
      this.socket.write(pkt);
    });
  }

  /** Sends a call; resolves with the reply payload reader, rejects with RemoteError. */
  async call(prog: number, vers: number, proc: number, encodeArgs?: (w: XdrWriter) => void): Promise<XdrReader> {
    let payload: Buffer | undefined;
    if (encodeArgs) {
      const w = new XdrWriter();
      encodeArgs(w);
      payload = Buffer.from(w.bytes());
    }
    const reply = await this.callRaw(prog, vers, proc, payload);
    return replyPayload(reply);
  }

  /** Keepalive PING; resolves on the PONG. */
  ping(): Promise<void> {
    if (this.closedErr) return Promise.reject(this.closedErr);
    return new Promise((resolve) => {
      this.pongWaiters.push(resolve);
      this.socket.write(encodePacket({ prog: KEEPALIVE_PROGRAM, vers: KEEPALIVE_VERSION, proc: KEEPALIVE_PING, type: MessageType.MESSAGE, serial: 0, status: 0 }));
    });
  }

  close(): void {
    this.socket.destroy();
  }
}

/** The payload of a reply, or the RemoteError it carries. */
function replyPayload(reply: Packet): XdrReader {
  const r = new XdrReader(reply.body, HEADER_SIZE);
  if (reply.header.status === MessageStatus.ERROR) throw new RemoteError(decodeWireError(r), reply.header);
  if (reply.header.status !== MessageStatus.OK) throw new Error(`unexpected reply status ${reply.header.status}`);
  return r;
}
