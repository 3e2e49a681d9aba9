// Polling for a condition in tests (never a fixed sleep where a condition will do).

import type { Test } from 'tap';

export async function waitFor(cond: () => boolean | Promise<boolean>, ms = 5000, everyMs = 10): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await cond()) return true;
    await new Promise((r) => setTimeout(r, everyMs));
  }
  return cond();
}

/**
 * t.match on a daemon's log once the pattern is in it (up to `ms`): the log
 * reaches a test through the daemon's stdout/stderr pipes, which the test
 * process may read after the replies on the daemon's socket.
 */
export async function matchLog(t: Pick<Test, 'match'>, log: () => string, wanted: RegExp | string, message?: string, ms = 10_000): Promise<void> {
  const re = typeof wanted === 'string' ? null : new RegExp(wanted.source, wanted.flags.replace('g', ''));
  await waitFor(() => (re ? re.test(log()) : log().includes(wanted as string)), ms);
  if (message === undefined) t.match(log(), wanted);
  else t.match(log(), wanted, message);
}
