// Known values for the golden wire fixtures (test/fixtures/wire/<program>/):
// one call and one reply per procedure of each program, plus one error reply
// per program, in the shape the table's codecs take. test/wire-fixtures.test.ts
// encodes these and compares byte for byte with the checked-in files; the
// files are written only by `npm run wire:fixtures` (test/wire/regenerate.ts).
//
// Paths and names are byte strings (src/byteString.ts): '\xe9' is the single
// byte 0xe9, which is not UTF-8 — on purpose, as libvirt sends bytes.

import { ErrorCode, ErrorDomain, ProtocolError } from '../../src/util/errors.js';
import type { WireError } from '../../src/util/errors.js';

export interface WireCase {
  proc: number;
  name: string;
  /** Call arguments (undefined: no arguments). */
  args?: unknown;
  /** Reply value (undefined: void reply). */
  ret?: unknown;
}

export interface ProgramCases {
  cases: WireCase[];
  /** One error reply, sent for `proc`. */
  error: { proc: number; wire: WireError };
}

const uuid = 'c7a5fdbd-edaf-9455-926a-d65c16db1809';
const owner = { uuid, name: 'guest-1', id: 3, pid: 4242 };
const lsDir = '/var/lib/libvirt/lockd/files';
const resName = '5a7d2b0c1e4f\xe9.lease';

const lockspaceCases: ProgramCases = {
  cases: [
    { proc: 1, name: 'REGISTER', args: { owner, flags: 0 } },
    { proc: 2, name: 'RESTRICT', args: { flags: 0 } },
    { proc: 3, name: 'NEW', args: { path: lsDir, flags: 0 } },
    { proc: 4, name: 'CREATE_RESOURCE', args: { path: lsDir, name: resName, flags: 0 } },
    { proc: 5, name: 'DELETE_RESOURCE', args: { path: lsDir, name: resName, flags: 0 } },
    { proc: 6, name: 'ACQUIRE_RESOURCE', args: { path: '', name: '/var/lib/libvirt/images/g1.qcow2', flags: 3 } },
    { proc: 7, name: 'RELEASE_RESOURCE', args: { path: '', name: '/var/lib/libvirt/images/g1.qcow2', flags: 0 } },
    { proc: 8, name: 'CREATE_LOCKSPACE', args: { path: lsDir } },
  ],
  error: {
    proc: 6,
    // 42 = VIR_FROM_LOCKING, a domain relockd does not send (ErrorDomain lists only those): the fixture pins the layout.
    wire: ProtocolError.report(ErrorCode.RESOURCE_BUSY, 42, 'Lockspace resource \'/var/lib/libvirt/images/g1.qcow2\' is locked').wire,
  },
};

const clnt = { srv: 'virtlockd', id: 7n, timestamp: 1765065600n, transport: 0 };
const server = { srv: 'admin', flags: 0 };

const adminCases: ProgramCases = {
  cases: [
    { proc: 1, name: 'CONNECT_OPEN', args: { flags: 0 } },
    { proc: 2, name: 'CONNECT_CLOSE' },
    { proc: 3, name: 'CONNECT_GET_LIB_VERSION', ret: 9000000n },
    { proc: 4, name: 'CONNECT_LIST_SERVERS', args: { needResults: 1, flags: 0 }, ret: { servers: ['virtlockd', 'admin'], ret: 2 } },
    { proc: 5, name: 'CONNECT_LOOKUP_SERVER', args: { name: 'virtlockd', flags: 0 }, ret: 'virtlockd' },
    {
      proc: 6,
      name: 'SERVER_GET_THREADPOOL_PARAMETERS',
      args: { srv: 'virtlockd', flags: 0 },
      ret: [
        { field: 'minWorkers', type: 'uint', value: 0 },
        { field: 'maxWorkers', type: 'uint', value: 0 },
      ],
    },
    {
      proc: 7,
      name: 'SERVER_SET_THREADPOOL_PARAMETERS',
      args: { srv: 'virtlockd', params: [{ field: 'prioWorkers', type: 'uint', value: 0 }], flags: 0 },
    },
    {
      proc: 8,
      name: 'SERVER_LIST_CLIENTS',
      args: { srv: 'virtlockd', needResults: 1, flags: 0 },
      ret: { clients: [clnt, { ...clnt, id: 8n, transport: 0 }], ret: 2 },
    },
    { proc: 9, name: 'SERVER_LOOKUP_CLIENT', args: { srv: 'virtlockd', id: 7n, flags: 0 }, ret: clnt },
    {
      proc: 10,
      name: 'CLIENT_GET_INFO',
      args: { clnt, flags: 0 },
      // One parameter of every typed-parameter arm.
      ret: [
        { field: 'readonly', type: 'boolean', value: false },
        { field: 'unix_user_id', type: 'uint', value: 0 },
        { field: 'unix_process_id', type: 'llong', value: 4242n },
        { field: 'sock_addr', type: 'string', value: '127.0.0.1;0' },
        { field: 'signed', type: 'int', value: -5 },
        { field: 'big', type: 'ullong', value: 18446744073709551615n },
        { field: 'ratio', type: 'double', value: 0.25 },
      ],
    },
    { proc: 11, name: 'CLIENT_CLOSE', args: { clnt, flags: 0 } },
    {
      proc: 12,
      name: 'SERVER_GET_CLIENT_LIMITS',
      args: server,
      ret: [
        { field: 'nclients_max', type: 'uint', value: 5000 },
        { field: 'nclients', type: 'uint', value: 1 },
        { field: 'nclients_unauth_max', type: 'uint', value: 0 },
        { field: 'nclients_unauth', type: 'uint', value: 0 },
      ],
    },
    {
      proc: 13,
      name: 'SERVER_SET_CLIENT_LIMITS',
      args: { srv: 'admin', params: [{ field: 'nclients_max', type: 'uint', value: 64 }], flags: 0 },
    },
    { proc: 14, name: 'CONNECT_GET_LOGGING_OUTPUTS', args: { flags: 0 }, ret: { outputs: '3:stderr', noutputs: 1 } },
    { proc: 15, name: 'CONNECT_GET_LOGGING_FILTERS', args: { flags: 0 }, ret: { filters: null, nfilters: 0 } },
    { proc: 16, name: 'CONNECT_SET_LOGGING_OUTPUTS', args: { value: '1:file:/var/log/relockd.log', flags: 0 } },
    { proc: 17, name: 'CONNECT_SET_LOGGING_FILTERS', args: { value: null, flags: 0 } },
    { proc: 18, name: 'SERVER_UPDATE_TLS_FILES', args: server },
    { proc: 19, name: 'CONNECT_SET_DAEMON_TIMEOUT', args: { timeout: 30, flags: 0 } },
  ],
  error: {
    proc: 5,
    wire: ProtocolError.formatted(ErrorCode.NO_SERVER, ErrorDomain.RPC, 'Server not found: %s', "No server named 'nosuch'").wire,
  },
};

