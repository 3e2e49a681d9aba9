// The daemon's bundle (scripts/bundle.mjs) loads none of the Node built-ins
// pino requires only for code the daemon never runs (node:assert,
// node:worker_threads: ~2.5 ms of every start and re-exec blackout). That
// the daemon still logs through pino is what every other test reads.

import t from 'tap';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { ROOT } from './lib/relockd.js';

const bundle = join(ROOT, 'dist', 'relockd-main.cjs');

t.test('loading the bundle loads neither node:assert nor node:worker_threads', async (t) => {
  // env(1) drops the NODE_OPTIONS tap puts back into every child (its loaders use worker_threads).
  const r = spawnSync('/usr/bin/env', ['-u', 'NODE_OPTIONS', process.execPath, '-e', `require(${JSON.stringify(bundle)}); console.log(JSON.stringify(process.moduleLoadList))`], { encoding: 'utf8', env: { PATH: process.env.PATH } });
  t.equal(r.status, 0, r.stderr);
  const loaded = JSON.parse(r.stdout) as string[];
  t.ok(loaded.includes('NativeModule net'), 'the bundle was evaluated (it loaded node:net)');
  for (const m of ['assert', 'worker_threads', 'internal/worker']) t.notOk(loaded.includes(`NativeModule ${m}`), `not loaded: ${m}`);
});
