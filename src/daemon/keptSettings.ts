// A re-exec must never change the daemon's settings by accident. The old
// image checks the configuration file before it re-execs (a file with
// errors refuses the re-exec, nothing changes); if the new image still finds
// errors (the file changed in between), it runs with the settings that were
// in force, which the old image recorded in the state document
// (`relockd.settings`), never with the defaults.

import { readFileSync } from 'node:fs';
import type { Level } from 'pino';
import type { OutputSpec } from '../log.js';
import { LOG_LEVELS } from '../log.js';
import type { DaemonOptions } from './options.js';
import type { ResolvedSettings } from './settings.js';

/** Set by the old image for the new one: where its state document is (the configuration may name it). */
export const KEPT_STATE_ENV = 'RELOCKD_REEXEC_STATE_FILE';

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * The settings recorded in our own state document (magic = our pid), or
 * null when there is none or it does not look like one. Read-only: the
 * daemon reads the document again for the restore.
 */
export function settingsFromState(stateFile: string, pid: number, configFile: string): ResolvedSettings | null {
  let doc: unknown;
  try {
    doc = JSON.parse(readFileSync(stateFile, 'utf8'));
  } catch {
    return null;
  }
  if (!isObj(doc) || doc.magic !== String(pid) || !isObj(doc.relockd) || !isObj(doc.relockd.settings)) return null;
  const s = doc.relockd.settings;
  const { logLevel, logOutputs, ...rest } = s;
  const o = rest as unknown as DaemonOptions;
  if (typeof o.socketPath !== 'string' || typeof o.runtimeDir !== 'string' || typeof o.stateFile !== 'string' || typeof o.maxClients !== 'number' || !isObj(o.termination)) return null;
  const level = (LOG_LEVELS as readonly string[]).includes(String(logLevel)) ? (logLevel as Level) : 'info';
  const outputs = Array.isArray(logOutputs) ? (logOutputs as OutputSpec[]) : [{ level, kind: 'stderr' as const }];
  return { options: o, level, outputs, warnings: [], configFile, configFound: true };
}
