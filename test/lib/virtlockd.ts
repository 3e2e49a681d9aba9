// Launcher for the REAL libvirt virtlockd (Debian 12: libvirt-daemon 9.0.0)
// for tests and benchmarks, so the same protocol suite can run against
// relockd and against virtlockd. See docs/virtlockd-harness.md.
//
// Recipe (all of it runs as root, which a privileged virtlockd needs anyway):
//
//   /usr/bin/unshare -m --propagation private -- /bin/sh -c \
//     '/bin/mount -n -t tmpfs -o mode=0755 tmpfs /run || exit 97;
//      export LISTEN_PID=$$; exec "$@"' sh \
//     /usr/bin/setpriv --pdeathsig KILL -- \
//     /usr/sbin/virtlockd -f DIR/virtlockd.conf -p DIR/virtlockd.pid
//
// with LISTEN_FDS=2, LISTEN_FDNAMES=virtlockd.socket:virtlockd-admin.socket
// and two listening UNIX sockets (DIR/virtlockd-sock, DIR/virtlockd-admin-sock,
// created here) at fds 3 and 4. unshare (without --fork), sh's exec and
// setpriv all exec in place, so the spawned pid IS virtlockd's pid and
// LISTEN_PID=$$ matches it. virtlockd's /run writes (/run/libvirt,
// /run/virtlockd-restart-exec.json) land in the namespace's private tmpfs,
// which vanishes with the process; nothing touches the host's /run.

import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import {
  accessSync,
  chmodSync,
  constants as fsConstants,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  renameSync,
  rmSync,
  statSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve as resolvePath } from 'node:path';

export const VIRTLOCKD_PATH = '/usr/sbin/virtlockd';
const UNSHARE = '/usr/bin/unshare';
const SETPRIV = '/usr/bin/setpriv';
const SH = '/bin/sh';
const MOUNT = '/bin/mount';

/** Exit status of the launcher shell when mounting the private /run fails. */
const EXIT_MOUNT_FAILED = 97;
/** Max bytes of daemon output kept for logs() (the tail is kept). */
const LOG_CAP = 16 * 1024 * 1024;
/** sun_path is 108 bytes including the NUL. */
const SUN_PATH_MAX = 107;

/** The 28-byte keepalive PING (prog "keep", vers 1, proc 1, type MESSAGE). */
export const KEEPALIVE_PING = Buffer.from('0000001c6b6565700000000100000001000000020000000000000000', 'hex');
/** What virtlockd answers to it: the same packet with proc 2 (PONG). */
export const KEEPALIVE_PONG = Buffer.from('0000001c6b6565700000000100000002000000020000000000000000', 'hex');

let availability: { ok: boolean; reason?: string } | undefined;

function checkAvailability(): { ok: boolean; reason?: string } {
  try {
    accessSync(VIRTLOCKD_PATH, fsConstants.X_OK);
  } catch {
    return { ok: false, reason: `${VIRTLOCKD_PATH} is not installed (Debian package libvirt-daemon)` };
  }
  if (typeof process.getuid === 'function' && process.getuid() !== 0) {
    return { ok: false, reason: 'the virtlockd harness needs root (mount namespace + tmpfs over /run; virtlockd accepts only uid-0 peers when it runs as root)' };
  }
  for (const p of [UNSHARE, SH, MOUNT]) {
    if (!existsSync(p)) return { ok: false, reason: `${p} is missing (util-linux / mount)` };
  }
  const r = spawnSync(UNSHARE, ['-m', '--propagation', 'private', '--', SH, '-c', `${MOUNT} -n -t tmpfs tmpfs /run && test -z "$(ls -A /run)"`], {
    stdio: ['ignore', 'ignore', 'pipe'],
    timeout: 10_000,
  });
  if (r.error || r.status !== 0) {
    const why = r.error ? r.error.message : `exit ${r.status ?? r.signal}: ${String(r.stderr ?? '').trim()}`;
    return { ok: false, reason: `cannot create a private mount namespace with a tmpfs on /run (${why})` };
  }
  return { ok: true };
}

/** True when the binary exists and a private mount namespace with a tmpfs /run can be made. */
export function virtlockdAvailable(): boolean {
  availability ??= checkAvailability();
  return availability.ok;
}

/** Why virtlockdAvailable() is false (undefined when it is true). */
export function virtlockdUnavailableReason(): string | undefined {
  availability ??= checkAvailability();
  return availability.reason;
}

