// Settings in force = command line > environment (libvirt's LIBVIRT_DEBUG,
// LIBVIRT_LOG_FILTERS, LIBVIRT_LOG_OUTPUTS) > configuration file > defaults.
// Computed at start and again on SIGHUP; the daemon applies what can change
// while running.

import type { Level } from 'pino';
import type { CliArgs } from '../config/relockdOptions.js';
import { loadConfig, DEFAULT_CONFIG } from '../config/config.js';
import type { RelockdConfig } from '../config/config.js';
import { LogSpecError, loggingPlan, parseLogFilters, parseLogOutputs } from '../config/logging.js';
import { ConfigError } from '../config/errors.js';
import type { OutputSpec } from '../log.js';
import type { DaemonOptions } from './options.js';
import type { DaemonPaths } from '../util/paths.js';
import { defaultTermination } from '../services/terminator.js';
import { parseKillpath, timingProblems } from '../health/options.js';
import type { HealthOptions } from '../health/options.js';

/** Lock-space health and lock-failure settings: command line over configuration file. */
function healthOptions(args: CliArgs, cfg: RelockdConfig): HealthOptions {
  const killpath = args.killpath ?? cfg.killpath;
  let argv: string[] | null = null;
  if (killpath !== null && killpath !== undefined) {
    try {
      argv = parseKillpath(killpath);
    } catch (err) {
      throw new ConfigError([{ file: '', line: 0, column: 0, key: 'killpath', message: (err as Error).message }]);
    }
  }
  return {
    checkIntervalMs: (args.lockspaceCheckInterval ?? cfg.lockspaceCheckInterval) * 1000,
    failureTimeoutMs: (args.lockspaceFailureTimeout ?? cfg.lockspaceFailureTimeout) * 1000,
    action: args.lockFailureAction ?? cfg.lockFailureAction,
    killpath: argv,
    killGraceMs: (args.killGrace ?? cfg.killGrace) * 1000,
    nfsLeaseTimeMs: (args.nfsLeaseTime ?? cfg.nfsLeaseTime) * 1000,
    libvirtUri: args.libvirtUri ?? cfg.libvirtUri,
  };
}

export interface ResolvedSettings {
  options: DaemonOptions;
  level: Level;
  outputs: OutputSpec[];
  /** The configuration file's warnings (unknown keys, duplicates). */
  warnings: string[];
  configFile: string;
  configFound: boolean;
}

/** libvirt's environment overrides (virLogSetFromEnv). Errors and warnings name the variable. */
function applyEnv(cfg: RelockdConfig, env: NodeJS.ProcessEnv, warnings: string[]): RelockdConfig {
  const out = { ...cfg };
  const dbg = env.LIBVIRT_DEBUG;
  if (dbg) {
    const n = Number(dbg);
    const byName: Record<string, 1 | 2 | 3 | 4> = { debug: 1, info: 2, warning: 3, warn: 3, error: 4 };
    const p = Number.isInteger(n) && n >= 1 && n <= 4 ? (n as 1 | 2 | 3 | 4) : byName[dbg.toLowerCase()];
    if (p) out.logLevel = p;
    else warnings.push(`environment variable LIBVIRT_DEBUG: '${dbg}' is not a log level (1-4, or debug, info, warning, error): ignored, as libvirt does`);
  }
  const parsed = <T>(name: string, value: string, parse: (v: string) => T): T => {
    try {
      return parse(value);
    } catch (err) {
      if (!(err instanceof LogSpecError)) throw err;
      throw new ConfigError([{ file: `environment variable ${name}`, line: 0, column: 0, message: `invalid value '${value}': ${err.message}` }]);
    }
  };
  if (env.LIBVIRT_LOG_FILTERS) out.logFilters = parsed('LIBVIRT_LOG_FILTERS', env.LIBVIRT_LOG_FILTERS, parseLogFilters);
  if (env.LIBVIRT_LOG_OUTPUTS) out.logOutputs = parsed('LIBVIRT_LOG_OUTPUTS', env.LIBVIRT_LOG_OUTPUTS, parseLogOutputs);
  return out;
}

