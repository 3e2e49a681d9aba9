// Command-line values get the configuration file's bounds: each numeric
// flag that has a file key is checked by the same schema
// (schemas/config.schema.json), so `--storage-timeout 3000000` is refused at
// start instead of making every storage call fail at once (a Node timer
// overflows past 2^31-1 ms). One rule is stricter than the file: the file
// accepts max_clients = 0 because virtlockd.conf does (no connection is ever
// accepted); on relockd's own command line that can only be a mistake.

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { packageRoot } from '../packageRoot.js';
import { validateWith } from '../config/validate.js';
import type { CliArgs } from '../config/relockdOptions.js';

const FLAGS: ReadonlyArray<{ arg: 'termGrace' | 'storageTimeout' | 'maxClients'; flag: string; key: string }> = [
  { arg: 'termGrace', flag: '--term-grace', key: 'owner_term_grace' },
  { arg: 'storageTimeout', flag: '--storage-timeout', key: 'storage_timeout' },
  { arg: 'maxClients', flag: '--max-clients', key: 'max_clients' },
];

function title(key: string): string {
  try {
    const schema = JSON.parse(readFileSync(join(packageRoot, 'schemas', 'config.schema.json'), 'utf8')) as { properties: Record<string, { title?: string }> };
    return schema.properties[key]?.title ?? 'a valid value';
  } catch {
    return 'a valid value';
  }
}

/** null: fine; else the usage error's text. */
export function cliBoundsError(args: CliArgs): string | null {
  for (const { arg, flag, key } of FLAGS) {
    const v = args[arg];
    if (v === undefined) continue;
    const bad = !Number.isFinite(v) || !validateWith('config', { [key]: v }).valid || (arg === 'maxClients' && v === 0);
    if (bad) {
      const expected = arg === 'maxClients' ? 'an integer from 1 to 4294967295' : title(key);
      const why = arg === 'maxClients' && v === 0 ? "0 would accept no connection at all (the file's max_clients = 0 is accepted only because virtlockd.conf allows it)" : `the same bounds as '${key}' in the configuration file`;
      return `${flag} ${Number.isFinite(v) ? `${v}:` : 'takes a number:'} expected ${expected} (${why})`;
    }
  }
  return null;
}
