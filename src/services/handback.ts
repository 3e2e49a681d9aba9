// relockctl handback: relockd → the real virtlockd, in place. The re-exec
// machinery (daemon/reexec.ts) quiesces and snapshots as for a re-exec; this
// target turns the snapshot into virtlockd's document
// (state/virtlockdDocument.ts), checks what only the live system can tell,
// and execs virtlockd with the state where virtlockd looks for it. Any
// refusal leaves relockd serving with every lock (see docs/takeover.md).

import { accessSync, constants as fsConstants, mkdirSync, readFileSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, isAbsolute } from 'node:path';
import * as native from '../native.js';
import type { StateDocument } from '../state/document.js';
import { ConversionRefused, toVirtlockdDocument, virtlockdStateFile } from '../state/virtlockdDocument.js';
import type { Logger } from 'pino';
import type { ClientConnection } from '../rpc/connection.js';
import type { Header } from '../rpc/packet.js';
import { isPrivileged } from '../util/paths.js';
import { ExecRefusal } from '../state/execPlan.js';
import type { ExecPlan, ExecTarget } from '../state/execPlan.js';

export interface HandbackRequest {
  /** virtlockd's binary (absolute). */
  path: string;
  /** virtlockd's arguments after argv[0] (-f, -p, -v, -t ...). */
  args: string[];
}

/** The admin connections to leave out of the document (the caller's). */
export interface HandbackContext {
  callerClientIds: Set<number>;
  /** Filled in by the plan: warnings to report (logged, they do not stop the handback). */
  warnings: string[];
}

/** Environment variables virtlockd must not see. */
const DROP_ENV = /^(RELOCKD_|LISTEN_PID$|LISTEN_FDS$|LISTEN_FDNAMES$|UV_THREADPOOL_SIZE$)/;

/** Whether virtlockd's getopt ("df:p:t:vVh") sees option `opt` in `args`. */
export function hasVirtlockdOption(args: string[], opt: 'd' | 'p', long: string): boolean {
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--') return false;
    if (a === `--${long}` || a.startsWith(`--${long}=`)) return true;
    if (a.startsWith('--')) {
      if (!a.includes('=') && /^--(config|pid-file|timeout)$/.test(a)) i++;
      continue;
    }
    if (!a.startsWith('-') || a.length < 2) continue;
    for (let j = 1; j < a.length; j++) {
      const c = a[j]!;
      if (c === opt) return true;
      if (c === 'f' || c === 'p' || c === 't') {
        if (j === a.length - 1) i++; // the value is the next argument
        break; // the rest of this word is the value
      }
    }
  }
  return false;
}

/** The argv virtlockd gets: ours when given, plus -p for relockd's pid file so it re-claims the same one. */
export function virtlockdArgv(req: HandbackRequest, pidFile: string | null): string[] {
  const args = [...req.args];
  const hasPid = hasVirtlockdOption(args, 'p', 'pid-file');
  if (!hasPid && pidFile) args.push('-p', pidFile);
  return [req.path, ...args];
}

/** What the handback needs from the daemon (Daemon implements it). */
export interface HandbackHost {
  readonly log: Logger;
  readonly safeMode: boolean;
  readonly lockService: { readonly terminations: { readonly size: number } };
  readonly lockServer: { readonly name: string; readonly clients: ReadonlyMap<number, ClientConnection<any>> };
  readonly adminServer: { readonly name: string; readonly clients: ReadonlyMap<number, ClientConnection<any>> } | null;
  readonly pidFile: { readonly path: string; readonly fd: number } | null;
  /** Resolves only with a refusal or failure: on success this image is gone. */
  reexec(trigger: string, replyTo: { conn: ClientConnection<any>; header: Header } | undefined, target: ExecTarget): Promise<{ ok: true } | { ok: false; error: string; transient?: boolean }>;
}

