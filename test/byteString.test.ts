// Byte strings (src/byteString.ts): how names that are bytes are carried
// on the wire (XDR), shown to humans, and written into JSON documents.

import t from 'tap';
import { decodeDocFile, display, fromDocText, fromUnicode, isUtf8Bytes, parseDisplay, toBuffer, toDocText, unicode } from '../src/byteString.js';
import { XdrReader, XdrWriter } from '../src/rpc/xdr.js';

const b = (...x: Array<string | number[]>) => Buffer.concat(x.map((p) => (typeof p === 'string' ? Buffer.from(p) : Buffer.from(p)))).toString('latin1');

const cases: Array<[string, string]> = [
  ['ascii', 'f2f4417b8fe812d19e40421ca4d46765'],
  ['utf-8', b('disk-é-虚拟-🖴.raw')],
  ['latin1 byte', b('lease-space-', [0xe9])],
  ['0xff', b('disk-', [0xff], '.raw')],
  ['truncated utf-8', b('x', [0xe8, 0x99], 'y')],
  ['encoded surrogate (invalid utf-8)', b([0xed, 0xb2, 0x80])],
  ['backslash', b('a\\xffb\\\\')],
  ['newline and tab', b('a\nb\tc')],
  ['C1 control as utf-8', b([0xc2, 0x85])],
];

t.test('XDR: byte strings go on the wire byte for byte, both ways', async (t) => {
  for (const [what, s] of cases) {
    const w = new XdrWriter(8);
    w.byteString(s).u32(7);
    const raw = w.bytes();
    t.same(raw.subarray(4, 4 + s.length), toBuffer(s), `${what}: the bytes`);
    const r = new XdrReader(Buffer.from(raw));
    t.equal(r.byteString(1000), s, `${what}: decoded`);
    t.equal(r.u32(), 7, `${what}: padding`);
  }
  const r = new XdrReader(Buffer.from('00000005616200636400000000000000', 'hex'));
  t.equal(r.byteString(100), 'ab', 'an embedded NUL ends the C string');
});

t.test('display: UTF-8 text, \\xHH for other bytes, \\\\ for a backslash; parseDisplay inverts it', async (t) => {
  t.equal(display(b('disk-', [0xff], '.raw')), 'disk-\\xff.raw');
  t.equal(display(b('lease-space-', [0xe9])), 'lease-space-\\xe9');
  t.equal(display(b('disk-é.raw')), 'disk-é.raw');
  t.equal(display(b('a\\xffb')), 'a\\\\xffb', 'a literal backslash is doubled: never mistaken for an escape');
  t.equal(display(b('a\nb')), 'a\\x0ab', 'control characters are escaped (one event, one line)');
  t.equal(display(b([0xc2, 0x85])), '\\xc2\\x85', 'C1 controls too');
  t.equal(display('plain'), 'plain');
  t.equal(display('虚拟'), '虚拟', 'a string that is already text (chars above U+00FF) is left alone');
  for (const [what, s] of cases) t.equal(parseDisplay(display(s)), s, `${what}: round trip`);
  t.equal(parseDisplay('/tmp/lease-space-\\xe9'), b('/tmp/lease-space-', [0xe9]));
  t.equal(parseDisplay('/tmp/é'), b('/tmp/é'), 'text without escapes is its UTF-8 bytes');
});

t.test('JSON documents: \\udcXX for bytes that are not UTF-8, exactly reversible', async (t) => {
  for (const [what, s] of cases) {
    const text = toDocText(s);
    const json = JSON.stringify({ name: text });
    t.ok(Buffer.from(json, 'utf8').every((c) => c < 0x80) || isUtf8Bytes(s), `${what}: the JSON is valid UTF-8`);
    t.equal(fromDocText((JSON.parse(json) as { name: string }).name), s, `${what}: round trip`);
  }
  t.equal(JSON.stringify(toDocText(b('disk-', [0xff]))), '"disk-\\udcff"', 'the escape as JSON.stringify writes it');
  t.equal(toDocText(b('disk-é')), 'disk-é', 'valid UTF-8 is plain text, as in older documents');
  t.equal(fromDocText('disk-é'), b('disk-é'), 'and older documents read back as its bytes');
  t.equal(fromDocText('🖴'), b('🖴'), 'a surrogate pair is a character, not two escapes');
});

t.test('a JSON file with raw non-UTF-8 bytes (as json-c writes them) parses exactly', async (t) => {
  const raw = Buffer.concat([Buffer.from('{"name":"disk-'), Buffer.from([0xff]), Buffer.from('.raw","owner":"vm-é"}')]);
  const doc = JSON.parse(decodeDocFile(raw)) as { name: string; owner: string };
  t.equal(fromDocText(doc.name), b('disk-', [0xff], '.raw'));
  t.equal(doc.owner, 'vm-é', 'valid UTF-8 elsewhere is unaffected');
});

t.test('conversions at the edges', async (t) => {
  t.equal(fromUnicode('/var/lib/é'), b('/var/lib/é'), 'configured text becomes its UTF-8 bytes');
  t.equal(unicode(b('/var/lib/é')), '/var/lib/é');
  t.equal(isUtf8Bytes(b([0xff])), false);
  t.equal(isUtf8Bytes(b('é')), true);
});
