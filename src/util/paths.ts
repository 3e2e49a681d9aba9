// Default paths, following virtlockd's (virLockDaemonUnixSocketPaths) so that libvirt finds
// relockd with no configuration: /run/libvirt as root, else
// $XDG_RUNTIME_DIR/libvirt (falling back to ~/.cache, as GLib does).

import { homedir } from 'node:os';
import { join } from 'node:path';

export interface DaemonPaths {
  runtimeDir: string;
  socket: string;
  adminSocket: string;
  pidFile: string;
  stateFile: string;
  configFile: string;
}

export function isPrivileged(): boolean {
  return (process.geteuid?.() ?? 0) === 0;
}

export function defaultPaths(env: NodeJS.ProcessEnv = process.env, privileged = isPrivileged()): DaemonPaths {
  if (privileged) {
    return {
      runtimeDir: '/run/libvirt',
      socket: '/run/libvirt/virtlockd-sock',
      adminSocket: '/run/libvirt/virtlockd-admin-sock',
      pidFile: '/run/virtlockd.pid',
      stateFile: '/run/libvirt/relockd-restart-exec.json',
      configFile: '/etc/libvirt/virtlockd.conf',
    };
  }
  const runtimeBase = env.XDG_RUNTIME_DIR || join(env.HOME || homedir(), '.cache');
  const configBase = env.XDG_CONFIG_HOME || join(env.HOME || homedir(), '.config');
  const runtimeDir = join(runtimeBase, 'libvirt');
  return {
    runtimeDir,
    socket: join(runtimeDir, 'virtlockd-sock'),
    adminSocket: join(runtimeDir, 'virtlockd-admin-sock'),
    pidFile: join(runtimeDir, 'virtlockd.pid'),
    stateFile: join(runtimeDir, 'relockd-restart-exec.json'),
    configFile: join(configBase, 'libvirt', 'virtlockd.conf'),
  };
}

/** Paths under an explicit runtime directory (--runtime-dir). */
export function pathsUnder(runtimeDir: string, base: DaemonPaths): DaemonPaths {
  return {
    ...base,
    runtimeDir,
    socket: join(runtimeDir, 'virtlockd-sock'),
    adminSocket: join(runtimeDir, 'virtlockd-admin-sock'),
    pidFile: join(runtimeDir, 'virtlockd.pid'),
    stateFile: join(runtimeDir, 'relockd-restart-exec.json'),
  };
}
