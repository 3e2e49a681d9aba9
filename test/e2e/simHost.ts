// A simulated hypervisor host for the multi-host end-to-end test
// (test/e2e/multihost.ts): one real libvirtd in its own mount AND UTS
// namespace, with its own host_uuid, /etc/libvirt, /var/lib/libvirt, /run and
// lock daemon. Two of them share only what two hosts on NFS share: the disk
// images and the lock-space directory (under /tmp, visible in every
// namespace). One kernel, so the fcntl locks of host A's lock daemon conflict
// with host B's exactly as across NFS hosts.
//
//   unshare -m -u --propagation private -- /bin/sh -c SCRIPT
//     hostname relockd-e2e-a                          (its own UTS namespace)
//     mount -n --bind H/run /run                      (private, but PERSISTENT: a libvirtd
//                                                      restart finds its guests' status files)
//     ln -s H/lockd.sock /run/libvirt/virtlockd-sock   (the lockd plugin's fixed path)
//     mount -n --bind H/etc-libvirt /etc/libvirt      (and /var/lib, /var/log/libvirt;
//                                                      /var/cache/libvirt is shared: QEMU's
//                                                      capability cache, probed once)
//     mount -n --bind W/not-an-emulator /usr/bin/qemu-system-i386
//     exec setpriv --pdeathsig KILL -- libvirtd -f H/etc-libvirt/libvirtd.conf
//
// Migration: the source libvirtd connects to the destination's UNIX socket
// (p2p), and QEMU's migration stream goes over 127.0.0.1 (migration_address /
// migration_host in qemu.conf, a port range per host).

