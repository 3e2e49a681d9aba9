// The state that gives the stored fds their meaning, kept in the store
// itself: two memfds, each holding a base (a full state document) followed
// by a journal of framed records, one per event-loop turn that changed
// something (fdstore/journal.ts says what a record holds).
//
//   header  "relockd-fdstore-state 2 seq=… len=… crc=… alive=…\n" (fixed width)
//   base    `len` bytes, CRC-32 `crc`
//   frames  [u32le length][u32le CRC-32 of the payload, seeded with seq][payload] …
//
// Appends go to the current slot; a new base (compaction) goes into the
// other one, which becomes current once it is complete. A crash in the
// middle of a base write leaves a slot whose CRC fails, and the other slot
// (one compaction older, with its whole journal) is used. A crash in the
// middle of an append leaves a torn last frame: its length or CRC fails and
// it is ignored, with everything before it intact. That lost turn's replies
// had not gone out (crashStore.ts). The seq seed keeps a frame of an earlier
// generation from ever passing as one of this base's.
//
// The header's `alive` stamp (not covered by the CRC) is refreshed while the
// daemon runs, so the next process can tell how long it was down.

import { ftruncateSync, readSync, fstatSync, writeSync } from 'node:fs';
import * as native from '../native.js';

// node:zlib (for crc32) is loaded on first use, then kept: with no fd store
// it is never needed, and loading it is part of every re-exec's module time.
let zlib: typeof import('node:zlib') | undefined;
function crc32(data: Uint8Array, value?: number): number {
  return (zlib ??= process.getBuiltinModule('node:zlib')).crc32(data, value);
}

const pad = (n: number, w: number) => String(n).padStart(w, '0');

/** Fixed width, so the alive stamp is always at the same offset. */
function header(seq: number, len: number, crc: number, alive: number): string {
  return `relockd-fdstore-state 2 seq=${pad(seq, 16)} len=${pad(len, 12)} crc=${crc.toString(16).padStart(8, '0')} alive=${pad(alive, 16)}\n`;
}
const HEADER_LEN = header(0, 0, 0, 0).length;
const ALIVE_AT = HEADER_LEN - 17;
const HEADER_RE = /^relockd-fdstore-state 2 seq=(\d{16}) len=(\d{12}) crc=([0-9a-f]{8}) alive=(\d{16})\n$/;
// The first format (one full document, no journal): still read after an upgrade.
const V1_HEADER_LEN = `relockd-fdstore-state 1 seq=${pad(0, 16)} len=${pad(0, 12)} alive=${pad(0, 16)}\n`.length;
const V1_HEADER_RE = /^relockd-fdstore-state 1 seq=(\d{16}) len=(\d{12}) alive=(\d{16})\n$/;
const FRAME_HEAD = 8;

export interface SlotContent {
  seq: number;
  /** The base document's text. */
  text: string;
  /** Epoch ms the writing daemon was last known alive. */
  alive: number;
  /** Journal payloads after the base, in order, up to the first torn or bad frame. */
  records: Buffer[];
  /** Bytes after the last good frame (a torn append); 0 normally. */
  tornBytes: number;
  /** Which of the fds given to newestSlot this came from. */
  index: number;
}

function readAll(fd: number): Buffer | null {
  let size: number;
  try {
    size = fstatSync(fd).size;
  } catch {
    return null;
  }
  const buf = Buffer.allocUnsafe(size);
  let got = 0;
  while (got < size) {
    const n = readSync(fd, buf, got, size - got, got);
    if (n <= 0) break;
    got += n;
  }
  return buf.subarray(0, got);
}

/** Splits the frames after a base; stops at the first that is torn or fails its CRC. */
function readFrames(buf: Buffer, from: number, seq: number): { records: Buffer[]; tornBytes: number } {
  const records: Buffer[] = [];
  let off = from;
  while (off + FRAME_HEAD <= buf.length) {
    const len = buf.readUInt32LE(off);
    const sum = buf.readUInt32LE(off + 4);
    if (len === 0 || off + FRAME_HEAD + len > buf.length) break;
    const payload = buf.subarray(off + FRAME_HEAD, off + FRAME_HEAD + len);
    if (crc32(payload, seq >>> 0) !== sum) break;
    records.push(payload);
    off += FRAME_HEAD + len;
  }
  return { records, tornBytes: buf.length - off };
}

