// What every relockctl command shares: the global options it is given, the
// exit statuses it returns, and the error it throws for the user.

/** Exit statuses (sysexits.h where one fits). */
export const Exit = {
  OK: 0,
  ERROR: 1,
  USAGE: 2,
  /** EX_UNAVAILABLE: relockd is not running. */
  UNAVAILABLE: 69,
  /** EX_TEMPFAIL: a lease is busy (run). */
  BUSY: 75,
  /** EX_NOPERM */
  NOPERM: 77,
  /** The command cannot be executed / was not found (run; as shells do). */
  CANNOT_EXEC: 126,
  NOT_FOUND: 127,
} as const;

/** An error meant for the user: a message, an exit status, details for --json. */
export class CtlError extends Error {
  override name = 'CtlError';
  constructor(
    message: string,
    readonly exitCode: number = Exit.ERROR,
    readonly details: Record<string, unknown> = {},
  ) {
    super(message);
  }
}

export interface GlobalArgs {
  socket?: string;
  adminSocket?: string;
  runtimeDir?: string;
  json: boolean;
  timeout: number;
}
