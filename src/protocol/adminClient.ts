// Client side of the admin socket: libvirt's admin program (what virt-admin
// sends) and relockd's own. Used by relockctl and the tests.

import { RpcClient } from '../rpc/client.js';
import type { XdrReader, XdrWriter } from '../rpc/xdr.js';
import { ADMIN_CLIENT_INFO_PARAMETERS_MAX, ADMIN_PROGRAM, ADMIN_PROTOCOL_VERSION, ADMIN_SERVER_CLIENT_LIMITS_MAX, ADMIN_SERVER_THREADPOOL_PARAMETERS_MAX, AdminProc, adminCodec } from './admin.js';
import type { AdminClientRef, LoggingFiltersRet, LoggingOutputsRet, TypedParam } from './admin.js';
import { RELOCKD_ADMIN_PROGRAM, RELOCKD_ADMIN_VERSION, RelockdProc, relockdCodec } from './relockdAdmin.js';
import type { ClientInfo, DaemonInfo, HandbackRefused, HealthInfo, LockspaceInfo, ReexecResult, ResourceInfo } from './relockdAdmin.js';

type Enc = (w: XdrWriter) => void;

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

  private async admin<T>(proc: number, enc?: Enc, dec?: (r: XdrReader) => T): Promise<T> {
    const r = await this.rpc.call(ADMIN_PROGRAM, ADMIN_PROTOCOL_VERSION, proc, enc);
    return (dec ? dec(r) : undefined) as T;
  }

  private async ours<T>(proc: number, enc: Enc, dec?: (r: XdrReader) => T): Promise<T> {
    const r = await this.rpc.call(RELOCKD_ADMIN_PROGRAM, RELOCKD_ADMIN_VERSION, proc, enc);
    return (dec ? dec(r) : undefined) as T;
  }

  // ---- libvirt's admin program -------------------------------------------------

  open(flags = 0): Promise<void> {
    return this.admin(AdminProc.CONNECT_OPEN, (w) => adminCodec.flags.encode(w, { flags }));
  }

  closeConnection(): Promise<void> {
    return this.admin(AdminProc.CONNECT_CLOSE);
  }

  libVersion(): Promise<bigint> {
    return this.admin(AdminProc.CONNECT_GET_LIB_VERSION, undefined, adminCodec.libVersion.decode);
  }

  listServers(needResults = 1, flags = 0) {
    return this.admin(AdminProc.CONNECT_LIST_SERVERS, (w) => adminCodec.list.encode(w, { needResults, flags }), adminCodec.listServers.decode);
  }

  lookupServer(name: string, flags = 0): Promise<string> {
    return this.admin(AdminProc.CONNECT_LOOKUP_SERVER, (w) => adminCodec.lookupServer.encode(w, { name, flags }), adminCodec.serverRet.decode);
  }

  threadpoolParameters(srv: string, flags = 0): Promise<TypedParam[]> {
    return this.admin(AdminProc.SERVER_GET_THREADPOOL_PARAMETERS, (w) => adminCodec.server.encode(w, { srv, flags }), adminCodec.params(ADMIN_SERVER_THREADPOOL_PARAMETERS_MAX).decode);
  }

  setThreadpoolParameters(srv: string, params: TypedParam[], flags = 0): Promise<void> {
    return this.admin(AdminProc.SERVER_SET_THREADPOOL_PARAMETERS, (w) => adminCodec.serverParams(ADMIN_SERVER_THREADPOOL_PARAMETERS_MAX).encode(w, { srv, params, flags }));
  }

  listClients(srv: string, needResults = 1, flags = 0) {
    return this.admin(AdminProc.SERVER_LIST_CLIENTS, (w) => adminCodec.listClients.encode(w, { srv, needResults, flags }), adminCodec.listClientsRet.decode);
  }

  lookupClient(srv: string, id: number | bigint, flags = 0): Promise<AdminClientRef> {
    return this.admin(AdminProc.SERVER_LOOKUP_CLIENT, (w) => adminCodec.lookupClient.encode(w, { srv, id: BigInt(id), flags }), adminCodec.clientRet.decode);
  }

  clientInfo(clnt: AdminClientRef, flags = 0): Promise<TypedParam[]> {
    return this.admin(AdminProc.CLIENT_GET_INFO, (w) => adminCodec.client.encode(w, { clnt, flags }), adminCodec.params(ADMIN_CLIENT_INFO_PARAMETERS_MAX).decode);
  }

  clientClose(clnt: AdminClientRef, flags = 0): Promise<void> {
    return this.admin(AdminProc.CLIENT_CLOSE, (w) => adminCodec.client.encode(w, { clnt, flags }));
  }

  clientLimits(srv: string, flags = 0): Promise<TypedParam[]> {
    return this.admin(AdminProc.SERVER_GET_CLIENT_LIMITS, (w) => adminCodec.server.encode(w, { srv, flags }), adminCodec.params(ADMIN_SERVER_CLIENT_LIMITS_MAX).decode);
  }

  setClientLimits(srv: string, params: TypedParam[], flags = 0): Promise<void> {
    return this.admin(AdminProc.SERVER_SET_CLIENT_LIMITS, (w) => adminCodec.serverParams(ADMIN_SERVER_CLIENT_LIMITS_MAX).encode(w, { srv, params, flags }));
  }

  loggingOutputs(flags = 0): Promise<LoggingOutputsRet> {
    return this.admin(AdminProc.CONNECT_GET_LOGGING_OUTPUTS, (w) => adminCodec.flags.encode(w, { flags }), adminCodec.loggingOutputs.decode);
  }

  loggingFilters(flags = 0): Promise<LoggingFiltersRet> {
    return this.admin(AdminProc.CONNECT_GET_LOGGING_FILTERS, (w) => adminCodec.flags.encode(w, { flags }), adminCodec.loggingFilters.decode);
  }

  setLoggingOutputs(value: string | null, flags = 0): Promise<void> {
    return this.admin(AdminProc.CONNECT_SET_LOGGING_OUTPUTS, (w) => adminCodec.optString.encode(w, { value, flags }));
  }

  setLoggingFilters(value: string | null, flags = 0): Promise<void> {
    return this.admin(AdminProc.CONNECT_SET_LOGGING_FILTERS, (w) => adminCodec.optString.encode(w, { value, flags }));
  }

  updateTlsFiles(srv: string, flags = 0): Promise<void> {
    return this.admin(AdminProc.SERVER_UPDATE_TLS_FILES, (w) => adminCodec.server.encode(w, { srv, flags }));
  }

  setDaemonTimeout(timeout: number, flags = 0): Promise<void> {
    return this.admin(AdminProc.CONNECT_SET_DAEMON_TIMEOUT, (w) => adminCodec.timeout.encode(w, { timeout, flags }));
  }

  // ---- relockd's program ---------------------------------------------------------

  daemonInfo(flags = 0): Promise<DaemonInfo> {
    return this.ours(RelockdProc.GET_DAEMON_INFO, (w) => relockdCodec.flags.encode(w, { flags }), relockdCodec.daemonInfo.decode);
  }

  lockspaces(flags = 0): Promise<LockspaceInfo[]> {
    return this.ours(RelockdProc.LIST_LOCKSPACES, (w) => relockdCodec.flags.encode(w, { flags }), relockdCodec.lockspaces.decode);
  }

  /** lockspace: exact lock-space path ('' default), or null for all. */
  resources(lockspace: string | null = null, flags = 0): Promise<ResourceInfo[]> {
    return this.ours(RelockdProc.LIST_RESOURCES, (w) => relockdCodec.filter.encode(w, { filter: lockspace, flags }), relockdCodec.resources.decode);
  }

  /** server: 'virtlockd' or 'admin', or null for both. */
  clients(server: string | null = null, flags = 0): Promise<ClientInfo[]> {
    return this.ours(RelockdProc.LIST_CLIENTS, (w) => relockdCodec.filter.encode(w, { filter: server, flags }), relockdCodec.clients.decode);
  }

  reexec(flags = 0): Promise<ReexecResult> {
    return this.ours(RelockdProc.REEXEC, (w) => relockdCodec.flags.encode(w, { flags }), relockdCodec.reexecResult.decode);
  }

  /** Resolves with a refusal; on success the connection closes (ConnectionClosedError). */
  handback(path: string, args: string[], flags = 0): Promise<HandbackRefused> {
    return this.ours(RelockdProc.HANDBACK, (w) => relockdCodec.handbackArgs.encode(w, { path, args, flags }), relockdCodec.handbackRefused.decode);
  }

  /** The Prometheus text exposition (relockctl metrics). */
  metrics(flags = 0): Promise<string> {
    return this.ours(RelockdProc.GET_METRICS, (w) => relockdCodec.flags.encode(w, { flags }), relockdCodec.text.decode);
  }

  close(): void {
    this.rpc.close();
  }

  /** Lock-space health watches. */
  health(flags = 0): Promise<HealthInfo[]> {
    return this.ours(RelockdProc.LIST_HEALTH, (w) => relockdCodec.flags.encode(w, { flags }), relockdCodec.health.decode);
  }

  /** Releases an owner's leases in a lock space after a lock failure (killpath programs). */
  releaseOwnerLeases(pid: number, lockspace: string, flags = 0): Promise<number> {
    return this.ours(RelockdProc.RELEASE_OWNER_LEASES, (w) => relockdCodec.releaseOwner.encode(w, { pid, lockspace, flags }), relockdCodec.count.decode);
  }
}
