// virNetMessageError on the wire (XDR): the error model (util/errors.ts) as bytes.

import { XdrReader, XdrWriter } from './xdr.js';
import type { WireError } from '../util/errors.js';

/** Maximum length of strings in the generic RPC types (error messages). */
const VIR_NET_MESSAGE_STRING_MAX = 4194304;

export function encodeWireError(w: XdrWriter, e: WireError): void {
  // Messages quote paths and names, which are byte strings (src/byteString.ts):
  // sent byte for byte, as virtlockd does. Text beyond U+00FF can only be Unicode.
  const str = (wr: XdrWriter, s: string) => (/[^\x00-\xff]/.test(s) ? wr.string(s) : wr.byteString(s));
  w.i32(e.code);
  w.i32(e.domain);
  w.optional(e.message, str);
  w.i32(e.level);
  w.u32(0); // dom: never sent
  w.optional(e.str1, str);
  w.optional(e.str2, str);
  w.optional(e.str3, str);
  w.i32(e.int1);
  w.i32(e.int2);
  w.u32(0); // net: never sent
}

export function decodeWireError(r: XdrReader): WireError {
  const str = (rd: XdrReader) => rd.string(VIR_NET_MESSAGE_STRING_MAX);
  const code = r.i32();
  const domain = r.i32();
  const message = r.optional(str);
  const level = r.i32();
  // dom: name, 16-byte uuid, id — decoded and dropped
  r.optional((rd) => {
    str(rd);
    rd.fixedOpaque(16);
    rd.i32();
  });
  const str1 = r.optional(str);
  const str2 = r.optional(str);
  const str3 = r.optional(str);
  const int1 = r.i32();
  const int2 = r.i32();
  r.optional((rd) => {
    str(rd);
    rd.fixedOpaque(16);
  });
  return { code, domain, message, level, str1, str2, str3, int1, int2 };
}
