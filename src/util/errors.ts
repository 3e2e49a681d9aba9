// libvirt's error model on the wire: virNetMessageError, the error codes and
// domains we send, and typed errors that carry them. Handlers throw these; the
// RPC layer turns them into error replies (spec 2.3, 2.5, appendix B).

import { XdrReader, XdrWriter } from '../rpc/xdr.js';

/** virErrorNumber values used by virtlockd and relockd. */
export const ErrorCode = {
  INTERNAL_ERROR: 1,
  NO_SUPPORT: 3,
  INVALID_ARG: 8,
  OPERATION_DENIED: 29,
  SYSTEM_ERROR: 38,
  RPC: 39,
  OPERATION_INVALID: 55,
  CONFIG_UNSUPPORTED: 67,
  RESOURCE_BUSY: 87,
} as const;

/** virErrorDomain values. */
export const ErrorDomain = {
  NONE: 0,
  RPC: 7,
  CONF: 9,
  LOCKING: 42,
  LOCKSPACE: 51,
  ADMIN: 62,
} as const;

export const VIR_ERR_ERROR = 2;

/** libvirt's per-code "info format" (str1 of ordinary errors). */
const INFO_FORMAT: Record<number, string> = {
  [ErrorCode.INTERNAL_ERROR]: 'internal error: %s',
  [ErrorCode.NO_SUPPORT]: 'this function is not supported by the connection driver: %s',
  [ErrorCode.INVALID_ARG]: 'invalid argument: %s',
  [ErrorCode.OPERATION_DENIED]: 'operation forbidden: %s',
  [ErrorCode.SYSTEM_ERROR]: '%s',
  [ErrorCode.RPC]: '%s',
  [ErrorCode.OPERATION_INVALID]: 'Requested operation is not valid: %s',
  [ErrorCode.CONFIG_UNSUPPORTED]: 'unsupported configuration: %s',
  [ErrorCode.RESOURCE_BUSY]: 'resource busy: %s',
};

/** The 11-field virNetMessageError, minus the never-sent dom/net members. */
export interface WireError {
  code: number;
  domain: number;
  message: string | null;
  level: number;
  str1: string | null;
  str2: string | null;
  str3: string | null;
  int1: number;
  int2: number;
}

/**
 * An error that maps to one libvirt error reply. Every error a handler means
 * to send to the client is one of these; anything else is a bug and is sent
 * as an internal error.
 */
export class ProtocolError extends Error {
  override name = 'ProtocolError';
  constructor(readonly wire: WireError) {
    // These are answers, not faults: no stack trace (capturing one cost ~8%
    // of the main thread when many acquisitions were refused).
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    super(wire.message ?? 'unknown error');
    Error.stackTraceLimit = limit;
  }

  get code(): number {
    return this.wire.code;
  }

  get domain(): number {
    return this.wire.domain;
  }

  /** virReportError(code, detail): message = info format with the detail. */
  static report(code: number, domain: number, detail: string): ProtocolError {
    return ProtocolError.formatted(code, domain, INFO_FORMAT[code] ?? '%s', detail);
  }

  /** An ordinary error with an explicit info format (codes outside INFO_FORMAT, e.g. the admin ones). */
  static formatted(code: number, domain: number, fmt: string, detail: string): ProtocolError {
    return new ProtocolError({
      code,
      domain,
      message: fmt.replace('%s', detail),
      level: VIR_ERR_ERROR,
      str1: fmt,
      str2: detail,
      str3: null,
      int1: -1,
      int2: -1,
    });
  }

  /** virReportSystemError(errno, detail): code 38, detail + ": " + strerror. */
  static system(domain: number, errno: number, errText: string, detail: string): ProtocolError {
    const message = `${detail}: ${errText}`;
    return new ProtocolError({
      code: ErrorCode.SYSTEM_ERROR,
      domain,
      message,
      level: VIR_ERR_ERROR,
      str1: '%s',
      str2: message,
      str3: null,
      int1: errno,
      int2: -1,
    });
  }

  /** virCheckFlags failure: unsupported bits in hex, the C function name; domain of the caller. */
  static unsupportedFlags(unsupported: number, fn: string, domain: number = ErrorDomain.RPC): ProtocolError {
    return new ProtocolError({
      code: ErrorCode.INVALID_ARG,
      domain,
      message: `unsupported flags (0x${(unsupported >>> 0).toString(16)}) in function ${fn}`,
      level: VIR_ERR_ERROR,
      str1: fn,
      str2: 'flags',
      str3: null,
      int1: 0,
      int2: 0,
    });
  }

  /** RPC-layer errors (code 39): message == str2, str1 "%s". */
  static rpc(detail: string): ProtocolError {
    return ProtocolError.report(ErrorCode.RPC, ErrorDomain.RPC, detail);
  }

  /** A handler failed without a typed error: libvirt's own fallback reply. */
  static unset(): ProtocolError {
    return new ProtocolError({
      code: ErrorCode.INTERNAL_ERROR,
      domain: ErrorDomain.RPC,
      message: 'Library function returned error but did not set virError',
      level: VIR_ERR_ERROR,
      str1: null,
      str2: null,
      str3: null,
      int1: 0,
      int2: 0,
    });
  }
}

/** Maximum length of strings in the generic RPC types (error messages). */
export const VIR_NET_MESSAGE_STRING_MAX = 4194304;

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
