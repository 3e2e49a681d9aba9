// The admin call behind `relockctl handback` (relockd program, HANDBACK):
// checks, then the exec through the re-exec machinery. Resolves only with a
// refusal; on success this image is virtlockd.

import type { ClientConnection } from '../rpc/connection.js';
import type { HandbackArgs, HandbackRefused } from '../protocol/relockdAdmin.js';
import { checkRequest, handbackTarget } from './handback.js';
import type { HandbackContext, HandbackHost } from './handback.js';
import { ExecRefusal } from '../state/execPlan.js';

export async function handback(d: HandbackHost, caller: ClientConnection<any>, a: HandbackArgs): Promise<HandbackRefused> {
  const req = { path: a.path, args: a.args };
  const ctx: HandbackContext = { callerClientIds: new Set([caller.id]), warnings: [] };
  d.log.warn({ client: caller.id, peer: caller.peer, exec: a.path, args: a.args }, 'handback to virtlockd requested by admin');
  try {
    checkRequest(d, req);
  } catch (err) {
    if (err instanceof ExecRefusal) {
      d.log.warn({ err: err.message, transient: err.transient }, 'handback refused: still serving, every lock held');
      return { transient: err.transient, error: err.message, warnings: [] };
    }
    throw err;
  }
  const header = caller.currentHeader;
  const r = await d.reexec('handback', header ? { conn: caller, header } : undefined, handbackTarget(d, req, ctx));
  // Only a refusal or failure comes back: on success this image is gone.
  if (r.ok) return { transient: false, error: 'handback returned without exec', warnings: ctx.warnings };
  return { transient: r.transient === true, error: r.error, warnings: ctx.warnings };
}
