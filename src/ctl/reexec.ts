// `relockctl reexec`: asks relockd to re-exec in place, then waits for the
// new image to answer and reports the outcome and the blackout time.

import type { DaemonInfo, ReexecResult } from '../protocol/relockdAdmin.js';
import { RemoteError } from '../rpc/client.js';
import { CtlError, Exit } from './command.js';
import type { GlobalArgs } from './command.js';
import { connectAdmin, withAdmin, withTimeout } from './connection.js';
import { formatMs } from './format.js';
import { err, json, out } from './output.js';

export async function cmdReexec(a: GlobalArgs): Promise<number> {
  const requested = Date.now();
  const c = await connectAdmin(a);
  let result: ReexecResult | null = null;
  let version = '';
  let pid = 0;
  try {
    result = await withTimeout(c.reexec(), Math.max(a.timeout, 60) * 1000, 'REEXEC');
  } catch (e) {
    if (e instanceof RemoteError) {
      c.close();
      throw new CtlError(`re-exec refused: ${e.message}`, Exit.ERROR, { code: e.code, domain: e.domain });
    }
    // The reply can be lost with the old image; the daemon's record says what happened.
  } finally {
    c.close();
  }
  const info = await waitForRecord(a, requested, result !== null);
  if (info) {
    version = info.version;
    pid = info.pid;
    if (!result && info.lastReexec) result = info.lastReexec.result;
  }
  if (!result) throw new CtlError('re-exec outcome unknown: relockd did not answer and recorded no re-exec', Exit.ERROR);
  if (a.json) {
    json({ ...result, ...(result.ok ? {} : { error: result.error }), version, pid, ...(info?.configError ? { configError: info.configError } : {}) });
  } else if (result.ok) {
    out(`re-exec succeeded: blackout ${formatMs(result.blackoutMs)}${version ? ` (relockd ${version}, pid ${pid})` : ''}`);
    if (info?.configError) err(`relockctl: warning: the new image found errors in the configuration file and kept the settings in force before: ${info.configError}`);
  } else {
    err(`relockctl: re-exec failed: ${result.error}\nrelockd keeps serving in its old image with every lease held.`);
  }
  return result.ok ? Exit.OK : Exit.ERROR;
}

/** After a re-exec: the daemon info once it answers again (the record made at or after `since`). */
async function waitForRecord(a: GlobalArgs, since: number, haveResult: boolean): Promise<DaemonInfo | null> {
  const deadline = Date.now() + Math.max(a.timeout, 60) * 1000;
  for (;;) {
    try {
      const info = await withAdmin({ ...a, timeout: 5 }, (c) => c.daemonInfo());
      if (haveResult || (info.lastReexec && info.lastReexec.at >= since - 1000)) return info;
    } catch (e) {
      if (Date.now() > deadline) throw e;
    }
    if (Date.now() > deadline) return null;
    await new Promise((r) => setTimeout(r, 100));
  }
}
