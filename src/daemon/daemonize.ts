// -d/--daemon, virtlockd-style: the invoking process starts the daemon in
// a new session with a status pipe on fd 3, and returns only when the daemon
// reports READY, or prints the daemon's startup error and exits non-zero.

import { spawn } from 'node:child_process';
import { closeSync, writeSync } from 'node:fs';
import { ExitCode } from './exitCode.js';

/** Set in the daemon child: the fd of the status pipe to the invoking process. */
export const STATUS_FD_ENV = 'RELOCKD_DAEMON_STATUS_FD';

/** In the invoking process: start the daemon and wait for its verdict. Never returns. */
export async function daemonize(): Promise<never> {
  // Node's resolved argv: the script path is absolute, and the child runs in /.
  const args = [...process.execArgv, ...process.argv.slice(1)];
  const child = spawn(process.execPath, args, {
    detached: true, // setsid: no controlling terminal, own session
    cwd: '/',
    stdio: ['ignore', 'ignore', 'ignore', 'pipe'],
    env: { ...process.env, [STATUS_FD_ENV]: '3' },
  });
  const pipe = child.stdio[3] as NodeJS.ReadableStream;
  let msg = '';
  pipe.setEncoding('utf8');
  pipe.on('data', (d: string) => (msg += d));
  await new Promise<void>((resolve) => pipe.on('end', () => resolve()).on('close', () => resolve()));
  if (msg.startsWith('READY')) {
    child.unref();
    process.exit(ExitCode.OK);
  }
  const [first = '', ...rest] = msg.split('\n');
  const logs = rest.find((l) => l.startsWith('LOG '))?.slice(4).trim();
  const reason = first.startsWith('ERROR ') ? first.slice(6).trim() : 'the daemon exited during start-up';
  const where = logs ? `the log (${logs.split('\t').join(', ')})` : 'the log';
  process.stderr.write(`relockd: error: ${reason}. For more, see ${where} or run without --daemon.\n`);
  process.exit(ExitCode.FAILURE);
}

/** In the daemon child: tell the invoking process how the start went, once. */
export function reportToInvoker(status: 'READY' | `ERROR ${string}`, logFiles: string[] = []): void {
  const fd = Number(process.env[STATUS_FD_ENV]);
  if (!Number.isInteger(fd) || fd < 0) return;
  delete process.env[STATUS_FD_ENV];
  try {
    writeSync(fd, `${status.replace(/\n/g, ' ')}\n${logFiles.length ? `LOG ${logFiles.join('\t')}\n` : ''}`);
  } catch {
    /* the invoker is gone */
  }
  try {
    closeSync(fd);
  } catch {
    /* already closed */
  }
}
