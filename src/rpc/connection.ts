// One client connection: splits frames, dispatches them one at a time through
// the program table, writes replies in order. One request is in flight per
// client (virtlockd's nrequests_client_max = 1), and a client that does not
// read its replies stops being read, so the daemon never buffers without
// bound. When log lines or other replies wait for the end of the event-loop
// turn (turnFlush.ts), a reply waits behind them and goes out with them.

import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import { ProtocolError } from '../util/errors.js';
import { encodeWireError } from './wireError.js';
import { E } from '../util/errorCatalogue.js';
import { FrameReader, FramingError, MessageStatus, MessageType, NUM_FDS_MAX, HEADER_SIZE, encodePacket } from './packet.js';
import type { Header, Packet } from './packet.js';
import type { Program } from './program.js';
import { XdrDecodeError, XdrReader, XdrWriter } from './xdr.js';
import { atTurnEnd, turnIdle } from '../turnFlush.js';

/** libvirt's keepalive program ("keep"). */
export const KEEPALIVE_PROGRAM = 0x6b656570;
export const KEEPALIVE_VERSION = 1;
export const KEEPALIVE_PING = 1;
export const KEEPALIVE_PONG = 2;

import type { PeerCred } from '../native.js';
import * as native from '../native.js';

export type { PeerCred };

/** What a server offers on its socket: programs plus per-client state. */
export interface Service<Ctx> {
  readonly name: string;
  readonly programs: ReadonlyArray<Program<Ctx>>;
  createContext(conn: ClientConnection<Ctx>): Ctx;
  /** Called once when the connection is gone, for whatever reason. */
  onClose?(conn: ClientConnection<Ctx>): void;
}

export interface ConnectionOptions {
  id: number;
  peer: PeerCred;
  logger: Logger;
  /** Epoch seconds the client connected (kept across re-exec). */
  connTime?: number;
}

export class ClientConnection<Ctx> {
  readonly id: number;
  readonly peer: PeerCred;
  readonly connTime: number;
  readonly ctx: Ctx;
  private readonly parentLog: Logger;
  private childLog: Logger | null = null;
  private readonly reader = new FrameReader();
  /** Programs by number, then version (no string key built per request). */
  private readonly programs = new Map<number, Map<number, Program<Ctx>>>();
  /** A request is being handled or its reply is being flushed. */
  private busy = false;
  private closed = false;
  /** Header of the call being handled (e.g. a re-exec call answered by the next image). */
  currentHeader: Header | null = null;
  /** Set while the daemon is quiescing for a re-exec: no new dispatches. */
  private held = false;
  private idleWaiters: Array<() => void> = [];

  constructor(
    readonly socket: Socket,
    readonly service: Service<Ctx>,
    opts: ConnectionOptions,
  ) {
    this.id = opts.id;
    this.peer = opts.peer;
    this.connTime = opts.connTime ?? Math.floor(Date.now() / 1000);
    this.parentLog = opts.logger;
    for (const p of service.programs) {
      let byVers = this.programs.get(p.prog);
      if (!byVers) this.programs.set(p.prog, (byVers = new Map()));
      byVers.set(p.vers, p);
    }
    this.ctx = service.createContext(this);
  }

  /** This client's logger, made on first use (adopting 1000 clients after a re-exec should not build 1000 loggers). */
  get log(): Logger {
    this.childLog ??= this.parentLog.child({ client: this.id, peerPid: this.peer.pid });
    return this.childLog;
  }

  /**
   * Starts reading; `initial` are bytes received by an earlier image, the
   * last `inKernel` of which it recorded before taking them out of the socket
   * (peek reads), so they may still be queued there.
   */
  start(initial?: Buffer, unsent?: Buffer, inKernel = 0): void {
    if (unsent && unsent.length) this.socket.write(unsent);
    this.socket.on('error', (err) => this.log.debug({ err }, 'client socket error'));
    this.socket.on('close', () => this.onClosed());
    if (initial && initial.length) {
      this.reader.push(initial);
      if (inKernel > 0) this.skipRecordedTail(initial.subarray(Math.max(0, initial.length - inKernel)));
    }
    this.started = true;
    if (this.peekMode) this.openPeekReader();
    else this.listenForData();
    this.pump();
  }

