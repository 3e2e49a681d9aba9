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

export type ExitName = keyof typeof Exit;

/** When each status is used, for docs/errors.md (checked by test/errors.test.ts). */
export const EXIT_USES: Readonly<Record<ExitName, string>> = {
  OK: 'the command did what it was asked; `run`: the command\'s own status once it has run under its leases',
  ERROR: 'relockd refused the request, or another failure (a directory `cleanup` cannot read, a takeover or handback that failed)',
  USAGE: 'a bad command line: unknown option, bad lease spec, `run` without a command, `cleanup` of something not a directory',
  UNAVAILABLE: 'relockd is not running or does not answer: nothing listens on the socket, or no reply within `--timeout`',
  BUSY: '`run`: a lease is held by another owner (the holders are named); `takeover`: virtlockd has connections that may not have registered; `handback`: refused for a reason that passes (e.g. a storage call in progress); nothing was changed, try again',
  NOPERM: 'permission denied on the socket: run relockctl as the user relockd runs as',
  CANNOT_EXEC: '`run`: the command is not executable (as shells do)',
  NOT_FOUND: '`run`: the command was not found (as shells do)',
};

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
