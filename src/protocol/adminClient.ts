// Client side of the admin socket: libvirt's admin program (what virt-admin
// sends) and relockd's own. Used by relockctl and the tests.

import { RpcClient } from '../rpc/client.js';
import type { Codec } from '../rpc/program.js';
import { ADMIN_PROGRAM, ADMIN_PROTOCOL_VERSION, adminRows as A } from './admin.js';
import type { AdminClientRef, LoggingFiltersRet, LoggingOutputsRet, TypedParam } from './admin.js';
import { RELOCKD_ADMIN_PROGRAM, RELOCKD_ADMIN_VERSION, relockdAdminRows as R } from './relockdAdmin.js';
import type { ClientInfo, DaemonInfo, HandbackRefused, HealthInfo, LockspaceInfo, ReexecResult, ResourceInfo } from './relockdAdmin.js';

/** What a client needs of a row: the number and both codecs (rpc/program.ts). */
export interface CallableRow<A, R> {
  readonly proc: number;
  readonly args: Codec<A>;
  readonly ret?: Codec<R>;
}

export class AdminClient {
  constructor(readonly rpc: RpcClient) {}

  /** Connects and sends CONNECT_OPEN, as virt-admin does. */
  static async connect(path: string, timeoutMs?: number): Promise<AdminClient> {
    const c = new AdminClient(await RpcClient.connect(path, timeoutMs));
    try {
      await c.open();
    } catch (e) {
      c.close();
      throw e;
    }
    return c;
  }

  /** Calls one row of a program: its args codec encodes, its ret codec decodes. */
  private async call<A, R>(prog: number, vers: number, row: CallableRow<A, R>, args: A): Promise<R> {
    const r = await this.rpc.call(prog, vers, row.proc, (w) => row.args.encode(w, args));
    return (row.ret ? row.ret.decode(r) : undefined) as R;
  }

  /** Any procedure of libvirt's admin program, by its row: `c.admin(adminRows.CONNECT_LIST_SERVERS, {...})`. */
  admin<A, R>(row: CallableRow<A, R>, args: A): Promise<R> {
    return this.call(ADMIN_PROGRAM, ADMIN_PROTOCOL_VERSION, row, args);
  }

  /** Any procedure of relockd's admin program, by its row: `c.relockd(relockdAdminRows.GET_METRICS, { flags: 0 })`. */
  relockd<A, R>(row: CallableRow<A, R>, args: A): Promise<R> {
    return this.call(RELOCKD_ADMIN_PROGRAM, RELOCKD_ADMIN_VERSION, row, args);
  }

  // ---- libvirt's admin program -------------------------------------------------

  open(flags = 0): Promise<void> {
    return this.admin(A.CONNECT_OPEN, { flags });
  }

  closeConnection(): Promise<void> {
    return this.admin(A.CONNECT_CLOSE, undefined);
  }

  libVersion(): Promise<bigint> {
    return this.admin(A.CONNECT_GET_LIB_VERSION, undefined);
  }

  listServers(needResults = 1, flags = 0) {
    return this.admin(A.CONNECT_LIST_SERVERS, { needResults, flags });
  }

  lookupServer(name: string, flags = 0): Promise<string> {
    return this.admin(A.CONNECT_LOOKUP_SERVER, { name, flags });
  }

  threadpoolParameters(srv: string, flags = 0): Promise<TypedParam[]> {
    return this.admin(A.SERVER_GET_THREADPOOL_PARAMETERS, { srv, flags });
  }

  setThreadpoolParameters(srv: string, params: TypedParam[], flags = 0): Promise<void> {
    return this.admin(A.SERVER_SET_THREADPOOL_PARAMETERS, { srv, params, flags });
  }

  listClients(srv: string, needResults = 1, flags = 0) {
    return this.admin(A.SERVER_LIST_CLIENTS, { srv, needResults, flags });
  }

