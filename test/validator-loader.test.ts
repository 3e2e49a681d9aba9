// The validator loader (src/util/validator.ts): the daemon's bundle registers
// its own copies of the generated validators (scripts/bundle.mjs) so that they
// come from the V8 code cache; everything else loads them from dist/validators/.

import t from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { load, registerBundled, type ValidateFn } from '../src/util/validator.js';
import { ROOT } from './lib/relockd.js';

t.test('a registered (bundled) validator is used instead of the file', async (t) => {
  let calls = 0;
  const fake: ValidateFn = () => (calls++, true);
  registerBundled('test-only', () => ({ default: fake }));
  t.equal(load('test-only'), fake, 'the registered module, by its default export');
  t.equal(load('test-only'), fake, 'loaded once, then cached');
  t.ok(load('test-only')({}) && calls === 1);
});

t.test('unregistered: from dist/validators/', async (t) => {
  const v = load('config');
  t.equal(typeof v, 'function');
  t.ok(v({}), 'an empty configuration is valid');
  t.notOk(v({ max_clients: 'many' }), 'a wrong type is not');
});

t.test("the daemon's bundle carries both validators", async (t) => {
  const bundle = readFileSync(join(ROOT, 'dist', 'relockd-main.cjs'), 'latin1');
  for (const name of ['state', 'config']) t.match(bundle, new RegExp(`registerBundled\\("${name}", ?\\(\\) ?=> ?require_${name}\\(\\)\\)`), `${name} registered from the bundle`);
});
