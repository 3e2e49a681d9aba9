// Structured logs: pino, one JSON event per line on stderr. The destination
// is synchronous so nothing is lost on execve or a crash, and EPIPE on a dead
// log reader never takes the daemon (and its locks) down.

import { pino } from 'pino';
import type { Logger, Level } from 'pino';

export type { Logger };

export const LOG_LEVELS: readonly Level[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace'];

/** virtlockd's numeric log_level (1 debug … 4 error) to pino's names. */
export function levelFromLibvirt(n: number): Level {
  return (['debug', 'debug', 'info', 'warn', 'error'] as const)[Math.max(0, Math.min(4, n))]!;
}

export function createLogger(level: Level | 'silent', fd = 2): Logger {
  const dest = pino.destination({ fd, sync: true });
  dest.on('error', () => {
    /* a vanished log reader must not kill the daemon */
  });
  return pino(
    {
      level,
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    dest,
  );
}
