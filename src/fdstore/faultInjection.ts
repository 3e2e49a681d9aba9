// Fault injection for the crash proof (test/lib/crashProof.ts): a SIGKILL at
// one exact instant that an outside kill only hits by luck under load. With
// RELOCKD_TEST_CRASH_AFTER_GRANT=FILE in the environment, the first lease
// taken (locked, and its fd in systemd's store) while FILE exists removes
// FILE and kills relockd on the spot: before the turn's state is written and
// before the client is answered. One-shot (the file is gone), so the
// restarted process runs normally. Without the variable nothing is checked.

import { unlinkSync } from 'node:fs';

export function crashAfterGrantHook(env: NodeJS.ProcessEnv): (() => void) | null {
  const file = env.RELOCKD_TEST_CRASH_AFTER_GRANT;
  if (!file) return null;
  return () => {
    try {
      unlinkSync(file);
    } catch {
      return; // not armed
    }
    process.kill(process.pid, 'SIGKILL');
  };
}
