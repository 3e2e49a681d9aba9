// libvirt's admin program (0x06900690 v1, src/admin/admin_protocol.x), as a
// table: what virt-admin sends to virtlockd's admin socket. Rows decode the
// args, check flags the way libvirt's handlers do (virCheckFlags in the named
// C function, after the server lookup where libvirt looks up first), call the
// backend and encode the reply. The backend (services/adminService.ts) owns the
// state; this file owns the wire.

import { ErrorCode, ErrorDomain, ProtocolError } from '../util/errors.js';
import type { Procedure, Program } from '../rpc/program.js';
import { defineProgram, noArgs } from '../rpc/program.js';
import { XdrDecodeError } from '../rpc/xdr.js';
import type { XdrReader, XdrWriter } from '../rpc/xdr.js';

export const ADMIN_PROGRAM = 0x06900690;
export const ADMIN_PROTOCOL_VERSION = 1;

export const ADMIN_STRING_MAX = 4194304;
export const ADMIN_SERVER_LIST_MAX = 16384;
export const ADMIN_SERVER_THREADPOOL_PARAMETERS_MAX = 32;
export const ADMIN_CLIENT_LIST_MAX = 16384;
export const ADMIN_CLIENT_INFO_PARAMETERS_MAX = 64;
export const ADMIN_SERVER_CLIENT_LIMITS_MAX = 32;
/** VIR_TYPED_PARAM_FIELD_LENGTH */
export const TYPED_PARAM_FIELD_LENGTH = 80;

export const AdminProc = {
  CONNECT_OPEN: 1,
  CONNECT_CLOSE: 2,
  CONNECT_GET_LIB_VERSION: 3,
  CONNECT_LIST_SERVERS: 4,
  CONNECT_LOOKUP_SERVER: 5,
  SERVER_GET_THREADPOOL_PARAMETERS: 6,
  SERVER_SET_THREADPOOL_PARAMETERS: 7,
  SERVER_LIST_CLIENTS: 8,
  SERVER_LOOKUP_CLIENT: 9,
  CLIENT_GET_INFO: 10,
  CLIENT_CLOSE: 11,
  SERVER_GET_CLIENT_LIMITS: 12,
  SERVER_SET_CLIENT_LIMITS: 13,
  CONNECT_GET_LOGGING_OUTPUTS: 14,
  CONNECT_GET_LOGGING_FILTERS: 15,
  CONNECT_SET_LOGGING_OUTPUTS: 16,
  CONNECT_SET_LOGGING_FILTERS: 17,
  SERVER_UPDATE_TLS_FILES: 18,
  CONNECT_SET_DAEMON_TIMEOUT: 19,
} as const;

/** virErrorNumber values only the admin program uses. */
export const AdminErrorCode = {
  ARGUMENT_UNSUPPORTED: 74,
  NO_SERVER: 95,
  NO_CLIENT: 96,
} as const;

/** virClientTransport */
export const ClientTransport = { UNIX: 0, TCP: 1, TLS: 2 } as const;

// ---- typed parameters (admin_typed_param) ---------------------------------

/** virTypedParameterType */
export const TypedParamType = {
  INT: 1,
  UINT: 2,
  LLONG: 3,
  ULLONG: 4,
  DOUBLE: 5,
  BOOLEAN: 6,
  STRING: 7,
} as const;

export type TypedParam =
  | { field: string; type: 'int'; value: number }
  | { field: string; type: 'uint'; value: number }
  | { field: string; type: 'llong'; value: bigint }
  | { field: string; type: 'ullong'; value: bigint }
  | { field: string; type: 'double'; value: number }
  | { field: string; type: 'boolean'; value: boolean }
  | { field: string; type: 'string'; value: string };

export type TypedParamTypeName = TypedParam['type'];

const TYPE_NAMES: Record<number, TypedParamTypeName> = {
  1: 'int',
  2: 'uint',
  3: 'llong',
  4: 'ullong',
  5: 'double',
  6: 'boolean',
  7: 'string',
};

const TYPE_NUMBERS: Record<TypedParamTypeName, number> = {
  int: 1,
  uint: 2,
  llong: 3,
  ullong: 4,
  double: 5,
  boolean: 6,
  string: 7,
};

const adminString = (r: XdrReader) => r.string(ADMIN_STRING_MAX);

