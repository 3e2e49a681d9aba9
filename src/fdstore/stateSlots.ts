// The state document that gives the stored fds their meaning, kept in the
// store itself: two memfds written in turn, each starting with a fixed-width
// header. A crash in the middle of a write leaves the other slot intact (one
// turn older), and the header says which slot is newer and whether a slot is
// complete. The header's `alive` stamp is refreshed while the daemon runs,
// so the next process can tell how long it was down.

import { ftruncateSync, readSync, fstatSync, writeSync } from 'node:fs';
import * as native from '../native.js';

const MAGIC = 'relockd-fdstore-state 1';
const pad = (n: number, w: number) => String(n).padStart(w, '0');

/** "relockd-fdstore-state 1 seq=<16 digits> len=<12> alive=<16>\n": fixed width. */
function header(seq: number, len: number, alive: number): string {
  return `${MAGIC} seq=${pad(seq, 16)} len=${pad(len, 12)} alive=${pad(alive, 16)}\n`;
}
const HEADER_LEN = header(0, 0, 0).length;
const ALIVE_AT = HEADER_LEN - 17;

export interface SlotContent {
  seq: number;
  text: string;
  /** Epoch ms the writing daemon was last known alive. */
  alive: number;
}

/** Reads one slot; null when it is empty, torn or not ours. */
export function readSlot(fd: number): SlotContent | null {
  let size: number;
  try {
    size = fstatSync(fd).size;
  } catch {
    return null;
  }
  if (size < HEADER_LEN) return null;
  const buf = Buffer.alloc(size);
  let got = 0;
  while (got < size) {
    const n = readSync(fd, buf, got, size - got, got);
    if (n <= 0) break;
    got += n;
  }
  const head = buf.subarray(0, HEADER_LEN).toString('latin1');
  const m = /^relockd-fdstore-state 1 seq=(\d{16}) len=(\d{12}) alive=(\d{16})\n$/.exec(head);
  if (!m) return null;
  const len = Number(m[2]);
  if (HEADER_LEN + len > got) return null; // torn: the write did not finish
  return { seq: Number(m[1]), text: buf.subarray(HEADER_LEN, HEADER_LEN + len).toString('utf8'), alive: Number(m[3]) };
}

/** The newer complete slot of the two. */
export function newestSlot(fds: number[]): SlotContent | null {
  let best: SlotContent | null = null;
  for (const fd of fds) {
    const s = readSlot(fd);
    if (s && (!best || s.seq > best.seq)) best = s;
  }
  return best;
}

export class StateSlots {
  /** memfds: slot 0 and slot 1. */
  readonly fds: [number, number];
  private seq: number;
  private current = -1;
  /** Bytes in each memfd (a shorter document leaves the old tail, after its end). */
  private readonly sizes = [0, 0];

  constructor(fds?: [number, number], lastSeq = 0) {
    this.fds = fds ?? [native.memfdCreate('relockd-state0'), native.memfdCreate('relockd-state1')];
    this.seq = lastSeq;
  }

  /** Writes `text` into the older slot (one write(2) for header and body). */
  write(text: string): number {
    const body = Buffer.from(text, 'utf8');
    const slot = this.current === 0 ? 1 : 0;
    const fd = this.fds[slot];
    this.seq++;
    const buf = Buffer.concat([Buffer.from(header(this.seq, body.length, Date.now()), 'latin1'), body]);
    let off = 0;
    while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off, off);
    // The header says where the document ends; give memory back only when it shrank a lot.
    if (this.sizes[slot]! > 2 * buf.length + 65536) {
      ftruncateSync(fd, buf.length);
      this.sizes[slot] = buf.length;
    } else this.sizes[slot] = Math.max(this.sizes[slot]!, buf.length);
    this.current = slot;
    return buf.length;
  }

  /** Refreshes the alive stamp of the current slot (one 16-byte pwrite). */
  heartbeat(now = Date.now()): void {
    if (this.current < 0) return;
    writeSync(this.fds[this.current]!, Buffer.from(pad(now, 16), 'latin1'), 0, 16, ALIVE_AT);
  }
}
