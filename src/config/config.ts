// relockd's configuration file: virtlockd.conf's syntax and keys, plus
// relockd's own keys. Parsed with virconf.ts, validated against
// schemas/config.schema.json; every error names file, line, key and what was
// expected; unknown keys are warnings (virtlockd ignores them).

import { readFileSync, statSync } from 'node:fs';
import { join, normalize } from 'node:path';
import { packageRoot } from '../packageRoot.js';
import { ConfigError, formatProblem } from './errors.js';
import type { ConfigProblem } from './errors.js';
import { LogSpecError, parseLogFilters, parseLogOutputs } from './logging.js';
import type { LogFilter, LogOutput } from './logging.js';
import { formatVirConfValue, MAX_CONFIG_FILE_SIZE, parseVirConf } from './virconf.js';
import type { Position, VirConfDocument, VirConfEntry, VirConfValue } from './virconf.js';
import { describeError, validateWith } from './validate.js';
import { parseMetricsListen } from '../metrics/listen.js';
import type { AjvError } from './validate.js';
import { DEFAULT_HEALTH } from '../health/options.js';
import type { LockFailureAction } from '../health/options.js';

export type ShutdownPolicy = 'drain' | 'kill-owners' | 'refuse';

export interface RelockdConfig {
  /** log_level: 1 debug, 2 info, 3 warning, 4 error; 0 = not set (the daemon's default applies). */
  logLevel: 0 | 1 | 2 | 3 | 4;
  /** log_filters, parsed (empty: none). */
  logFilters: LogFilter[];
  /** log_outputs, parsed (empty: none configured, the daemon's default output applies). */
  logOutputs: LogOutput[];
  /** max_clients: connections on the main socket (one per running VM). */
  maxClients: number;
  /** admin_max_clients. */
  adminMaxClients: number;
  /** shutdown_policy: what SIGTERM/SIGINT/SIGQUIT do while leases are held. */
  shutdownPolicy: ShutdownPolicy;
  /** owner_term_grace: seconds between SIGTERM and SIGKILL of an owner. */
  ownerTermGrace: number;
  /** lockspaces: directory lock spaces created at every start, as written (duplicates dropped). */
  lockspaces: string[];
  /** state_file: re-exec state file; null = the daemon's default path. */
  stateFile: string | null;
  /** pid_file; null = the daemon's default path. */
  pidFile: string | null;
  /** storage_timeout: seconds one storage call may take. */
  storageTimeout: number;
  /** storage_concurrency: storage calls in flight per lock-space directory. */
  storageConcurrency: number;
  /** reexec_quiesce_timeout: seconds a re-exec waits for requests in flight. */
  reexecQuiesceTimeout: number;
  /** metrics_listen: the HTTP metrics listener (ADDRESS:PORT or a socket path); null = none. */
  metricsListen: string | null;
  /** lockspace_check_interval: seconds between probes of a watched lock space. */
  lockspaceCheckInterval: number;
  /** lockspace_failure_timeout: seconds without a good probe before a lock space is failed. */
  lockspaceFailureTimeout: number;
  /** lock_failure_action. */
  lockFailureAction: LockFailureAction;
  /** killpath = "/path/prog ARGS"; null = none. */
  killpath: string | null;
  /** kill_grace: seconds the killpath program has before SIGTERM/SIGKILL. */
  killGrace: number;
  /** nfs_lease_time: seconds, the NFSv4 lease time assumed when the mount does not say. */
  nfsLeaseTime: number;
  /** libvirt_uri: for the pause action. */
  libvirtUri: string;
}

export const DEFAULT_CONFIG: Readonly<RelockdConfig> = Object.freeze({
  logLevel: 0,
  logFilters: [],
  logOutputs: [],
  maxClients: 1024,
  // virtlockd's code default; the shipped virtlockd.conf comment says 5.
  adminMaxClients: 5000,
  shutdownPolicy: 'drain',
  ownerTermGrace: 3,
  lockspaces: [],
  stateFile: null,
  pidFile: null,
  storageTimeout: 30,
  storageConcurrency: 4,
  reexecQuiesceTimeout: 5,
  metricsListen: null,
  lockspaceCheckInterval: DEFAULT_HEALTH.checkIntervalMs / 1000,
  lockspaceFailureTimeout: DEFAULT_HEALTH.failureTimeoutMs / 1000,
  lockFailureAction: DEFAULT_HEALTH.action,
  killpath: null,
  killGrace: DEFAULT_HEALTH.killGraceMs / 1000,
  nfsLeaseTime: DEFAULT_HEALTH.nfsLeaseTimeMs / 1000,
  libvirtUri: DEFAULT_HEALTH.libvirtUri,
} satisfies RelockdConfig) as Readonly<RelockdConfig>;

