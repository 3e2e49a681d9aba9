// libvirt's admin program (0x06900690 v1, src/admin/admin_protocol.x), as a
// table: what virt-admin sends to virtlockd's admin socket. Rows decode the
// args, check flags the way libvirt's handlers do (virCheckFlags in the named
// C function, after the server lookup where libvirt looks up first), call the
// backend and encode the reply. The backend (services/adminService.ts) owns the
// state; this file owns the wire.

import { E } from '../util/errorCatalogue.js';
import type { Codec, Program, ProgramSpec } from '../rpc/program.js';
import { ANY_FLAGS, flagsCodec, rowOf, rowsProgram, voidCodec } from '../rpc/program.js';
import { XdrDecodeError } from '../rpc/xdr.js';
import type { XdrReader, XdrWriter } from '../rpc/xdr.js';

export const ADMIN_PROGRAM = 0x06900690;
export const ADMIN_PROTOCOL_VERSION = 1;

const ADMIN_STRING_MAX = 4194304;
const ADMIN_SERVER_LIST_MAX = 16384;
const ADMIN_SERVER_THREADPOOL_PARAMETERS_MAX = 32;
const ADMIN_CLIENT_LIST_MAX = 16384;
const ADMIN_CLIENT_INFO_PARAMETERS_MAX = 64;
const ADMIN_SERVER_CLIENT_LIMITS_MAX = 32;
/** VIR_TYPED_PARAM_FIELD_LENGTH */
const TYPED_PARAM_FIELD_LENGTH = 80;

/** virClientTransport */
export const ClientTransport = { UNIX: 0, TCP: 1, TLS: 2 } as const;

// ---- typed parameters (admin_typed_param) ---------------------------------

export type TypedParam =
  | { field: string; type: 'int'; value: number }
  | { field: string; type: 'uint'; value: number }
  | { field: string; type: 'llong'; value: bigint }
  | { field: string; type: 'ullong'; value: bigint }
  | { field: string; type: 'double'; value: number }
  | { field: string; type: 'boolean'; value: boolean }
  | { field: string; type: 'string'; value: string };

type TypedParamTypeName = TypedParam['type'];

/** virTypedParameterType numbers (VIR_TYPED_PARAM_INT = 1 … _STRING = 7). */
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

