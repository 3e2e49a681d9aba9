// Before a re-exec, the old image reads the configuration file the new image
// will read. A file with errors refuses the re-exec: nothing changes, the old
// image keeps serving with its settings, and the caller (relockctl reexec,
// systemctl reload's journal, `relockctl status`) is told which file, line
// and key. Without this, the new image would start with the file's errors
// and (before keptSettings.ts) the defaults.

import type { Logger } from 'pino';
import type { ReexecRecord } from '../state/document.js';
import { KEPT_STATE_ENV } from './keptSettings.js';
import type { ReexecOutcome } from './reexec.js';

/** What the check needs from the daemon (Daemon implements it). */
export interface ReexecConfigHost {
  readonly log: Logger;
  readonly version: string;
  readonly stateFile: string;
  /** Re-reads the configuration (throws on a bad file); null: no configuration to read. */
  readonly reloadSettings: (() => unknown) | null;
  recordReexec(r: ReexecRecord): void;
}

export function checkConfigBeforeReexec(d: ReexecConfigHost, trigger: string): ReexecOutcome | null {
  if (d.reloadSettings) {
    try {
      d.reloadSettings();
    } catch (err) {
      const error = `the configuration file has errors, so the re-exec was not done (relockd keeps running unchanged; fix the file and retry): ${(err as Error).message}`;
      d.log.error({ trigger, err: (err as Error).message }, 're-exec refused: configuration file has errors');
      d.recordReexec({ at: Date.now(), ok: false, error, trigger, fromVersion: d.version });
      return { ok: false, error };
    }
  }
  // The new image finds its state document here even if the file's state_file cannot be read.
  process.env[KEPT_STATE_ENV] = d.stateFile;
  return null;
}
