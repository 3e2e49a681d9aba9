// The validator loader: validators for the state document and the config
// file, generated from schemas/ at build time by scripts/build-validators.mjs: loading them
// costs a few ms instead of ajv's ~50 ms compile.

import { createRequire } from 'node:module';
import { join } from 'node:path';
import { packageRoot } from '../packageRoot.js';

export interface AjvError {
  instancePath: string;
  keyword: string;
  message?: string;
  params: Record<string, unknown>;
}

export type ValidateFn = ((data: unknown) => boolean) & { errors?: AjvError[] | null };

type ValidatorModule = ValidateFn | { default: ValidateFn };

const require = createRequire(import.meta.url);
const cache = new Map<string, ValidateFn>();
const bundled = new Map<string, () => ValidatorModule>();

/**
 * The daemon's bundle registers its copies of the validators here
 * (scripts/bundle.mjs): compiled with the bundle, they come from the V8 code
 * cache a re-exec'd image starts from, instead of being parsed and compiled
 * from dist/validators/ inside the blackout (~10 ms at 1,000 leases).
 */
export function registerBundled(name: string, get: () => ValidatorModule): void {
  bundled.set(name, get);
}

/** The generated validator for schemas/<name>.schema.json. */
export function load(name: string): ValidateFn {
  let v = cache.get(name);
  if (!v) {
    const mod = bundled.get(name)?.() ?? (require(join(packageRoot, 'dist', 'validators', `${name}.cjs`)) as ValidatorModule);
    v = typeof mod === 'function' ? mod : mod.default;
    cache.set(name, v);
  }
  return v;
}

export class ValidationError extends Error {
  override name = 'ValidationError';
  constructor(
    readonly what: string,
    readonly problems: string[],
  ) {
    super(`${what} is invalid: ${problems.join('; ')}`);
  }
}

/** "JSON path: problem" for each error, most specific first, without duplicates. */
export function describeErrors(errors: AjvError[]): string[] {
  const out = new Set<string>();
  // allOf/anyOf produce summary errors at the parent; the leaves say what is wrong.
  const leaves = errors.filter((e) => e.keyword !== 'anyOf' && e.keyword !== 'oneOf' && e.keyword !== 'allOf' && e.keyword !== 'if');
  for (const e of leaves.length ? leaves : errors) {
    const path = e.instancePath || '/';
    let msg = e.message ?? e.keyword;
    if (e.keyword === 'additionalProperties') msg = `unexpected property '${String(e.params.additionalProperty)}'`;
    if (e.keyword === 'enum') msg = `${msg}: ${JSON.stringify(e.params.allowedValues)}`;
    out.add(`${path}: ${msg}`);
  }
  return [...out].slice(0, 10);
}