/** Checks that do not need a snapshot; throws ExecRefusal. */
export function checkRequest(d: HandbackHost, req: HandbackRequest): void {
  if (!isAbsolute(req.path)) throw new ExecRefusal(`virtlockd path must be absolute: '${req.path}'`, false);
  try {
    const st = statSync(req.path);
    if (!st.isFile()) throw new Error('not a regular file');
    accessSync(req.path, fsConstants.X_OK);
  } catch (err) {
    throw new ExecRefusal(`cannot execute ${req.path}: ${(err as Error).message}`, false);
  }
  if (hasVirtlockdOption(req.args, 'd', 'daemon')) throw new ExecRefusal('virtlockd must not daemonize on a handback (-d/--daemon): it would fork away from its locks', false);
  if (d.safeMode) throw new ExecRefusal('relockd is in safe mode (a restore was incomplete): fix that first (relockctl status)', false);
  if (d.lockService.terminations.size) throw new ExecRefusal(`${d.lockService.terminations.size} owner termination(s) in progress; virtlockd cannot continue them`, true);
}

/** Whether a peer process is still there for virtlockd's restore (it reads /proc/PID/stat). */
function peerState(pid: number): 'alive' | 'gone' | 'zombie' {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state === 'Z' || state === 'X' ? 'zombie' : 'alive';
  } catch {
    return 'gone';
  }
}

export function handbackTarget(d: HandbackHost, req: HandbackRequest, ctx: HandbackContext): ExecTarget {
  return {
    plan(doc: StateDocument): ExecPlan {
      // virtlockd's restore looks up every client's peer (SO_PEERCRED pid, then
      // /proc/PID/stat): a peer that is gone makes it exit 3 and drop every
      // lock. relockd has not yet seen that peer's disconnect: let it first.
      const dead: string[] = [];
      const servers = [d.lockServer, d.adminServer].filter((s) => s !== null);
      for (const srv of servers) {
        for (const c of srv.clients.values()) {
          if (c.isClosed || (srv === d.adminServer && ctx.callerClientIds.has(c.id))) continue;
          const st = peerState(c.peer.pid);
          if (st !== 'alive') dead.push(`${srv.name} client ${c.id} (peer pid ${c.peer.pid} ${st === 'gone' ? 'has exited' : 'is a zombie'})`);
        }
      }
      if (dead.length) throw new ExecRefusal(`${dead.join(', ')}: virtlockd's restore would fail on it; retry once relockd has seen the disconnect`, true);
      let conv;
      try {
        conv = toVirtlockdDocument(doc, { dropAdminClients: ctx.callerClientIds });
      } catch (err) {
        if (err instanceof ConversionRefused) throw new ExecRefusal(err.message, err.transient);
        throw err;
      }
      ctx.warnings.push(...conv.warnings);
      // The pid file's OFD lock would make virtlockd's classic F_SETLK on it
      // fail (and virtlockd exit): it must close at exec. It is close-on-exec
      // already; say so explicitly.
      if (d.pidFile) native.setCloexec(d.pidFile.fd, true);
      const env = Object.entries(process.env)
        .filter(([k]) => !DROP_ENV.test(k))
        .map(([k, v]) => `${k}=${v}`);
      const argv = virtlockdArgv(req, d.pidFile?.path ?? null);
      d.log.warn({ exec: req.path, argv, resources: conv.resources, clients: conv.clients, warnings: conv.warnings }, 'handback: executing virtlockd');
      const stateFile = virtlockdStateFile(isPrivileged(), process.env, homedir());
      mkdirSync(dirname(stateFile), { recursive: true, mode: 0o700 });
      return {
        stateFile,
        text: conv.text,
        keep: conv.fds,
        execPath: req.path,
        argv,
        env,
        // virtlockd never unblocks them; like its own re-exec, a signal in the
        // few ms before its handlers are installed would end it (docs/takeover.md).
        holdSignals: false,
      };
    },
  };
}
