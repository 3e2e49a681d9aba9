import t from 'tap';
import { XdrReader, XdrWriter, XdrDecodeError } from '../src/rpc/xdr.js';
import { FrameReader, FramingError, encodePacket, MAX_PACKET, decodeHeader } from '../src/rpc/packet.js';
import { ProtocolError } from '../src/util/errors.js';
import { encodeWireError, decodeWireError } from '../src/rpc/wireError.js';

t.test('xdr round trip of every primitive', async (t) => {
  const w = new XdrWriter(4);
  w.u32(0xfffffffe).i32(-5).bool(true).u64(1n << 40n).i64(-7n).fixedOpaque(Buffer.from([1, 2, 3])).opaque(Buffer.from('ab')).string('héllo');
  w.optional('x', (ww, v) => ww.string(v)).optional(null, (ww, v: string) => ww.string(v)).array([1, 2, 3], (ww, v) => ww.u32(v));
  const r = new XdrReader(Buffer.from(w.bytes()));
  t.equal(r.u32(), 0xfffffffe);
  t.equal(r.i32(), -5);
  t.equal(r.bool(), true);
  t.equal(r.u64(), 1n << 40n);
  t.equal(r.i64(), -7n);
  t.same([...r.fixedOpaque(3)], [1, 2, 3]);
  t.equal(r.opaque(10).toString(), 'ab');
  t.equal(r.string(100), 'héllo');
  t.equal(r.optional((rr) => rr.string(10)), 'x');
  t.equal(r.optional((rr) => rr.string(10)), null);
  t.same(r.array(10, (rr) => rr.u32()), [1, 2, 3]);
  t.equal(r.remaining, 0);
});

t.test('xdr padding is zero and strings are 4-byte aligned', async (t) => {
  const b = new XdrWriter().string('vm1').bytes();
  t.same([...b], [0, 0, 0, 3, 0x76, 0x6d, 0x31, 0]);
});

t.test('xdr decode errors: truncation, limits, bad booleans', async (t) => {
  t.throws(() => new XdrReader(Buffer.alloc(3)).u32(), XdrDecodeError);
  const long = new XdrWriter().string('x'.repeat(65537)).bytes();
  t.throws(() => new XdrReader(Buffer.from(long)).string(65536), XdrDecodeError);
  t.equal(new XdrReader(Buffer.from(new XdrWriter().string('x'.repeat(65536)).bytes())).string(65536).length, 65536);
  t.throws(() => new XdrReader(Buffer.from([0, 0, 0, 2])).bool(), XdrDecodeError);
  // a string whose declared length runs past the buffer
  t.throws(() => new XdrReader(Buffer.from([0, 0, 0, 9, 1, 2])).string(100), XdrDecodeError);
});

t.test('an embedded NUL ends a string, as in libvirt', async (t) => {
  const b = new XdrWriter().opaque(Buffer.from('ab\0cd')).bytes();
  t.equal(new XdrReader(Buffer.from(b)).string(100), 'ab');
});

t.test('framing splits packets across arbitrary chunk boundaries', async (t) => {
  const a = encodePacket({ prog: 1, vers: 2, proc: 3, type: 0, serial: 4, status: 0 }, Buffer.from([9, 9, 9, 9]));
  const b = encodePacket({ prog: 5, vers: 6, proc: -1, type: 2, serial: 7, status: 1 });
  const all = Buffer.concat([a, b]);
  for (let cut = 0; cut <= all.length; cut++) {
    const fr = new FrameReader();
    fr.push(all.subarray(0, cut));
    const got = [];
    let p;
    while ((p = fr.next())) got.push(p);
    fr.push(all.subarray(cut));
    while ((p = fr.next())) got.push(p);
    t.equal(got.length, 2, `cut at ${cut}`);
    t.same(got[0]!.header, { prog: 1, vers: 2, proc: 3, type: 0, serial: 4, status: 0 });
    t.same(got[1]!.header, { prog: 5, vers: 6, proc: -1, type: 2, serial: 7, status: 1 });
  }
});

t.test('framing rejects length words below 28 and above 33554436', async (t) => {
  for (const len of [0, 3, 4, 27]) {
    const fr = new FrameReader();
    const b = Buffer.alloc(4);
    b.writeUInt32BE(len);
    fr.push(b);
    t.throws(() => fr.next(), FramingError, `length ${len}`);
  }
  const fr = new FrameReader();
  const b = Buffer.alloc(4);
  b.writeUInt32BE(MAX_PACKET + 1);
  fr.push(b);
  t.throws(() => fr.next(), FramingError);
  const ok = new FrameReader();
  b.writeUInt32BE(MAX_PACKET);
  ok.push(b);
  t.equal(ok.next(), null, 'the maximum is accepted (waits for the body)');
});

t.test('framing keeps unconsumed bytes and skips fd dummy bytes', async (t) => {
  const a = encodePacket({ prog: 1, vers: 1, proc: 1, type: 4, serial: 0, status: 0 });
  const fr = new FrameReader();
  fr.push(a);
  t.ok(fr.next());
  fr.skip(2);
  fr.push(Buffer.from([0, 0]));
  const half = a.subarray(0, 10);
  fr.push(half);
  t.equal(fr.next(), null);
  t.same([...fr.pending()], [...half]);
});

t.test('header decode matches the spec example', async (t) => {
  const reg = Buffer.from('000000400ea7beef0000000100000001000000000000000000000000', 'hex');
  t.same(decodeHeader(reg.subarray(4)), { prog: 0x0ea7beef, vers: 1, proc: 1, type: 0, serial: 0, status: 0 });
});

t.test('error payload encodes the 11 fields as virtlockd does (appendix A)', async (t) => {
  const e = ProtocolError.report(29, 7, 'lock manager connection has been restricted');
  const w = new XdrWriter();
  encodeWireError(w, e.wire);
  const b = Buffer.from(w.bytes());
  t.equal(b.length + 28, 216, 'the spec example reply is 216 bytes');
  const back = decodeWireError(new XdrReader(b));
  t.same(back, e.wire);
  t.equal(back.message, 'operation forbidden: lock manager connection has been restricted');
  t.equal(back.str1, 'operation forbidden: %s');
  t.equal(back.int1, -1);
  const f = ProtocolError.unsupportedFlags(4, 'virLockSpaceProtocolDispatchAcquireResource');
  t.equal(f.wire.message, 'unsupported flags (0x4) in function virLockSpaceProtocolDispatchAcquireResource');
  t.equal(f.wire.str2, 'flags');
  t.equal(f.wire.int1, 0);
  const s = ProtocolError.system(51, 2, 'No such file or directory', 'Unable to open resource /x');
  t.equal(s.wire.message, 'Unable to open resource /x: No such file or directory');
  t.equal(s.wire.str2, s.wire.message);
  t.equal(s.wire.str1, '%s');
  t.equal(s.wire.int1, 2);
});
