// `relockd`: parses the command line (virtlockd's flags plus relockd's own)
// and hands over to the daemon. No logic beyond turning flags into options.

import type { Level } from 'pino';
import { Daemon } from '../daemon/daemon.js';
import { defaultPaths, pathsUnder } from '../daemon/paths.js';
import { defaultTermination } from '../daemon/terminator.js';
import { createLogger } from '../log.js';
import { RELOCKD_OPTIONS, parseKnownArgs } from './relockdOptions.js';
import type { CliArgs } from './relockdOptions.js';
import { REEXEC_ENV } from '../daemon/reexec.js';
import { VERSION } from '../version.js';
import { mark } from '../bootMarks.js';
import { PidFileBusyError } from '../daemon/pidFile.js';

/** Interactive parse: help, version, strict usage errors. */
export async function parseArgs(argv: string[]): Promise<CliArgs> {
  const { default: yargs } = await import('yargs');
  const y = yargs(argv)
    .scriptName('relockd')
    .usage('$0 [options]\n\nLock-holding daemon for virtualization hosts, wire-compatible with virtlockd.')
    .options(RELOCKD_OPTIONS as Record<string, import('yargs').Options>)
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
  ];
  for (const [given, flag] of unsupported) {
    if (given) throw new UsageError(`${flag} is not supported yet`);
  }
}

export async function main(argv: string[], originalArgv?: string[]): Promise<Daemon | undefined> {
  mark('modules');
  let args: CliArgs;
  try {
    // A re-exec'd image gets the argv yargs accepted at first start.
    args = process.env[REEXEC_ENV] ? parseKnownArgs(argv) : await parseArgs(argv);
    refuseUnsupported(args);
    if (!(args.termGrace >= 0) || !(args.storageTimeout > 0)) throw new UsageError('--term-grace and --storage-timeout take positive numbers of seconds');
    if (args.timeout !== undefined && !(Number.isInteger(args.timeout) && args.timeout >= 0 && args.timeout <= 2147483)) throw new UsageError('Invalid value for timeout');
    if (args.maxClients !== undefined && !(Number.isInteger(args.maxClients) && args.maxClients > 0)) throw new UsageError('--max-clients takes a positive integer');
    for (const dir of args.lockspace ?? []) if (!dir.startsWith('/')) throw new UsageError(`--lockspace needs an absolute path: '${dir}'`);
  } catch (err) {
    process.stderr.write(`relockd: error: ${(err as Error).message}\n`);
    process.exit(1);
  }
  mark('args');
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
      pidFile: args.pidFile ?? paths.pidFile,
      shutdownPolicy: args.shutdownPolicy ?? 'drain',
      timeoutSec: args.timeout ? args.timeout : null,
      lockspaces: args.lockspace ?? [],
      runtimeDir: paths.runtimeDir,
      maxClients: args.maxClients ?? 1024,
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
    // virtlockd's exit codes: 1 pid file, 6 sockets (activation included).
    process.exit(err instanceof PidFileBusyError ? 1 : 6);
  }
  return daemon;
}
