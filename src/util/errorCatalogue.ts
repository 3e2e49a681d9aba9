// Every error relockd sends on the wire, in one table (as fastify's
// lib/errors.js): its libvirt code and domain, libvirt's info format (str1),
// the detail text with its {placeholders}, and when it is sent. Code throws
// `E.NAME(...)`; nothing else builds a ProtocolError (test/errors.test.ts
// checks the sources), and docs/errors.md is generated from this table and
// checked against it (RELOCKD_WRITE_ERRORS_DOC=1 npx tap test/errors.test.ts
// rewrites it).
//
// Texts that virtlockd/libvirt also send are theirs verbatim (named by the
// libvirt function that reports them); `relockd` marks our own.

import { ErrorCode, ErrorDomain, INFO_FORMAT, ProtocolError } from './errors.js';

/** The {placeholders} of a detail template. */
type Vars<T extends string> = T extends `${string}{${infer P}}${infer Rest}` ? P | Vars<Rest> : never;
type Value = string | number | bigint;
type VarArgs<T extends string> = [Vars<T>] extends [never] ? [] : [vars: { readonly [K in Vars<T>]: Value }];

export type ErrorKind =
  /** virReportError: message = the code's info format with the detail. */
  | 'report'
  /** virReportSystemError: code SYSTEM_ERROR, message = detail + ': ' + strerror(errno). */
  | 'system'
  /** virCheckFlags: code INVALID_ARG, str1 = the C function, str2 = 'flags'. */
  | 'flags'
  /** A handler failed without a typed error: libvirt's own fallback reply. */
  | 'unset';

export interface CatalogueEntry {
  readonly kind: ErrorKind;
  readonly code: number;
  readonly domain: number;
  /** str1: the info format the detail is put into ('%s': the detail alone). */
  readonly format: string;
  /** The detail (str2), with {placeholders}; for 'system' the ': <strerror>' follows. */
  readonly detail: string;
  /** Who sends it, when. */
  readonly when: string;
}

function fill(template: string, vars: Readonly<Record<string, Value>> | undefined): string {
  return template.replace(/\{(\w+)\}/g, (_m, k: string) => {
    const v = vars?.[k];
    if (v === undefined) throw new Error(`error detail '${template}': no value for {${k}}`);
    return String(v);
  });
}

function report<T extends string>(code: number, domain: number, detail: T, when: string, format?: string) {
  const fmt = format ?? INFO_FORMAT[code] ?? '%s';
  const meta: CatalogueEntry = { kind: 'report', code, domain, format: fmt, detail, when };
  const make = (...a: VarArgs<T>): ProtocolError => ProtocolError.formatted(code, domain, fmt, fill(detail, a[0]));
  return Object.assign(make, meta);
}

function system<T extends string>(domain: number, detail: T, when: string) {
  const meta: CatalogueEntry = { kind: 'system', code: ErrorCode.SYSTEM_ERROR, domain, format: '%s', detail, when };
  /** (vars if the detail has placeholders, errno, the errno's text or the deadline's message) */
  const make = (...a: [...VarArgs<T>, errno: number, errText: string]): ProtocolError => {
    const vars = (a.length === 3 ? a[0] : undefined) as Readonly<Record<string, Value>> | undefined;
    return ProtocolError.system(domain, a[a.length - 2] as number, a[a.length - 1] as string, fill(detail, vars));
  };
  return Object.assign(make, meta);
}

function flags(domain: number, when: string) {
  const meta: CatalogueEntry = { kind: 'flags', code: ErrorCode.INVALID_ARG, domain, format: '{fn}', detail: 'unsupported flags (0x{flags}) in function {fn}', when };
  const make = (unsupported: number, fn: string): ProtocolError => ProtocolError.unsupportedFlags(unsupported, fn, domain);
  return Object.assign(make, meta);
}

