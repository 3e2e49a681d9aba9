// relockd's command line as one table: yargs builds the interactive parser
// (help, usage errors) from it, and a re-exec'd image parses the same argv
// with node:util's parseArgs from it — argv never changes across a re-exec
// and was validated by yargs at first start, and importing yargs would add
// 60-100 ms to every re-exec blackout.

import { parseArgs as utilParseArgs } from 'node:util';
import { LOG_LEVELS } from '../log.js';

interface OptionSpec {
  alias?: string;
  type: 'boolean' | 'string' | 'number';
  default?: boolean | string | number;
  describe: string;
  choices?: readonly string[];
  /** May be given more than once (collected into an array). */
  array?: boolean;
}

export const RELOCKD_OPTIONS: Record<string, OptionSpec> = {
  daemon: { alias: 'd', type: 'boolean', default: false, describe: 'run in the background' },
  config: { alias: 'f', type: 'string', describe: 'configuration file' },
  'pid-file': { alias: 'p', type: 'string', describe: 'pid file' },
  timeout: { alias: 't', type: 'number', describe: 'exit after SECS idle (no client, no lease)' },
  verbose: { alias: 'v', type: 'boolean', default: false, describe: 'log debug events' },
  'log-level': { type: 'string', choices: LOG_LEVELS, describe: 'minimum log level' },
  socket: { type: 'string', describe: 'main socket path' },
  'admin-socket': { type: 'string', describe: 'admin socket path (virt-admin and relockctl)' },
  'state-file': { type: 'string', describe: 're-exec state file path (default: in the runtime directory)' },
  'runtime-dir': { type: 'string', describe: 'directory for sockets, pid and state files' },
  'term-grace': { type: 'number', describe: 'seconds between SIGTERM and SIGKILL of an owner that lost its connection while holding leases (default 3)' },
  'storage-timeout': { type: 'number', describe: 'seconds a storage call may take before the request fails (default 30)' },
  'shutdown-policy': { type: 'string', choices: ['drain', 'kill-owners', 'refuse'], describe: 'what SIGTERM does while leases are held (default drain)' },
  'max-clients': { type: 'number', describe: 'connected clients at most on the main socket; more wait in the backlog (default 1024)' },
  'storage-inline': { type: 'string', choices: ['local', 'never'], describe: "lease calls on local filesystems run on the event loop ('local', default) or always on worker threads ('never')" },
  lockspace: { type: 'string', array: true, describe: 'directory lock space to create at start (repeatable)' },
  'lock-failure-action': { type: 'string', choices: ['killpath', 'pause', 'terminate', 'ignore'], describe: 'what happens to owners of a lock space whose storage failed (default pause; docs/storage-failure.md)' },
  killpath: { type: 'string', describe: 'program (and arguments) run for each owner of a failed lock space: "/path/prog ARGS"' },
  'kill-grace': { type: 'number', describe: 'seconds the killpath program has before SIGTERM/SIGKILL (default 15)' },
  'lockspace-check-interval': { type: 'number', describe: 'seconds between probes of a lock space on remote storage (default 10)' },
  'lockspace-failure-timeout': { type: 'number', describe: 'seconds without a good probe before a lock space is failed (default 60)' },
  'nfs-lease-time': { type: 'number', describe: "the NFS server's lease time in seconds when the mount does not say (default 90)" },
  'libvirt-uri': { type: 'string', describe: 'libvirt URI for the pause action (default qemu:///system)' },
};

export interface CliArgs {
  daemon: boolean;
  config?: string;
  pidFile?: string;
  timeout?: number;
  verbose: boolean;
  logLevel?: string;
  socket?: string;
  adminSocket?: string;
  stateFile?: string;
  runtimeDir?: string;
  termGrace?: number;
  storageTimeout?: number;
  shutdownPolicy?: 'drain' | 'kill-owners' | 'refuse';
  lockspace?: string[];
  maxClients?: number;
  storageInline?: 'local' | 'never';
  lockFailureAction?: 'killpath' | 'pause' | 'terminate' | 'ignore';
  killpath?: string;
  killGrace?: number;
  lockspaceCheckInterval?: number;
  lockspaceFailureTimeout?: number;
  nfsLeaseTime?: number;
  libvirtUri?: string;
}

const camel = (s: string) => s.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());

/** Fast parse of an argv that yargs already accepted once (re-exec path). */
export function parseKnownArgs(argv: string[]): CliArgs {
  const options: Record<string, { type: 'string' | 'boolean'; short?: string }> = {};
  for (const [name, spec] of Object.entries(RELOCKD_OPTIONS)) {
    options[name] = { type: spec.type === 'boolean' ? 'boolean' : 'string', ...(spec.alias ? { short: spec.alias } : {}), ...(spec.array ? { multiple: true } : {}) };
  }
  const { values } = utilParseArgs({ args: argv, options, strict: true, allowPositionals: false });
  const out: Record<string, unknown> = {};
  for (const [name, spec] of Object.entries(RELOCKD_OPTIONS)) {
    let v: unknown = (values as Record<string, unknown>)[name];
    if (v === undefined) v = spec.default;
    else if (spec.type === 'number') v = Number(v);
    if (v !== undefined) out[camel(name)] = v;
  }
  return out as unknown as CliArgs;
}
