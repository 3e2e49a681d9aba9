// The admin service against a small fake host (no daemon, no socket): what
// it reads from the host and what it asks of it. The real-process tests
// (admin.test.ts, newadmin.test.ts) cover the same procedures over the wire.

import t from 'tap';
import pino from 'pino';
import { AdminService } from '../src/services/adminService.js';
import type { AdminHost } from '../src/services/adminService.js';
import { adminRows, ADMIN_PROGRAM } from '../src/protocol/admin.js';
import { relockdAdminRows, RELOCKD_ADMIN_PROGRAM } from '../src/protocol/relockdAdmin.js';
import { VERSION } from '../src/version.js';

interface Fake extends AdminHost {
  calls: string[];
}

function fakeHost(over: Partial<AdminHost> = {}): Fake {
  const calls: string[] = [];
  const server = (name: string) => ({ name, clients: new Map(), listeners: [] as Array<{ path: string }>, maxClients: 10 });
  const host = {
    calls,
    log: pino({ level: 'silent' }),
    logging: null,
    lockServer: server('virtlockd'),
    adminServer: server('admin'),
    manager: { counts: () => ({ lockspaces: 2, resources: 3, leases: 4 }), allSpaces: () => [], heldBy: () => 0, spaces: new Map() },
    gate: { stuckKeys: () => [] },
    metrics: {},
    healthProvider: null,
    lockService: { terminations: new Map() },
    // Frozen: the service must ask (setIdleTimeout), never write the options.
    opts: Object.freeze({ socketPath: '/tmp/fake/virtlockd-sock', adminSocketPath: '/tmp/fake/admin-sock', timeoutSec: 42 }),
    boot: 'restored',
    safeMode: false,
    configError: null,
    stopping: null,
    startedAt: Date.now() - 5000,
    version: VERSION,
    lastReexec: { at: 1, ok: false, error: 'boom', trigger: 'SIGUSR1', fromVersion: '0.0.9' },
    pidFile: null,
    setIdleTimeout: (sec: number | null) => calls.push(`setIdleTimeout ${sec}`),
    reexec: async (trigger: string) => {
      calls.push(`reexec ${trigger}`);
      return { ok: false as const, error: 'refused by the fake' };
    },
    ...over,
  };
  return host as unknown as Fake;
}

/** One procedure of one program, called as the dispatcher would after decoding. */
function call(svc: AdminService, prog: number, proc: number, args: unknown, ctx: unknown = {}): unknown {
  const p = svc.programs.find((g) => g.prog === prog)?.procedures.get(proc);
  if (!p) throw new Error(`no procedure ${prog}/${proc}`);
  return p.handle(ctx as never, args);
}

t.test('daemon-timeout goes through setIdleTimeout, never into the options', async (t) => {
  const host = fakeHost();
  const svc = new AdminService(host);
  await call(svc, ADMIN_PROGRAM, adminRows.CONNECT_SET_DAEMON_TIMEOUT.proc, { timeout: 30, flags: 0 });
  await call(svc, ADMIN_PROGRAM, adminRows.CONNECT_SET_DAEMON_TIMEOUT.proc, { timeout: 0, flags: 0 });
  t.same(host.calls, ['setIdleTimeout 30', 'setIdleTimeout null'], '30 s, then 0 = never');
  t.equal(host.opts.timeoutSec, 42, 'the options are untouched');
});

t.test('GET_DAEMON_INFO is what the host says', async (t) => {
  const svc = new AdminService(fakeHost());
  const info = (await call(svc, RELOCKD_ADMIN_PROGRAM, relockdAdminRows.GET_DAEMON_INFO.proc, { flags: 0 })) as Record<string, unknown>;
  t.match(info, {
    version: VERSION,
    pid: process.pid,
    socket: '/tmp/fake/virtlockd-sock', // no listener: the configured path
    adminSocket: '/tmp/fake/admin-sock',
    lockspaces: 2,
    resources: 3,
    leases: 4,
    boot: 'restored',
    safeMode: false,
    daemonTimeout: 42,
    lastReexec: { at: 1, result: { ok: false, error: 'boom' }, trigger: 'SIGUSR1', fromVersion: '0.0.9' },
  });
  t.ok((info.uptimeMs as number) >= 5000, 'uptime from the host start time');
});

t.test('REEXEC asks the host and reports its refusal', async (t) => {
  const host = fakeHost();
  const svc = new AdminService(host);
  const conn = { id: 7, peer: { pid: 1, uid: 0, gid: 0 }, currentHeader: undefined };
  const r = await call(svc, RELOCKD_ADMIN_PROGRAM, relockdAdminRows.REEXEC.proc, { flags: 0 }, { conn, closeAfterReply: () => {} });
  t.same(host.calls, ['reexec admin']);
  t.same(r, { ok: false, blackoutMs: 0, error: 'refused by the fake' });
});

t.test('an unknown flag is refused before the host is asked', async (t) => {
  const host = fakeHost();
  const svc = new AdminService(host);
  await t.rejects(async () => call(svc, ADMIN_PROGRAM, adminRows.CONNECT_SET_DAEMON_TIMEOUT.proc, { timeout: 5, flags: 1 }), { message: /unsupported flags/ });
  t.same(host.calls, []);
});
