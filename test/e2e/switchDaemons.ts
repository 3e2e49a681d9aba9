// Lock daemons for the takeover/handback end-to-end test (takeover.ts): each
// runs in its own private mount namespace with a tmpfs on /run, so that the
// bind mount over /usr/sbin/virtlockd (takeover) and virtlockd's state file
// /run/virtlockd-restart-exec.json (handback) stay inside it. One process
// (one pid) is virtlockd or relockd by turns; output goes to one log file.

import { spawn } from 'node:child_process';
import { closeSync, mkdirSync, openSync, readFileSync, readlinkSync, renameSync, statSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { cleanEnv, ENV_PREFIX, NODE_FLAGS, RELOCKD_BIN } from '../lib/relockd.js';
import { pingVirtlockd } from '../lib/virtlockd.js';
import { assertNotAborted, pidAlive, sleep, stopPid, trackPid, untrackPid } from './proc.js';

const UNSHARE = '/usr/bin/unshare';
const SETPRIV = '/usr/bin/setpriv';
export const VIRTLOCKD = '/usr/sbin/virtlockd';
const PRIVATE_RUN = '/bin/mount -n -t tmpfs -o mode=0755 tmpfs /run || exit 97; [ -n "$LISTEN_FDS" ] && export LISTEN_PID=$$; exec "$@"';

export interface SwitchingDaemon {
  readonly pid: number;
  readonly dir: string;
  readonly socketPath: string;
  readonly adminSocketPath: string;
  /** virtlockd's configuration (log to stderr = our log file); also given to relockd by takeover. */
  readonly configPath: string;
  readonly pidFile: string;
  readonly logPath: string;
  isRunning(): boolean;
  logMark(): number;
  logSince(mark: number): string;
  /** What the pid runs now. */
  exe(): string;
  /** SIGTERM (relockd drains; both exit when no lease is held), SIGKILL after the grace time. */
  stop(graceMs?: number): Promise<void>;
}

function fileSize(p: string): number {
  try {
    return statSync(p).size;
  } catch {
    return 0;
  }
}

function handle(pid: number, dir: string, paths: { socket: string; admin: string; conf: string; pidFile: string; log: string }, exited: () => boolean): SwitchingDaemon {
  return {
    pid,
    dir,
    socketPath: paths.socket,
    adminSocketPath: paths.admin,
    configPath: paths.conf,
    pidFile: paths.pidFile,
    logPath: paths.log,
    isRunning: () => !exited() && pidAlive(pid),
    logMark: () => fileSize(paths.log),
    logSince: (mark) => {
      try {
        return readFileSync(paths.log).subarray(mark).toString('utf8');
      } catch {
        return '';
      }
    },
    exe: () => {
      try {
        return readlinkSync(`/proc/${pid}/exe`);
      } catch {
        return '(gone)';
      }
    },
    async stop(graceMs = 15_000) {
      await stopPid(pid, 'SIGTERM', graceMs);
    },
  };
}

function writeVirtlockdConf(dir: string): string {
  const conf = join(dir, 'virtlockd.conf');
  writeFileSync(conf, '# test/e2e/switchDaemons.ts\nlog_level = 3\nlog_outputs = "3:stderr"\n');
  return conf;
}

function spawnInNamespace(args: string[], log: string, extraFds: number[] = [], env: NodeJS.ProcessEnv = cleanEnv()) {
  const out = openSync(log, 'a');
  const child = spawn(UNSHARE, ['-m', '--propagation', 'private', '--', '/bin/sh', '-c', PRIVATE_RUN, 'switch-ns', SETPRIV, '--pdeathsig', 'KILL', '--', ...args], {
    stdio: ['ignore', out, out, ...extraFds],
    env,
  });
  closeSync(out);
  if (!child.pid) throw new Error('cannot spawn the lock daemon');
  let gone = false;
  child.once('exit', () => {
    gone = true;
    untrackPid(child.pid!);
  });
  trackPid(child.pid, 'lock daemon (takeover e2e)');
  return { pid: child.pid, exited: () => gone };
}

/** relockd first (its own sockets), in a private namespace, as test:libvirt runs it plus the namespace. */
export async function startRelockdInNamespace(dir: string, lockspaces: string[]): Promise<SwitchingDaemon> {
  assertNotAborted('relockd');
  mkdirSync(dir, { recursive: true });
  const log = join(dir, 'daemon.log');
  const conf = writeVirtlockdConf(dir);
  const socket = join(dir, 'virtlockd-sock');
  const admin = join(dir, 'virtlockd-admin-sock');
  const pidFile = join(dir, 'virtlockd.pid');
  const mark = fileSize(log);
  const p = spawnInNamespace(['/usr/bin/env', ...ENV_PREFIX, process.execPath, ...NODE_FLAGS, RELOCKD_BIN, '--runtime-dir', dir, '--log-level', 'info', ...lockspaces.flatMap((l) => ['--lockspace', l])], log);
  const h = handle(p.pid, dir, { socket, admin, conf, pidFile, log }, p.exited);
  const deadline = Date.now() + 20_000;
  while (!/"msg":"relockd ready"/.test(h.logSince(mark))) {
    if (!h.isRunning()) throw new Error(`relockd exited during start-up\n${h.logSince(mark).slice(-3000)}`);
    if (Date.now() > deadline) throw new Error(`relockd not ready after 20 s\n${h.logSince(mark).slice(-3000)}`);
    await sleep(10);
  }
  return h;
}

async function waitServing(h: SwitchingDaemon, mark: number): Promise<void> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (!h.isRunning()) throw new Error(`virtlockd exited during start-up\n${h.logSince(mark).slice(-3000)}`);
    if (await pingVirtlockd(h.socketPath, 1000)) break;
    if (Date.now() > deadline) throw new Error(`virtlockd did not answer within 20 s\n${h.logSince(mark).slice(-3000)}`);
    await sleep(20);
  }
  // virtlockd drops the probe connection (an unregistered client) a moment later
  await sleep(200);
}