export interface VirtlockdOptions {
  /** Directory for sockets, config, pid file. Created if missing; kept on stop() when given. Default: a fresh mkdtemp under os.tmpdir(). */
  dir?: string;
  /** virtlockd log_level (1 debug, 2 info, 3 warning, 4 error); also the stderr output's level. Default 3. */
  logLevel?: number;
  /** log_filters, e.g. "1:locking 4:object". */
  logFilters?: string;
  /** max_clients (lock server). virtlockd default 1024. */
  maxClients?: number;
  /** admin_max_clients. virtlockd default 5000. */
  adminMaxClients?: number;
  /** Extra raw lines appended to virtlockd.conf. */
  extraConfig?: string;
  /** Extra virtlockd arguments, e.g. ['--timeout', '30']. '-d'/'--daemon', '-f', '-p' are refused. */
  extraArgs?: string[];
  /** Extra environment for virtlockd (LISTEN_*, NOTIFY_SOCKET, LIBVIRT_* from our env are dropped first). */
  env?: NodeJS.ProcessEnv;
  /** How long to wait for the daemon to answer a PING. Default 15000 ms. */
  startTimeoutMs?: number;
}

interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface StartedDaemon {
  kind: 'virtlockd';
  /** virtlockd's own pid (== the spawned process; for /proc/<pid>/stat and signals). Unchanged by SIGUSR1 re-exec. */
  pid: number;
  /** Lock-program socket (fd 3 in virtlockd, "virtlockd.socket"). */
  socketPath: string;
  /** Admin-program socket (fd 4 in virtlockd, "virtlockd-admin.socket"). */
  adminSocketPath: string;
  dir: string;
  configPath: string;
  pidFile: string;
  /** ms from spawn() to the first PONG. */
  startupMs: number;
  child: ChildProcess;
  /**
   * Resolves when virtlockd has exited (never rejects). The child is unref'd
   * after start, so awaiting this alone does not keep the test process alive;
   * kill()/stop()/reexec() ref it again.
   */
  exited: Promise<ExitInfo>;
  /** True until virtlockd has exited. */
  isRunning(): boolean;
  /** Everything virtlockd wrote to stdout/stderr so far (its log output). */
  logs(): string;
  /**
   * SIGUSR1 re-exec; resolves once the new image has rewritten its pid file
   * and answers a PING. Rejects if the daemon exits instead (e.g. status 9
   * when an unregistered lock client is connected — see the notes).
   */
  reexec(timeoutMs?: number): Promise<void>;
  /** SIGTERM, wait (default 10 s), then SIGKILL; removes the temp dir. Idempotent. */
  stop(timeoutMs?: number): Promise<void>;
  /** Send a signal to virtlockd (no-op once it has exited). Default SIGTERM. */
  kill(signal?: NodeJS.Signals | number): void;
}

// ---------------------------------------------------------------- leak guard

interface Live {
  pid: number;
  child: ChildProcess;
  dir: string;
  ownDir: boolean;
}
const live = new Set<Live>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // Synchronous last resort for daemons a test forgot to stop (or when the
  // test process exits early). An abrupt death of this process (SIGKILL,
  // crash) is covered by setpriv --pdeathsig KILL instead.
  process.on('exit', () => {
    for (const d of live) {
      if (d.child.exitCode === null && d.child.signalCode === null) {
        try {
          process.kill(d.pid, 'SIGKILL');
        } catch {
          /* already gone */
        }
      }
      if (d.ownDir) rmSync(d.dir, { recursive: true, force: true });
    }
    live.clear();
  });
}

// ---------------------------------------------------------------- helpers

function listenUnix(path: string): Promise<net.Server> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    // backlog 30 like virtlockd's own sockets; systemd would use SOMAXCONN
    s.listen({ path, backlog: 30 }, () => {
      s.off('error', reject);
      resolve(s);
    });
  });
}

function serverFd(s: net.Server): number {
  const fd = (s as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) throw new Error('cannot get the fd of a listening socket');
  return fd;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Resolves with p's value, or 'timeout' after ms; the timer is cleared either way (no dangling ref'd timer). */
function withTimeout<T>(p: Promise<T>, ms: number): Promise<T | 'timeout'> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), ms)));
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

/**
 * Connect to a virtlockd socket, send a keepalive PING and wait for the
 * 28-byte PONG. Resolves true on PONG, false on refusal/close/timeout.
 */