export function decodeTypedParam(r: XdrReader): TypedParam {
  const field = adminString(r);
  const type = r.i32();
  switch (TYPE_NAMES[type]) {
    case 'int':
      return { field, type: 'int', value: r.i32() };
    case 'uint':
      return { field, type: 'uint', value: r.u32() };
    case 'llong':
      return { field, type: 'llong', value: r.i64() };
    case 'ullong':
      return { field, type: 'ullong', value: r.u64() };
    case 'double':
      return { field, type: 'double', value: r.fixedOpaque(8).readDoubleBE(0) };
    case 'boolean':
      return { field, type: 'boolean', value: r.i32() !== 0 };
    case 'string':
      return { field, type: 'string', value: adminString(r) };
    default:
      // A union arm XDR does not know: the payload cannot be decoded.
      throw new XdrDecodeError(`bad typed parameter type ${type}`);
  }
}

export function encodeTypedParam(w: XdrWriter, p: TypedParam): void {
  w.string(p.field);
  w.i32(TYPE_NUMBERS[p.type]);
  switch (p.type) {
    case 'int':
      w.i32(p.value);
      break;
    case 'uint':
      w.u32(p.value);
      break;
    case 'llong':
      w.i64(p.value);
      break;
    case 'ullong':
      w.u64(p.value);
      break;
    case 'double': {
      const b = Buffer.alloc(8);
      b.writeDoubleBE(p.value, 0);
      w.fixedOpaque(b);
      break;
    }
    case 'boolean':
      w.i32(p.value ? 1 : 0);
      break;
    case 'string':
      w.string(p.value);
      break;
  }
}

/** The value of a typed parameter as plain JSON-able data. */
export function typedParamValue(p: TypedParam): number | boolean | string {
  return typeof p.value === 'bigint' ? Number(p.value) : p.value;
}

// ---- shared structures -------------------------------------------------------

/** admin_nonnull_client (the server is carried by name). */
export interface AdminClientRef {
  srv: string;
  id: bigint;
  /** Epoch seconds the client connected. */
  timestamp: bigint;
  transport: number;
}

const decodeServer = (r: XdrReader): string => adminString(r);
const encodeServer = (w: XdrWriter, name: string) => w.string(name);

const decodeClientRef = (r: XdrReader): AdminClientRef => ({
  srv: decodeServer(r),
  id: r.u64(),
  timestamp: r.i64(),
  transport: r.u32(),
});

const encodeClientRef = (w: XdrWriter, c: AdminClientRef) => {
  encodeServer(w, c.srv);
  w.u64(c.id);
  w.i64(c.timestamp);
  w.u32(c.transport);
};

// ---- args and rets -------------------------------------------------------------

export interface FlagsArgs {
  flags: number;
}
export interface ListArgs {
  needResults: number;
  flags: number;
}
export interface LookupServerArgs {
  name: string;
  flags: number;
}
export interface ServerArgs {
  srv: string;
  flags: number;
}
export interface ServerParamsArgs {
  srv: string;
  params: TypedParam[];
  flags: number;
}
export interface ListClientsArgs {
  srv: string;
  needResults: number;
  flags: number;
}
export interface LookupClientArgs {
  srv: string;
  id: bigint;
  flags: number;
}
export interface ClientArgs {
  clnt: AdminClientRef;
  flags: number;
}
export interface StringArgs {
  value: string | null;
  flags: number;
}
export interface TimeoutArgs {
  timeout: number;
  flags: number;
}

export interface ListServersRet {
  servers: string[];
  ret: number;
}
export interface ListClientsRet {
  clients: AdminClientRef[];
  ret: number;
}
export interface LoggingOutputsRet {
  outputs: string;
  noutputs: number;
}
export interface LoggingFiltersRet {
  filters: string | null;
  nfilters: number;
}

