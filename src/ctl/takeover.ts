// `relockctl takeover`: a running virtlockd becomes relockd in place — same
// pid, every lease and connection kept, no instant without a lock holder.
//
// virtlockd re-execs its own argv[0] on SIGUSR1 after writing its state
// (virtlockd 9.0's document, which relockd restores). For that one exec,
// argv[0] is made to be relockd: a small entry script is bind-mounted over
// virtlockd's binary inside virtlockd's mount namespace, and unmounted as
// soon as the exec has gone through (the process runs node). Then relockd's
// admin socket (virtlockd's, adopted) must answer with the same pid and every
// lock virtlockd held. See docs/takeover.md for the rules.

import { spawnSync } from 'node:child_process';
import { chmodSync, closeSync, existsSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import * as native from '../native.js';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { packageRoot } from '../packageRoot.js';
import { AdminClient } from '../protocol/adminClient.js';
import type { DaemonInfo, ResourceInfo } from '../protocol/relockdAdmin.js';
import { CtlError, Exit } from './command.js';
import type { GlobalArgs } from './command.js';
import { alive, cmdlineOf, environOf, euidOf, exeOf, inodeKey, locksOf, parseVirtlockdArgv, resolveExecTarget, systemdUnitOf } from './procInfo.js';
import type { VirtlockdArgs } from './procInfo.js';
import { installDropin } from './systemdDropin.js';
import { err, json, out } from './output.js';

export interface TakeoverArgs extends GlobalArgs {
  pid?: number;
  virtlockdPidFile?: string;
  wait: number;
  assumeRegistered: boolean;
  systemd: 'auto' | 'yes' | 'no';
  unitDir: string;
  systemctl: string;
  relockdArg: string[];
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** virtlockd's own paths for its effective uid (virLockDaemonUnixSocketPaths and friends): sockets, pid and state files. */
export function virtlockdPaths(euid: number, env: Record<string, string>): { socket: string; adminSocket: string; pidFile: string; stateFile: string } {
  if (euid === 0) {
    return { socket: '/run/libvirt/virtlockd-sock', adminSocket: '/run/libvirt/virtlockd-admin-sock', pidFile: '/run/virtlockd.pid', stateFile: '/run/virtlockd-restart-exec.json' };
  }
  const rt = `${env.XDG_RUNTIME_DIR || `${env.HOME || '/'}/.cache`}/libvirt`;
  return { socket: `${rt}/virtlockd-sock`, adminSocket: `${rt}/virtlockd-admin-sock`, pidFile: `${rt}/virtlockd.pid`, stateFile: `${rt}/virtlockd-restart-exec.json` };
}

/** Node's flags for relockd, from bin/relockd.cjs's own shebang (one source of truth). */
export function relockdNodeFlags(): string[] {
  const first = readFileSync(join(packageRoot, 'bin', 'relockd.cjs'), 'utf8').split('\n', 1)[0]!;
  const m = /^#!\S*env -S node (.*)$/.exec(first);
  return m ? m[1]!.trim().split(/\s+/) : [];
}

const shq = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/** The entry script virtlockd's execve runs: checks it is the expected pid, then execs relockd with virtlockd's settings. */
export function entryScript(pid: number, relockdArgv: string[]): string {
  return [
    '#!/bin/sh',
    `# relockd takeover entry, written by relockctl takeover for pid ${pid}. Used for one`,
    "# exec only: bind-mounted over virtlockd's binary in its mount namespace and",
    '# removed right after.',
    `if [ "$$" != "${pid}" ]; then`,
    `  echo "$0: relockctl takeover of pid ${pid} is in progress; try again in a moment" >&2`,
    '  exit 75',
    'fi',
    'unset NODE_OPTIONS',
    // relockd: "exec'd by an old image" — a missing state document means safe mode, never a fresh start.
    'RELOCKD_REEXEC="$$:"; export RELOCKD_REEXEC',
    `exec ${relockdArgv.map(shq).join(' ')}`,
    '',
  ].join('\n');
}

/** relockd's argv for virtlockd's settings. */
export function relockdArgvFor(v: VirtlockdArgs, paths: { socket: string; adminSocket: string; pidFile: string; stateFile: string }, extra: string[]): string[] {
  return [
    process.execPath,
    ...relockdNodeFlags(),
    join(packageRoot, 'bin', 'relockd.cjs'),
    '--state-file', paths.stateFile,
    '--socket', paths.socket,
    '--admin-socket', paths.adminSocket,
    '--pid-file', v.pidFile ?? paths.pidFile,
    ...(v.config ? ['--config', v.config] : []),
    ...(v.timeout ? ['--timeout', v.timeout] : []),
    ...(v.verbose ? ['--verbose'] : []),
    ...extra,
  ];
}

/** One of virtlockd's lock-server connections and who is at its other end. */
export interface LockClientView {
  /** virtlockd's fd. */
  fd: number;
  /** The peer process (SO_PEERCRED: the process that connected; none: the peer has closed it). */
  peers: Array<{ pid: number; exe: string }>;
}

interface UnixSock {
  state: string;
  local: string;
  inode: number;
  peer: number;
}

/** Every UNIX stream socket of this network namespace with its peer inode (ss -xan: netlink only, fast). */
function unixSockets(): UnixSock[] {
  const r = spawnSync('ss', ['-xan'], { encoding: 'utf8', timeout: 30_000, maxBuffer: 256 << 20 });
  if (r.status !== 0) throw new Error(`ss -xan failed: ${(r.stderr || r.error?.message || '').trim()}`);
  const out: UnixSock[] = [];
  for (const line of r.stdout.split('\n')) {
    const m = /^u_str\s+(\S+)\s+\d+\s+\d+\s+(.*?)\s+(\d+)\s+\S+\s+(\d+)\s*$/.exec(line);
    if (m) out.push({ state: m[1]!, local: m[2]!, inode: Number(m[3]), peer: Number(m[4]) });
  }
  return out;
}

/** socket inode → fd, for one process (readlink of /proc/PID/fd/*). */
function socketFds(pid: number | 'self'): Map<number, number> {
  const m = new Map<number, number>();
  let fds: string[] = [];
  try {
    fds = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return m;
  }
  for (const f of fds) {
    try {
      const s = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${f}`));
      if (s) m.set(Number(s[1]), Number(f));
    } catch {
      /* closed meanwhile */
    }
  }
  return m;
}

/**
 * The peer of one of virtlockd's connections: SO_PEERCRED on a copy of its
 * fd (pidfd_getfd). Nothing here reads other processes' /proc entries: a scan
 * of every /proc/PID/fd (or `ss -p`) was measured to hang for minutes behind one
 * process stuck on a dead mount.
 */
function peerOf(pidfd: number, fd: number): number | null {
  let copy = -1;
  try {
    copy = native.pidfdGetfd(pidfd, fd);
    return native.peerCred(copy).pid;
  } catch {
    return null;
  } finally {
    // Closing our copy leaves virtlockd's socket open (a socket, no lock).
    if (copy >= 0) closeSync(copy);
  }
}

/**
 * virtlockd's lock-server connections and their peers. The kernel names an
 * accepted socket after its listener; the admin listener's name is found
 * through our own admin connection, held open meanwhile.
 */
async function lockClients(pid: number, adminSocket: string, timeoutMs: number): Promise<LockClientView[]> {
  const c = await AdminClient.connect(adminSocket, timeoutMs);
  try {
    const socks = unixSockets();
    const theirs = socketFds(pid);
    const ours = socketFds('self');
    const mine = socks.filter((s) => s.state === 'ESTAB' && theirs.has(s.inode) && s.local !== '*');
    const adminName = mine.find((s) => ours.has(s.peer))?.local;
    if (!adminName) throw new Error(`cannot find our own connection to ${adminSocket} among virtlockd's sockets`);
    const lock = mine.filter((s) => s.local !== adminName);
    const live = new Set(socks.map((s) => s.inode));
    const pidfd = native.pidfdOpen(pid);
    try {
      return lock.map((s) => {
        const fd = theirs.get(s.inode)!;
        // The other end gone from the socket table: closed, virtlockd has not seen the EOF yet.
        const peer = live.has(s.peer) ? peerOf(pidfd, fd) : null;
        return { fd, peers: peer ? [{ pid: peer, exe: exeOf(peer) ?? '(gone)' }] : [] };
      });
    } finally {
      closeSync(pidfd);
    }
  } finally {
    c.close();
  }
}

const LIBVIRT_DAEMON = /^(libvirtd|virtqemud|virtlxcd|virtxend|virtchd|virtvzd|virtbhyved)$/;

/**
 * Which connections could make virtlockd 9.0's save fail (a connected client
 * that has not REGISTERed: exit 9, every lock lost). Registration is not
 * visible from outside, so this goes by who holds the other end: a QEMU
 * guest's connection was registered and restricted by libvirt before QEMU
 * was exec'd; anything else may be in the middle of connecting (libvirt's
 * own short connections, CREATE_LOCKSPACE ones never register) and is waited
 * for, then refused.
 */
export function unsafeClients(cs: LockClientView[], assumeRegistered: boolean): string[] {
  const out: string[] = [];
  for (const c of cs) {
    const who = c.peers.length ? c.peers.map((p) => `pid ${p.pid} ${basename(p.exe)}`).join(', ') : 'peer already closed, not yet seen by virtlockd';
    if (c.peers.length && c.peers.every((p) => /qemu/.test(basename(p.exe)))) continue;
    if (assumeRegistered && c.peers.length && !c.peers.some((p) => LIBVIRT_DAEMON.test(basename(p.exe)))) continue;
    out.push(`connection fd ${c.fd} (${who})`);
  }
  return out;
}

export async function cmdTakeover(a: TakeoverArgs): Promise<number> {
  const t0 = Date.now();
  // ---- find virtlockd ----------------------------------------------------------------------
  let pid = a.pid;
  if (pid === undefined) {
    const pf = a.virtlockdPidFile ?? '/run/virtlockd.pid';
    try {
      pid = Number(readFileSync(pf, 'utf8').trim());
    } catch (e) {
      throw new CtlError(`cannot read virtlockd's pid file ${pf}: ${(e as Error).message} (give --pid)`, Exit.UNAVAILABLE);
    }
  }
  if (!Number.isInteger(pid) || pid <= 1) throw new CtlError(`not a daemon pid: ${pid}`, Exit.USAGE);
  const exe = exeOf(pid);
  if (!exe) throw new CtlError(`no process ${pid}`, Exit.UNAVAILABLE);
  if (basename(exe) !== 'virtlockd') {
    throw new CtlError(`pid ${pid} runs ${exe}, not virtlockd${/node/.test(basename(exe)) ? ' (already relockd?)' : ''}`, Exit.ERROR);
  }
  const argv = cmdlineOf(pid);
  let vargs: VirtlockdArgs;
  try {
    vargs = parseVirtlockdArgv(argv);
  } catch (e) {
    throw new CtlError((e as Error).message, Exit.ERROR);
  }
  const euid = euidOf(pid);
  const paths = virtlockdPaths(euid, environOf(pid));
  if (a.socket) paths.socket = a.socket;
  if (a.adminSocket) paths.adminSocket = a.adminSocket;
  const target = resolveExecTarget(pid, vargs.argv0);
  const unit = systemdUnitOf(pid);
  const underSystemd = a.systemd === 'yes' || (a.systemd === 'auto' && unit === 'virtlockd.service');

  // ---- relockd must start: check the pieces before touching anything ----------------------
  const relockdArgv = relockdArgvFor(vargs, paths, a.relockdArg);
  const probe = spawnSync(relockdArgv[0]!, [...relockdArgv.slice(1, relockdArgv.indexOf('--state-file')), '--version'], { encoding: 'utf8', timeout: 30_000, env: { ...process.env, NODE_OPTIONS: '' } });
  if (probe.status !== 0) throw new CtlError(`relockd does not start here (${relockdArgv.slice(0, 3).join(' ')} --version: ${(probe.stderr || probe.error?.message || `exit ${probe.status}`).trim()}); nothing was changed`, Exit.ERROR);

  // ---- wait until no client could make virtlockd's save fail -------------------------------
  const deadline = Date.now() + a.wait * 1000;
  const checkClients = async (): Promise<void> => {
    for (;;) {
      let cs: LockClientView[];
      try {
        cs = await lockClients(pid, paths.adminSocket, 10_000);
      } catch (e) {
        throw new CtlError(`cannot list virtlockd's connections (its admin socket ${paths.adminSocket}, ss): ${(e as Error).message}; nothing was changed`, Exit.UNAVAILABLE);
      }
      const unsafe = unsafeClients(cs, a.assumeRegistered);
      if (!unsafe.length) return;
      if (Date.now() > deadline) {
        throw new CtlError(
          `refusing: virtlockd 9.0 exits at re-exec, dropping every lock, if a connected client has not registered, and these may not have (waited ${a.wait} s):\n  ${unsafe.join('\n  ')}\nnothing was changed; virtlockd keeps serving. Retry when the host is quieter, or pass --assume-registered if they are lock clients that registered (relockctl run, scripts).`,
          Exit.BUSY,
        );
      }
      await sleep(100);
    }
  };
  await checkClients();
  const before = locksOf(pid).filter((l) => l.path !== (vargs.pidFile ?? paths.pidFile));

  // ---- the entry script, visible in virtlockd's mount namespace ----------------------------
  const dir = mkdtempSync(join(tmpdir(), 'relockd-takeover-'));
  const script = join(dir, 'virtlockd');
  writeFileSync(script, entryScript(pid, relockdArgv));
  chmodSync(script, 0o755);
  chmodSync(dir, 0o755);
  const cleanupDir = () => rmSync(dir, { recursive: true, force: true });
  if (!existsSync(`/proc/${pid}/root${script}`)) {
    cleanupDir();
    throw new CtlError(`${script} is not visible in virtlockd's mount namespace (set TMPDIR to a directory it sees); nothing was changed`, Exit.ERROR);
  }
  const nsenter = (args: string[]) => spawnSync('nsenter', ['-t', String(pid), '-m', '--', ...args], { encoding: 'utf8', timeout: 10_000 });
  const mounted = nsenter(['mount', '-n', '--bind', script, target]);
  if (mounted.status !== 0) {
    cleanupDir();
    throw new CtlError(`cannot bind-mount the entry script over ${target} in virtlockd's mount namespace: ${(mounted.stderr || mounted.error?.message || '').trim()}; nothing was changed`, Exit.ERROR);
  }
  let unmounted = false;
  const unmount = (): string => {
    if (unmounted) return '';
    const r = nsenter(['umount', '-n', target]);
    unmounted = r.status === 0;
    return unmounted ? '' : (r.stderr || r.error?.message || 'umount failed').trim();
  };

  // ---- last look, then SIGUSR1 ------------------------------------------------------------
  try {
    await checkClients();
  } catch (e) {
    unmount();
    cleanupDir();
    throw e;
  }
  const signalled = Date.now();
  process.kill(pid, 'SIGUSR1');

  // ---- the exec: virtlockd → sh → node ---------------------------------------------------
  let execMs = -1;
  for (;;) {
    const now = exeOf(pid);
    if (now === null || !alive(pid)) {
      const u = unmount();
      cleanupDir();
      throw new CtlError(`virtlockd (pid ${pid}) exited during its re-exec: the host has no lock daemon and its locks are gone (virtlockd's log says why; 9.0 exits if a client was connected but not registered). Start the lock daemon again.${u ? ` Also: ${u}` : ''}`, Exit.ERROR);
    }
    if (basename(now) !== 'virtlockd' && !/\/(da)?sh$|\/bash$/.test(now)) {
      execMs = Date.now() - signalled;
      break;
    }
    if (Date.now() - signalled > 15_000) {
      const u = unmount();
      cleanupDir();
      throw new CtlError(`virtlockd (pid ${pid}) did not re-exec within 15 s of SIGUSR1; it still runs as virtlockd with every lock.${u ? ` The bind mount over ${target} could not be removed: ${u}` : ''}`, Exit.ERROR);
    }
    await sleep(2);
  }
  const u = unmount();
  cleanupDir();
  if (u) err(`relockctl: warning: could not remove the bind mount over ${target} in pid ${pid}'s mount namespace: ${u}`);

  // ---- verify through relockd's admin socket ----------------------------------------------
  let info: DaemonInfo | null = null;
  let resources: ResourceInfo[] = [];
  const vDeadline = Date.now() + Math.max(a.timeout, 60) * 1000;
  for (;;) {
    try {
      const c = await AdminClient.connect(paths.adminSocket, 5000);
      try {
        info = await c.daemonInfo();
        resources = await c.resources(null);
      } finally {
        c.close();
      }
      break;
    } catch (e) {
      if (!alive(pid)) throw new CtlError(`relockd (pid ${pid}) exited right after taking over: the host has no lock daemon. Its log (virtlockd's log output) says why.`, Exit.ERROR);
      if (Date.now() > vDeadline) throw new CtlError(`relockd (pid ${pid}) does not answer on ${paths.adminSocket}: ${(e as Error).message}`, Exit.ERROR);
      await sleep(50);
    }
  }
  const held = new Set(resources.map((r) => inodeKey(r.dev, r.ino)));
  const missing = before.filter((l) => !held.has(inodeKey(l.dev, l.ino)));
  const problems: string[] = [];
  if (info.pid !== pid) problems.push(`relockd answers with pid ${info.pid}, not ${pid}`);
  if (info.safeMode) problems.push('relockd is in safe mode: the restore was incomplete (every inherited fd is kept, new leases refused); see relockctl status and its log');
  if (missing.length) problems.push(`${missing.length} lock(s) virtlockd held are not leases in relockd: ${missing.map((l) => l.path).join(', ')}`);

  // ---- systemd: the next start is relockd too ---------------------------------------------
  let systemd: { changes: string[]; error?: string } | null = null;
  if (underSystemd && !problems.length) systemd = installDropin({ unitDir: a.unitDir, systemctl: a.systemctl }, 'virtlockd.service');

  const report = {
    ok: problems.length === 0,
    pid,
    from: exe,
    to: `relockd ${info.version}`,
    execMs,
    totalMs: Date.now() - t0,
    locksBefore: before.length,
    leasesAdopted: resources.length,
    lockClients: info.lockClients,
    boot: info.boot,
    problems,
    systemd: systemd ?? (underSystemd ? { changes: ['not changed (takeover had problems)'] } : null),
  };
  if (a.json) json(report);
  else {
    out(`takeover ${report.ok ? 'done' : 'INCOMPLETE'}: pid ${pid} is now relockd ${info.version} (was ${exe}); exec ${execMs} ms after SIGUSR1, ${report.totalMs} ms in all`);
    out(`  ${before.length} lock(s) held by virtlockd, ${resources.length} lease resource(s) adopted by relockd; ${info.lockClients} lock client(s) kept; boot: ${info.boot}`);
    for (const p of problems) out(`  PROBLEM: ${p}`);
    for (const c of systemd?.changes ?? []) out(`  systemd: ${c}`);
    if (systemd?.error) out(`  systemd: ERROR ${systemd.error}`);
    if (!underSystemd) out('  systemd: not under systemd (virtlockd.service); nothing installed — the next start of the lock daemon starts whatever its service starts');
  }
  return report.ok && !systemd?.error ? Exit.OK : Exit.ERROR;
}
