// A real libvirtd (QEMU driver, lock_manager = "lockd") in a private mount
// namespace, pointed at whichever lock daemon is under test. Nothing on the
// host's /etc, /run or /var changes:
//
//   unshare -m --propagation private -- /bin/sh -c SCRIPT
//     mount -n -t tmpfs tmpfs /run                  (fresh, private /run)
//     ln -s W/lockd.sock /run/libvirt/virtlockd-sock (the lockd plugin's fixed path)
//     mount -n --bind W/etc-libvirt /etc/libvirt      (and /var/lib, /var/cache, /var/log/libvirt)
//     mount -n --bind W/not-an-emulator /usr/bin/qemu-system-i386   (skip a 5 s capability probe)
//     exec setpriv --pdeathsig KILL -- libvirtd -f W/etc-libvirt/libvirtd.conf
//
// unshare (without --fork), sh's exec and setpriv exec in place, so the pid we
// spawn is libvirtd's. QEMU guests are forked by libvirtd and stay in the same
// namespace; the namespace (and its mounts) vanishes when its last process
// exits, and cleanup kills every process in it by pid.
//
// W/lockd.sock is a symlink we retarget to the socket of the daemon under
// test (relockd or the real virtlockd); connect() follows both links.

import { createHash } from 'node:crypto';
import { chmodSync, closeSync, ftruncateSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { visibleTmpDir } from '../lib/virtlockd.js';
import { assertNotAborted, mountNamespace, pidAlive, pidsInNamespace, run, sleep, stopPid, trackNamespace, trackPid, untrackPid, cmdline } from './proc.js';
import type { RunResult } from './proc.js';

export type LeaseMode = 'indirect' | 'direct';

export const LIBVIRTD = '/usr/sbin/libvirtd';
export const VIRSH = '/usr/bin/virsh';
export const QEMU = '/usr/bin/qemu-system-x86_64';
const QEMU_I386 = '/usr/bin/qemu-system-i386';
const UNSHARE = '/usr/bin/unshare';
const SETPRIV = '/usr/bin/setpriv';
/** The host directories bind-mounted over with private ones. */
export const PRIVATE_DIRS: Array<[string, string]> = [
  ['etc-libvirt', '/etc/libvirt'],
  ['var-lib-libvirt', '/var/lib/libvirt'],
  ['var-cache-libvirt', '/var/cache/libvirt'],
  ['var-log-libvirt', '/var/log/libvirt'],
];

export interface WorkDir {
  root: string;
  etc: string;
  logs: string;
  images: string;
  /** file_lockspace_dir for indirect leases. */
  lockspace: string;
  /** Symlink that /run/libvirt/virtlockd-sock points to. */
  lockdLink: string;
  /** Our qemu-system-x86_64 (QEMU with image locking off for file blockdevs). */
  emulator: string;
  sockDir: string;
  xml: string;
}

/**
 * A fresh work directory. /etc/libvirt and /var/lib/libvirt are NOT copied:
 * on a real host they may hold the host's own guests (autostarted by any
 * libvirtd reading them) and disk images; ours start empty.
 */
export function createWorkDir(): WorkDir {
  const root = mkdtempSync(join(visibleTmpDir(), 'relockd-libvirt-e2e-'));
  const w: WorkDir = {
    root,
    etc: join(root, 'etc-libvirt'),
    logs: join(root, 'logs'),
    images: join(root, 'images'),
    lockspace: join(root, 'lockspace'),
    lockdLink: join(root, 'lockd.sock'),
    emulator: join(root, 'bin', 'qemu-system-x86_64'),
    sockDir: join(root, 'sock'),
    xml: join(root, 'xml'),
  };
  for (const [d] of PRIVATE_DIRS) mkdirSync(join(root, d), { recursive: true });
  for (const d of [w.logs, w.images, w.sockDir, w.xml, join(root, 'bin'), join(w.etc, 'qemu')]) mkdirSync(d, { recursive: true });
  for (const d of ['d1.img', 'd2.img', 'd3.img']) {
    const f = openSync(join(w.images, d), 'w');
    ftruncateSync(f, 1 << 20); // 1 MiB raw disk (the guests never boot from it)
    closeSync(f);
  }
  // The lock space directory is NOT created here: libvirtd's CREATE_LOCKSPACE must make it.

  writeFileSync(
    join(w.etc, 'libvirtd.conf'),
    [
      `unix_sock_dir = "${w.sockDir}"`,
      'log_level = 3',
      // locking: the lockd plugin and domain_lock; qemu_process: start/stop/pause of guests
      'log_filters = "1:locking 2:qemu.qemu_process 2:qemu.qemu_driver"',
      `log_outputs = "2:file:${join(w.logs, 'libvirtd.log')}"`,
      '',
    ].join('\n'),
  );
  writeFileSync(
    join(w.etc, 'qemu.conf'),
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
      '',
    ].join('\n'),
  );
  writeEmulatorWrapper(w.emulator);
  writeFileSync(join(root, 'not-an-emulator'), '');
  return w;
}

