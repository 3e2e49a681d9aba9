// `npm run build`: tsc, the ajv validators (build-validators.mjs), the bundles
// (bundle.mjs); then records a hash of every input of the build in
// dist/.build-inputs.
//
// `--check` only says whether dist/ is up to date (exit 0) or not (exit 1).
// `--if-stale` (what `npm test`'s pretest and every suite's script run) skips
// the build when dist/ holds every output and was built from exactly these
// inputs. A CI run used to build eleven times (~12 s each on 2 cores) from
// one unchanged checkout. The hash covers the sources tsc compiles, the
// schemas, these scripts, the tsconfig and the lockfile (so the bundled
// dependencies' versions); not hand edits inside node_modules: after one,
// run `npm run build`.
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const STAMP = join(root, 'dist', '.build-inputs');
const OUTPUTS = [
  'dist/src/cli/main.js',
  'dist/relockd-main.cjs',
  'dist/relockctl.mjs',
  'dist/relockd-runner.cjs',
  'dist/validators/state.cjs',
  'dist/validators/config.cjs',
];

/** Files under dir (relative to the root) whose names pass keep, sorted. */
function walk(dir, keep) {
  const found = [];
  const visit = (abs) => {
    for (const e of readdirSync(abs, { withFileTypes: true })) {
      const p = join(abs, e.name);
      if (e.isDirectory()) visit(p);
      else if (e.isFile() && keep(e.name)) found.push(relative(root, p));
    }
  };
  if (existsSync(join(root, dir))) visit(join(root, dir));
  return found;
}

function inputsHash() {
  const ts = (n) => n.endsWith('.ts');
  const files = [
    ...walk('src', ts),
    ...walk('bench', ts),
    ...walk('test/lib', ts),
    ...walk('schemas', (n) => n.endsWith('.json')),
    'scripts/build.mjs',
    'scripts/build-validators.mjs',
    'scripts/bundle.mjs',
    'tsconfig.json',
    'package.json',
    'package-lock.json',
  ].sort();
  const h = createHash('sha256');
  for (const f of files) {
    h.update(`${f}\0`);
    h.update(readFileSync(join(root, f)));
    h.update('\0');
  }
  return h.digest('hex');
}

const check = process.argv.includes('--check');
const ifStale = check || process.argv.includes('--if-stale');
const before = inputsHash();
if (ifStale) {
  const stamp = existsSync(STAMP) ? readFileSync(STAMP, 'utf8').trim() : '';
  const missing = OUTPUTS.filter((f) => !existsSync(join(root, f)));
  if (stamp === before && missing.length === 0) {
    console.log(`build: dist/ is up to date (built from these inputs)${check ? '' : '; not rebuilt'}`);
    process.exit(0);
  }
  console.log(`build: ${missing.length ? `missing ${missing.join(', ')}` : stamp ? 'inputs changed since the last build' : 'no record of the last build'}${check ? '' : '; building'}`);
  if (check) process.exit(1);
}
// No stamp while the outputs are being replaced: a build that fails half-way
// is rebuilt by the next --if-stale.
rmSync(STAMP, { force: true });
const run = (file, args) => execFileSync(process.execPath, [join(root, file), ...args], { cwd: root, stdio: 'inherit' });
try {
  run('node_modules/typescript/bin/tsc', ['-p', 'tsconfig.json']);
  run('scripts/build-validators.mjs', []);
  run('scripts/bundle.mjs', []);
} catch (e) {
  console.error(`build: failed (${e.status != null ? `exit ${e.status}` : e.message})`);
  process.exit(1);
}
// The hash of the inputs as they were when the build began: an edit made
// during the build makes the next --if-stale build again.
if (inputsHash() === before) writeFileSync(STAMP, `${before}\n`);
else console.log('build: an input changed during the build; not recorded as up to date');