const { INTERNAL_ERROR, NO_SUPPORT, INVALID_ARG, OPERATION_DENIED, RPC, OPERATION_INVALID, CONFIG_UNSUPPORTED, RESOURCE_BUSY, ARGUMENT_UNSUPPORTED, NO_SERVER, NO_CLIENT } = ErrorCode;
const D = ErrorDomain;

export const E = {
  // ---- RPC layer (rpc/connection.ts; virNetServerProgramDispatch) ----
  RPC_NO_PROGRAM: report(RPC, D.RPC, 'Cannot find program {prog} version {vers}', 'a call names a program or version the socket does not serve'),
  RPC_BAD_STATUS: report(RPC, D.RPC, 'Unexpected message status {status}', 'a call with a status other than OK'),
  RPC_UNDECODABLE: report(RPC, D.RPC, 'Unable to decode message payload', 'arguments (or the fd count) that do not decode as the procedure\'s XDR'),
  RPC_UNKNOWN_PROC: report(RPC, D.RPC, 'unknown procedure: {proc}', 'a procedure number the program does not have'),
  UNSET: Object.assign(() => ProtocolError.unset(), {
    kind: 'unset', code: INTERNAL_ERROR, domain: D.RPC, format: '', detail: 'Library function returned error but did not set virError',
    when: 'a handler failed without a typed error (a bug; logged as "handler failed without a protocol error")',
  } satisfies CatalogueEntry),
  UNSUPPORTED_FLAGS: flags(D.RPC, 'lock-space program: flag bits the procedure does not accept (fn: virLockSpaceProtocolDispatch…)'),
  ADMIN_UNSUPPORTED_FLAGS: flags(D.ADMIN, 'admin programs: flag bits the procedure does not accept (fn: libvirt\'s admin function, or relockdAdminDispatch…)'),

  // ---- lock-space program (protocol/lockspace.ts) ----
  NOT_REGISTERED: report(OPERATION_INVALID, D.RPC, 'lock owner details have not been registered', 'a call before REGISTER, or REGISTER with owner id 0'),
  RESTRICTED: report(OPERATION_DENIED, D.RPC, 'lock manager connection has been restricted', 'any call after RESTRICT'),

  // ---- lock spaces and resources (locks/; virLockSpace*) ----
  LOCKSPACE_NOT_FOUND: report(INTERNAL_ERROR, D.RPC, 'Lockspace for path {path} does not exist', 'a resource call in a lock space never created'),
  LOCKSPACE_EXISTS: report(INTERNAL_ERROR, D.RPC, 'Lockspace for path {path} already exists', 'NEW for a lock space that exists'),
  DEFAULT_LOCKSPACE_EXISTS: report(OPERATION_INVALID, D.RPC, 'the default lockspace already exists', 'NEW with the empty path'),
  RESOURCE_LOCKED: report(RESOURCE_BUSY, D.LOCKSPACE, "Lockspace resource '{name}' is locked", 'ACQUIRE of a resource another owner holds; CREATE_RESOURCE/DELETE_RESOURCE of a held one'),
  RESOURCE_NOT_LOCKED: report(RESOURCE_BUSY, D.LOCKSPACE, "Lockspace resource '{name}' is not locked", 'RELEASE of a resource nobody holds'),
  NOT_OWNER: report(INTERNAL_ERROR, D.LOCKSPACE, 'owner {pid} does not hold the resource lock', 'RELEASE by an owner that does not hold it'),
  NOT_A_DIRECTORY: report(INTERNAL_ERROR, D.LOCKSPACE, 'Lockspace location {path} exists, but is not a directory', 'CREATE_LOCKSPACE/NEW on a path that is a file'),
  BAD_RESOURCE_NAME: report(
    INVALID_ARG,
    D.LOCKSPACE,
    "Lockspace resource name '{name}' is not valid in lockspace {dir}: it must be a single path component (no '/', not '.' or '..')",
    'relockd: a resource name that would leave its lock-space directory',
  ),
  RELATIVE_RESOURCE_PATH: report(INVALID_ARG, D.LOCKSPACE, "Lockspace resource '{name}' is not an absolute path", 'relockd: a default-lock-space resource that is not an absolute path'),
  RELATIVE_LOCKSPACE_PATH: report(INVALID_ARG, D.LOCKSPACE, "Lockspace path '{path}' is not an absolute path", 'relockd: CREATE_LOCKSPACE/NEW with a relative directory'),
  SAFE_MODE: report(
    OPERATION_DENIED,
    D.LOCKSPACE,
    'relockd is in safe mode after a failed restore: existing leases are kept, new acquisitions are refused',
    'relockd: ACQUIRE while in safe mode',
  ),
  STOPPING: report(
    OPERATION_DENIED,
    D.LOCKSPACE,
    'relockd is stopping (draining): existing leases are kept until released, new acquisitions are refused',
    'relockd: ACQUIRE after a stop was accepted with the drain policy',
  ),
  // Storage failures: '<detail>: <strerror>' (errno in int1); a storage deadline
  // overrun (relockd) uses ETIMEDOUT with "storage for '<dir>' did not answer within N s"
  // or "… is not responding (an earlier call has not returned)" in place of strerror.
  STORAGE_CREATE_LOCKSPACE: system(D.LOCKSPACE, 'Unable to create lockspace {path}', 'CREATE_LOCKSPACE: mkdir/stat failed'),
  STORAGE_OPEN_CREATE_RESOURCE: system(D.LOCKSPACE, 'Unable to open/create resource {file}', 'ACQUIRE with AUTOCREATE: open failed'),
  STORAGE_OPEN_RESOURCE: system(D.LOCKSPACE, 'Unable to open resource {file}', 'ACQUIRE: open failed'),
  STORAGE_ACQUIRE: system(D.LOCKSPACE, "Unable to acquire lock on '{file}'", 'ACQUIRE: fcntl failed other than by a conflict'),
  STORAGE_RELEASE: system(D.LOCKSPACE, "Unable to release lock on '{file}'", 'RELEASE: unlock failed'),
  STORAGE_CREATE_FILE: system(D.NONE, "cannot create file '{file}'", 'CREATE_RESOURCE: creating the lease file failed'),
  STORAGE_DELETE_RESOURCE: system(D.LOCKSPACE, 'Unable to delete lockspace resource {file}', 'DELETE_RESOURCE: unlink failed'),

  // ---- libvirt's admin program (protocol/admin.ts) ----
  NO_SERVER: report(NO_SERVER, D.RPC, "No server named '{name}'", 'virNetDaemonGetServer: an unknown server name', 'Server not found: %s'),
  NO_SERVER_MATCHING: report(NO_SERVER, D.ADMIN, "no server with matching name '{name}' found", 'the admin dispatcher\'s lookup (set-threadpool, set-client-limits, client-info)', 'Server not found: %s'),
  NO_CLIENT: report(NO_CLIENT, D.RPC, "No client with matching ID '{id}'", 'virNetServerGetClient: an unknown client id', 'Client not found: %s'),
  NO_CLIENT_MATCHING: report(NO_CLIENT, D.ADMIN, "no client with matching id '{id}' found", 'the admin dispatcher\'s lookup (client-info)', 'Client not found: %s'),
  PARAM_NAME_TOO_LONG: report(INVALID_ARG, D.NONE, "Parameter name '{field}' too long", 'virTypedParamsValidate: a name of 80 bytes or more'),
  PARAM_UNSUPPORTED: report(ARGUMENT_UNSUPPORTED, D.NONE, "parameter '{field}' not supported", 'virTypedParamsValidate: an unknown parameter', 'argument unsupported: %s'),
  PARAM_BAD_TYPE: report(INVALID_ARG, D.NONE, "invalid type '{type}' for parameter '{field}', expected '{expected}'", 'virTypedParamsValidate: a parameter of the wrong type'),
  PARAM_DUPLICATE: report(INVALID_ARG, D.NONE, "parameter '{field}' occurs multiple times", 'virTypedParamsValidate: a parameter given twice'),
  MIN_WORKERS_OVER_MAX: report(INVALID_ARG, D.NONE, 'minWorkers cannot be larger than maxWorkers', 'virThreadPoolSetParameters'),
  MAX_WORKERS_SWITCH: report(INVALID_ARG, D.NONE, 'maxWorkers must not be switched from zero to non-zero and vice versa', 'virThreadPoolSetParameters (the pool has 0 workers)'),
  PRIO_WORKERS: report(
    INVALID_ARG,
    D.NONE,
    'prioWorkers must stay 0: relockd handles every request on its event loop and has no worker threads',
    'relockd: set-threadpool with prioWorkers > 0',
  ),
  TOO_MANY_CLIENTS: report(INTERNAL_ERROR, D.ADMIN, "Too many clients '{count}' for limit '{limit}'", 'SERVER_LIST_CLIENTS over ADMIN_CLIENT_LIST_MAX'),
  CLIENT_LIMITS_ORDER: report(
    INVALID_ARG,
    D.RPC,
    'The overall maximum number of clients waiting for authentication must not be less than the overall maximum number of clients',
    'virNetServerSetClientLimits: nclients_max < nclients_unauth_max',
  ),
  NO_TLS: report(INTERNAL_ERROR, D.RPC, 'no tls service found, unable to update tls files', 'SERVER_UPDATE_TLS_FILES (relockd serves no TLS)'),
  LOG_SETTING_INVALID: report(INVALID_ARG, D.NONE, '{reason}', 'daemon-log-filters/-outputs that do not parse (the parser\'s reason, as for the configuration file)'),
  LOG_OUTPUTS_OPEN: system(D.ADMIN, 'cannot open the log outputs', 'relockd: daemon-log-outputs naming an output that cannot be opened'),
  LOG_OUTPUT_KIND: report(CONFIG_UNSUPPORTED, D.ADMIN, "this relockd logs to stderr only; output kind '{kind}' is not available", 'relockd: file/syslog outputs on a daemon without log outputs'),

  // ---- relockd's admin program (protocol/relockdAdmin.ts) ----
  LIST_CLIENTS_NO_SERVER: report(NO_SERVER, D.ADMIN, "No server named '{name}'", 'relockd: LIST_CLIENTS with an unknown server name'),
  NO_SUCH_LOCKSPACE: report(INVALID_ARG, D.ADMIN, "relockd has no lock space '{dir}'", 'relockd: LIST_RESOURCES for an unknown lock space'),
  REEXEC_UNSUPPORTED: report(NO_SUPPORT, D.ADMIN, 're-exec is not available in this relockd build', 'relockd: REEXEC or HANDBACK where the build cannot re-exec'),
  METRICS_UNSUPPORTED: report(NO_SUPPORT, D.ADMIN, 'metrics are not available in this relockd build', 'relockd: GET_METRICS without metrics'),
  NOT_MADE_SAFE: report(
    OPERATION_INVALID,
    D.ADMIN,
    "owner pid {pid} has no lock-failure action in progress in lock space '{lockspace}'; relockd releases leases only of owners it asked to be made safe",
    'relockd: RELEASE_OWNER_LEASES for an owner relockd did not ask to be made safe (health/monitor.ts)',
  ),

  // ---- lock-space health (health/monitor.ts) ----
  LOCKSPACE_FAILED: report(
    OPERATION_INVALID,
    D.LOCKSPACE,
    "lock space '{dir}' has failed (storage not answering since {since}{error}); no new leases until it recovers",
    'ACQUIRE in a lock space whose storage health watch is failed',
  ),
} as const;

export type ErrorName = keyof typeof E;

/** The catalogue as data, in table order (docs/errors.md, tests). */
export function catalogue(): Array<CatalogueEntry & { name: ErrorName }> {
  return (Object.keys(E) as ErrorName[]).map((name) => {
    const { kind, code, domain, format, detail, when } = E[name] as CatalogueEntry;
    return { name, kind, code, domain, format, detail, when };
  });
}