/** Reads one slot; null when it is empty, torn, fails its CRC or is not ours. */
export function readSlot(fd: number, index = 0): SlotContent | null {
  const buf = readAll(fd);
  if (!buf) return null;
  const v1 = buf.length >= V1_HEADER_LEN ? V1_HEADER_RE.exec(buf.subarray(0, V1_HEADER_LEN).toString('latin1')) : null;
  if (v1) {
    const len = Number(v1[2]);
    if (V1_HEADER_LEN + len > buf.length) return null;
    return { seq: Number(v1[1]), text: buf.subarray(V1_HEADER_LEN, V1_HEADER_LEN + len).toString('utf8'), alive: Number(v1[3]), records: [], tornBytes: 0, index };
  }
  if (buf.length < HEADER_LEN) return null;
  const m = HEADER_RE.exec(buf.subarray(0, HEADER_LEN).toString('latin1'));
  if (!m) return null;
  const seq = Number(m[1]);
  const len = Number(m[2]);
  if (HEADER_LEN + len > buf.length) return null; // torn: the base write did not finish
  const base = buf.subarray(HEADER_LEN, HEADER_LEN + len);
  if (crc32(base) !== parseInt(m[3]!, 16)) return null; // torn inside, or overwritten
  const { records, tornBytes } = readFrames(buf, HEADER_LEN + len, seq);
  return { seq, text: base.toString('utf8'), alive: Number(m[4]), records, tornBytes, index };
}

/** The newer complete slot of the two. */
export function newestSlot(fds: number[]): SlotContent | null {
  let best: SlotContent | null = null;
  fds.forEach((fd, i) => {
    const s = readSlot(fd, i);
    if (s && (!best || s.seq > best.seq)) best = s;
  });
  return best;
}

/** One framed record, as append() writes it (exported for the tests' torn writes). */
export function frame(payload: Buffer, seq: number): Buffer {
  const head = Buffer.alloc(FRAME_HEAD);
  head.writeUInt32LE(payload.length, 0);
  head.writeUInt32LE(crc32(payload, seq >>> 0), 4);
  return Buffer.concat([head, payload]);
}

function writeAllAt(fd: number, buf: Buffer, at: number): void {
  let off = 0;
  while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off, at + off);
}

export class StateSlots {
  /** memfds: slot 0 and slot 1. */
  readonly fds: [number, number];
  private seq: number;
  private current: number;
  /** End of the current slot's content (where the next frame goes). */
  private end = 0;
  /** Bytes of the current base, and of the journal after it. */
  baseBytes = 0;
  journalBytes = 0;

  /**
   * `lastSeq` and `current`: a recovery reuses the stored memfds, and its
   * first base goes into the slot that is NOT the one it restored from
   * (a crash during that write must leave the restored slot readable).
   */
  constructor(fds?: [number, number], lastSeq = 0, current = -1) {
    this.fds = fds ?? [native.memfdCreate('relockd-state0'), native.memfdCreate('relockd-state1')];
    this.seq = lastSeq;
    this.current = current;
  }

  /** A base has been written since this object was made (append() may be used). */
  get hasBase(): boolean {
    return this.end > 0;
  }

  /** Writes a new base `text` into the other slot (one write(2) for header and base); returns its bytes. */
  write(text: string): number {
    const body = Buffer.from(text, 'utf8');
    const slot = this.current === 0 ? 1 : 0;
    const fd = this.fds[slot];
    const seq = this.seq + 1;
    const buf = Buffer.concat([Buffer.from(header(seq, body.length, crc32(body), Date.now()), 'latin1'), body]);
    // Nothing of the slot's older generation is left after the new base.
    ftruncateSync(fd, 0);
    writeAllAt(fd, buf, 0);
    this.seq = seq;
    this.current = slot;
    this.end = buf.length;
    this.baseBytes = buf.length;
    this.journalBytes = 0;
    return buf.length;
  }

  /** Appends one framed record to the current slot (one pwrite); returns its bytes. */
  append(payload: Buffer): number {
    if (this.current < 0 || this.end === 0) throw new Error('no base written yet');
    const buf = frame(payload, this.seq);
    writeAllAt(this.fds[this.current]!, buf, this.end);
    this.end += buf.length;
    this.journalBytes += buf.length;
    return buf.length;
  }

  /** Refreshes the alive stamp of the current slot (one 16-byte pwrite). */
  heartbeat(now = Date.now()): void {
    if (this.current < 0 || this.end === 0) return;
    writeSync(this.fds[this.current]!, Buffer.from(pad(now, 16), 'latin1'), 0, 16, ALIVE_AT);
  }
}