function decodeTypedParam(r: XdrReader): TypedParam {
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

function encodeTypedParam(w: XdrWriter, p: TypedParam): void {
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
const adminCodec = {
  flags: flagsCodec,
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
  serverParams: (max: number): Codec<ServerParamsArgs> => ({
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
  params: (max: number): Codec<TypedParam[]> => ({
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

// ---- typed parameters (virTypedParamsValidate) -----------------------------------

/**
 * virTypedParamsValidate: every parameter must be one of `allowed`, with its
 * type; duplicates are refused. Returns the values by name.
 */
function validateParams(params: TypedParam[], allowed: Record<string, TypedParamTypeName>): Map<string, TypedParam> {
  const out = new Map<string, TypedParam>();
  for (const p of params) {
    if (Buffer.byteLength(p.field) > TYPED_PARAM_FIELD_LENGTH - 1) throw E.PARAM_NAME_TOO_LONG({ field: p.field });
    const want = allowed[p.field];
    if (!want) throw E.PARAM_UNSUPPORTED({ field: p.field });
    if (p.type !== want) throw E.PARAM_BAD_TYPE({ type: p.type, field: p.field, expected: want });
    if (out.has(p.field)) throw E.PARAM_DUPLICATE({ field: p.field });
    out.set(p.field, p);
  }
  return out;
}

const uintParam = (field: string, value: number): TypedParam => ({ field, type: 'uint', value });

// ---- lookups (what libvirt resolves before virCheckFlags) ---------------------------

type Lookup<A> = (b: AdminBackend, a: A) => AdminServerHandle;

/** virNetDaemonGetServer (domain RPC); `matching`: the admin dispatcher's wording (domain ADMIN). */
function findServer(b: AdminBackend, name: string, matching = false): AdminServerHandle {
  const s = b.servers().find((x) => x.name === name);
  if (!s) throw matching ? E.NO_SERVER_MATCHING({ name }) : E.NO_SERVER({ name });
  return s;
}

function findClient(s: AdminServerHandle, id: bigint, matching = false): AdminClientHandle {
  const c = id <= BigInt(Number.MAX_SAFE_INTEGER) ? s.client(Number(id)) : undefined;
  if (!c) throw matching ? E.NO_CLIENT_MATCHING({ id }) : E.NO_CLIENT({ id });
  return c;
}

const server: Lookup<{ srv: string }> = (b, a) => findServer(b, a.srv);
const serverMatching: Lookup<{ srv: string }> = (b, a) => findServer(b, a.srv, true);

function clientRef(srv: string, c: AdminClientHandle): AdminClientRef {
  return { srv, id: BigInt(c.id), timestamp: BigInt(c.connTime), transport: c.transport };
}

/** relockd serves every request on its event loop: libvirt reports a pool of zero workers. */
const THREADPOOL_PARAMS = ['minWorkers', 'maxWorkers', 'nWorkers', 'freeWorkers', 'prioWorkers', 'jobQueueDepth'];

// ---- the table ----------------------------------------------------------------------

const row = rowOf<AdminBackend, AdminContext>();
const threadpoolParams = adminCodec.params(ADMIN_SERVER_THREADPOOL_PARAMETERS_MAX);
const clientInfoParams = adminCodec.params(ADMIN_CLIENT_INFO_PARAMETERS_MAX);
const clientLimitParams = adminCodec.params(ADMIN_SERVER_CLIENT_LIMITS_MAX);

/** libvirt's admin program, one row per procedure; fn: the C function whose virCheckFlags it mirrors. */
export const adminRows = {
  CONNECT_OPEN: row({ proc: 1, fn: 'adminDispatchConnectOpen', flagsMask: 0, args: adminCodec.flags, run: () => {} }),
  CONNECT_CLOSE: row({
    proc: 2,
    args: voidCodec,
    // virNetServerClientDelayedClose: the reply goes out, then the close.
    run: (_b, c) => c.closeAfterReply(),
  }),
  CONNECT_GET_LIB_VERSION: row({ proc: 3, args: voidCodec, ret: adminCodec.libVersion, run: (b) => BigInt(b.libVersion) }),
  CONNECT_LIST_SERVERS: row({
    proc: 4, fn: 'adminConnectListServers', flagsMask: 0,
    args: adminCodec.list,
    ret: adminCodec.listServers,
    run: (b, _c, a) => {
      const names = b.servers().map((s) => s.name);
      return { servers: a.needResults ? names : [], ret: names.length };
    },
  }),
  CONNECT_LOOKUP_SERVER: row({
    // libvirt's adminConnectLookupServer does virCheckFlags(flags, NULL):
    // every flag is "supported", so none is refused here either.
    proc: 5, fn: 'adminConnectLookupServer', flagsMask: ANY_FLAGS,
    args: adminCodec.lookupServer,
    ret: adminCodec.serverRet,
    run: (b, _c, a) => findServer(b, a.name).name,
  }),
  SERVER_GET_THREADPOOL_PARAMETERS: row({
    proc: 6, resolve: server, fn: 'adminServerGetThreadPoolParameters', flagsMask: 0,
    args: adminCodec.server,
    ret: threadpoolParams,
    run: () => THREADPOOL_PARAMS.map((f) => uintParam(f, 0)),
  }),
  SERVER_SET_THREADPOOL_PARAMETERS: row({
    proc: 7, resolve: serverMatching, fn: 'adminServerSetThreadPoolParameters', flagsMask: 0,
    args: adminCodec.serverParams(ADMIN_SERVER_THREADPOOL_PARAMETERS_MAX),
    run: (_b, _c, a) => {
      const p = validateParams(a.params, { minWorkers: 'uint', maxWorkers: 'uint', prioWorkers: 'uint' });
      const min = p.get('minWorkers')?.value as number | undefined;
      const max = p.get('maxWorkers')?.value as number | undefined;
      const prio = p.get('prioWorkers')?.value as number | undefined;
      // The pool is min = max = prio = 0 and stays so (virThreadPoolSetParameters' checks and texts).
      if (min !== undefined && min > (max ?? 0)) throw E.MIN_WORKERS_OVER_MAX();
      if (max !== undefined && max > 0) throw E.MAX_WORKERS_SWITCH();
      if (prio !== undefined && prio > 0) throw E.PRIO_WORKERS();
    },
  }),
  SERVER_LIST_CLIENTS: row({
    proc: 8, resolve: server, fn: 'adminServerListClients', flagsMask: 0,
    args: adminCodec.listClients,
    ret: adminCodec.listClientsRet,
    run: (_b, _c, a, s) => {
      const clients = s.clients();
      if (clients.length > ADMIN_CLIENT_LIST_MAX) throw E.TOO_MANY_CLIENTS({ count: clients.length, limit: ADMIN_CLIENT_LIST_MAX });
      return { clients: a.needResults ? clients.map((c) => clientRef(s.name, c)) : [], ret: clients.length };
    },
  }),
  SERVER_LOOKUP_CLIENT: row({
    proc: 9, resolve: server, fn: 'adminServerLookupClient', flagsMask: 0,
    args: adminCodec.lookupClient,
    ret: adminCodec.clientRet,
    // The client lookup is the function's own, after its flag check.
    run: (_b, _c, a, s) => clientRef(s.name, findClient(s, a.id)),
  }),
  CLIENT_GET_INFO: row({
    proc: 10,
    resolve: (b, a) => findClient(findServer(b, a.clnt.srv, true), a.clnt.id, true),
    fn: 'adminClientGetInfo', flagsMask: 0,
    args: adminCodec.client,
    ret: clientInfoParams,
    run: (_b, _c, _a, c) => c.info().slice(0, ADMIN_CLIENT_INFO_PARAMETERS_MAX),
  }),
  CLIENT_CLOSE: row({
    proc: 11,
    resolve: (b, a) => findClient(findServer(b, a.clnt.srv), a.clnt.id),
    fn: 'adminClientClose', flagsMask: 0,
    args: adminCodec.client,
    run: (_b, _c, _a, c) => c.close(),
  }),
  SERVER_GET_CLIENT_LIMITS: row({
    proc: 12, resolve: server, fn: 'adminServerGetClientLimits', flagsMask: 0,
    args: adminCodec.server,
    ret: clientLimitParams,
    run: (_b, _c, _a, s) => {
      const l = s.limits();
      return [
        uintParam('nclients_max', l.max),
        uintParam('nclients', l.current),
        uintParam('nclients_unauth_max', l.unauthMax),
        uintParam('nclients_unauth', l.unauthCurrent),
      ];
    },
  }),
  SERVER_SET_CLIENT_LIMITS: row({
    proc: 13, resolve: serverMatching, fn: 'adminServerSetClientLimits', flagsMask: 0,
    args: adminCodec.serverParams(ADMIN_SERVER_CLIENT_LIMITS_MAX),
    run: (_b, _c, a, s) => {
      const p = validateParams(a.params, { nclients_max: 'uint', nclients_unauth_max: 'uint' });
      const max = (p.get('nclients_max')?.value as number | undefined) ?? null;
      const unauth = (p.get('nclients_unauth_max')?.value as number | undefined) ?? null;
      const cur = s.limits();
      if ((max ?? cur.max) < (unauth ?? cur.unauthMax)) throw E.CLIENT_LIMITS_ORDER();
      s.setLimits(max, unauth);
    },
  }),
  CONNECT_GET_LOGGING_OUTPUTS: row({
    proc: 14, fn: 'adminConnectGetLoggingOutputs', flagsMask: 0,
    args: adminCodec.flags,
    ret: adminCodec.loggingOutputs,
    run: (b) => {
      const o = b.getLoggingOutputs();
      return { outputs: o.outputs, noutputs: o.count };
    },
  }),
  CONNECT_GET_LOGGING_FILTERS: row({
    proc: 15, fn: 'adminConnectGetLoggingFilters', flagsMask: 0,
    args: adminCodec.flags,
    ret: adminCodec.loggingFilters,
    run: (b) => {
      const f = b.getLoggingFilters();
      return { filters: f.count > 0 ? f.filters : null, nfilters: f.count };
    },
  }),
  CONNECT_SET_LOGGING_OUTPUTS: row({
    proc: 16, fn: 'adminConnectSetLoggingOutputs', flagsMask: 0,
    args: adminCodec.optString,
    run: (b, _c, a) => b.setLoggingOutputs(a.value ?? ''),
  }),
  CONNECT_SET_LOGGING_FILTERS: row({
    proc: 17, fn: 'adminConnectSetLoggingFilters', flagsMask: 0,
    args: adminCodec.optString,
    run: (b, _c, a) => b.setLoggingFilters(a.value ?? ''),
  }),
  SERVER_UPDATE_TLS_FILES: row({
    proc: 18, resolve: server, fn: 'adminServerUpdateTlsFiles', flagsMask: 0,
    args: adminCodec.server,
    run: (): void => {
      throw E.NO_TLS();
    },
  }),
  CONNECT_SET_DAEMON_TIMEOUT: row({
    proc: 19, fn: 'adminConnectSetDaemonTimeout', flagsMask: 0,
    args: adminCodec.timeout,
    run: (b, _c, a) => b.setDaemonTimeout(a.timeout),
  }),
};

const SPEC: ProgramSpec = { name: 'admin', prog: ADMIN_PROGRAM, vers: ADMIN_PROTOCOL_VERSION, flagsError: E.ADMIN_UNSUPPORTED_FLAGS };

export function adminProgram(backend: AdminBackend): Program<AdminContext> {
  return rowsProgram(SPEC, adminRows, backend);
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
