// The directory holding package.json, found by walking up from this module
// (sources run from src/, builds from dist/src/).

import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

function find(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    const up = dirname(dir);
    if (up === dir) throw new Error('relockd: cannot find the package root');
    dir = up;
  }
}

export const packageRoot: string = find();
