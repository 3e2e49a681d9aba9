// Fault injection for the crash proof (test/lib/crashProof.ts): a SIGKILL at
// one exact instant that an outside kill only hits by luck under load. With
// RELOCKD_TEST_CRASH_AT=FILE in the environment, relockd looks for FILE at
// each such instant; when FILE exists and names that instant, relockd
// removes it and kills itself on the spot. One-shot (the file is gone), so
// the restarted process runs normally. Without the variable nothing is
// checked. The instants:
//   read   bytes from a lock client were recorded in the stored state, still
//          queued in its socket (peek reads: before they are taken out)
//   grant  a lease was locked and its fd stored, before the turn's state is
//          written and before the client is answered

import { readFileSync, unlinkSync } from 'node:fs';

export type CrashPoint = 'read' | 'grant';

export function crashHook(env: NodeJS.ProcessEnv): ((at: CrashPoint) => void) | null {
  const file = env.RELOCKD_TEST_CRASH_AT;
  if (!file) return null;
  return (at) => {
    try {
      if (readFileSync(file, 'utf8').trim() !== at) return;
      unlinkSync(file);
    } catch {
      return; // not armed
    }
    process.kill(process.pid, 'SIGKILL');
  };
}
