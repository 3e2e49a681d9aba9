// Bundles each entry point's module graph (compiled by tsc into dist/) into
// one file. Loading one file instead of ~60 modules under Node's permission
// model halves module-loading time, and that time is part of every re-exec
// blackout. yargs stays external: it is loaded only when a fresh start's
// command line needs it (and by relockctl), and it finds its locale files
// relative to its own location.
//
// The daemon's bundle is CommonJS (dist/relockd-main.cjs): bin/relockd.cjs
// compiles it with vm.Script so that a re-exec'd image can start from V8's
// code cache of the previous image (src/daemon/codeCache.ts), and CommonJS
// skips the ESM loader's own start-up. relockctl stays ESM.
import { build } from 'esbuild';
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

// pino loads node:assert and node:worker_threads (9 of Node's internal
// modules, ~2.5 ms of every start and re-exec blackout) at the top of three
// of its files, for code the daemon never runs: SonicBoom's fd check, thread
// transports, pino.destination()'s exit flush. Here those requires move into
// the functions that use them. Each rewrite must match exactly once: a pino
// update that changes these lines fails the build instead of bundling them
// unchanged.
const LAZY_BUILTINS = {
  'sonic-boom/index.js': [["const assert = require('assert')", "const assert = (...a) => require('assert')(...a)"]],
  'thread-stream/index.js': [
    ["const { Worker } = require('worker_threads')", "const Worker = function (...a) { return new (require('worker_threads').Worker)(...a) }"],
    ["const assert = require('assert')", "const assert = (...a) => require('assert')(...a)"],
  ],
  'pino/lib/tools.js': [
    ["const { isMainThread } = require('worker_threads')\n", ''],
    ['if (!opts.sync && isMainThread) {', "if (!opts.sync && require('worker_threads').isMainThread) {"],
  ],
};
const lazyBuiltins = {
  name: 'lazy-builtins',
  setup(b) {
    b.onLoad({ filter: /node_modules[\\/](sonic-boom[\\/]index|thread-stream[\\/]index|pino[\\/]lib[\\/]tools)\.js$/ }, (args) => {
      const key = Object.keys(LAZY_BUILTINS).find((k) => args.path.endsWith(k));
      let text = readFileSync(args.path, 'utf8');
      for (const [from, to] of LAZY_BUILTINS[key]) {
        const n = text.split(from).length - 1;
        if (n !== 1) throw new Error(`bundle: ${key}: expected "${from.trim()}" once, found it ${n} times (pino or a dependency changed: update LAZY_BUILTINS)`);
        text = text.replace(from, to);
      }
      return { contents: text, loader: 'js' };
    });
  },
};
// The daemon's entry: main.js plus the generated validators
// (scripts/build-validators.mjs), registered so that they are part of the
// bundle and so of the code cache a re-exec'd image compiles from. esbuild
// wraps each required file in a function: it runs on first use only.
const daemonEntry = {
  contents: [
    "import { registerBundled } from './dist/src/util/validator.js';",
    "registerBundled('state', () => require('./dist/validators/state.cjs'));",
    "registerBundled('config', () => require('./dist/validators/config.cjs'));",
    "export * from './dist/src/cli/main.js';",
  ].join('\n'),
  resolveDir: root,
  sourcefile: 'relockd-bundle-entry.js',
};
for (const [entry, out, format] of [
  [daemonEntry, 'dist/relockd-main.cjs', 'cjs'],
  ['dist/src/cli/relockctl.js', 'dist/relockctl.mjs', 'esm'],
  ['dist/src/health/runnerMain.js', 'dist/relockd-runner.cjs', 'cjs'],
]) {
  await build({
    ...(typeof entry === 'string' ? { entryPoints: [join(root, entry)] } : { stdin: { ...entry, loader: 'js' } }),
    outfile: join(root, out),
    bundle: true,
    platform: 'node',
    plugins: [lazyBuiltins],
    format,
    target: 'node20',
    // prom-client too: the daemon loads it on the first scrape only (src/metrics/exposition.ts).
    external: ['yargs', 'yargs/*', 'prom-client'],
    ...(format === 'esm'
      ? // CommonJS dependencies (pino) call require(); give the ESM bundle one.
        { banner: { js: "import { createRequire as __relockdCreateRequire } from 'node:module'; const require = __relockdCreateRequire(import.meta.url);" } }
      : // import.meta.url (addon and package-root lookup) from the bundle's own path.
        { define: { 'import.meta.url': '__relockdImportMetaUrl' }, banner: { js: "const __relockdImportMetaUrl = require('node:url').pathToFileURL(__filename).href;" } }),
    // ASCII only: one non-ASCII character makes V8 keep the whole source
    // (which lazy compilation needs for the daemon's lifetime) as a two-byte
    // string, ~1 MB instead of ~0.5 MB. esbuild escapes them in code; the
    // ones left are in comments, replaced below.
    charset: 'ascii',
    // Whitespace and syntax minified, names kept (stack traces and profiles
    // still name every function; the linked source map has the positions):
    // the daemon's bundle is 563 instead of 877 kB. Every start and re-exec
    // reads it, and V8 keeps it as a string for the process's lifetime
    // (lazy compilation needs the source).
    minifyWhitespace: true,
    minifySyntax: true,
    sourcemap: 'linked',
    logLevel: 'warning',
  });
  if (format === 'cjs') {
    const file = join(root, out);
    const text = readFileSync(file, 'utf8');
    // One '?' per UTF-16 unit: columns (and so the source map) stay right.
    if (/[^\x00-\x7f]/.test(text)) writeFileSync(file, text.replace(/[^\x00-\x7f]/g, '?'));
  }
  console.log(`bundle: ${typeof entry === 'string' ? entry : entry.sourcefile} -> ${out}`);
}
