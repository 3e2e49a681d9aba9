// libvirt's logging settings (log_level, log_filters, log_outputs; the same
// syntax as LIBVIRT_LOG_FILTERS / LIBVIRT_LOG_OUTPUTS and virt-admin's
// daemon-log-*), parsed into a structured form and mapped onto pino.
//
// Syntax (libvirt src/util/virlog.c, 9.0):
//   filters: space-separated "LEVEL:MATCH", MATCH non-empty, an optional
//            leading '+' (an old stack-trace flag) is dropped; more ':'
//            fields are ignored (as by virtlockd 9.0: "1:a:b" matches "a");
//   outputs: space-separated "LEVEL:stderr", "LEVEL:journald",
//            "LEVEL:syslog:IDENT" or "LEVEL:file:PATH" (PATH made absolute
//            against the directory relockd was started in (see src/startCwd.ts); no ':' in it);
//            a later output with the same destination replaces an earlier one;
//   LEVEL:   1 debug, 2 info, 3 warning, 4 error.

import { resolve } from 'node:path';
import type { Level } from 'pino';
import { startCwd } from '../startCwd.js';

export type LibvirtPriority = 1 | 2 | 3 | 4;
/** The pino levels libvirt priorities map onto. */
export type LogLevelName = 'debug' | 'info' | 'warn' | 'error';
type LogOutputKind = 'stderr' | 'journald' | 'syslog' | 'file';

export interface LogFilter {
  priority: LibvirtPriority;
  level: LogLevelName;
  /** The match string as written (without a leading '+'); libvirt matches it as a substring glob. */
  match: string;
  /** The item as written. */
  text: string;
}

export interface LogOutput {
  priority: LibvirtPriority;
  level: LogLevelName;
  kind: LogOutputKind;
  /** kind 'file': absolute path. */
  path?: string;
  /** kind 'syslog': the ident (message tag). */
  ident?: string;
  /** The item as written. */
  text: string;
}

const LEVEL_OF: Record<LibvirtPriority, LogLevelName> = { 1: 'debug', 2: 'info', 3: 'warn', 4: 'error' };

export function levelOfPriority(p: LibvirtPriority): LogLevelName {
  return LEVEL_OF[p];
}

/** pino level -> libvirt priority (trace counts as debug, fatal as error). */
export function priorityOfLevel(level: string): LibvirtPriority {
  switch (level) {
    case 'trace':
    case 'debug':
      return 1;
    case 'info':
      return 2;
    case 'warn':
      return 3;
    default:
      return 4;
  }
}

/** A bad item in log_filters/log_outputs. */
export class LogSpecError extends Error {
  override name = 'LogSpecError';
  constructor(
    /** The offending item as written. */
    readonly item: string,
    message: string,
  ) {
    super(message);
  }
}

const PRIORITY_HELP = '1 (debug), 2 (info), 3 (warning) or 4 (error)';

/** virStrToLong_uip plus libvirt's range check. */
function parsePriority(s: string, item: string, what: string): LibvirtPriority {
  if (/^\s*\+?\d+$/.test(s)) {
    const n = Number.parseInt(s, 10);
    if (n >= 1 && n <= 4) return n as LibvirtPriority;
  }
  throw new LogSpecError(item, `${what} '${item}' has priority '${s}': expected ${PRIORITY_HELP}`);
}

const items = (spec: string) => spec.split(' ').filter((s) => s !== '');

export function parseLogFilters(spec: string): LogFilter[] {
  const out: LogFilter[] = [];
  for (const text of items(spec)) {
    // libvirt 9.0 takes the first two ':'-separated fields and ignores the rest.
    const parts = text.split(':');
    if (parts.length < 2) throw new LogSpecError(text, `filter '${text}' is malformed: expected LEVEL:MATCH, e.g. "1:locking"`);
    const priority = parsePriority(parts[0]!, text, 'filter');
    const match = parts[1]!.startsWith('+') ? parts[1]!.slice(1) : parts[1]!;
    if (!match) throw new LogSpecError(text, `filter '${text}' has no match string: expected LEVEL:MATCH, e.g. "1:locking"`);
    out.push({ priority, level: LEVEL_OF[priority], match, text });
  }
  return out;
}