const leaseOwner = { pid: 4242, owner, terminating: false };

const relockdCases: ProgramCases = {
  cases: [
    {
      proc: 1,
      name: 'GET_DAEMON_INFO',
      args: { flags: 0 },
      ret: {
        version: '0.1.0',
        pid: 1234,
        startedAt: 1765065600123,
        uptimeMs: 86400000,
        socket: '/run/libvirt/virtlockd-sock',
        adminSocket: '/run/libvirt/virtlockd-admin-sock',
        lockClients: 2,
        adminClients: 1,
        lockspaces: 2,
        resources: 3,
        leases: 4,
        boot: 'restored',
        safeMode: false,
        daemonTimeout: 0,
        reexecSupported: true,
        lastReexec: {
          at: 1765065700456,
          result: { ok: true, blackoutMs: 12 },
          trigger: 'SIGUSR1',
          fromVersion: '0.1.0',
          toVersion: '0.1.1',
        },
        terminations: [{ owner: { ...owner, pid: 999 }, since: 1765065800789, phase: 'sigterm' }],
        configError: null,
        stopping: 'drain',
      },
    },
    {
      proc: 2,
      name: 'LIST_LOCKSPACES',
      args: { flags: 0 },
      ret: [
        { dir: '', resources: 1, leases: 1 },
        { dir: lsDir, resources: 2, leases: 3 },
      ],
    },
    {
      proc: 3,
      name: 'LIST_RESOURCES',
      args: { filter: lsDir, flags: 0 },
      ret: [
        {
          lockspace: lsDir,
          name: resName,
          path: `${lsDir}/${resName}`,
          flags: 3,
          since: 1765065600999,
          fd: 17,
          dev: 2049,
          ino: 131075,
          owners: [leaseOwner, { pid: 4343, owner: null, terminating: true }],
        },
      ],
    },
    {
      proc: 4,
      name: 'LIST_CLIENTS',
      args: { filter: null, flags: 0 },
      ret: [
        {
          server: 'virtlockd',
          id: 5,
          connTime: 1765065600,
          pid: 4242,
          uid: 0,
          gid: 0,
          owner,
          restricted: true,
          ownerConnection: true,
          leases: 1,
        },
      ],
    },
    { proc: 5, name: 'REEXEC', args: { flags: 0 }, ret: { ok: false, blackoutMs: 0, error: 'state file: cannot write' } },
    {
      proc: 6,
      name: 'HANDBACK',
      args: { path: '/usr/sbin/virtlockd', args: ['-f', '/etc/libvirt/virtlockd.conf'], flags: 0 },
      ret: { transient: true, error: 'a client is not registered', warnings: ['lock space /srv/x is not configured in virtlockd'] },
    },
    { proc: 16, name: 'GET_METRICS', args: { flags: 0 }, ret: '# TYPE relockd_leases gauge\nrelockd_leases 4\n' },
    {
      proc: 20,
      name: 'LIST_HEALTH',
      args: { flags: 0 },
      ret: [
        {
          dir: '/srv/nfs/lockd',
          lockspace: '/srv/nfs/lockd',
          state: 'failed',
          since: 1733500000000,
          lastGood: 1733499940000,
          error: 'storage did not answer within 30 s',
          lost: [],
          leaseTimeMs: 90000,
          owners: [{ owner, action: 'pause', phase: 'released', since: 1733500000100, resources: [resName], note: null }],
        },
      ],
    },
    { proc: 21, name: 'RELEASE_OWNER_LEASES', args: { pid: 4242, lockspace: '/srv/nfs/lockd', flags: 0 }, ret: 1 },
  ],
  error: {
    proc: 3,
    wire: ProtocolError.report(ErrorCode.INVALID_ARG, ErrorDomain.ADMIN, "relockd has no lock space '/srv/nosuch'").wire,
  },
};

export const casesByKey = { lockspace: lockspaceCases, admin: adminCases, 'relockd-admin': relockdCases } as const;