/** Config file key -> RelockdConfig field. Must list exactly the schema's properties (tested). */
export const CONFIG_KEYS = {
  log_level: 'logLevel',
  log_filters: 'logFilters',
  log_outputs: 'logOutputs',
  max_clients: 'maxClients',
  admin_max_clients: 'adminMaxClients',
  shutdown_policy: 'shutdownPolicy',
  owner_term_grace: 'ownerTermGrace',
  lockspaces: 'lockspaces',
  state_file: 'stateFile',
  pid_file: 'pidFile',
  storage_timeout: 'storageTimeout',
  storage_concurrency: 'storageConcurrency',
  reexec_quiesce_timeout: 'reexecQuiesceTimeout',
  metrics_listen: 'metricsListen',
  lockspace_check_interval: 'lockspaceCheckInterval',
  lockspace_failure_timeout: 'lockspaceFailureTimeout',
  lock_failure_action: 'lockFailureAction',
  killpath: 'killpath',
  kill_grace: 'killGrace',
  nfs_lease_time: 'nfsLeaseTime',
  libvirt_uri: 'libvirtUri',
} as const satisfies Record<string, keyof RelockdConfig>;

export type ConfigKey = keyof typeof CONFIG_KEYS;

/** Keys virtlockd itself reads; the others are relockd's (virtlockd ignores them). */
export const VIRTLOCKD_KEYS: readonly ConfigKey[] = ['log_level', 'log_filters', 'log_outputs', 'max_clients', 'admin_max_clients'];

const isKnownKey = (k: string): k is ConfigKey => Object.prototype.hasOwnProperty.call(CONFIG_KEYS, k);

export interface LoadedConfig {
  config: RelockdConfig;
  /** "file:line:column: ..." lines: unknown keys, repeated keys, odd lock-space paths. */
  warnings: string[];
  /** The file read. */
  file: string;
  /** false: the file does not exist (allowed unless required); defaults only. */
  found: boolean;
  /** Where each field that the file sets was set (so command-line flags can take precedence). */
  sources: Partial<Record<keyof RelockdConfig, { key: ConfigKey } & Position>>;
}

/**
 * Reads and validates a configuration file. A missing file is fine unless
 * `required` (virtlockd: the implicit default may be missing, `-f FILE` must
 * exist); any other read error, a syntax error or an invalid value throws a
 * ConfigError.
 */
export function loadConfig(path: string, opts: { required: boolean }): LoadedConfig {
  let text: string;
  try {
    const st = statSync(path);
    if (st.isFile() && st.size > MAX_CONFIG_FILE_SIZE) {
      throw new ConfigError([{ file: path, line: 0, column: 0, message: `cannot read the configuration file: larger than ${MAX_CONFIG_FILE_SIZE} bytes` }]);
    }
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'ENOENT' && !opts.required) {
      return { config: cloneDefaults(), warnings: [], file: path, found: false, sources: {} };
    }
    const why = e.code === 'ENOENT' ? 'no such file' : e.code === 'EISDIR' ? 'it is a directory' : e.code === 'EACCES' ? 'permission denied' : e.message;
    throw new ConfigError([{ file: path, line: 0, column: 0, message: `cannot read the configuration file: ${why}` }]);
  }
  return { ...parseConfig(text, path), found: true };
}

/** loadConfig for text already in memory (`file` names it in messages). */
export function parseConfig(text: string, file: string): Omit<LoadedConfig, 'found'> {
  const doc = parseVirConf(text, file);
  const warnings: string[] = [];
  const warn = (p: Position, message: string, key?: string) => warnings.push(formatProblem({ file, line: p.line, column: p.column, message, ...(key ? { key } : {}) }));

  for (const e of doc.entries) {
    if (!isKnownKey(e.key) && doc.byKey.get(e.key) === e) {
      const near = closest(e.key);
      warn(e, `unknown setting '${e.key}' ignored${near ? ` (did you mean '${near}'?)` : ''}`, e.key);
    }
  }
  for (const d of doc.duplicates) {
    const first = doc.byKey.get(d.key)!;
    warn(d, `'${d.key}' is set again and this setting is ignored: the first one (line ${first.line}) applies, as in libvirt`, d.key);
  }

  const raw: Record<string, VirConfValue> = {};
  for (const [key, e] of doc.byKey) if (isKnownKey(key)) raw[key] = e.value;

  const result = validateWith('config', raw);
  if (!result.valid) throw new ConfigError(schemaProblems(doc, raw, result.errors));

  const config = cloneDefaults();
  const sources: LoadedConfig['sources'] = {};
  const problems: ConfigProblem[] = [];
  for (const [key, value] of Object.entries(raw) as Array<[ConfigKey, VirConfValue]>) {
    const e = doc.byKey.get(key)!;
    const field = CONFIG_KEYS[key];
    sources[field] = { key, line: e.line, column: e.column };
    try {
      (config as unknown as Record<string, unknown>)[field] = convert(key, value, e, warn);
    } catch (err) {
      if (!(err instanceof LogSpecError)) throw err;
      problems.push({ file, line: e.valueAt.line, column: e.valueAt.column, key, message: `invalid value for '${key}': ${err.message}` });
    }
  }
  if (problems.length) throw new ConfigError(problems);
  return { config, warnings, file, sources };
}

function cloneDefaults(): RelockdConfig {
  return { ...DEFAULT_CONFIG, logFilters: [], logOutputs: [], lockspaces: [] };
}