  lookupClient(srv: string, id: number | bigint, flags = 0): Promise<AdminClientRef> {
    return this.admin(A.SERVER_LOOKUP_CLIENT, { srv, id: BigInt(id), flags });
  }

  clientInfo(clnt: AdminClientRef, flags = 0): Promise<TypedParam[]> {
    return this.admin(A.CLIENT_GET_INFO, { clnt, flags });
  }

  clientClose(clnt: AdminClientRef, flags = 0): Promise<void> {
    return this.admin(A.CLIENT_CLOSE, { clnt, flags });
  }

  clientLimits(srv: string, flags = 0): Promise<TypedParam[]> {
    return this.admin(A.SERVER_GET_CLIENT_LIMITS, { srv, flags });
  }

  setClientLimits(srv: string, params: TypedParam[], flags = 0): Promise<void> {
    return this.admin(A.SERVER_SET_CLIENT_LIMITS, { srv, params, flags });
  }

  loggingOutputs(flags = 0): Promise<LoggingOutputsRet> {
    return this.admin(A.CONNECT_GET_LOGGING_OUTPUTS, { flags });
  }

  loggingFilters(flags = 0): Promise<LoggingFiltersRet> {
    return this.admin(A.CONNECT_GET_LOGGING_FILTERS, { flags });
  }

  setLoggingOutputs(value: string | null, flags = 0): Promise<void> {
    return this.admin(A.CONNECT_SET_LOGGING_OUTPUTS, { value, flags });
  }

  setLoggingFilters(value: string | null, flags = 0): Promise<void> {
    return this.admin(A.CONNECT_SET_LOGGING_FILTERS, { value, flags });
  }

  updateTlsFiles(srv: string, flags = 0): Promise<void> {
    return this.admin(A.SERVER_UPDATE_TLS_FILES, { srv, flags });
  }

  setDaemonTimeout(timeout: number, flags = 0): Promise<void> {
    return this.admin(A.CONNECT_SET_DAEMON_TIMEOUT, { timeout, flags });
  }

  // ---- relockd's program (named shorthands for relockctl and the tests) --------

  daemonInfo(flags = 0): Promise<DaemonInfo> {
    return this.relockd(R.GET_DAEMON_INFO, { flags });
  }

  lockspaces(flags = 0): Promise<LockspaceInfo[]> {
    return this.relockd(R.LIST_LOCKSPACES, { flags });
  }

  /** lockspace: exact lock-space path ('' default), or null for all. */
  resources(lockspace: string | null = null, flags = 0): Promise<ResourceInfo[]> {
    return this.relockd(R.LIST_RESOURCES, { filter: lockspace, flags });
  }

  /** server: 'virtlockd' or 'admin', or null for both. */
  clients(server: string | null = null, flags = 0): Promise<ClientInfo[]> {
    return this.relockd(R.LIST_CLIENTS, { filter: server, flags });
  }

  reexec(flags = 0): Promise<ReexecResult> {
    return this.relockd(R.REEXEC, { flags });
  }

  /** Resolves with a refusal; on success the connection closes (ConnectionClosedError). */
  handback(path: string, args: string[], flags = 0): Promise<HandbackRefused> {
    return this.relockd(R.HANDBACK, { path, args, flags });
  }

  /** The Prometheus text exposition (relockctl metrics). */
  metrics(flags = 0): Promise<string> {
    return this.relockd(R.GET_METRICS, { flags });
  }

  close(): void {
    this.rpc.close();
  }

  /** Lock-space health watches. */
  health(flags = 0): Promise<HealthInfo[]> {
    return this.relockd(R.LIST_HEALTH, { flags });
  }

  /** Releases an owner's leases in a lock space after a lock failure (killpath programs). */
  releaseOwnerLeases(pid: number, lockspace: string, flags = 0): Promise<number> {
    return this.relockd(R.RELEASE_OWNER_LEASES, { pid, lockspace, flags });
  }
}
