// Compiles the JSON Schemas in schemas/ into standalone ajv validators
// (CommonJS) under dist/validators/, so the daemon never pays ajv's compile
// time (~50 ms) at start-up — which matters most during a re-exec blackout.
import { mkdirSync, readFileSync, writeFileSync, readdirSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Ajv2020 } from 'ajv/dist/2020.js';
import standaloneCode from 'ajv/dist/standalone/index.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = join(root, 'dist', 'validators');
mkdirSync(out, { recursive: true });
for (const file of readdirSync(join(root, 'schemas')).filter((f) => f.endsWith('.schema.json'))) {
  const schema = JSON.parse(readFileSync(join(root, 'schemas', file), 'utf8'));
  const ajv = new Ajv2020({ allErrors: true, strict: true, strictRequired: false, strictTypes: false, code: { source: true, esm: false }, allowUnionTypes: true });
  const validate = ajv.compile(schema);
  const name = file.replace('.schema.json', '');
  writeFileSync(join(out, `${name}.cjs`), standaloneCode.default(ajv, validate));
  console.log(`validator: schemas/${file} -> dist/validators/${name}.cjs`);
}