/**
 * QEMU's own image locking (OFD locks on bytes 100+/200+) would refuse the
 * second guest before the lock daemon is asked; `path` becomes a wrapper that
 * turns it off per file node and execs the real QEMU (same pid).
 * `extraGuestArgs` are appended when QEMU runs a guest (`-name` given), not
 * for libvirtd's capability probe.
 */
export function writeEmulatorWrapper(path: string, extraGuestArgs: string[] = []): void {
  const quote = (a: string) => `'${a.replace(/'/g, `'\\''`)}'`;
  writeFileSync(
    path,
    [
      '#!/bin/bash',
      '# written by test/e2e/libvirtHost.ts: qemu-system-x86_64 with "locking":"off" on file blockdevs',
      'args=()',
      'for a in "$@"; do',
      '  case $a in',
      `    '{"driver":"file",'*) a='{"locking":"off",'"\${a#\\{}" ;;`,
      '  esac',
      '  args+=("$a")',
      'done',
      ...(extraGuestArgs.length ? [`case " $* " in *' -name '*) args+=(${extraGuestArgs.map(quote).join(' ')}) ;; esac`] : []),
      `exec ${QEMU} "\${args[@]}"`,
      '',
    ].join('\n'),
  );
  chmodSync(path, 0o755);
}

export function sha256(s: string): string {
  return createHash('sha256').update(s).digest('hex');
}

export interface Lease {
  disk: string;
  /** The resource name libvirt sends (and virsh prints when refused). */
  name: string;
  /** The file the daemon locks (byte 0, length 1). */
  path: string;
}

export function leaseOf(w: WorkDir, mode: LeaseMode, disk: string): Lease {
  if (mode === 'direct') return { disk, name: disk, path: disk };
  const name = sha256(disk);
  return { disk, name, path: join(w.lockspace, name) };
}

export interface DiskSpec {
  path: string;
  shareable?: boolean;
  readonly?: boolean;
}

export function domainXml(w: WorkDir, name: string, disk: DiskSpec): string {
  const u = sha256(`relockd-e2e-${name}`);
  const uuid = `${u.slice(0, 8)}-${u.slice(8, 12)}-4${u.slice(13, 16)}-8${u.slice(17, 20)}-${u.slice(20, 32)}`;
  return `<domain type='qemu'>
  <name>${name}</name>
  <uuid>${uuid}</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>${w.emulator}</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='${disk.path}'/>
      <target dev='vda' bus='virtio'/>${disk.shareable ? '\n      <shareable/>' : ''}${disk.readonly ? '\n      <readonly/>' : ''}
    </disk>
    <video><model type='none'/></video>
    <memballoon model='none'/>
  </devices>
