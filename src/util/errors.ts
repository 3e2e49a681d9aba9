// libvirt's error model: virNetMessageError, the error codes and domains we
// send, and typed errors that carry them (below every layer, like libvirt's
// util/virerror.c). Handlers throw these; the RPC layer turns them into error
// replies (libvirt: virNetServerProgramSendError, src/rpc/virnetserverprogram.c;
// XDR codec: rpc/wireError.ts). Which errors exist, with their texts, is the
// catalogue's (errorCatalogue.ts).

/** virErrorNumber values used by virtlockd and relockd: the one enum of codes relockd sends. */
export const ErrorCode = {
  INTERNAL_ERROR: 1,
  NO_SUPPORT: 3,
  INVALID_ARG: 8,
  OPERATION_DENIED: 29,
  SYSTEM_ERROR: 38,
  RPC: 39,
  OPERATION_INVALID: 55,
  CONFIG_UNSUPPORTED: 67,
  ARGUMENT_UNSUPPORTED: 74,
  RESOURCE_BUSY: 87,
  NO_SERVER: 95,
  NO_CLIENT: 96,
} as const;

/** virErrorDomain values relockd sends. */
export const ErrorDomain = {
  NONE: 0,
  RPC: 7,
  LOCKSPACE: 51,
  ADMIN: 62,
} as const;

const VIR_ERR_ERROR = 2;

/** libvirt's per-code "info format" (str1 of ordinary errors). */
export const INFO_FORMAT: Readonly<Record<number, string>> = {
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