export function pingVirtlockd(socketPath: string, timeoutMs = 2000): Promise<boolean> {
  return new Promise((resolve) => {
    let buf = Buffer.alloc(0);
    let done = false;
    const s = net.connect(socketPath);
    const finish = (ok: boolean) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      s.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => finish(false), timeoutMs);
    s.on('connect', () => s.write(KEEPALIVE_PING));
    s.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      if (buf.length >= 28) finish(buf.subarray(0, 28).equals(KEEPALIVE_PONG));
    });
    s.on('error', () => finish(false));
    s.on('close', () => finish(false));
  });
}

/** Socket fds virtlockd holds apart from stdout/stderr and the two listening sockets, i.e. accepted clients. */
function clientSocketFds(pid: number): number[] {
  const out: number[] = [];
  let names: string[];
  try {
    names = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return out;
  }
  for (const n of names) {
    const fd = Number(n);
    if (fd <= 4) continue;
    try {
      if (readlinkSync(`/proc/${pid}/fd/${n}`).startsWith('socket:')) out.push(fd);
    } catch {
      /* raced with close */
    }
  }
  return out;
}

function sanitizedEnv(extra: NodeJS.ProcessEnv | undefined): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const k of Object.keys(env)) {
    if (k.startsWith('LISTEN_') || k.startsWith('LIBVIRT_') || k === 'NOTIFY_SOCKET' || k === 'NODE_OPTIONS') delete env[k];
  }
  Object.assign(env, extra ?? {});
  env.LISTEN_FDS = '2';
  env.LISTEN_FDNAMES = 'virtlockd.socket:virtlockd-admin.socket';
  delete env.LISTEN_PID; // set by the launcher shell to its own ($$ == virtlockd's) pid
  return env;
}

function underRun(p: string): boolean {
  return p === '/run' || p.startsWith('/run/') || p === '/var/run' || p.startsWith('/var/run/');
}

/**
 * A temp directory virtlockd can see: os.tmpdir(), or /tmp when that is
 * under /run (e.g. TMPDIR=/run/user/0), which the private tmpfs hides.
 * Put resource files for virtlockd here, never under /run.
 */
export function visibleTmpDir(): string {
  return underRun(resolvePath(tmpdir())) ? '/tmp' : tmpdir();
}

// ---------------------------------------------------------------- start