import { closeSync, existsSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { LIBVIRTD, VIRSH } from './libvirtHost.js';
import type { LeaseMode } from './libvirtHost.js';
import { assertNotAborted, cmdline, mountNamespace, pidAlive, pidsWithMount, run, sleep, stopPid, trackMount, trackPid, untrackPid } from './proc.js';
import type { RunResult } from './proc.js';

const QEMU_I386 = '/usr/bin/qemu-system-i386';
const UNSHARE = '/usr/bin/unshare';
const SETPRIV = '/usr/bin/setpriv';

export interface SimHostConfig {
  /** Short name: 'a' or 'b'; the UTS hostname is relockd-e2e-<name>. */
  name: string;
  /** The run's work directory (shared images, lock space, emulator wrapper). */
  root: string;
  /** host_uuid in libvirtd.conf: must differ between hosts or libvirt refuses the migration. */
  hostUuid: string;
  /** First TCP port of this host's migration port range (8 ports, on 127.0.0.1). */
  migrationPort: number;
  lockspace: string;
}

const NS_SCRIPT = `
set -e
H=$1; W=$2; NAME=$3; shift 3
hostname "$NAME"
/bin/mount -n --bind "$H/run" /run
mkdir -p /run/libvirt
ln -sfn "$H/lockd.sock" /run/libvirt/virtlockd-sock
/bin/mount -n --bind "$H/etc-libvirt" /etc/libvirt
/bin/mount -n --bind "$H/var-lib-libvirt" /var/lib/libvirt
/bin/mount -n --bind "$W/var-cache-libvirt" /var/cache/libvirt
/bin/mount -n --bind "$H/var-log-libvirt" /var/log/libvirt
if [ -f ${QEMU_I386} ]; then /bin/mount -n --bind "$W/not-an-emulator" ${QEMU_I386}; fi
exec "$@"
`;

function fileSize(p: string): number {
  try {
    return statSync(p).size;
  } catch {
    return 0;
  }
}

function readFrom(p: string, offset: number): string {
  try {
    return readFileSync(p).subarray(offset).toString('utf8');
  } catch {
    return '';
  }
}

export class SimHost {
  pid = 0;
  ns: string | undefined;
  private exited = true;
  readonly dir: string;
  readonly hostname: string;
  readonly uri: string;
  readonly logPath: string;
  readonly outPath: string;
  /** Symlink that /run/libvirt/virtlockd-sock (inside this host) points to. */
  readonly lockdLink: string;
  readonly etc: string;
  readonly runDir: string;

  constructor(readonly cfg: SimHostConfig) {
    this.dir = join(cfg.root, `host-${cfg.name}`);
    this.runDir = join(this.dir, 'run');
    trackMount('/run', this.runDir);
    this.hostname = `relockd-e2e-${cfg.name}`;
    this.etc = join(this.dir, 'etc-libvirt');
    this.logPath = join(this.dir, 'logs', 'libvirtd.log');
    this.outPath = join(this.dir, 'logs', 'libvirtd.out');
    this.lockdLink = join(this.dir, 'lockd.sock');
    this.uri = `qemu+unix:///system?socket=${join(this.dir, 'sock', 'libvirt-sock')}`;
    for (const d of ['etc-libvirt/qemu', 'var-lib-libvirt', 'var-log-libvirt', 'run', 'sock', 'logs']) mkdirSync(join(this.dir, d), { recursive: true });
    mkdirSync(join(cfg.root, 'var-cache-libvirt'), { recursive: true });
    const p = cfg.migrationPort;
    writeFileSync(
      join(this.etc, 'libvirtd.conf'),
      [
        `unix_sock_dir = "${join(this.dir, 'sock')}"`,
        `host_uuid = "${cfg.hostUuid}"`,
        'log_level = 3',
        'log_filters = "1:locking 2:qemu.qemu_process 2:qemu.qemu_driver 2:qemu.qemu_migration"',
        `log_outputs = "2:file:${this.logPath}"`,
        '',
      ].join('\n'),
    );
    writeFileSync(
      join(this.etc, 'qemu.conf'),
      [
        'lock_manager = "lockd"',
        'security_driver = "none"',
        'cgroup_controllers = [ ]',
        'namespaces = [ ]',
        'user = "root"',
        'group = "root"',
        'dynamic_ownership = 0',
        'remember_owner = 0',
        'stdio_handler = "file"',
        // QEMU's migration stream: loopback only
        `migration_port_min = ${p}`,
        `migration_port_max = ${p + 7}`,
        '',
      ].join('\n'),
    );
  }

  isRunning(): boolean {
    return !this.exited;
  }

  mark(): { log: number; out: number } {
    return { log: fileSize(this.logPath), out: fileSize(this.outPath) };
  }

  logSince(mark: { log: number; out: number }): string {
    return readFrom(this.logPath, mark.log) + readFrom(this.outPath, mark.out);
  }

  /** Points this host's /run/libvirt/virtlockd-sock at `socketPath`, atomically. */
  pointLockdAt(socketPath: string): void {
    const tmp = `${this.lockdLink}.tmp`;
    rmSync(tmp, { force: true });
    symlinkSync(socketPath, tmp);
    renameSync(tmp, this.lockdLink);
  }

  /** Starts libvirtd with the lockd plugin configured for `mode`; resolves with ms until virsh gets an answer. */
  async start(mode: LeaseMode): Promise<number> {
    assertNotAborted(`libvirtd on ${this.hostname}`);
    if (this.isRunning()) throw new Error(`libvirtd on ${this.hostname} already running`);
    const conf = ['auto_disk_leases = 1', 'require_lease_for_disks = 1'];
    if (mode === 'indirect') conf.push(`file_lockspace_dir = "${this.cfg.lockspace}"`);
    writeFileSync(join(this.etc, 'qemu-lockd.conf'), conf.join('\n') + '\n');
    const env: NodeJS.ProcessEnv = { PATH: `${join(this.cfg.root, 'bin')}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`, LC_ALL: 'C', HOME: '/root' };
    const out = openSync(this.outPath, 'a');
    const t0 = performance.now();
    const child = spawn(UNSHARE, ['-m', '-u', '--propagation', 'private', '--', '/bin/sh', '-c', NS_SCRIPT, 'libvirtd-ns', this.dir, this.cfg.root, this.hostname, SETPRIV, '--pdeathsig', 'KILL', '--', LIBVIRTD, '-f', join(this.etc, 'libvirtd.conf')], {
      stdio: ['ignore', out, out],
      env,
    });
    closeSync(out);
    if (!child.pid) throw new Error(`cannot spawn ${UNSHARE}`);
    const pid = child.pid;
    this.pid = pid;
    this.exited = false;
    let exitInfo = '';
    child.once('exit', (code, signal) => {
      if (this.pid === pid) this.exited = true;
      exitInfo = `code ${code}, signal ${signal}`;
      untrackPid(pid);
    });
    trackPid(pid, `libvirtd ${this.hostname}`);
    const deadline = Date.now() + 120_000;
    for (;;) {
      if (!this.isRunning()) throw new Error(`libvirtd on ${this.hostname} exited during start-up (${exitInfo})\n${this.logSince({ log: 0, out: 0 }).slice(-4000)}`);
      const r = await this.virsh(['version'], 10_000);
      if (r.code === 0) break;
      if (Date.now() > deadline) throw new Error(`libvirtd on ${this.hostname} did not answer virsh within 120 s: ${r.stderr.trim()}`);
      await sleep(50);
    }
    const ms = performance.now() - t0;
    const ns = mountNamespace(pid);
    if (!ns || ns === mountNamespace('self')) throw new Error(`libvirtd on ${this.hostname} is not in a private mount namespace`);
    const uts = (await run('/usr/bin/nsenter', ['-t', String(pid), '-u', '/bin/hostname'], { timeoutMs: 10_000 })).stdout.trim();
    if (uts !== this.hostname) throw new Error(`libvirtd on ${this.hostname} sees hostname "${uts}"`);
    this.ns = ns;
    return ms;
  }

  /** SIGTERM libvirtd only (guests keep running, as on a real host's libvirtd restart). */
  async stopDaemonOnly(): Promise<void> {
    if (this.pid && this.isRunning()) {
      if (!(await stopPid(this.pid, 'SIGTERM', 15_000))) throw new Error(`libvirtd ${this.pid} survived SIGKILL`);
      const end = Date.now() + 5000;
      while (this.isRunning() && Date.now() < end) await sleep(10);
    }
  }

  /**
   * This host's processes: libvirtd and its QEMU guests, in whichever of its
   * namespaces (a libvirtd restart makes a new one; running guests stay in
   * the old). Recognised by H/run mounted on /run, which nothing else has
   * (namespace ids are reused by the kernel, possibly for others' namespaces).
   */
  pids(): number[] {
    return pidsWithMount('/run', this.runDir);
  }

  /** libvirtd (SIGTERM), then SIGKILL whatever of this host is left. Returns what had to be killed. */
  async stop(): Promise<string[]> {
    await this.stopDaemonOnly();
    const killed: string[] = [];
    for (const pid of this.pids()) {
      killed.push(`${pid} (${cmdline(pid)})`);
      await stopPid(pid, 'SIGKILL', 5000);
    }
    return killed;
  }

  virsh(args: string[], timeoutMs = 60_000): Promise<RunResult> {
    return run(VIRSH, ['-q', '-c', this.uri, ...args], { timeoutMs, env: { ...process.env, LC_ALL: 'C', LANG: 'C', LIBVIRT_DEFAULT_URI: this.uri } });
  }

  async domState(name: string): Promise<string> {
    const r = await this.virsh(['domstate', name]);
    if (r.code !== 0) {
      if (/failed to get domain|Domain not found/.test(r.stderr)) return 'undefined';
      throw new Error(`virsh domstate ${name} on ${this.hostname} failed: ${r.stderr.trim()}`);
    }
    return r.stdout.trim();
  }

  /** QEMU's pid for a running guest of this host (its pid file in this host's /run). */
  qemuPid(name: string): number | undefined {
    try {
      const pid = Number(readFileSync(join(this.dir, 'run', 'libvirt', 'qemu', `${name}.pid`), 'utf8').trim());
      if (pid > 1 && pidAlive(pid) && readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(`guest=${name},`)) return pid;
    } catch {
      /* not running here */
    }
    return undefined;
  }

  /** QEMU processes of this host (any of its namespaces, not libvirtd itself). */
  qemuPids(): number[] {
    return this.pids().filter((p) => p !== this.pid && /qemu-system/.test(cmdline(p)));
  }

  guestLog(name: string): string {
    const p = join(this.dir, 'var-log-libvirt', 'qemu', `${name}.log`);
    return existsSync(p) ? readFileSync(p, 'utf8') : '';
  }
}