/** Encoders and decoders for both sides (the daemon and AdminClient). */
export const adminCodec = {
  flags: {
    decode: (r: XdrReader): FlagsArgs => ({ flags: r.u32() }),
    encode: (w: XdrWriter, a: FlagsArgs) => w.u32(a.flags),
  },
  list: {
    decode: (r: XdrReader): ListArgs => ({ needResults: r.u32(), flags: r.u32() }),
    encode: (w: XdrWriter, a: ListArgs) => w.u32(a.needResults).u32(a.flags),
  },
  lookupServer: {
    decode: (r: XdrReader): LookupServerArgs => ({ name: adminString(r), flags: r.u32() }),
    encode: (w: XdrWriter, a: LookupServerArgs) => w.string(a.name).u32(a.flags),
  },
  server: {
    decode: (r: XdrReader): ServerArgs => ({ srv: decodeServer(r), flags: r.u32() }),
    encode: (w: XdrWriter, a: ServerArgs) => encodeServer(w, a.srv).u32(a.flags),
  },
  serverParams: (max: number) => ({
    decode: (r: XdrReader): ServerParamsArgs => ({ srv: decodeServer(r), params: r.array(max, decodeTypedParam), flags: r.u32() }),
    encode: (w: XdrWriter, a: ServerParamsArgs) => encodeServer(w, a.srv).array(a.params, encodeTypedParam).u32(a.flags),
  }),
  listClients: {
    decode: (r: XdrReader): ListClientsArgs => ({ srv: decodeServer(r), needResults: r.u32(), flags: r.u32() }),
    encode: (w: XdrWriter, a: ListClientsArgs) => encodeServer(w, a.srv).u32(a.needResults).u32(a.flags),
  },
  lookupClient: {
    decode: (r: XdrReader): LookupClientArgs => ({ srv: decodeServer(r), id: r.u64(), flags: r.u32() }),
    encode: (w: XdrWriter, a: LookupClientArgs) => encodeServer(w, a.srv).u64(a.id).u32(a.flags),
  },
  client: {
    decode: (r: XdrReader): ClientArgs => ({ clnt: decodeClientRef(r), flags: r.u32() }),
    encode: (w: XdrWriter, a: ClientArgs) => {
      encodeClientRef(w, a.clnt);
      w.u32(a.flags);
    },
  },
  optString: {
    decode: (r: XdrReader): StringArgs => ({ value: r.optional(adminString), flags: r.u32() }),
    encode: (w: XdrWriter, a: StringArgs) => w.optional(a.value, (wr, s) => wr.string(s)).u32(a.flags),
  },
  timeout: {
    decode: (r: XdrReader): TimeoutArgs => ({ timeout: r.u32(), flags: r.u32() }),
    encode: (w: XdrWriter, a: TimeoutArgs) => w.u32(a.timeout).u32(a.flags),
  },
  // rets
  libVersion: {
    encode: (w: XdrWriter, v: bigint) => w.u64(v),
    decode: (r: XdrReader): bigint => r.u64(),
  },
  listServers: {
    encode: (w: XdrWriter, v: ListServersRet) => w.array(v.servers, encodeServer).u32(v.ret),
    decode: (r: XdrReader): ListServersRet => ({ servers: r.array(ADMIN_SERVER_LIST_MAX, decodeServer), ret: r.u32() }),
  },
  serverRet: {
    encode: (w: XdrWriter, v: string) => encodeServer(w, v),
    decode: (r: XdrReader): string => decodeServer(r),
  },
  params: (max: number) => ({
    encode: (w: XdrWriter, v: TypedParam[]) => w.array(v, encodeTypedParam),
    decode: (r: XdrReader): TypedParam[] => r.array(max, decodeTypedParam),
  }),
  listClientsRet: {
    encode: (w: XdrWriter, v: ListClientsRet) => w.array(v.clients, encodeClientRef).u32(v.ret),
    decode: (r: XdrReader): ListClientsRet => ({ clients: r.array(ADMIN_CLIENT_LIST_MAX, decodeClientRef), ret: r.u32() }),
  },
  clientRet: {
    encode: encodeClientRef,
    decode: decodeClientRef,
  },
  loggingOutputs: {
    encode: (w: XdrWriter, v: LoggingOutputsRet) => w.string(v.outputs).u32(v.noutputs),
    decode: (r: XdrReader): LoggingOutputsRet => ({ outputs: adminString(r), noutputs: r.u32() }),
  },
  loggingFilters: {
    encode: (w: XdrWriter, v: LoggingFiltersRet) => w.optional(v.filters, (wr, s) => wr.string(s)).u32(v.nfilters),
    decode: (r: XdrReader): LoggingFiltersRet => ({ filters: r.optional(adminString), nfilters: r.u32() }),
  },
};

// ---- what the table needs from the daemon -------------------------------------

