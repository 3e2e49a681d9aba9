// Validation of any document against one of the generated validators
// (schemas/<name>.schema.json -> dist/validators/<name>.cjs), with the error
// wording of src/util/validator.ts.

import { describeErrors, load as loadValidator, type AjvError } from '../util/validator.js';

export type { AjvError };

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
