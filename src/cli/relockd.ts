// `relockd`: parses the command line (virtlockd's flags plus relockd's own)
// and hands over to the daemon. No logic beyond turning flags into options.

import { isAbsolute, resolve } from 'node:path';
import { Daemon } from '../daemon/daemon.js';
import { startFdPrescan } from '../state/fdPrescan.js';
import { enterRoot } from '../startCwd.js';
import { defaultPaths, pathsUnder } from '../util/paths.js';
import { createDaemonLogger } from '../log.js';
import { fromConfig, resolveSettings } from '../daemon/settings.js';
import type { ResolvedSettings } from '../daemon/settings.js';
import { RELOCKD_OPTIONS, parseKnownArgs } from '../config/relockdOptions.js';
import type { CliArgs } from '../config/relockdOptions.js';
import { REEXEC_ENV } from '../daemon/reexec.js';
import { VERSION } from '../version.js';
import { mark } from '../bootMarks.js';
import { PidFileBusyError } from '../daemon/pidFile.js';
import { ExitCode } from '../daemon/exitCode.js';
import { STATUS_FD_ENV, daemonize, reportToInvoker } from '../daemon/daemonize.js';
import { cliBoundsError } from './cliBounds.js';
import { flushTurnNow } from '../turnFlush.js';
import { KEPT_STATE_ENV, settingsFromState } from '../daemon/keptSettings.js';
import { lazyRequire } from '../lazyRequire.js';

/**
 * The option table for yargs. A repeated option keeps its last value
 * (getopt's rule, and node:util's on the re-exec path), except the
 * repeatable ones (--lockspace), which collect.
 */
function yargsOptions(): Record<string, import('yargs').Options> {
  const out: Record<string, import('yargs').Options> = {};
  for (const [name, spec] of Object.entries(RELOCKD_OPTIONS)) {
    out[name] = spec.array ? { ...spec } : { ...spec, coerce: (v: unknown) => (Array.isArray(v) ? v[v.length - 1] : v) };
  }
  return out;
}

