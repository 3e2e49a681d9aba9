// Validation of any document against one of the generated validators
// (schemas/<name>.schema.json -> dist/validators/<name>.cjs), with the error
// wording of src/state/validate.ts.

import { createRequire } from 'node:module';
import { join } from 'node:path';
import { packageRoot } from '../packageRoot.js';
import { describeErrors } from '../state/validate.js';

/** An ajv error object, as the generated validators report them. */
export interface AjvError {
  instancePath: string;
  keyword: string;
  message?: string;
  params: Record<string, unknown>;
  schemaPath?: string;
}

type ValidateFn = ((data: unknown) => boolean) & { errors?: AjvError[] | null };

// LOADER: the same loader as src/state/validate.ts's private load(); once that
// one is exported, import it here instead and delete these lines.
const require = createRequire(import.meta.url);
const cache = new Map<string, ValidateFn>();
function loadValidator(name: string): ValidateFn {
  let v = cache.get(name);
  if (!v) {
    const mod = require(join(packageRoot, 'dist', 'validators', `${name}.cjs`)) as ValidateFn | { default: ValidateFn };
    v = typeof mod === 'function' ? mod : mod.default;
    cache.set(name, v);
  }
  return v;
}

export interface ValidationResult {
  valid: boolean;
  /** ajv's errors (empty when valid). */
  errors: AjvError[];
  /** "JSON path: problem" lines (describeErrors). */
  problems: string[];
}

/** Validates `data` with dist/validators/<name>.cjs (run `npm run build` first). */
export function validateWith(name: string, data: unknown): ValidationResult {
  const v = loadValidator(name);
  if (v(data)) return { valid: true, errors: [], problems: [] };
  const errors = [...(v.errors ?? [])];
  return { valid: false, errors, problems: describeErrors(errors) };
}

/** One error in describeErrors' wording, without the path: "must be integer". */
export function describeError(e: AjvError): string {
  const line = describeErrors([e])[0] ?? `${e.instancePath || '/'}: ${e.message ?? e.keyword}`;
  const prefix = `${e.instancePath || '/'}: `;
  return line.startsWith(prefix) ? line.slice(prefix.length) : line;
}
