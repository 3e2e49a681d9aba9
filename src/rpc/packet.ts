// libvirt RPC framing: a 4-byte length word that counts itself, a 24-byte
// header, then the XDR payload (libvirt: virNetMessageDecodeLength and
// virNetMessageDecodeHeader, src/rpc/virnetmessage.c).

import { XdrReader } from './xdr.js';

export const LEN_WORD = 4;
export const HEADER_SIZE = 24;
/** Smallest meaningful packet: length word + header. */
const MIN_PACKET = LEN_WORD + HEADER_SIZE;
/** VIR_NET_MESSAGE_MAX: header + payload, length word excluded. */
const MESSAGE_MAX = 33554432;
/** Largest length word the server accepts. */
export const MAX_PACKET = MESSAGE_MAX + LEN_WORD;
/** VIR_NET_MESSAGE_NUM_FDS_MAX */
export const NUM_FDS_MAX = 32;

export const MessageType = {
  CALL: 0,
  REPLY: 1,
  MESSAGE: 2,
  STREAM: 3,
  CALL_WITH_FDS: 4,
  REPLY_WITH_FDS: 5,
  STREAM_HOLE: 6,
} as const;

export const MessageStatus = {
  OK: 0,
  ERROR: 1,
  CONTINUE: 2,
} as const;

export interface Header {
  prog: number;
  vers: number;
  proc: number;
  type: number;
  serial: number;
  status: number;
}

/** One complete packet as read off the wire. */
export interface Packet {
  header: Header;
  /** Header + payload bytes (without the length word). */
  body: Buffer;
}

export function decodeHeader(body: Buffer): Header {
  const r = new XdrReader(body, 0, HEADER_SIZE);
  return {
    prog: r.u32(),
    vers: r.u32(),
    proc: r.i32(),
    type: r.i32(),
    serial: r.u32(),
    status: r.i32(),
  };
}

/** Builds a packet: length word, header, payload. */
export function encodePacket(h: Header, payload?: Uint8Array): Buffer {
  const plen = payload ? payload.length : 0;
  const buf = Buffer.allocUnsafe(MIN_PACKET + plen);
  buf.writeUInt32BE(MIN_PACKET + plen, 0);
  buf.writeUInt32BE(h.prog >>> 0, 4);
  buf.writeUInt32BE(h.vers >>> 0, 8);
  buf.writeInt32BE(h.proc | 0, 12);
  buf.writeInt32BE(h.type | 0, 16);
  buf.writeUInt32BE(h.serial >>> 0, 20);
  buf.writeInt32BE(h.status | 0, 24);
  if (payload) buf.set(payload, MIN_PACKET);
  return buf;
}

export class FramingError extends Error {
  override name = 'FramingError';
}

/**
 * Incremental frame splitter. Bytes go in as they arrive; complete packets
 * come out. A bad length word is fatal for the connection (virNetMessageDecodeLength), which
 * the caller learns from a thrown FramingError.
 *
 * Unconsumed bytes are kept in `pending()` so a re-exec can carry a
 * half-received request across to the new image.
 */
export class FrameReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private expected = -1;
  /** Dummy bytes still to discard (one per fd passed with CALL_WITH_FDS). */
  private toSkip = 0;

  constructor(private readonly maxPacket = MAX_PACKET) {}

  push(data: Buffer): void {
    if (data.length === 0) return;
    this.chunks.push(data);
    this.buffered += data.length;
  }

  /** Bytes received but not yet returned as a packet. */
  pending(): Buffer {
    return this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks, this.buffered);
  }

  get pendingLength(): number {
    return this.buffered;
  }

  /**
   * Discards the next n bytes of the stream: libvirt sends each passed fd in
   * its own sendmsg with one dummy data byte after the packet (virNetSocketSendFD).
   */
  skip(n: number): void {
    this.toSkip += n;
  }

  /** The next complete packet, or null if more bytes are needed. */
  next(): Packet | null {
    if (this.toSkip > 0) {
      const n = Math.min(this.toSkip, this.buffered);
      if (n > 0) this.take(n);
      this.toSkip -= n;
      if (this.toSkip > 0) return null;
    }
    if (this.expected < 0) {
      if (this.buffered < LEN_WORD) return null;
      const head = this.peek(LEN_WORD);
      const len = head.readUInt32BE(0);
      if (len < MIN_PACKET) {
        throw new FramingError(
          len <= LEN_WORD ? 'unexpected zero/negative length request' : `packet of ${len} bytes is shorter than a header`,
        );
      }
      if (len > this.maxPacket) {
        throw new FramingError(`packet ${len - LEN_WORD} bytes received from client too large, limit is ${this.maxPacket - LEN_WORD}`);
      }
      this.expected = len;
    }
    if (this.buffered < this.expected) return null;
    const all = this.take(this.expected);
    this.expected = -1;
    const body = all.subarray(LEN_WORD);
    return { header: decodeHeader(body), body };
  }

  private peek(n: number): Buffer {
    const first = this.chunks[0]!;
    if (first.length >= n) return first.subarray(0, n);
    return Buffer.concat(this.chunks, this.buffered).subarray(0, n);
  }

  private take(n: number): Buffer {
    const first = this.chunks[0]!;
    if (first.length === n) {
      this.chunks.shift();
      this.buffered -= n;
      return first;
    }
    if (first.length > n) {
      this.chunks[0] = first.subarray(n);
      this.buffered -= n;
      return first.subarray(0, n);
    }
    const all = Buffer.concat(this.chunks, this.buffered);
    const rest = all.subarray(n);
    this.chunks = rest.length ? [rest] : [];
    this.buffered = rest.length;
    return all.subarray(0, n);
  }
}