const KINDS: readonly LogOutputKind[] = ['stderr', 'journald', 'syslog', 'file'];

export function parseLogOutputs(spec: string, cwd: string = startCwd()): LogOutput[] {
  const out: LogOutput[] = [];
  for (const text of items(spec)) {
    const parts = text.split(':');
    if (parts.length < 2) throw new LogSpecError(text, `output '${text}' is malformed: expected LEVEL:DESTINATION, e.g. "3:stderr"`);
    const priority = parsePriority(parts[0]!, text, 'output');
    const kind = parts[1]! as LogOutputKind;
    if (!KINDS.includes(kind)) {
      throw new LogSpecError(text, `output '${text}' has destination '${parts[1]}': expected stderr, journald, syslog:IDENT or file:PATH`);
    }
    const need = kind === 'stderr' || kind === 'journald' ? 2 : 3;
    if (parts.length !== need || (need === 3 && parts[2] === '')) {
      const form = kind === 'file' ? 'LEVEL:file:PATH (an absolute path without ":")' : kind === 'syslog' ? 'LEVEL:syslog:IDENT' : `LEVEL:${kind} with nothing after it`;
      throw new LogSpecError(text, `output '${text}' does not fit destination '${kind}': expected ${form}`);
    }
    const o: LogOutput = { priority, level: LEVEL_OF[priority], kind, text };
    if (kind === 'file') o.path = resolve(cwd, parts[2]!);
    if (kind === 'syslog') o.ident = parts[2]!;
    // libvirt keeps the last of two outputs with the same destination.
    const same = out.findIndex((x) => x.kind === o.kind && (x.path ?? x.ident) === (o.path ?? o.ident));
    if (same >= 0) out.splice(same, 1);
    out.push(o);
  }
  return out;
}

/** One pino destination. */
interface LoggingOutput {
  level: LogLevelName;
  kind: LogOutputKind;
  path?: string;
  ident?: string;
}

export interface LoggingPlan {
  /** The pino logger's level. */
  level: Level;
  /** Where events go, each with its own minimum level (pino.multistream). */
  outputs: LoggingOutput[];
  /** The filters, for display (virt-admin daemon-log-filters); relockd has no log categories. */
  filters: LogFilter[];
}

export interface LoggingSettings {
  /** 0: not set. */
  logLevel: number;
  logFilters: LogFilter[];
  logOutputs: LogOutput[];
}

/**
 * The pino logger libvirt's settings amount to. relockd has one log stream,
 * not libvirt's per-module categories, so every filter counts as matching —
 * the rule the admin socket's LogSettings applies to virt-admin changes:
 *
 *   base      = log_level if set, else opts.defaultLevel (debug with verbose);
 *   threshold = lowest filter priority, or base when there is no filter;
 *   outputs   = log_outputs, or one stderr output at base;
 *   level     = max(threshold, lowest output priority).
 */
export function loggingPlan(s: LoggingSettings, opts: { defaultLevel?: Level; verbose?: boolean } = {}): LoggingPlan {
  let base: LibvirtPriority = s.logLevel >= 1 && s.logLevel <= 4 ? (s.logLevel as LibvirtPriority) : priorityOfLevel(opts.defaultLevel ?? 'info');
  if (opts.verbose) base = 1;
  const threshold = s.logFilters.length ? (Math.min(...s.logFilters.map((f) => f.priority)) as LibvirtPriority) : base;
  const outputs: LoggingOutput[] = s.logOutputs.length
    ? s.logOutputs.map((o) => ({ level: o.level, kind: o.kind, ...(o.path !== undefined ? { path: o.path } : {}), ...(o.ident !== undefined ? { ident: o.ident } : {}) }))
    : [{ level: LEVEL_OF[base], kind: 'stderr' }];
  const lowestOutput = Math.min(...outputs.map((o) => priorityOfLevel(o.level))) as LibvirtPriority;
  let level: Level = LEVEL_OF[Math.max(threshold, lowestOutput) as LibvirtPriority];
  // 'trace' has no libvirt priority: keep it when the settings still say debug.
  if (level === 'debug' && opts.defaultLevel === 'trace' && !s.logLevel) level = 'trace';
  return { level, outputs, filters: s.logFilters };
}