export interface AdminClientHandle {
  readonly id: number;
  /** Epoch seconds. */
  readonly connTime: number;
  readonly transport: number;
  /** client-info's typed parameters. */
  info(): TypedParam[];
  /** client-disconnect: the normal close path of its server runs. */
  close(): void;
}

export interface ClientLimits {
  max: number;
  current: number;
  unauthMax: number;
  unauthCurrent: number;
}

export interface AdminServerHandle {
  readonly name: string;
  clients(): AdminClientHandle[];
  client(id: number): AdminClientHandle | undefined;
  limits(): ClientLimits;
  /** null: leave unchanged. Validation (max ≥ unauth max) is the table's. */
  setLimits(max: number | null, unauthMax: number | null): void;
}

export interface AdminBackend {
  /** major * 1e6 + minor * 1e3 + micro */
  readonly libVersion: number;
  servers(): AdminServerHandle[];
  getLoggingOutputs(): { outputs: string; count: number };
  getLoggingFilters(): { filters: string; count: number };
  /** Throws ProtocolError on a malformed or unsupported setting. */
  setLoggingOutputs(outputs: string): void;
  setLoggingFilters(filters: string): void;
  setDaemonTimeout(seconds: number): void;
}

/** Per-connection state of an admin-socket client (both programs). */
export interface AdminContext {
  /** Closes this client after its current reply has been written. */
  closeAfterReply(): void;
}

// ---- errors (libvirt's texts) -----------------------------------------------------

function libvirtError(code: number, domain: number, fmt: string, detail: string): ProtocolError {
  return ProtocolError.formatted(code, domain, fmt, detail);
}

/** virNetDaemonGetServer's error (domain RPC). */
export const noServer = (name: string) =>
  libvirtError(AdminErrorCode.NO_SERVER, ErrorDomain.RPC, 'Server not found: %s', `No server named '${name}'`);

/** The admin dispatcher's own wording for the same (domain ADMIN). */
const noServerMatching = (name: string) =>
  libvirtError(AdminErrorCode.NO_SERVER, ErrorDomain.ADMIN, 'Server not found: %s', `no server with matching name '${name}' found`);

/** virNetServerGetClient's error. */
export const noClient = (id: bigint) =>
  libvirtError(AdminErrorCode.NO_CLIENT, ErrorDomain.RPC, 'Client not found: %s', `No client with matching ID '${id}'`);

const noClientMatching = (id: bigint) =>
  libvirtError(AdminErrorCode.NO_CLIENT, ErrorDomain.ADMIN, 'Client not found: %s', `no client with matching id '${id}' found`);

/** virCheckFlags in an admin function (domain ADMIN). */
function unsupportedFlags(unsupported: number, fn: string): ProtocolError {
  return ProtocolError.unsupportedFlags(unsupported, fn, ErrorDomain.ADMIN);
}

function checkFlags(flags: number, fn: string): void {
  if (flags !== 0) throw unsupportedFlags(flags, fn);
}

export const invalidArg = (domain: number, detail: string) => ProtocolError.report(ErrorCode.INVALID_ARG, domain, detail);

/**
 * virTypedParamsValidate: every parameter must be one of `allowed`, with its
 * type; duplicates are refused. Returns the values by name.
 */
function validateParams(params: TypedParam[], allowed: Record<string, TypedParamTypeName>): Map<string, TypedParam> {
  const out = new Map<string, TypedParam>();
  for (const p of params) {
    if (Buffer.byteLength(p.field) > TYPED_PARAM_FIELD_LENGTH - 1) {
      throw invalidArg(ErrorDomain.NONE, `Parameter name '${p.field}' too long`);
    }
    const want = allowed[p.field];
    if (!want) {
      throw libvirtError(AdminErrorCode.ARGUMENT_UNSUPPORTED, ErrorDomain.NONE, 'argument unsupported: %s', `parameter '${p.field}' not supported`);
    }
    if (p.type !== want) {
      throw invalidArg(ErrorDomain.NONE, `invalid type '${p.type}' for parameter '${p.field}', expected '${want}'`);
    }
    if (out.has(p.field)) throw invalidArg(ErrorDomain.NONE, `parameter '${p.field}' occurs multiple times`);
    out.set(p.field, p);
  }
  return out;
}

const uintParam = (field: string, value: number): TypedParam => ({ field, type: 'uint', value });

