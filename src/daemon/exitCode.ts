// The daemon's exit statuses: every process.exit() of relockd (not relockctl)
// names one of these. virtlockd's values where it has the same case
// (libvirt's VIR_DAEMON_ERR_* and EXIT_FAILURE), so unit files and scripts
// written for virtlockd read them the same. docs/errors.md lists them
// (checked by test/errors.test.ts).
//
// relockd never exits on an internal error: uncaught exceptions are logged
// and it keeps running, because exiting would drop every lock (cli/main.ts).

/** Values; what each means is EXIT_CODE_USES below (one text, also docs/errors.md's). */
export const ExitCode = {
  OK: 0,
  /** EXIT_FAILURE */
  FAILURE: 1,
  /** VIR_DAEMON_ERR_PIDFILE */
  PIDFILE: 1,
  /** VIR_DAEMON_ERR_NETWORK */
  NETWORK: 6,
} as const;

export type ExitCodeName = keyof typeof ExitCode;

/** When each status is used, for docs/errors.md. */
export const EXIT_CODE_USES: Readonly<Record<ExitCodeName, string>> = {
  OK: 'a clean stop with nothing held (sockets and pid file removed); with `-d`, the invoking process once the daemon is ready',
  FAILURE: 'a bad command line or configuration file at start; with `-d`, the invoking process when the daemon did not start',
  PIDFILE: 'another daemon holds the pid file',
  NETWORK: 'the sockets could not be set up (socket activation included), or any other start failure',
};
