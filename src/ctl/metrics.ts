// `relockctl metrics`: the Prometheus text exposition, from the admin socket.
// With --output FILE the text is written atomically (temp file in the same
// directory, then rename), as node_exporter's textfile collector wants
// (`*.prom` files, never seen half-written); run it from a timer.

import { closeSync, openSync, renameSync, unlinkSync, writeSync, fsyncSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { CtlError, Exit } from './command.js';
import type { GlobalArgs } from './command.js';
import { withAdmin } from './connection.js';
import { out } from './output.js';

export interface MetricsArgs extends GlobalArgs {
  output?: string;
}

export async function cmdMetrics(a: MetricsArgs): Promise<number> {
  const text = await withAdmin(a, (c) => c.metrics());
  if (!a.output) {
    out(text.endsWith('\n') ? text.slice(0, -1) : text);
    return Exit.OK;
  }
  const tmp = join(dirname(a.output), `.${basename(a.output)}.${process.pid}.tmp`);
  try {
    const fd = openSync(tmp, 'w', 0o644);
    try {
      writeSync(fd, text);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, a.output);
  } catch (e) {
    try {
      unlinkSync(tmp);
    } catch {
      /* never created */
    }
    throw new CtlError(`cannot write ${a.output}: ${(e as Error).message}`, Exit.ERROR);
  }
  return Exit.OK;
}