</domain>
`;
}

/** Points libvirt's /run/libvirt/virtlockd-sock (inside the namespace) at `socketPath`, atomically. */
export function pointLockdLinkAt(w: WorkDir, socketPath: string): void {
  const tmp = `${w.lockdLink}.tmp`;
  rmSync(tmp, { force: true });
  symlinkSync(socketPath, tmp);
  renameSync(tmp, w.lockdLink);
}

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

const NS_SCRIPT = `
set -e
W=$1; shift
/bin/mount -n -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/libvirt
ln -s "$W/lockd.sock" /run/libvirt/virtlockd-sock
/bin/mount -n --bind "$W/etc-libvirt" /etc/libvirt
/bin/mount -n --bind "$W/var-lib-libvirt" /var/lib/libvirt
/bin/mount -n --bind "$W/var-cache-libvirt" /var/cache/libvirt
/bin/mount -n --bind "$W/var-log-libvirt" /var/log/libvirt
if [ -f ${QEMU_I386} ]; then /bin/mount -n --bind "$W/not-an-emulator" ${QEMU_I386}; fi
exec "$@"
`;

export class Libvirtd {
  pid = 0;
  ns: string | undefined;
  mode: LeaseMode | undefined;
  private exited = true;
  readonly uri: string;
  readonly logPath: string;
  readonly outPath: string;

  constructor(readonly w: WorkDir) {
    this.uri = `qemu+unix:///system?socket=${join(w.sockDir, 'libvirt-sock')}`;
    this.logPath = join(w.logs, 'libvirtd.log');
    this.outPath = join(w.logs, 'libvirtd.out');
  }

  isRunning(): boolean {
    return !this.exited;
  }

  /** libvirtd's log (and its stdout/stderr) written since `mark` (from mark()). */
  logSince(mark: { log: number; out: number }): string {
    return readFrom(this.logPath, mark.log) + readFrom(this.outPath, mark.out);
  }

  mark(): { log: number; out: number } {
    return { log: fileSize(this.logPath), out: fileSize(this.outPath) };
  }

  /** Starts libvirtd with the plugin configured for `mode`; resolves with the time until virsh gets an answer (ms). */
  async start(mode: LeaseMode): Promise<number> {
    assertNotAborted('libvirtd');
    if (this.isRunning()) throw new Error('libvirtd already running');
    const conf = ['auto_disk_leases = 1', 'require_lease_for_disks = 1'];
    if (mode === 'indirect') conf.push(`file_lockspace_dir = "${this.w.lockspace}"`);
    writeFileSync(join(this.w.etc, 'qemu-lockd.conf'), conf.join('\n') + '\n');
    const env: NodeJS.ProcessEnv = { PATH: `${join(this.w.root, 'bin')}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`, LC_ALL: 'C', HOME: '/root' };
    const out = openSync(this.outPath, 'a');
    const t0 = performance.now();
    const child = spawn(UNSHARE, ['-m', '--propagation', 'private', '--', '/bin/sh', '-c', NS_SCRIPT, 'libvirtd-ns', this.w.root, SETPRIV, '--pdeathsig', 'KILL', '--', LIBVIRTD, '-f', join(this.w.etc, 'libvirtd.conf')], {
      stdio: ['ignore', out, out],
      env,
    });
    closeSync(out);
    if (!child.pid) throw new Error(`cannot spawn ${UNSHARE}`);
    this.pid = child.pid;
    this.mode = mode;
    this.exited = false;
    let exitInfo = '';
    child.once('exit', (code, signal) => {
      this.exited = true;
      exitInfo = `code ${code}, signal ${signal}`;
      untrackPid(child.pid!);
    });
    trackPid(this.pid, 'libvirtd');
    const deadline = Date.now() + 120_000;
    for (;;) {
      if (!this.isRunning()) throw new Error(`libvirtd exited during start-up (${exitInfo})\n${this.logSince({ log: 0, out: 0 }).slice(-4000)}`);
      const r = await this.virsh(['version'], 10_000);
      if (r.code === 0) break;
      if (Date.now() > deadline) throw new Error(`libvirtd did not answer virsh within 120 s: ${r.stderr.trim()}`);
      await sleep(50);
    }
    const ms = performance.now() - t0;
    const ns = mountNamespace(this.pid);
    if (!ns || ns === mountNamespace('self')) throw new Error('libvirtd is not in a private mount namespace');
    this.ns = ns;
    trackNamespace(ns, this.w.root);
    return ms;
  }

  /** SIGTERM libvirtd (by pid), then SIGKILL whatever is left in its namespace. Returns what had to be killed. */
  async stop(): Promise<string[]> {
    const killed: string[] = [];
    if (this.pid && this.isRunning()) {
      if (!(await stopPid(this.pid, 'SIGTERM', 15_000))) killed.push(`libvirtd ${this.pid} survived SIGKILL`);
      const end = Date.now() + 5000;
      while (this.isRunning() && Date.now() < end) await sleep(10);
    }
    if (this.ns) {
      for (const pid of pidsInNamespace(this.ns)) {
        killed.push(`${pid} (${cmdline(pid)})`);
        await stopPid(pid, 'SIGKILL', 5000);
      }
    }
    return killed;
  }

  virsh(args: string[], timeoutMs = 60_000): Promise<RunResult> {
    return run(VIRSH, ['-q', '-c', this.uri, ...args], { timeoutMs, env: { ...process.env, LC_ALL: 'C', LANG: 'C', LIBVIRT_DEFAULT_URI: this.uri } });
  }

  async domState(name: string): Promise<string> {
    const r = await this.virsh(['domstate', name]);
    if (r.code !== 0) throw new Error(`virsh domstate ${name} failed: ${r.stderr.trim()}`);
    return r.stdout.trim();
  }

  /** QEMU's pid for a running guest: libvirtd's pid file, read through /proc/<libvirtd>/root (the private /run). */
  qemuPid(name: string): number | undefined {
    try {
      const pid = Number(readFileSync(`/proc/${this.pid}/root/run/libvirt/qemu/${name}.pid`, 'utf8').trim());
      if (pid > 1 && pidAlive(pid) && readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(`guest=${name},`)) return pid;
    } catch {
      /* not running */
    }
    return undefined;
  }

  /** QEMU processes in libvirtd's namespace (any guest). */
  qemuPids(): number[] {
    if (!this.ns) return [];
    return pidsInNamespace(this.ns).filter((p) => p !== this.pid);
  }

  guestLog(name: string): string {
    const p = join(this.w.root, 'var-log-libvirt', 'qemu', `${name}.log`);
    return existsSync(p) ? readFileSync(p, 'utf8') : '';
  }
}