/** Schema-valid raw value -> RelockdConfig field value. */
function convert(key: ConfigKey, value: VirConfValue, e: VirConfEntry, warn: (p: Position, m: string, k?: string) => void): unknown {
  switch (key) {
    case 'log_filters':
      return parseLogFilters(value as string);
    case 'log_outputs': {
      // Relative file paths are made absolute, as libvirt does, against the
      // directory relockd was started in (the daemon itself runs in '/').
      const outputs = parseLogOutputs(value as string);
      for (const o of outputs) {
        if (o.kind === 'file' && !o.text.slice(o.text.indexOf(':file:') + 6).startsWith('/')) {
          warn(e.valueAt, `log output '${o.text}' names a relative file: it is made absolute against the directory relockd was started in, as '${o.path}'`, key);
        }
      }
      return outputs;
    }
    case 'lockspaces': {
      const list = typeof value === 'string' ? [value] : (value as string[]);
      const out: string[] = [];
      list.forEach((dir, i) => {
        const at = e.items?.[i] ?? e.valueAt;
        if (out.includes(dir)) {
          warn(at, `lock space '${dir}' is listed twice`, key);
          return;
        }
        const norm = normalize(dir).replace(/(.)\/+$/, '$1');
        if (norm !== dir) {
          // libvirt names a lock space by its exact path string: keep it as written.
          warn(at, `lock space '${dir}' is not in normal form ('${norm}'); it is created as written, and libvirt's *_lockspace_dir must be the very same string`, key);
        }
        out.push(dir);
      });
      return out;
    }
    case 'metrics_listen':
      try {
        parseMetricsListen(value as string);
      } catch (err) {
        throw new LogSpecError(value as string, (err as Error).message.replace(/^metrics_listen /, ""));
      }
      return value;
    case 'max_clients':
    case 'admin_max_clients':
      if (value === 0) warn(e.valueAt, `'${key}' is 0: that socket will accept no connection at all (virtlockd reads it the same way)`, key);
      return value;
    default:
      return value;
  }
}

// ---- error messages ---------------------------------------------------------

let schemaTitles: Record<string, string> | undefined;

/** Each key's "expected ..." text: the property's title in the schema (read only when an error is reported). */
function expectedFor(key: string): string | undefined {
  if (!schemaTitles) {
    schemaTitles = {};
    try {
      const schema = JSON.parse(readFileSync(join(packageRoot, 'schemas', 'config.schema.json'), 'utf8')) as { properties?: Record<string, { title?: string }> };
      for (const [k, p] of Object.entries(schema.properties ?? {})) if (p.title) schemaTitles[k] = p.title;
    } catch {
      /* messages without the hint */
    }
  }
  return schemaTitles[key];
}

const unescapePointer = (s: string) => s.replace(/~1/g, '/').replace(/~0/g, '~');

function schemaProblems(doc: VirConfDocument, raw: Record<string, VirConfValue>, errors: AjvError[]): ConfigProblem[] {
  // Union types report one error per alternative; keep one error per location and keyword family.
  const byPath = new Map<string, AjvError[]>();
  for (const e of errors) {
    if (e.keyword === 'anyOf' || e.keyword === 'oneOf' || e.keyword === 'allOf' || e.keyword === 'if') continue;
    const list = byPath.get(e.instancePath) ?? [];
    list.push(e);
    byPath.set(e.instancePath, list);
  }
  const problems: ConfigProblem[] = [];
  for (const [path, errs] of byPath) {
    const [, first, index] = path.split('/');
    const key = unescapePointer(first ?? '');
    const entry = doc.byKey.get(key);
    const item = index !== undefined ? Number(index) : undefined;
    const at = entry ? (item !== undefined ? (entry.items?.[item] ?? entry.valueAt) : entry.valueAt) : { line: 0, column: 0 };
    const value = item !== undefined ? (raw[key] as VirConfValue[] | undefined)?.[item] : raw[key];
    const what = item !== undefined ? `item ${item + 1} of '${key}'` : `'${key}'`;
    const detail = errs.map(describeError).join(', ');
    const expected = expectedFor(key);
    problems.push({
      file: doc.file,
      line: at.line,
      column: at.column,
      key,
      message: `invalid value for ${what}: ${value === undefined ? '' : `${formatVirConfValue(value)} `}${detail ? `(${detail})` : ''}${expected ? `; expected ${expected}` : ''}`,
    });
  }
  return problems.sort((a, b) => a.line - b.line || a.column - b.column);
}

/** A known key within edit distance 2 of a misspelt one. */
function closest(key: string): string | undefined {
  let best: string | undefined;
  let bestD = 3;
  for (const k of Object.keys(CONFIG_KEYS)) {
    const d = distance(key.toLowerCase(), k);
    if (d < bestD) {
      bestD = d;
      best = k;
    }
  }
  return best;
}

function distance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = row[j]!;
      row[j] = Math.min(row[j]! + 1, row[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = tmp;
    }
  }
  return row[b.length]!;
}