/**
 * The real virtlockd as systemd starts it: systemd-socket-activate binds both
 * sockets, passes them with LISTEN_FDNAMES virtlockd.socket:virtlockd-admin.socket
 * and execs virtlockd in place at the first connection (same pid throughout).
 */
export async function startActivatedVirtlockd(dir: string): Promise<SwitchingDaemon> {
  assertNotAborted('virtlockd');
  mkdirSync(dir, { recursive: true });
  const log = join(dir, 'daemon.log');
  const conf = writeVirtlockdConf(dir);
  const socket = join(dir, 'virtlockd-sock');
  const admin = join(dir, 'virtlockd-admin-sock');
  const pidFile = join(dir, 'virtlockd.pid');
  const mark = fileSize(log);
  const out = openSync(log, 'a');
  const child = spawn(
    '/usr/bin/systemd-socket-activate',
    ['-l', socket, '-l', admin, '--fdname=virtlockd.socket:virtlockd-admin.socket', '--', UNSHARE, '-m', '--propagation', 'private', '--', '/bin/sh', '-c', PRIVATE_RUN.replace('[ -n "$LISTEN_FDS" ] && export LISTEN_PID=$$; ', ''), 'switch-ns', SETPRIV, '--pdeathsig', 'KILL', '--', VIRTLOCKD, '-f', conf, '-p', pidFile],
    { stdio: ['ignore', out, out], env: cleanEnv() },
  );
  closeSync(out);
  if (!child.pid) throw new Error('cannot spawn systemd-socket-activate');
  let gone = false;
  child.once('exit', () => {
    gone = true;
    untrackPid(child.pid!);
  });
  trackPid(child.pid, 'virtlockd (socket-activated)');
  const h = handle(child.pid, dir, { socket, admin, conf, pidFile, log }, () => gone);
  // systemd-socket-activate execs at the first connection
  const deadline = Date.now() + 10_000;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(socket, () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) break;
    if (Date.now() > deadline) throw new Error(`systemd-socket-activate did not listen on ${socket}\n${h.logSince(mark)}`);
    await sleep(20);
  }
  await waitServing(h, mark);
  if (!/virtlockd$/.test(h.exe())) throw new Error(`pid ${h.pid} runs ${h.exe()}, not virtlockd`);
  return h;
}

/** The real virtlockd with its sockets passed by the test (as test/lib/virtlockd.ts does), logging to the shared log file. */
export async function startPlainVirtlockd(dir: string): Promise<SwitchingDaemon> {
  assertNotAborted('virtlockd');
  mkdirSync(dir, { recursive: true });
  const log = join(dir, 'daemon.log');
  const conf = writeVirtlockdConf(dir);
  const socket = join(dir, 'virtlockd-sock');
  const admin = join(dir, 'virtlockd-admin-sock');
  const pidFile = join(dir, 'virtlockd.pid');
  const mark = fileSize(log);
  // Sockets passed like the harness does (activation without systemd): bound here, renamed after spawn.
  const listen = (p: string) => new Promise<net.Server>((res, rej) => { const s = net.createServer(); s.once('error', rej); s.listen({ path: p, backlog: 30 }, () => res(s)); });
  const tmpA = `${socket}.tmp`;
  const tmpB = `${admin}.tmp`;
  const a = await listen(tmpA);
  const b = await listen(tmpB);
  const fd = (s: net.Server) => (s as unknown as { _handle: { fd: number } })._handle.fd;
  const env = { ...cleanEnv(), LISTEN_FDS: '2', LISTEN_FDNAMES: 'virtlockd.socket:virtlockd-admin.socket' };
  let p;
  try {
    p = spawnInNamespace([VIRTLOCKD, '-f', conf, '-p', pidFile], log, [fd(a), fd(b)], env);
    renameSync(tmpA, socket);
    renameSync(tmpB, admin);
  } finally {
    a.close();
    b.close();
  }
  const h = handle(p.pid, dir, { socket, admin, conf, pidFile, log }, p.exited);
  await waitServing(h, mark);
  return h;
}
