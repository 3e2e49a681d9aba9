// What a re-exec runs when it is not relockd itself (the handback to
// virtlockd): the contract between the re-executor (daemon/reexec.ts) and the
// service that plans the exec (services/handback.ts), kept below both.

import type { StateDocument } from './document.js';

/**
 * What to exec and with which state, when it is not relockd itself (the
 * handback to virtlockd, services/handback.ts). `plan` runs on the snapshot in
 * the synchronous stretch before execve; throwing aborts the exec and the
 * old image keeps serving.
 */
export interface ExecTarget {
  plan(doc: StateDocument): ExecPlan;
}

export interface ExecPlan {
  stateFile: string;
  text: string;
  /** fds the new image inherits (FD_CLOEXEC cleared); everything else closes at exec. */
  keep: number[];
  execPath: string;
  argv: string[];
  env: string[];
  /**
   * Keep the signals that would end the process blocked across execve (the
   * mask is inherited; src/daemon/execSignals.ts): right for relockd, which
   * unblocks them once its handlers are installed; wrong for virtlockd, which
   * never unblocks them (it could never re-exec or be stopped again).
   */
  holdSignals: boolean;
}

/** A refusal raised by an ExecTarget: nothing was changed; `transient` when retrying may succeed. */
export class ExecRefusal extends Error {
  override name = 'ExecRefusal';
  constructor(
    message: string,
    readonly transient: boolean,
  ) {
    super(message);
  }
}
