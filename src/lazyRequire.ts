// Loads a module on first use, synchronously. The daemon's bundle is CommonJS
// compiled through vm.Script, after a re-exec from V8's code cache; V8 does
// not restore a script's dynamic-import callback from a code cache, so an
// `import()` there fails with "A dynamic import callback was not specified".
// require() has no such dependency. Used for what the daemon loads lazily
// to keep it out of the start-up and re-exec blackout.
import { createRequire } from 'node:module';

export const lazyRequire = createRequire(import.meta.url);