export async function startVirtlockd(opts: VirtlockdOptions = {}): Promise<StartedDaemon> {
  if (!virtlockdAvailable()) throw new Error(`virtlockd harness unavailable: ${virtlockdUnavailableReason()}`);
  const extraArgs = opts.extraArgs ?? [];
  for (const a of extraArgs) {
    if (/^(-d|--daemon|-f|--config|-p|--pid-file)(=.*)?$/.test(a) || /^-[^-]*[dfp]/.test(a)) {
      throw new Error(`startVirtlockd: extraArgs may not contain ${a} (the harness owns -d/-f/-p)`);
    }
  }
  const logLevel = opts.logLevel ?? 3;
  if (!Number.isInteger(logLevel) || logLevel < 1 || logLevel > 4) throw new Error(`bad logLevel ${logLevel}`);

  const ownDir = !opts.dir;
  const base = visibleTmpDir();
  if (opts.dir && underRun(resolvePath(opts.dir))) {
    throw new Error(`startVirtlockd: dir ${opts.dir} would be hidden by the private /run tmpfs`);
  }
  const dir = opts.dir ? resolvePath(opts.dir) : mkdtempSync(join(base, 'virtlockd-'));
  mkdirSync(dir, { recursive: true });
  const socketPath = join(dir, 'virtlockd-sock');
  const adminSocketPath = join(dir, 'virtlockd-admin-sock');
  const configPath = join(dir, 'virtlockd.conf');
  const pidFile = join(dir, 'virtlockd.pid');
  if (Buffer.byteLength(adminSocketPath) > SUN_PATH_MAX) throw new Error(`socket path too long: ${adminSocketPath}`);

  const conf = [
    '# written by test/lib/virtlockd.ts',
    `log_level = ${logLevel}`,
    `log_outputs = "${logLevel}:stderr"`,
    ...(opts.logFilters ? [`log_filters = ${JSON.stringify(opts.logFilters)}`] : []),
    ...(opts.maxClients !== undefined ? [`max_clients = ${opts.maxClients}`] : []),
    ...(opts.adminMaxClients !== undefined ? [`admin_max_clients = ${opts.adminMaxClients}`] : []),
    ...(opts.extraConfig ? [opts.extraConfig] : []),
    '',
  ].join('\n');
  writeFileSync(configPath, conf);

  const cleanupFiles = () => {
    if (ownDir) rmSync(dir, { recursive: true, force: true });
    else for (const f of [socketPath, adminSocketPath, configPath, pidFile]) rmSync(f, { force: true });
  };

  // Listening sockets, bound under temporary names: closing a net.Server
  // unlinks its path (libuv), so the final names are given by rename() after
  // virtlockd has inherited the fds and before our copies are closed. Node
  // never sees a connection: nobody knows the temporary names.
  const tmpMain = join(dir, '.virtlockd-sock.tmp');
  const tmpAdmin = join(dir, '.virtlockd-admin-sock.tmp');
  for (const p of [tmpMain, tmpAdmin, socketPath, adminSocketPath]) rmSync(p, { force: true });
  let srvMain: net.Server | undefined;
  let srvAdmin: net.Server | undefined;
  let child: ChildProcess;
  const t0 = performance.now();
  try {
    srvMain = await listenUnix(tmpMain);
    srvAdmin = await listenUnix(tmpAdmin);
    chmodSync(tmpMain, 0o600); // as the systemd units (SocketMode=0600)
    chmodSync(tmpAdmin, 0o600);

    const launcher = `${MOUNT} -n -t tmpfs -o mode=0755 tmpfs /run || exit ${EXIT_MOUNT_FAILED}; export LISTEN_PID=$$; exec "$@"`;
    const pdeath = existsSync(SETPRIV) ? [SETPRIV, '--pdeathsig', 'KILL', '--'] : [];
    const args = ['-m', '--propagation', 'private', '--', SH, '-c', launcher, 'virtlockd-launcher',
      ...pdeath, VIRTLOCKD_PATH, '-f', configPath, '-p', pidFile, ...extraArgs];
    child = spawn(UNSHARE, args, {
      cwd: dir,
      env: sanitizedEnv(opts.env),
      stdio: ['ignore', 'pipe', 'pipe', serverFd(srvMain), serverFd(srvAdmin)],
    });
    renameSync(tmpMain, socketPath);
    renameSync(tmpAdmin, adminSocketPath);
  } finally {
    srvMain?.close();
    srvAdmin?.close();
  }
  const startT0 = t0;

  // output
  const chunks: Buffer[] = [];
  let logBytes = 0;
  const onData = (d: Buffer) => {
    chunks.push(d);
    logBytes += d.length;
    while (logBytes > LOG_CAP && chunks.length > 1) logBytes -= chunks.shift()!.length;
  };
  child.stdout!.on('data', onData);
  child.stderr!.on('data', onData);
  const logs = () => Buffer.concat(chunks).toString('utf8');

  let exitInfo: ExitInfo | undefined;
  const exited = new Promise<ExitInfo>((resolve) => {
    child.once('exit', (code, signal) => {
      exitInfo = { code, signal };
      resolve(exitInfo);
    });
  });
  const closed = new Promise<void>((resolve) => child.once('close', () => resolve()));
  const spawnError = new Promise<Error>((resolve) => child.once('error', resolve));
  const pid = child.pid;
  if (pid === undefined) {
    cleanupFiles();
    throw new Error(`cannot spawn ${UNSHARE}: ${(await spawnError).message}`);
  }
  const entry: Live = { pid, child, dir, ownDir };
  live.add(entry);
  installExitHook();
  const isRunning = () => exitInfo === undefined;

  const describeExit = (e: ExitInfo) =>
    e.code === EXIT_MOUNT_FAILED
      ? `mounting the private tmpfs on /run failed (exit ${EXIT_MOUNT_FAILED})`
      : `virtlockd exited during start-up (code ${e.code}, signal ${e.signal})`;

  // Readiness: connect() succeeds at once with socket activation (the kernel
  // queues it), so only a PONG proves virtlockd's event loop is serving.
  const deadline = Date.now() + (opts.startTimeoutMs ?? 15_000);
  let startupMs = -1;
  try {
    for (;;) {
      if (!isRunning()) throw new Error(describeExit(exitInfo!));
      if (await pingVirtlockd(socketPath, Math.max(100, Math.min(2000, deadline - Date.now())))) {
        startupMs = performance.now() - startT0;
        break;
      }
      if (Date.now() > deadline) throw new Error(`virtlockd did not answer a PING within ${opts.startTimeoutMs ?? 15_000} ms`);
      await sleep(10);
    }
    if (!(await pingVirtlockd(adminSocketPath, 2000))) throw new Error('virtlockd admin socket did not answer a PING');
    // Wait until virtlockd has dropped the probe connections: an accepted but
    // unregistered lock client would make a SIGUSR1 re-exec fail (exit 9).
    while (clientSocketFds(pid).length > 0) {
      if (!isRunning()) throw new Error(describeExit(exitInfo!));
      if (Date.now() > deadline) throw new Error('virtlockd kept the probe connection open');
      await sleep(2);
    }
  } catch (e) {
    if (isRunning()) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    await withTimeout(exited, 5000);
    live.delete(entry);
    const out = logs();
    cleanupFiles();
    throw new Error(`${(e as Error).message}\n--- virtlockd output ---\n${out}`, { cause: e });
  }

  // A forgotten daemon must not keep the test process alive; the exit hook
  // (or pdeathsig) kills it then. stop() re-refs while it waits.
  child.unref();
  (child.stdout as net.Socket | null)?.unref?.();
  (child.stderr as net.Socket | null)?.unref?.();

  const kill = (signal: NodeJS.Signals | number = 'SIGTERM') => {
    if (!isRunning()) return;
    // Whoever signals usually awaits `exited` next: keep the loop alive for it.
    child.ref();
    try {
      process.kill(pid, signal);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ESRCH') throw e;
    }
  };

  let stopping: Promise<void> | undefined;
  const stop = (timeoutMs = 10_000): Promise<void> => {
    stopping ??= (async () => {
      child.ref();
      if (isRunning()) {
        kill('SIGTERM');
        const t = await withTimeout(exited, timeoutMs);
        if (t === 'timeout') {
          kill('SIGKILL');
          await withTimeout(exited, 10_000);
        }
      }
      await withTimeout(closed, 1000); // drain the last log lines
      live.delete(entry);
      cleanupFiles();
    })();
    return stopping;
  };

  const reexec = async (timeoutMs = 15_000): Promise<void> => {
    if (!isRunning()) throw new Error('virtlockd is not running');
    child.ref();
    try {
      await reexecInner(timeoutMs);
    } finally {
      if (isRunning() && !stopping) child.unref();
    }
  };
  const reexecInner = async (timeoutMs: number): Promise<void> => {
    // The old image never rewrites its pid file; the new image re-acquires
    // and rewrites it (truncate + write of the same pid) before it serves.
    // Emptying it first gives an unambiguous "new image is up" marker.
    const ino = statSync(pidFile).ino;
    truncateSync(pidFile, 0);
    kill('SIGUSR1');
    const until = Date.now() + timeoutMs;
    for (;;) {
      if (!isRunning()) {
        throw new Error(`virtlockd exited during re-exec (code ${exitInfo!.code}, signal ${exitInfo!.signal})\n--- virtlockd output ---\n${logs()}`);
      }
      let content = '';
      try {
        if (statSync(pidFile).ino === ino) content = readFileSync(pidFile, 'utf8');
      } catch {
        /* being rewritten */
      }
      if (content.trim() === String(pid)) break;
      if (Date.now() > until) throw new Error(`virtlockd did not come back from re-exec within ${timeoutMs} ms`);
      await sleep(2);
    }
    // The pid file is written before the state is restored; a PING only
    // answers once the new event loop runs. (Safe: the new image has
    // already consumed the state, so this probe cannot break the restore.)
    const clientsBefore = clientSocketFds(pid).length; // restored client connections
    while (!(await pingVirtlockd(socketPath, Math.max(100, until - Date.now())))) {
      if (!isRunning() || Date.now() > until) throw new Error(`virtlockd not serving after re-exec\n${logs()}`);
      await sleep(5);
    }
    // let virtlockd drop the (unregistered) probe before the caller goes on
    while (clientSocketFds(pid).length > clientsBefore && isRunning() && Date.now() < until) await sleep(2);
  };

  return {
    kind: 'virtlockd',
    pid,
    socketPath,
    adminSocketPath,
    dir,
    configPath,
    pidFile,
    startupMs,
    child,
    exited,
    isRunning,
    logs,
    reexec,
    stop,
    kill,
  };
}
