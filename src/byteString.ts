// Names on the wire are bytes. libvirt sends lock-space paths and resource
// names as C strings, and Linux file names are byte strings: neither has to
// be UTF-8. relockd keeps such a name as a "byte string": a JS string with
// one char (U+0000..U+00FF) per byte, i.e. the bytes decoded as latin1. That
// is exact, costs nothing on the hot path for ASCII names (V8 stores one-byte
// strings as bytes anyway), and works as a Map key. It is converted only at
// the edges: Buffer.from(s, 'latin1') for fs calls, the addon reads it with
// napi_get_value_string_latin1, and humans see display(s).

import { isUtf8 } from 'node:buffer';

/** A string whose chars are bytes (U+0000..U+00FF), as decoded with latin1. */
export type ByteString = string;

/** The bytes of a byte string, for fs calls. */
export function toBuffer(b: ByteString): Buffer {
  return Buffer.from(b, 'latin1');
}

/** A byte string from raw bytes. */
export function fromBuffer(buf: Uint8Array): ByteString {
  return Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength).toString('latin1');
}

// Any char that is not printable ASCII, or a backslash: such a string needs
// the slow path below. Plain ASCII names (nearly all) skip it.
const NEEDS_WORK = /[^\x20-\x5b\x5d-\x7e]/;

// A char above U+00FF: not a byte string (already Unicode text).
const NOT_BYTES = /[^\x00-\xff]/;

/** A Unicode string (config, argv, a user's input) as its UTF-8 bytes. */
export function fromUnicode(s: string): ByteString {
  return NEEDS_WORK.test(s) ? Buffer.from(s, 'utf8').toString('latin1') : s;
}

/** True when the bytes are valid UTF-8 (then unicode() is exact). */
export function isUtf8Bytes(b: ByteString): boolean {
  return !NEEDS_WORK.test(b) || isUtf8(toBuffer(b));
}

/** The bytes read as UTF-8 (invalid sequences become U+FFFD): for text, not names. */
export function unicode(b: ByteString): string {
  return NEEDS_WORK.test(b) ? toBuffer(b).toString('utf8') : b;
}

/**
 * How a name is shown to humans (logs, relockctl): its UTF-8 text when that
 * is valid and printable; otherwise each byte that is not part of a valid,
 * printable UTF-8 character is written `\xHH`, and a backslash `\\`. The
 * result is unambiguous (a backslash always starts an escape) and the exact
 * bytes can be recovered with parseDisplay(). Control characters (newlines
 * in a name) are escaped too, so one event stays one log line.
 */
export function display(b: ByteString): string {
  if (!NEEDS_WORK.test(b) || NOT_BYTES.test(b)) return b;
  const buf = toBuffer(b);
  let out = '';
  let i = 0;
  while (i < buf.length) {
    const c = buf[i]!;
    if (c === 0x5c) {
      out += '\\\\';
      i++;
      continue;
    }
    if (c >= 0x20 && c < 0x7f) {
      out += String.fromCharCode(c);
      i++;
      continue;
    }
    const n = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
    if (n > 0 && i + n <= buf.length && isUtf8(buf.subarray(i, i + n))) {
      const ch = buf.subarray(i, i + n).toString('utf8');
      // C1 controls and other invisible code points stay escaped.
      if (!/[\u0080-\u009f\u2028\u2029]/.test(ch)) {
        out += ch;
        i += n;
        continue;
      }
    }
    out += `\\x${c.toString(16).padStart(2, '0')}`;
    i++;
  }
  return out;
}

/** The inverse of display(): `\xHH` and `\\` escapes back to bytes; other text as UTF-8. */
export function parseDisplay(s: string): ByteString {
  if (!s.includes('\\')) return fromUnicode(s);
  let out = '';
  let text = '';
  for (let i = 0; i < s.length; i++) {
    const ch = s[i]!;
    const hex = s.slice(i + 2, i + 4);
    if (ch === '\\' && s[i + 1] === '\\') {
      out += fromUnicode(text) + '\\';
      text = '';
      i++;
    } else if (ch === '\\' && s[i + 1] === 'x' && /^[0-9a-fA-F]{2}$/.test(hex)) {
      out += fromUnicode(text) + String.fromCharCode(parseInt(hex, 16));
      text = '';
      i += 3;
    } else {
      text += ch;
    }
  }
  return out + fromUnicode(text);
}

// ---- in JSON documents (the re-exec state file) ------------------------------

/**
 * A byte string as JSON-safe text, exactly reversible (PEP 383's
 * "surrogateescape"): valid UTF-8 is decoded as text, and each byte that is
 * not part of valid UTF-8 becomes the lone surrogate U+DC80..U+DCFF
 * (JSON.stringify writes it as the escape "\udcff"). UTF-8 cannot encode
 * surrogates, so nothing else maps there. A name that is valid UTF-8 is
 * written exactly as before (plain text), so old documents stay readable.
 */
export function toDocText(b: ByteString): string {
  if (!NEEDS_WORK.test(b)) return b;
  const buf = toBuffer(b);
  if (isUtf8(buf)) return buf.toString('utf8');
  let out = '';
  let i = 0;
  while (i < buf.length) {
    const c = buf[i]!;
    if (c < 0x80) {
      out += String.fromCharCode(c);
      i++;
      continue;
    }
    const n = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
    if (n > 0 && i + n <= buf.length && isUtf8(buf.subarray(i, i + n))) {
      out += buf.subarray(i, i + n).toString('utf8');
      i += n;
      continue;
    }
    out += String.fromCharCode(0xdc00 + c);
    i++;
  }
  return out;
}

/** The inverse of toDocText(): text as UTF-8 bytes, U+DC80..U+DCFF as the raw byte. */
export function fromDocText(s: string): ByteString {
  if (!NEEDS_WORK.test(s)) return s;
  if (!/[\udc80-\udcff]/.test(s)) return Buffer.from(s, 'utf8').toString('latin1');
  let out = '';
  let text = '';
  for (let i = 0; i < s.length; i++) {
    const u = s.charCodeAt(i);
    const lone = u >= 0xdc80 && u <= 0xdcff && !(i > 0 && s.charCodeAt(i - 1) >= 0xd800 && s.charCodeAt(i - 1) <= 0xdbff);
    if (lone) {
      out += Buffer.from(text, 'utf8').toString('latin1') + String.fromCharCode(u - 0xdc00);
      text = '';
    } else {
      text += s[i];
    }
  }
  return out + Buffer.from(text, 'utf8').toString('latin1');
}

/**
 * A whole JSON file's bytes as text for JSON.parse: UTF-8, with any invalid
 * bytes as lone surrogates (toDocText). A libvirt built with json-c writes a
 * name's raw bytes into its state file; with this they survive parsing and
 * fromDocText() gives them back exactly.
 */
export function decodeDocFile(buf: Buffer): string {
  return isUtf8(buf) ? buf.toString('utf8') : toDocText(buf.toString('latin1'));
}