  private started = false;
  /** Set by usePeekReads(): bytes leave the kernel only after onRead recorded them. */
  private peekMode = false;
  private peek: native.PeekReader | null = null;
  /** How many of the bytes just read are still in the socket's queue (only inside onRead). */
  private inKernel = 0;

  /**
   * Reads through MSG_PEEK from now on (the fd store, daemon/crashStore.ts):
   * a request is recorded before it leaves the kernel, so a SIGKILL at any
   * instant leaves it either in the socket or in the record (or, for an
   * instant, in both: skipRecordedTail). A connection already reading the
   * usual way hands over what Node buffered.
   */
  usePeekReads(): void {
    if (this.peekMode) return;
    this.peekMode = true;
    if (!this.started || this.closed) return;
    this.drainNodeReads();
    this.openPeekReader();
    this.pump();
  }

  private listenForData(): void {
    this.socket.on('data', (chunk: Buffer) => this.onData(chunk));
    this.socket.on('end', () => this.socket.end());
  }

  private openPeekReader(): void {
    const fd = this.rawHandle()?.fd ?? -1;
    if (fd < 0 || this.closed) return;
    this.socket.pause(); // libuv never reads this socket; its handle only writes
    this.peek = native.peekReader(fd, (err, bytes) => this.onPeek(err, bytes));
  }

  private onPeek(err: Error | null, bytes: Buffer | null): void {
    if (this.closed) {
      this.peek?.pause(); // level-triggered: returning without consuming would be called again at once
      return;
    }
    if (err) {
      this.log.debug({ err }, 'client socket error');
      this.socket.destroy();
      return;
    }
    if (bytes === null) {
      // End of stream: finish writing what is queued, then close (what
      // Node does with a socket that reads the usual way).
      this.peek?.close();
      this.socket.end();
      if (this.socket.writableFinished) this.socket.destroy();
      else this.socket.once('finish', () => this.socket.destroy());
      return;
    }
    this.reader.push(bytes);
    this.inKernel = bytes.length;
    this.onRead?.();
    try {
      this.peek!.consume(bytes.length);
    } catch (e) {
      this.log.debug({ err: e }, 'client socket error');
      this.socket.destroy();
      return;
    } finally {
      this.inKernel = 0;
    }
    this.pump();
  }

  /**
   * After a crash-restart: bytes the last record holds that were still in the
   * socket when the process died (recorded, not yet consumed) are taken out
   * once, so the request is not read twice. They are recognised byte for
   * byte: a client's next request differs at least in its serial.
   */
  private skipRecordedTail(tail: Buffer): void {
    const fd = this.rawHandle()?.fd ?? -1;
    if (fd < 0 || tail.length === 0) return;
    const queued = native.recvPeek(fd, tail.length);
    if (!queued || !queued.equals(tail)) return;
    native.recvDiscard(fd, tail.length);
    this.log.info({ bytes: tail.length }, 'bytes recorded just before the crash were still queued in the socket: taken out once');
  }

  private pauseReads(): void {
    if (this.peek) this.peek.pause();
    else this.socket.pause();
  }

  private resumeReads(): void {
    if (this.peek) this.peek.resume();
    else if (!this.peekMode) this.socket.resume();
  }

