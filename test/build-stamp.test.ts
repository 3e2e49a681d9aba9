// scripts/build.mjs records a hash of the build's inputs: `--if-stale` (npm
// test's pretest, every suite's script) builds only when they changed. Checked
// on this checkout (just built by pretest) and on a copy of its inputs, where
// an edit, a new source file or a missing output each make it stale.

import t from 'tap';
import { spawnSync } from 'node:child_process';
import { appendFileSync, cpSync, mkdtempSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT } from './lib/relockd.js';

const check = (root: string) => spawnSync(process.execPath, [join(root, 'scripts', 'build.mjs'), '--check'], { encoding: 'utf8' });

t.test('this checkout: up to date after the build', async (t) => {
  const r = check(ROOT);
  t.equal(r.status, 0, r.stdout + r.stderr);
  t.match(r.stdout, /dist\/ is up to date/);
});

t.test('a copy of the inputs: each change makes it stale', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'build-stamp-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  for (const p of ['src', 'bench', 'test/lib', 'schemas', 'scripts', 'tsconfig.json', 'package.json', 'package-lock.json', 'dist/.build-inputs']) cpSync(join(ROOT, p), join(dir, p), { recursive: true });
  const outputs = ['dist/src/cli/main.js', 'dist/relockd-main.cjs', 'dist/relockctl.mjs', 'dist/relockd-runner.cjs', 'dist/validators/state.cjs', 'dist/validators/config.cjs'];
  for (const o of outputs) cpSync(join(ROOT, o), join(dir, o));
  t.equal(check(dir).status, 0, 'the copy is up to date: the hash depends on the inputs only, not on where they are');
  appendFileSync(join(dir, 'src', 'log.ts'), '\n// an edit\n');
  let r = check(dir);
  t.equal(r.status, 1);
  t.match(r.stdout, /inputs changed since the last build/, 'an edited source');
  cpSync(join(ROOT, 'src', 'log.ts'), join(dir, 'src', 'log.ts'));
  t.equal(check(dir).status, 0, 'the edit undone: up to date again');
  writeFileSync(join(dir, 'src', 'extra.ts'), 'export {};\n');
  t.match(check(dir).stdout, /inputs changed/, 'a new source file');
  unlinkSync(join(dir, 'src', 'extra.ts'));
  unlinkSync(join(dir, 'dist', 'relockctl.mjs'));
  r = check(dir);
  t.equal(r.status, 1);
  t.match(r.stdout, /missing dist\/relockctl\.mjs/, 'a missing output');
  cpSync(join(ROOT, 'dist', 'relockctl.mjs'), join(dir, 'dist', 'relockctl.mjs'));
  unlinkSync(join(dir, 'dist', '.build-inputs'));
  t.match(check(dir).stdout, /no record of the last build/, 'no stamp');
});