// ---- the table ----------------------------------------------------------------------

function findServer(b: AdminBackend, name: string, err: (n: string) => ProtocolError = noServer): AdminServerHandle {
  const s = b.servers().find((x) => x.name === name);
  if (!s) throw err(name);
  return s;
}

function findClient(s: AdminServerHandle, id: bigint, err: (id: bigint) => ProtocolError = noClient): AdminClientHandle {
  const c = id <= BigInt(Number.MAX_SAFE_INTEGER) ? s.client(Number(id)) : undefined;
  if (!c) throw err(id);
  return c;
}

function clientRef(srv: string, c: AdminClientHandle): AdminClientRef {
  return { srv, id: BigInt(c.id), timestamp: BigInt(c.connTime), transport: c.transport };
}

/** relockd serves every request on its event loop: libvirt reports a pool of zero workers. */
const THREADPOOL_PARAMS = ['minWorkers', 'maxWorkers', 'nWorkers', 'freeWorkers', 'prioWorkers', 'jobQueueDepth'];

type Row = Procedure<AdminContext, any, any>;

function rows(b: AdminBackend): Row[] {
  return [
    {
      proc: AdminProc.CONNECT_OPEN,
      name: 'CONNECT_OPEN',
      decodeArgs: adminCodec.flags.decode,
      handle: (_c, a: FlagsArgs) => checkFlags(a.flags, 'adminDispatchConnectOpen'),
    },
    {
      proc: AdminProc.CONNECT_CLOSE,
      name: 'CONNECT_CLOSE',
      decodeArgs: noArgs,
      // virNetServerClientDelayedClose: the reply goes out, then the close.
      handle: (c) => c.closeAfterReply(),
    },
    {
      proc: AdminProc.CONNECT_GET_LIB_VERSION,
      name: 'CONNECT_GET_LIB_VERSION',
      decodeArgs: noArgs,
      encodeRet: adminCodec.libVersion.encode,
      handle: () => BigInt(b.libVersion),
    },
    {
      proc: AdminProc.CONNECT_LIST_SERVERS,
      name: 'CONNECT_LIST_SERVERS',
      decodeArgs: adminCodec.list.decode,
      encodeRet: adminCodec.listServers.encode,
      handle: (_c, a: ListArgs): ListServersRet => {
        checkFlags(a.flags, 'adminConnectListServers');
        const names = b.servers().map((s) => s.name);
        return { servers: a.needResults ? names : [], ret: names.length };
      },
    },
    {
      proc: AdminProc.CONNECT_LOOKUP_SERVER,
      name: 'CONNECT_LOOKUP_SERVER',
      decodeArgs: adminCodec.lookupServer.decode,
      encodeRet: adminCodec.serverRet.encode,
      // libvirt's adminConnectLookupServer does virCheckFlags(flags, NULL):
      // every flag is "supported", so none is refused here either.
      handle: (_c, a: LookupServerArgs) => findServer(b, a.name).name,
    },
    {
      proc: AdminProc.SERVER_GET_THREADPOOL_PARAMETERS,
      name: 'SERVER_GET_THREADPOOL_PARAMETERS',
      decodeArgs: adminCodec.server.decode,
      encodeRet: adminCodec.params(ADMIN_SERVER_THREADPOOL_PARAMETERS_MAX).encode,
      handle: (_c, a: ServerArgs): TypedParam[] => {
        findServer(b, a.srv);
        checkFlags(a.flags, 'adminServerGetThreadPoolParameters');
        return THREADPOOL_PARAMS.map((f) => uintParam(f, 0));
      },
    },
    {
      proc: AdminProc.SERVER_SET_THREADPOOL_PARAMETERS,
      name: 'SERVER_SET_THREADPOOL_PARAMETERS',
      decodeArgs: adminCodec.serverParams(ADMIN_SERVER_THREADPOOL_PARAMETERS_MAX).decode,
      handle: (_c, a: ServerParamsArgs) => {
        findServer(b, a.srv, noServerMatching);
        checkFlags(a.flags, 'adminServerSetThreadPoolParameters');
        const p = validateParams(a.params, { minWorkers: 'uint', maxWorkers: 'uint', prioWorkers: 'uint' });
        const min = p.get('minWorkers')?.value as number | undefined;
        const max = p.get('maxWorkers')?.value as number | undefined;
        const prio = p.get('prioWorkers')?.value as number | undefined;
        // The pool is min = max = prio = 0 and stays so (virThreadPoolSetParameters' checks and texts).
        if (min !== undefined && min > (max ?? 0)) throw invalidArg(ErrorDomain.NONE, 'minWorkers cannot be larger than maxWorkers');
        if (max !== undefined && max > 0) throw invalidArg(ErrorDomain.NONE, 'maxWorkers must not be switched from zero to non-zero and vice versa');
        if (prio !== undefined && prio > 0) {
          throw invalidArg(ErrorDomain.NONE, 'prioWorkers must stay 0: relockd handles every request on its event loop and has no worker threads');
        }
      },
    },
    {
      proc: AdminProc.SERVER_LIST_CLIENTS,
      name: 'SERVER_LIST_CLIENTS',
      decodeArgs: adminCodec.listClients.decode,
      encodeRet: adminCodec.listClientsRet.encode,
      handle: (_c, a: ListClientsArgs): ListClientsRet => {
        const s = findServer(b, a.srv);
        checkFlags(a.flags, 'adminServerListClients');
        const clients = s.clients();
        if (clients.length > ADMIN_CLIENT_LIST_MAX) {
          throw ProtocolError.report(ErrorCode.INTERNAL_ERROR, ErrorDomain.ADMIN, `Too many clients '${clients.length}' for limit '${ADMIN_CLIENT_LIST_MAX}'`);
        }
        return { clients: a.needResults ? clients.map((c) => clientRef(s.name, c)) : [], ret: clients.length };
      },
    },
    {
      proc: AdminProc.SERVER_LOOKUP_CLIENT,
      name: 'SERVER_LOOKUP_CLIENT',
      decodeArgs: adminCodec.lookupClient.decode,
      encodeRet: adminCodec.clientRet.encode,
      handle: (_c, a: LookupClientArgs): AdminClientRef => {
        const s = findServer(b, a.srv);
        checkFlags(a.flags, 'adminServerLookupClient');
        return clientRef(s.name, findClient(s, a.id));
      },
    },
    {
      proc: AdminProc.CLIENT_GET_INFO,
      name: 'CLIENT_GET_INFO',
      decodeArgs: adminCodec.client.decode,
      encodeRet: adminCodec.params(ADMIN_CLIENT_INFO_PARAMETERS_MAX).encode,
      handle: (_c, a: ClientArgs): TypedParam[] => {
        const s = findServer(b, a.clnt.srv, noServerMatching);
        const c = findClient(s, a.clnt.id, noClientMatching);
        checkFlags(a.flags, 'adminClientGetInfo');
        return c.info().slice(0, ADMIN_CLIENT_INFO_PARAMETERS_MAX);
      },
    },
    {
      proc: AdminProc.CLIENT_CLOSE,
      name: 'CLIENT_CLOSE',
      decodeArgs: adminCodec.client.decode,
      handle: (_c, a: ClientArgs) => {
        const s = findServer(b, a.clnt.srv);
        const c = findClient(s, a.clnt.id);
        checkFlags(a.flags, 'adminClientClose');
        c.close();
      },
    },
    {
      proc: AdminProc.SERVER_GET_CLIENT_LIMITS,
      name: 'SERVER_GET_CLIENT_LIMITS',
      decodeArgs: adminCodec.server.decode,
      encodeRet: adminCodec.params(ADMIN_SERVER_CLIENT_LIMITS_MAX).encode,
      handle: (_c, a: ServerArgs): TypedParam[] => {
        const s = findServer(b, a.srv);
        checkFlags(a.flags, 'adminServerGetClientLimits');
        const l = s.limits();
        return [
          uintParam('nclients_max', l.max),
          uintParam('nclients', l.current),
          uintParam('nclients_unauth_max', l.unauthMax),
          uintParam('nclients_unauth', l.unauthCurrent),
        ];
      },
    },
    {
      proc: AdminProc.SERVER_SET_CLIENT_LIMITS,
      name: 'SERVER_SET_CLIENT_LIMITS',
      decodeArgs: adminCodec.serverParams(ADMIN_SERVER_CLIENT_LIMITS_MAX).decode,
      handle: (_c, a: ServerParamsArgs) => {
        const s = findServer(b, a.srv, noServerMatching);
        checkFlags(a.flags, 'adminServerSetClientLimits');
        const p = validateParams(a.params, { nclients_max: 'uint', nclients_unauth_max: 'uint' });
        const max = (p.get('nclients_max')?.value as number | undefined) ?? null;
        const unauth = (p.get('nclients_unauth_max')?.value as number | undefined) ?? null;
        const cur = s.limits();
        if ((max ?? cur.max) < (unauth ?? cur.unauthMax)) {
          // virNetServerSetClientLimits' text, verbatim.
          throw invalidArg(
            ErrorDomain.RPC,
            'The overall maximum number of clients waiting for authentication must not be less than the overall maximum number of clients',
          );
        }
        s.setLimits(max, unauth);
      },
    },
    {
      proc: AdminProc.CONNECT_GET_LOGGING_OUTPUTS,
      name: 'CONNECT_GET_LOGGING_OUTPUTS',
      decodeArgs: adminCodec.flags.decode,
      encodeRet: adminCodec.loggingOutputs.encode,
      handle: (_c, a: FlagsArgs): LoggingOutputsRet => {
        checkFlags(a.flags, 'adminConnectGetLoggingOutputs');
        const o = b.getLoggingOutputs();
        return { outputs: o.outputs, noutputs: o.count };
      },
    },
    {
      proc: AdminProc.CONNECT_GET_LOGGING_FILTERS,
      name: 'CONNECT_GET_LOGGING_FILTERS',
      decodeArgs: adminCodec.flags.decode,
      encodeRet: adminCodec.loggingFilters.encode,
      handle: (_c, a: FlagsArgs): LoggingFiltersRet => {
        checkFlags(a.flags, 'adminConnectGetLoggingFilters');
        const f = b.getLoggingFilters();
        return { filters: f.count > 0 ? f.filters : null, nfilters: f.count };
      },
    },
    {
      proc: AdminProc.CONNECT_SET_LOGGING_OUTPUTS,
      name: 'CONNECT_SET_LOGGING_OUTPUTS',
      decodeArgs: adminCodec.optString.decode,
      handle: (_c, a: StringArgs) => {
        checkFlags(a.flags, 'adminConnectSetLoggingOutputs');
        b.setLoggingOutputs(a.value ?? '');
      },
    },
    {
      proc: AdminProc.CONNECT_SET_LOGGING_FILTERS,
      name: 'CONNECT_SET_LOGGING_FILTERS',
      decodeArgs: adminCodec.optString.decode,
      handle: (_c, a: StringArgs) => {
        checkFlags(a.flags, 'adminConnectSetLoggingFilters');
        b.setLoggingFilters(a.value ?? '');
      },
    },
    {
      proc: AdminProc.SERVER_UPDATE_TLS_FILES,
      name: 'SERVER_UPDATE_TLS_FILES',
      decodeArgs: adminCodec.server.decode,
      handle: (_c, a: ServerArgs) => {
        findServer(b, a.srv);
        checkFlags(a.flags, 'adminServerUpdateTlsFiles');
        throw ProtocolError.report(ErrorCode.INTERNAL_ERROR, ErrorDomain.RPC, 'no tls service found, unable to update tls files');
      },
    },
    {
      proc: AdminProc.CONNECT_SET_DAEMON_TIMEOUT,
      name: 'CONNECT_SET_DAEMON_TIMEOUT',
      decodeArgs: adminCodec.timeout.decode,
      handle: (_c, a: TimeoutArgs) => {
        checkFlags(a.flags, 'adminConnectSetDaemonTimeout');
        b.setDaemonTimeout(a.timeout);
      },
    },
  ];
}

export function adminProgram(backend: AdminBackend): Program<AdminContext> {
  return defineProgram('admin', ADMIN_PROGRAM, ADMIN_PROTOCOL_VERSION, rows(backend));
}

/** "1.2.3" → 1002003, libvirt's version number encoding. */
export function encodeVersion(v: string): number {
  const [maj = 0, min = 0, mic = 0] = v.split(/[.+-]/).map((x) => Number.parseInt(x, 10) || 0);
  return maj * 1_000_000 + min * 1_000 + mic;
}

export function decodeVersion(n: number | bigint): string {
  const v = Number(n);
  return `${Math.floor(v / 1_000_000)}.${Math.floor(v / 1_000) % 1_000}.${v % 1_000}`;
}
