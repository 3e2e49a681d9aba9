// The package version, read from package.json at start-up so a re-exec into
// an upgraded tree reports the new version.

import { readFileSync } from 'node:fs';
import { packageRoot } from './packageRoot.js';

export const VERSION: string = (JSON.parse(readFileSync(`${packageRoot}/package.json`, 'utf8')) as { version: string }).version;
