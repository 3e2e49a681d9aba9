// XDR (RFC 4506) primitives: big-endian, 4-byte aligned.
// The reader throws XdrDecodeError on any malformed input; the RPC layer maps
// that to libvirt's "Unable to decode message payload" error reply.

export class XdrDecodeError extends Error {
  override name = 'XdrDecodeError';
}

const textDecoder = new TextDecoder('utf-8');

export class XdrReader {
  private pos: number;

  constructor(
    private readonly buf: Buffer,
    start = 0,
    private readonly end = buf.length,
  ) {
    this.pos = start;
  }

  get offset(): number {
    return this.pos;
  }

  get remaining(): number {
    return this.end - this.pos;
  }

  private need(n: number): void {
    if (this.end - this.pos < n) throw new XdrDecodeError(`truncated: need ${n} bytes at offset ${this.pos}`);
  }

  u32(): number {
    this.need(4);
    const v = this.buf.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }

  i32(): number {
    this.need(4);
    const v = this.buf.readInt32BE(this.pos);
    this.pos += 4;
    return v;
  }

  bool(): boolean {
    const v = this.u32();
    if (v > 1) throw new XdrDecodeError(`bad boolean ${v}`);
    return v === 1;
  }

  u64(): bigint {
    this.need(8);
    const v = this.buf.readBigUInt64BE(this.pos);
    this.pos += 8;
    return v;
  }

  i64(): bigint {
    this.need(8);
    const v = this.buf.readBigInt64BE(this.pos);
    this.pos += 8;
    return v;
  }

  /** Fixed-length opaque: exactly n bytes plus padding. */
  fixedOpaque(n: number): Buffer {
    const padded = (n + 3) & ~3;
    this.need(padded);
    const v = this.buf.subarray(this.pos, this.pos + n);
    this.pos += padded;
    return Buffer.from(v);
  }

  /** Variable-length opaque with an upper bound on its length. */
  opaque(max: number): Buffer {
    const len = this.u32();
    if (len > max) throw new XdrDecodeError(`opaque of ${len} bytes exceeds limit ${max}`);
    return this.fixedOpaque(len);
  }

  /**
   * string<max>. libvirt uses strings as C strings, so an embedded NUL ends
   * the string (xdr_string into a char *); we mirror that.
   */
  string(max: number): string {
    const len = this.u32();
    if (len > max) throw new XdrDecodeError(`string of ${len} bytes exceeds limit ${max}`);
    const padded = (len + 3) & ~3;
    this.need(padded);
    let raw = this.buf.subarray(this.pos, this.pos + len);
    this.pos += padded;
    const nul = raw.indexOf(0);
    if (nul >= 0) raw = raw.subarray(0, nul);
    return textDecoder.decode(raw);
  }

  /**
   * string<max> as a byte string (one char per byte, src/byteString.ts):
   * for paths and names, which are bytes, not necessarily UTF-8.
   */
  byteString(max: number): string {
    const len = this.u32();
    if (len > max) throw new XdrDecodeError(`string of ${len} bytes exceeds limit ${max}`);
    const padded = (len + 3) & ~3;
    this.need(padded);
    // Short names (nearly all) are scanned for a NUL here rather than through
    // a subarray and a native indexOf; latin1Slice is what toString('latin1') calls.
    const start = this.pos;
    let end = start + len;
    if (len <= 256) {
      for (let i = start; i < end; i++) {
        if (this.buf[i] === 0) {
          end = i;
          break;
        }
      }
    } else {
      const nul = this.buf.indexOf(0, start);
      if (nul >= 0 && nul < end) end = nul;
    }
    this.pos += padded;
    return start === end ? '' : (this.buf as Buffer & { latin1Slice(s: number, e: number): string }).latin1Slice(start, end);
  }

  /** XDR optional data (`T *`): a boolean discriminant then the value. */
  optional<T>(read: (r: XdrReader) => T): T | null {
    return this.bool() ? read(this) : null;
  }

  array<T>(max: number, read: (r: XdrReader) => T): T[] {
    const n = this.u32();
    if (n > max) throw new XdrDecodeError(`array of ${n} elements exceeds limit ${max}`);
    const out: T[] = [];
    for (let i = 0; i < n; i++) out.push(read(this));
    return out;
  }
}

export class XdrWriter {
  private buf: Buffer;
  private pos = 0;

  constructor(initial = 256) {
    this.buf = Buffer.allocUnsafe(initial);
  }

  private ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const next = Buffer.allocUnsafe(size);
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
  }

  get length(): number {
    return this.pos;
  }

  u32(v: number): this {
    this.ensure(4);
    this.buf.writeUInt32BE(v >>> 0, this.pos);
    this.pos += 4;
    return this;
  }

  i32(v: number): this {
    this.ensure(4);
    this.buf.writeInt32BE(v | 0, this.pos);
    this.pos += 4;
    return this;
  }

  bool(v: boolean): this {
    return this.u32(v ? 1 : 0);
  }

  u64(v: bigint): this {
    this.ensure(8);
    this.buf.writeBigUInt64BE(v, this.pos);
    this.pos += 8;
    return this;
  }

  i64(v: bigint): this {
    this.ensure(8);
    this.buf.writeBigInt64BE(v, this.pos);
    this.pos += 8;
    return this;
  }

  fixedOpaque(data: Uint8Array): this {
    const padded = (data.length + 3) & ~3;
    this.ensure(padded);
    this.buf.set(data, this.pos);
    this.buf.fill(0, this.pos + data.length, this.pos + padded);
    this.pos += padded;
    return this;
  }

  opaque(data: Uint8Array): this {
    this.u32(data.length);
    return this.fixedOpaque(data);
  }

  string(s: string): this {
    return this.opaque(Buffer.from(s, 'utf8'));
  }

  /** A byte string (one char per byte) as string<>: its bytes exactly. */
  byteString(s: string): this {
    const n = s.length;
    const padded = (n + 3) & ~3;
    this.u32(n);
    this.ensure(padded);
    this.buf.write(s, this.pos, n, 'latin1');
    this.buf.fill(0, this.pos + n, this.pos + padded);
    this.pos += padded;
    return this;
  }

  optional<T>(v: T | null | undefined, write: (w: XdrWriter, v: T) => void): this {
    if (v === null || v === undefined) return this.u32(0);
    this.u32(1);
    write(this, v);
    return this;
  }

  array<T>(items: readonly T[], write: (w: XdrWriter, v: T) => void): this {
    this.u32(items.length);
    for (const item of items) write(this, item);
    return this;
  }

  /** The bytes written so far (a view; copy if the writer is reused). */
  bytes(): Buffer {
    return this.buf.subarray(0, this.pos);
  }
}
