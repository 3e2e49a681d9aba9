// `relockd`: parses the command line (virtlockd's flags plus relockd's own)
// and hands over to the daemon. No logic beyond turning flags into options.

import yargs from 'yargs';
import type { Level } from 'pino';
import { Daemon } from '../daemon/daemon.js';
import { defaultPaths, pathsUnder } from '../daemon/paths.js';
import { defaultTermination } from '../daemon/terminator.js';
import { createLogger, LOG_LEVELS } from '../log.js';
import { VERSION } from '../version.js';

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
  termGrace: number;
  storageTimeout: number;
}

export function parseArgs(argv: string[]): CliArgs {
  const y = yargs(argv)
    .scriptName('relockd')
    .usage('$0 [options]\n\nLock-holding daemon for virtualization hosts, wire-compatible with virtlockd.')
    .option('daemon', { alias: 'd', type: 'boolean', default: false, describe: 'run in the background' })
    .option('config', { alias: 'f', type: 'string', describe: 'configuration file' })
    .option('pid-file', { alias: 'p', type: 'string', describe: 'pid file' })
    .option('timeout', { alias: 't', type: 'number', describe: 'exit after SECS idle (no client, no lease)' })
    .option('verbose', { alias: 'v', type: 'boolean', default: false, describe: 'log debug events' })
    .option('log-level', { type: 'string', choices: LOG_LEVELS as string[], describe: 'minimum log level' })
    .option('socket', { type: 'string', describe: 'main socket path' })
    .option('admin-socket', { type: 'string', describe: 'admin socket path (virt-admin and relockctl)' })
    .option('state-file', { type: 'string', describe: 're-exec state file path (default: in the runtime directory)' })
    .option('runtime-dir', { type: 'string', describe: 'directory for sockets, pid and state files' })
    .option('term-grace', { type: 'number', default: defaultTermination.termGraceMs / 1000, describe: 'seconds between SIGTERM and SIGKILL of an owner that lost its connection while holding leases' })
    .option('storage-timeout', { type: 'number', default: 30, describe: 'seconds a storage call may take before the request fails' })
    .version('version', 'show version', `relockd (relockd) ${VERSION}`)
    .alias('version', 'V')
    .help('help')
    .alias('help', 'h')
    .strict()
    .fail((msg, err) => {
      throw err ?? new UsageError(msg);
    });
  return y.parseSync() as unknown as CliArgs;
}

export class UsageError extends Error {
  override name = 'UsageError';
}

/** Options whose implementation has not landed yet must not be silently ignored. */
function refuseUnsupported(a: CliArgs): void {
  const unsupported: Array<[boolean, string]> = [
    [a.daemon, '-d/--daemon'],
    [a.config !== undefined, '-f/--config'],
    [a.pidFile !== undefined, '-p/--pid-file'],
    [a.timeout !== undefined, '-t/--timeout'],
  ];
  for (const [given, flag] of unsupported) {
    if (given) throw new UsageError(`${flag} is not supported yet`);
  }
}

export async function main(argv: string[], originalArgv?: string[]): Promise<Daemon | undefined> {
  let args: CliArgs;
  try {
    args = parseArgs(argv);
    refuseUnsupported(args);
    if (!(args.termGrace >= 0) || !(args.storageTimeout > 0)) throw new UsageError('--term-grace and --storage-timeout take positive numbers of seconds');
  } catch (err) {
    process.stderr.write(`relockd: error: ${(err as Error).message}\n`);
    process.exit(1);
  }
  const base = defaultPaths();
  const paths = args.runtimeDir ? pathsUnder(args.runtimeDir, base) : base;
  const level = (args.logLevel ?? (args.verbose ? 'debug' : 'info')) as Level;
  const log = createLogger(level);
  const daemon = new Daemon(
    {
      socketPath: args.socket ?? paths.socket,
      adminSocketPath: args.adminSocket ?? paths.adminSocket,
      adminMaxClients: 5000,
      stateFile: args.stateFile ?? paths.stateFile,
      quiesceTimeoutMs: 5000,
      runtimeDir: paths.runtimeDir,
      maxClients: 1024,
      termination: { ...defaultTermination, termGraceMs: args.termGrace * 1000 },
      storageTimeoutMs: args.storageTimeout * 1000,
      storagePerKeyConcurrency: 4,
    },
    log,
  );
  if (originalArgv && originalArgv.length) daemon.originalArgv = originalArgv;
  try {
    await daemon.start();
  } catch (err) {
    log.fatal({ err: (err as Error).message }, 'startup failed');
    process.stderr.write(`relockd: error: ${(err as Error).message}\n`);
    process.exit(6);
  }
  return daemon;
}