/** The default log file of a daemonized relockd (virtlockd's choice of place). */
function defaultLogFile(privileged: boolean, env: NodeJS.ProcessEnv): string {
  return privileged ? '/var/log/libvirt/relockd.log' : `${env.XDG_CACHE_HOME || `${env.HOME}/.cache`}/libvirt/relockd.log`;
}

/**
 * Loads the configuration (a missing default file is fine; a missing -f file
 * is an error) and merges it with the command line. Throws ConfigError.
 */
export function resolveSettings(args: CliArgs, paths: DaemonPaths, env: NodeJS.ProcessEnv = process.env, privileged = (process.geteuid?.() ?? 0) === 0): ResolvedSettings {
  const configFile = args.config ?? paths.configFile;
  const loaded = loadConfig(configFile, { required: args.config !== undefined });
  const warnings = [...loaded.warnings];
  const cfg = applyEnv(loaded.config, env, warnings);
  const settings = fromConfig(args, paths, cfg, warnings, configFile, loaded.found, env, privileged);
  // Checked here, not in fromConfig: a re-exec'd image whose configuration
  // went bad runs with fromConfig's defaults and must never refuse to start.
  const problems = timingProblems(settings.options.health, settings.options.termination.termGraceMs);
  if (problems.length) throw new ConfigError(problems.map((message) => ({ file: configFile, line: 0, column: 0, message })));
  return settings;
}

export function fromConfig(
  args: CliArgs,
  paths: DaemonPaths,
  cfg: RelockdConfig = DEFAULT_CONFIG,
  warnings: string[] = [],
  configFile = paths.configFile,
  configFound = false,
  env: NodeJS.ProcessEnv = process.env,
  privileged = true,
): ResolvedSettings {
  const options: DaemonOptions = {
    socketPath: args.socket ?? paths.socket,
    adminSocketPath: args.adminSocket ?? paths.adminSocket,
    runtimeDir: paths.runtimeDir,
    stateFile: args.stateFile ?? cfg.stateFile ?? paths.stateFile,
    pidFile: args.pidFile ?? cfg.pidFile ?? paths.pidFile,
    maxClients: args.maxClients ?? cfg.maxClients,
    adminMaxClients: cfg.adminMaxClients,
    termination: { ...defaultTermination, termGraceMs: (args.termGrace ?? cfg.ownerTermGrace) * 1000 },
    storageTimeoutMs: (args.storageTimeout ?? cfg.storageTimeout) * 1000,
    storagePerKeyConcurrency: cfg.storageConcurrency,
    quiesceTimeoutMs: cfg.reexecQuiesceTimeout * 1000,
    shutdownPolicy: args.shutdownPolicy ?? cfg.shutdownPolicy,
    timeoutSec: args.timeout ? args.timeout : null,
    // --lockspace replaces the file's list.
    lockspaces: args.lockspace ?? cfg.lockspaces,
    storageInline: args.storageInline ?? 'local',
    metricsListen: cfg.metricsListen,
    health: healthOptions(args, cfg),
  };

  const cliLevel = args.logLevel as Level | undefined;
  const plan = loggingPlan(cfg, { defaultLevel: cliLevel ?? 'info', verbose: args.verbose });
  let outputs: OutputSpec[] = plan.outputs.map((o) => ({ level: o.level, kind: o.kind, ...(o.path ? { path: o.path } : {}), ...(o.ident ? { ident: o.ident } : {}) }));
  let level: Level = plan.level;
  if (cliLevel) {
    // --log-level wins over the file: every output and the logger use it.
    level = cliLevel;
    outputs = outputs.map((o) => ({ ...o, level: cliLevel }));
  }
  // Daemonized with nothing configured: stderr is /dev/null, so use a file.
  if (args.daemon && cfg.logOutputs.length === 0 && !env.LIBVIRT_LOG_OUTPUTS) {
    outputs = [{ level, kind: 'file', path: defaultLogFile(privileged, env) }];
  }
  return { options, level, outputs, warnings, configFile, configFound };
}