  /** Pulls what Node already read (and buffers) into the frame reader, with libuv stopped. */
  private drainNodeReads(): void {
    this.rawHandle()?.readStop?.();
    this.socket.removeAllListeners('data');
    let chunk: Buffer | null;
    while ((chunk = this.socket.read() as Buffer | null) !== null) this.reader.push(chunk);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Closes the connection (protocol violation, admin request, shutdown). */
  close(reason: string): void {
    if (this.closed) return;
    this.log.info({ reason }, 'closing client connection');
    this.writeOutbox(); // replies of this turn still go out first
    this.socket.destroy();
  }

  private onData(chunk: Buffer): void {
    if (this.closed) return;
    this.reader.push(chunk);
    // Before anything is dispatched: the fd store makes the bytes durable
    // (they left the kernel's buffer; a crash now must not lose them).
    this.onRead?.();
    this.pump();
  }

  /** Dispatches complete packets one at a time while nothing is in flight. */
  private pump(): void {
    while (!this.busy && !this.held && !this.closed && !this.socket.destroyed) {
      let pkt: Packet | null;
      try {
        pkt = this.reader.next();
      } catch (err) {
        if (err instanceof FramingError) {
          this.log.warn({ err: err.message }, 'bad frame from client');
          this.close(err.message);
          return;
        }
        throw err;
      }
      if (!pkt) break;
      this.busy = true;
      const done = this.dispatch(pkt);
      if (done) {
        if (this.onAsyncDispatch && !this.closed) {
          this.inflight = pkt.body;
          this.onAsyncDispatch();
        }
        done.then(
          () => this.finish(),
          (err) => {
            this.log.error({ err }, 'dispatch failed');
            this.close('internal error');
          },
        );
        break;
      }
      this.finishSync();
    }
    // Stop reading while a request is in flight, so bytes stay in the kernel
    // (not for a reply that goes out at the end of this very turn).
    if ((this.busy && !this.awaitingFlush) || this.held) this.pauseReads();
    else if (!this.closed) this.resumeReads();
    if (!this.busy) this.notifyIdle();
  }

  private finish(): void {
    if (this.closed) {
      // The peer went away while its request was being handled: only now,
      // with nothing in flight, may the service clean up after it.
      this.busy = false;
      this.notifyClose();
      return;
    }
    this.finishSync();
    this.pump();
  }

  /** Releases the in-flight slot once the reply has reached the kernel. */
  private finishSync(): void {
    if (this.outbox.length > 0 && !this.closed) {
      // The reply goes out at the end of this turn; the slot is released then.
      this.awaitingFlush = true;
      return;
    }
    if (this.socket.writableLength === 0 || this.closed) {
      this.busy = false;
      return;
    }
    // Reply still queued in userspace: resume when it is flushed.
    this.socket.write(Buffer.alloc(0), () => {
      this.busy = false;
      this.finish();
    });
  }

  /** The last packet handed to the socket (for exact unsent bytes at re-exec). */
  private lastSent: Buffer | null = null;
  /** Packets sent this turn, written at its end. */
  private outbox: Buffer[] = [];
  /** The in-flight slot is released when the outbox is written. */
  private awaitingFlush = false;
  private readonly flushOutbox = (): void => {
    this.writeOutbox();
    if (this.awaitingFlush) {
      this.awaitingFlush = false;
      this.finish();
    }
  };

  private writeOutbox(): void {
    const out = this.outbox;
    if (out.length === 0) return;
    this.outbox = [];
    if (this.closed || this.socket.destroyed) return;
    for (const b of out) {
      this.lastSent = b;
      this.socket.write(b);
    }
  }

  /**
   * Sends a complete packet: at once when nothing waits for the end of this
   * turn (no log line, no other reply: e.g. below the log level), else at
   * its end, behind them.
   */
  send(buf: Buffer): void {
    if (this.closed) return;
    if (this.outbox.length === 0 && turnIdle()) {
      this.lastSent = buf;
      this.socket.write(buf);
      return;
    }
    if (this.outbox.length === 0) atTurnEnd(this.flushOutbox);
    this.outbox.push(buf);
  }

  /** Returns a promise, or undefined when the packet was handled synchronously. */
  private dispatch(pkt: Packet): Promise<void> | undefined {
    const h = pkt.header;
    // Keepalive is intercepted before any program, so restricted clients get PONGs.
    if (h.prog === KEEPALIVE_PROGRAM && h.vers === KEEPALIVE_VERSION && h.type === MessageType.MESSAGE) {
      if (h.proc === KEEPALIVE_PING) {
        this.send(encodePacket({ prog: KEEPALIVE_PROGRAM, vers: KEEPALIVE_VERSION, proc: KEEPALIVE_PONG, type: MessageType.MESSAGE, serial: 0, status: MessageStatus.OK }));
      }
      return undefined;
    }
    const isCall = h.type === MessageType.CALL || h.type === MessageType.CALL_WITH_FDS;
    const program = this.programs.get(h.prog)?.get(h.vers);
    if (!program) {
      if (isCall) this.replyError(h, E.RPC_NO_PROGRAM({ prog: h.prog | 0, vers: h.vers | 0 }));
      return undefined;
    }
    if (!isCall) return undefined; // replies, messages and streams are dropped
    if (h.status !== MessageStatus.OK) {
      this.replyError(h, E.RPC_BAD_STATUS({ status: h.status >>> 0 }));
      return undefined;
    }
    const args = new XdrReader(pkt.body, HEADER_SIZE);
    if (h.type === MessageType.CALL_WITH_FDS) {
      // The fds themselves were discarded by the kernel: we read without a
      // control buffer, which closes them. Their dummy bytes follow the packet.
      let nfds: number;
      try {
        nfds = args.u32();
      } catch {
        this.replyError(h, E.RPC_UNDECODABLE());
        return undefined;
      }
      if (nfds > NUM_FDS_MAX) {
        this.close(`too many file descriptors (${nfds}) in message`);
        return undefined;
      }
      this.reader.skip(nfds);
    }
    const proc = program.procedures.get(h.proc);
    if (!proc) {
      this.replyError(h, E.RPC_UNKNOWN_PROC({ proc: h.proc }));
      return undefined;
    }
    let decoded: unknown;
    try {
      decoded = proc.decodeArgs(args);
    } catch (err) {
      if (!(err instanceof XdrDecodeError)) throw err;
      this.log.debug({ proc: proc.name, err: err.message }, 'undecodable arguments');
      this.replyError(h, E.RPC_UNDECODABLE());
      return undefined;
    }
    if (this.log.isLevelEnabled('debug')) this.log.debug({ program: program.name, proc: proc.name, serial: h.serial }, 'call');
    this.currentHeader = h;
    let result: unknown;
    try {
      result = proc.handle(this.ctx, decoded);
    } catch (err) {
      this.replyError(h, toProtocolError(err, this.log));
      return undefined;
    }
    if (result instanceof Promise) {
      return result.then(
        (ret) => this.replyOk(h, proc.encodeRet, ret),
        (err) => this.replyError(h, toProtocolError(err, this.log)),
      );
    }
    this.replyOk(h, proc.encodeRet, result);
    return undefined;
  }

  /** Told when a request is dispatched that is answered in a later turn (the fd store records it). */
  onAsyncDispatch: (() => void) | null = null;
  /** Told when bytes were read, before they are dispatched (the fd store records them: crashBytes()). */
  onRead: (() => void) | null = null;
  /** That request's frame (without its length word) until its reply is queued. */
  private inflight: Buffer | null = null;

  /**
   * For the fd store's state document, without stopping anything: the
   * request being handled whose reply is not queued yet, then the bytes read
   * but not dispatched. A restart after a crash dispatches them again.
   */
  crashBytes(): { pending: Buffer; unsent: Buffer; inKernel: number } {
    const rest = this.reader.pending();
    if (!this.inflight) return { pending: rest, unsent: Buffer.alloc(0), inKernel: this.inKernel };
    const len = Buffer.alloc(4);
    len.writeUInt32BE(this.inflight.length + 4, 0);
    return { pending: Buffer.concat([len, this.inflight, rest]), unsent: Buffer.alloc(0), inKernel: this.inKernel };
  }

  /** Sends a success reply for `h` (used after a re-exec for a call the old image took). */
  sendReply(h: Header, encodeRet: ((w: XdrWriter, ret: any) => void) | undefined, ret: unknown): void {
    this.replyOk(h, encodeRet, ret);
  }

  private replyOk(h: Header, encodeRet: ((w: XdrWriter, ret: any) => void) | undefined, ret: unknown): void {
    this.inflight = null;
    let payload: Buffer | undefined;
    if (encodeRet) {
      const w = new XdrWriter();
      encodeRet(w, ret);
      payload = w.bytes();
    }
    this.send(encodeReply(h, MessageStatus.OK, payload));
  }

  private replyError(h: Header, err: ProtocolError): void {
    this.inflight = null;
    const w = new XdrWriter(256);
    encodeWireError(w, err.wire);
    this.send(encodeReply(h, MessageStatus.ERROR, w.bytes()));
  }

  private onClosed(): void {
    if (this.closed) return;
    this.closed = true;
    this.peek?.close();
    this.peek = null;
    this.log.debug('client disconnected');
    if (!this.busy) this.notifyClose();
  }

  private closeNotified = false;

  private notifyClose(): void {
    if (this.closeNotified) return;
    this.closeNotified = true;
    this.notifyIdle();
    this.service.onClose?.(this);
  }

  // ---- quiescing for re-exec -------------------------------------------

  /** Stops dispatching new requests; resolves when none is in flight. */
  hold(): Promise<void> {
    this.held = true;
    this.pauseReads();
    if (!this.busy) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Undoes hold() (a re-exec that failed before execve). */
  release(): void {
    this.held = false;
    this.pump();
  }

  get inFlight(): boolean {
    return this.busy;
  }

  /** Bytes received but not yet dispatched. */
  pendingBytes(): Buffer {
    return this.reader.pending();
  }

  /**
   * Last step before execve: stop libuv reading (later bytes stay in the
   * kernel), pull what Node already read into JS, and work out which reply
   * bytes have not reached the kernel yet. Both go into the state document.
   */
  detachForExec(): { pending: Buffer; unsent: Buffer } {
    const h = this.rawHandle();
    // Peek reads leave nothing outside the kernel or the frame reader.
    this.peek?.close();
    this.peek = null;
    // Stop libuv reading but leave Node believing it reads, so that read()
    // below only drains what is buffered instead of starting libuv again.
    this.drainNodeReads();
    // Replies go out one at a time: what libuv has not written yet is the
    // tail of the last packet, plus anything Node still buffers after it.
    const parts: Buffer[] = [];
    const inLibuv = h?.writeQueueSize ?? 0;
    if (inLibuv > 0 && this.lastSent) parts.push(this.lastSent.subarray(this.lastSent.length - inLibuv));
    const ws = (this.socket as unknown as { _writableState?: { getBuffer?: () => Array<{ chunk: Buffer }> } })._writableState;
    for (const b of ws?.getBuffer?.() ?? []) if (Buffer.isBuffer(b.chunk)) parts.push(b.chunk);
    // Not written at all yet (normally none: quiesced). They go with the
    // state; kept aside in case the exec fails.
    this.detachedOutbox = this.outbox;
    this.outbox = [];
    parts.push(...this.detachedOutbox);
    return { pending: this.reader.pending(), unsent: Buffer.concat(parts) };
  }

  private rawHandle(): RawHandle | undefined {
    return (this.socket as unknown as { _handle?: RawHandle })._handle;
  }

  private detachedOutbox: Buffer[] = [];

  /** Undoes detachForExec (a re-exec that failed before execve). */
  reattachAfterFailedExec(): void {
    for (const b of this.detachedOutbox) this.send(b);
    this.detachedOutbox = [];
    if (this.peekMode) this.openPeekReader();
    else {
      this.rawHandle()?.readStart?.();
      this.socket.on('data', (chunk: Buffer) => this.onData(chunk));
    }
    this.held = false;
    this.pump();
  }

  private notifyIdle(): void {
    const w = this.idleWaiters;
    this.idleWaiters = [];
    for (const f of w) f();
  }
}

/** What of libuv's stream handle behind a net.Socket the connection uses. */
interface RawHandle {
  fd?: number;
  readStop?: () => number;
  readStart?: () => number;
  writeQueueSize?: number;
}

/** A reply to `h`: the call's header with type REPLY and `status`. */
function encodeReply(h: Header, status: number, payload?: Uint8Array): Buffer {
  return encodePacket({ prog: h.prog, vers: h.vers, proc: h.proc, type: MessageType.REPLY, serial: h.serial, status }, payload);
}

function toProtocolError(err: unknown, log: Logger): ProtocolError {
  if (err instanceof ProtocolError) return err;
  log.error({ err }, 'handler failed without a protocol error');
  return E.UNSET();
}
