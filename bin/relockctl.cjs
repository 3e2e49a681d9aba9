#!/usr/bin/env node
'use strict';
// Entry point of `relockctl` (see src/cli/relockctl.ts and docs/admin.md).
// CommonJS so that it runs with any file name; the code is the compiled ESM.
import('../dist/relockctl.mjs').then(
  (m) => m.main(process.argv.slice(2)),
  (err) => {
    process.stderr.write(`relockctl: cannot load (run "npm run build"?): ${err && err.message ? err.message : err}\n`);
    process.exitCode = 1;
  },
);
