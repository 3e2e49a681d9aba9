// The state document's validation (schemas/state.schema.json), with the
// loader and error wording of src/util/validator.ts.

import { describeErrors, load, ValidationError } from '../util/validator.js';

export function validateState(doc: unknown): void {
  const v = load('state');
  if (!v(doc)) throw new ValidationError('state document', describeErrors(v.errors ?? []));
}
