// The systemd side of a switch: under systemd, `takeover` installs the
// drop-in that makes the next start of virtlockd.service run relockd, and
// `handback` removes it; both then run `systemctl daemon-reload`.

import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, realpathSync, renameSync, rmdirSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { packageRoot } from '../packageRoot.js';

export interface SystemdOptions {
  /** Where drop-ins go (default /etc/systemd/system). */
  unitDir: string;
  /** The systemctl to run (default systemctl). */
  systemctl: string;
}

const DROPIN_NAME = 'relockd.conf';
const SHIPPED = join(packageRoot, 'units', 'virtlockd-takeover', 'virtlockd.service.d', DROPIN_NAME);

/** The shipped drop-in, with ExecStart pointing at this relockd when the one it names is not this one. */
function dropinText(): string {
  const text = readFileSync(SHIPPED, 'utf8');
  const ours = join(packageRoot, 'bin', 'relockd.cjs');
  const m = /^ExecStart=(\/\S+) /m.exec(text);
  let installed = false;
  try {
    installed = m !== null && realpathSync(m[1]!) === realpathSync(ours);
  } catch {
    /* not installed there (the package's /usr/sbin/relockd) */
  }
  return installed || !m ? text : text.replace(/^ExecStart=\/\S+ /m, `ExecStart=${ours} `);
}

function dropinPath(o: SystemdOptions, unit: string): string {
  return join(o.unitDir, `${unit}.d`, DROPIN_NAME);
}

function daemonReload(o: SystemdOptions): string {
  const r = spawnSync(o.systemctl, ['daemon-reload'], { encoding: 'utf8', timeout: 60_000 });
  if (r.error) return `${o.systemctl} daemon-reload failed: ${r.error.message}`;
  if (r.status !== 0) return `${o.systemctl} daemon-reload exited ${r.status}: ${(r.stderr || '').trim()}`;
  return '';
}

/** Installs the drop-in; returns what changed, one line each. */
export function installDropin(o: SystemdOptions, unit: string): { changes: string[]; error?: string } {
  const path = dropinPath(o, unit);
  const text = dropinText();
  if (existsSync(path) && readFileSync(path, 'utf8') === text) return { changes: [`${path} already installed`] };
  mkdirSync(join(o.unitDir, `${unit}.d`), { recursive: true, mode: 0o755 });
  writeFileSync(`${path}.tmp`, text, { mode: 0o644 });
  renameSync(`${path}.tmp`, path);
  const changes = [`installed ${path}: the next start of ${unit} runs relockd`];
  const e = daemonReload(o);
  if (e) return { changes, error: e };
  changes.push(`ran ${o.systemctl} daemon-reload`);
  return { changes };
}

/** Removes the drop-in (if there); returns what changed. */
export function removeDropin(o: SystemdOptions, unit: string): { changes: string[]; error?: string } {
  const path = dropinPath(o, unit);
  if (!existsSync(path)) return { changes: [`no ${path} to remove`] };
  unlinkSync(path);
  try {
    rmdirSync(join(o.unitDir, `${unit}.d`));
  } catch {
    /* other drop-ins stay */
  }
  const changes = [`removed ${path}: the next start of ${unit} runs virtlockd`];
  const e = daemonReload(o);
  if (e) return { changes, error: e };
  changes.push(`ran ${o.systemctl} daemon-reload`);
  return { changes };
}
