// Lint (issue 14), run by `npm test` through `npm run lint`.
// typescript-eslint with type information, for what tsc cannot see: a
// floating or misused promise is an error nobody handles (or a lock release
// nobody waits for). Unused exports and files are knip's job (knip.json).
// The syntax-only recommended set is on too; the type-aware recommended set
// is not (yet): its no-unnecessary-type-assertion alone flags ~150 lines
// across every module, a churn that belongs in its own change.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  // test/nfs and test/package run inside lab guests / package builds and are
  // in no tsconfig (typecheck skips them too).
  { ignores: ['dist/**', 'build/**', 'node_modules/**', 'wip/**', 'debian/**', 'test/nfs/**', 'test/package/**'] },
  {
    files: ['**/*.ts'],
    extends: [js.configs.recommended, ...tseslint.configs.recommended],
    languageOptions: {
      parserOptions: {
        // one program for every linted file (tsconfig.eslint.json): two overlapping
        // projects would type-check src/ twice.
        project: ['./tsconfig.eslint.json'],
        tsconfigRootDir: import.meta.dirname,
      },
    },
    rules: {
      // tap's test()/t.test() return promises tap itself tracks.
      '@typescript-eslint/no-floating-promises': ['error', {
        allowForKnownSafePromises: [{ from: 'package', package: '@tapjs/core', name: 'PromiseWithSubtest' }],
      }],
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/await-thenable': 'error',
      '@typescript-eslint/only-throw-error': 'error',
      // tsc's noUnusedLocals covers locals; args of callbacks are often
      // positional (unused leading ones), so only an _ prefix silences it.
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' }],
      // `any` is used deliberately at the JSON/XDR boundaries (state files,
      // codecs); a lint rule adds nothing there that the validators don't.
      '@typescript-eslint/no-explicit-any': 'off',
      // `let x = fallback; try { x = read() } catch { … }` is the house
      // style for probing /proc and friends; the rule flags every one.
      'no-useless-assignment': 'off',
      // Control characters in regexes are what byteString/errors escape.
      'no-control-regex': 'off',
    },
  },
);
