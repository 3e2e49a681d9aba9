// The daemon works in '/' in every mode, so it never keeps a directory busy
// (an unmount) and never resolves anything against wherever it happened to
// be started. Relative paths from the command line, the environment and the
// configuration file are resolved against the directory it was started in,
// recorded here once. A re-exec'd image (which inherits '/' as its cwd) and
// the -d daemon child learn it from RELOCKD_START_CWD, set by the first start.

import { isAbsolute } from 'node:path';

const START_CWD_ENV = 'RELOCKD_START_CWD';

let recorded: string | null = null;

function currentDir(): string {
  try {
    return process.cwd();
  } catch {
    return '/'; // the directory was removed under us
  }
}

/**
 * Records the start directory and changes to '/'. `inherited`: this image
 * was started by relockd itself (re-exec, -d child), so the environment
 * carries the first start's directory; otherwise the environment is not
 * trusted and the current directory is used.
 */
export function enterRoot(inherited: boolean, env: NodeJS.ProcessEnv = process.env): string {
  const carried = env[START_CWD_ENV];
  recorded = inherited && carried && isAbsolute(carried) ? carried : currentDir();
  env[START_CWD_ENV] = recorded;
  process.chdir('/');
  return recorded;
}

/** Where relative paths are resolved: the start directory once recorded. */
export function startCwd(): string {
  return recorded ?? currentDir();
}
