// The lease fds a re-exec hands over, checked while the new image loads.
//
// Restoring a lease starts with an fstat of its fd (is it still the file the
// document names?) and FD_CLOEXEC set on it again (the old image cleared it
// for the exec). At 2-3.6 us per fd that was ~36 ms of the blackout at 10k
// leases here, on the main thread, after the state was parsed. The old image
// names the fds in the new image's environment (as ranges: they are mostly
// consecutive), and the new image starts that work on a background thread
// as the first thing its bundle does (src/cli/prescan.ts); restore.ts then
// takes the results (native.fdInfoTake), and does inline any fd the list did
// not have. The list leaves out the fds on storage that is not healthy,
// whose fstat could block (restore.ts trusts the document for those).

import * as native from '../native.js';

export const FD_PRESCAN_ENV = 'RELOCKD_FD_PRESCAN';
/** Beyond this the list is not passed (execve refuses a single string above 128 kB): restore does it all inline. */
const MAX_ENV_BYTES = 64 * 1024;

/** Sorted, distinct fds as "a-b,c,…"; null when too long for the environment. */
export function encodeFdRanges(fds: ArrayLike<number>): string | null {
  // A typed array sorts numerically in native code: this runs inside the
  // old image's blackout (5.8 ms at 10k fds with a Set and a comparator).
  const sorted = Int32Array.from(fds).sort();
  const parts: string[] = [];
  for (let i = 0; i < sorted.length; ) {
    let j = i;
    while (j + 1 < sorted.length && sorted[j + 1]! <= sorted[j]! + 1) j++; // a run (duplicates included)
    parts.push(sorted[j] === sorted[i] ? String(sorted[i]) : `${sorted[i]}-${sorted[j]}`);
    i = j + 1;
  }
  const text = parts.join(',');
  return text.length > MAX_ENV_BYTES ? null : text;
}

/** The fds of an encodeFdRanges text; null when it is not one (nothing is then done in the background). */
export function decodeFdRanges(text: string): Int32Array | null {
  if (!/^\d+(-\d+)?(,\d+(-\d+)?)*$/.test(text)) return null;
  const out: number[] = [];
  let last = 2; // fds 0-2 are never leases
  for (const part of text.split(',')) {
    const [a, b = a] = part.split('-').map(Number) as [number, number?];
    if (a <= last || b! < a || b! > 0x7fffffff || out.length + (b! - a) >= 1 << 20) return null;
    for (let fd = a; fd <= b!; fd++) out.push(fd);
    last = b!;
  }
  return Int32Array.from(out);
}

/** What the prescan did in this image, for the "re-exec complete" line. */
export let fdPrescan: { fds: number } | 'none' | 'malformed' = 'none';

/** Starts the background fstat + FD_CLOEXEC of the fds the old image named, if it named any. */
export function startFdPrescan(env: NodeJS.ProcessEnv = process.env): void {
  const text = env[FD_PRESCAN_ENV];
  // Not for children, not for the next exec (which names its own).
  delete env[FD_PRESCAN_ENV];
  if (text === undefined) return;
  const fds = decodeFdRanges(text);
  if (!fds) {
    fdPrescan = 'malformed';
    return;
  }
  native.fdInfoStart(fds, 1);
  fdPrescan = { fds: fds.length };
}
