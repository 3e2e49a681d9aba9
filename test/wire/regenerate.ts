// Writes the golden wire fixtures (test/fixtures/wire/{lockspace,admin,relockd-admin}/)
// from test/wire/cases.ts through relockd's codecs. Run it (`npm run wire:fixtures`)
// only for an intended wire change or a new procedure, and review the diff:
// test/wire-fixtures.test.ts never writes them, it fails instead. Recorded
// traffic of the real virtlockd/virt-admin (test/fixtures/wire/captured/) is
// written by test/wire/capture.ts, not by this script.

import { mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { formatHexFixture, FIXTURES, wirePrograms } from '../lib/wirePrograms.js';
import { fixturePath, goldenFiles } from './golden.js';

let n = 0;
for (const p of wirePrograms) {
  const dir = join(FIXTURES, p.key);
  // Stale files (a removed procedure) go too.
  rmSync(dir, { recursive: true, force: true });
  for (const g of goldenFiles(p)) {
    mkdirSync(dirname(fixturePath(g)), { recursive: true });
    writeFileSync(fixturePath(g), formatHexFixture(g.comment, g.bytes));
    n++;
  }
  console.log(`${p.key}: ${readdirSync(dir).length} files in ${dir}`);
}
console.log(`${n} fixtures written; review with git diff test/fixtures/wire`);