/** Interactive parse: help, version, strict usage errors. */
export async function parseArgs(argv: string[]): Promise<CliArgs> {
  // yargs' CommonJS entry exports the function itself.
  const yargs = lazyRequire('yargs') as typeof import('yargs').default;
  const y = yargs(argv)
    .scriptName('relockd')
    .usage('$0 [options]\n\nLock-holding daemon for virtualization hosts, wire-compatible with virtlockd.')
    .options(yargsOptions())
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

/** The log files a failed -d start should point at. */
function logFiles(s: ResolvedSettings): string[] {
  return s.outputs.filter((o) => o.kind === 'file' && o.path).map((o) => o.path!);
}

/**
 * A fresh start: node:util's strict parser when it accepts the command line
 * (the usual unit-file case: no yargs loaded, ~50 ms and ~5 MB of resident
 * memory saved for the daemon's lifetime); anything it refuses (--help,
 * --version, --no-…, camelCase spellings, errors) goes to yargs, which
 * accepts or reports it as before.
 */
async function parseFreshArgs(argv: string[]): Promise<CliArgs> {
  let args: CliArgs;
  try {
    args = parseKnownArgs(argv);
  } catch {
    return parseArgs(argv);
  }
  for (const [name, spec] of Object.entries(RELOCKD_OPTIONS) as Array<[string, { choices?: readonly string[] }]>) {
    const v = (args as unknown as Record<string, unknown>)[name.replace(/-(\w)/g, (_, c: string) => c.toUpperCase())];
    if (spec.choices && v !== undefined && !spec.choices.includes(String(v))) return parseArgs(argv); // yargs words the error
  }
  return args;
}

class UsageError extends Error {
  override name = 'UsageError';
}

function checkArgs(args: CliArgs): void {
  const bounds = cliBoundsError(args);
  if (bounds) throw new UsageError(bounds);
  if (args.timeout !== undefined && !(Number.isInteger(args.timeout) && args.timeout >= 0 && args.timeout <= 2147483)) throw new UsageError('Invalid value for timeout');
  for (const k of ['killGrace', 'lockspaceCheckInterval', 'lockspaceFailureTimeout', 'nfsLeaseTime'] as const) {
    const v = args[k];
    if (v !== undefined && !(v > 0)) throw new UsageError(`--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)} takes a positive number of seconds`);
  }
  for (const dir of args.lockspace ?? []) if (!dir.startsWith('/')) throw new UsageError(`--lockspace needs an absolute path: '${dir}'`);
}

/** Path options resolved once against the start directory (also for SIGHUP). */
function withAbsolutePaths(args: CliArgs, cwd: string): CliArgs {
  const abs = (p: string | undefined) => (p === undefined ? p : resolve(cwd, p));
  return { ...args, config: abs(args.config), socket: abs(args.socket), adminSocket: abs(args.adminSocket), pidFile: abs(args.pidFile), stateFile: abs(args.stateFile), runtimeDir: abs(args.runtimeDir) };
}

/**
 * The argv a re-exec runs again, with the entry script made absolute (it is
 * relative when started as ./bin/relockd.cjs, and the new image starts in
 * '/'). Options stay as given: the new image resolves them like this one.
 */
function withAbsoluteScript(argv: string[], cwd: string): string[] {
  const script = process.argv[1];
  const i = script ? argv.findIndex((a, k) => k > 0 && !isAbsolute(a) && resolve(cwd, a) === script) : -1;
  return i < 0 ? argv : argv.map((a, k) => (k === i ? script! : a));
}

export async function main(argv: string[], originalArgv?: string[]): Promise<Daemon | undefined> {
  mark('modules');
  // A re-exec'd image: its lease fds are checked in the background while it parses its arguments, configuration and state (fdPrescan.ts).
  startFdPrescan();
  const reexec = process.env[REEXEC_ENV] !== undefined;
  let args: CliArgs;
  try {
    // A re-exec'd image gets the argv yargs accepted at first start.
    args = reexec ? parseKnownArgs(argv) : await parseFreshArgs(argv);
    checkArgs(args);
  } catch (err) {
    process.stderr.write(`relockd: error: ${(err as Error).message}\n`);
    process.exit(ExitCode.FAILURE);
  }
  // Work in '/' in every mode; relative paths mean the start directory.
  const cwd = enterRoot(reexec || process.env[STATUS_FD_ENV] !== undefined);
  args = withAbsolutePaths(args, cwd);
  // -d: the invoking process waits for the daemon's verdict and exits.
  // (A re-exec'd image, or the daemon child itself, never daemonizes again.)
  if (args.daemon && !reexec && process.env[STATUS_FD_ENV] === undefined) await daemonize();
  mark('args');
  const base = defaultPaths();
  const paths = args.runtimeDir ? pathsUnder(args.runtimeDir, base) : base;
  let settings: ResolvedSettings;
  let configError: Error | null = null;
  let keptFromState = true;
  try {
    settings = resolveSettings(args, paths);
  } catch (err) {
    if (!reexec) {
      // virtlockd: a bad configuration is fatal at start (exit 1).
      reportToInvoker(`ERROR ${(err as Error).message}`);
      process.stderr.write(`relockd: error: ${(err as Error).message}\n`);
      process.exit(ExitCode.FAILURE);
    }
    // A re-exec'd image must never exit over it (every lock would go), nor
    // fall back to the defaults: it keeps the settings the old image ran
    // with (recorded in the state document), and says so loudly.
    configError = err as Error;
    const fallback = fromConfig(args, paths);
    settings = settingsFromState(process.env[KEPT_STATE_ENV] ?? fallback.options.stateFile, process.pid, args.config ?? paths.configFile) ?? fallback;
    if (settings === fallback) keptFromState = false;
  }
  delete process.env[KEPT_STATE_ENV];
  mark('config');
  const logging = createDaemonLogger(settings.level, settings.outputs);
  const log = logging.log;
  if (configError) {
    log.error(
      { err: configError.message, configFile: settings.configFile },
      keptFromState
        ? 'configuration invalid after re-exec: running with the settings in force before it; fix the file and send SIGHUP'
        : 'configuration invalid after re-exec and no settings recorded: running with the command line and defaults; fix it and send SIGHUP or SIGUSR1',
    );
  }
  for (const w of settings.warnings) log.warn({ configFile: settings.configFile }, w);
  const daemon = new Daemon(settings.options, log);
  daemon.logging = logging;
  daemon.reloadSettings = () => resolveSettings(args, paths);
  if (configError) daemon.configError = configError.message;
  if (originalArgv && originalArgv.length) daemon.originalArgv = withAbsoluteScript(originalArgv, cwd);
  try {
    await daemon.start();
  } catch (err) {
    if (reexec) {
      // This image inherited the old one's locks: exiting would drop them all.
      // Stay, in safe mode, with whatever was adopted; SIGUSR1 retries.
      log.fatal({ err: (err as Error).stack }, 'SAFE MODE: start after re-exec failed unexpectedly; every inherited fd is kept, acquisitions refused; send SIGUSR1 to retry');
      daemon.enterSafeMode();
      setInterval(() => {}, 1 << 30); // never exit by ourselves
      return daemon;
    }
    log.fatal({ err: (err as Error).message }, 'startup failed');
    // A start that failed leaves no pid file behind (an exit by signal still
    // can: the next start takes it over, as its lock is gone).
    daemon.pidFile?.remove();
    flushTurnNow(); // the log file the message points at has the lines before the invoker returns
    reportToInvoker(`ERROR ${(err as Error).message}`, logFiles(settings));
    process.stderr.write(`relockd: error: ${(err as Error).message}\n`);
    // virtlockd's exit codes: 1 pid file, 6 sockets (activation included).
    process.exit(err instanceof PidFileBusyError ? ExitCode.PIDFILE : ExitCode.NETWORK);
  }
  reportToInvoker('READY');
  return daemon;
}
