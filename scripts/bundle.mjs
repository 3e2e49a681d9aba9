// Bundles each entry point's module graph (compiled by tsc into dist/) into
// one file. Loading one file instead of ~60 modules under Node's permission
// model halves module-loading time, and that time is part of every re-exec
// blackout. yargs stays external: it is loaded only at a fresh start (and by
// relockctl), and it finds its locale files relative to its own location.
import { build } from 'esbuild';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
for (const [entry, out] of [
  ['dist/src/cli/main.js', 'dist/relockd.mjs'],
  ['dist/src/cli/relockctl.js', 'dist/relockctl.mjs'],
]) {
  await build({
    entryPoints: [join(root, entry)],
    outfile: join(root, out),
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    // prom-client too: the daemon loads it on the first scrape only (src/metrics/exposition.ts).
    external: ['yargs', 'yargs/*', 'prom-client'],
    // CommonJS dependencies (pino) call require(); give the ESM bundle one.
    banner: { js: "import { createRequire as __relockdCreateRequire } from 'node:module'; const require = __relockdCreateRequire(import.meta.url);" },
    sourcemap: 'linked',
    logLevel: 'warning',
  });
  console.log(`bundle: ${entry} -> ${out}`);
}
