// The action runner: a helper process that relockd starts before it opens
// any lease fd, and that runs the lock-failure programs (killpath, pause's
// relockctl libvirt-killpath) for it. It exists because relockd itself must
// never fork while it holds lease fds: the child inherits every one of them
// (close-on-exec), and execve closing a locked file on a hung FUSE or NFS
// mount waits for the server, so the child never gets to exec and libuv's
// uv_spawn blocks the event loop with it (docs/storage-failure.md, "Why
// actions run in a helper"). This process holds no storage fd, so its
// children start at once whatever the storage does.
//
// Protocol: JSON lines on fd 3 (a socketpair end; relockd keeps the other
// end across its re-execs). relockd → runner:
//   {"op":"run","id":N,"argv":[...],"env":{...},"timeoutMs":T}
// runner → relockd:
//   {"ev":"hello","pid":P}
//   {"ev":"started","id":N,"pid":CHILD}
//   {"ev":"exit","id":N,"code":C,"signal":S,"ms":M,"output":"...","err":"...","timedOut":bool}
// A result written while relockd re-execs waits in the socket buffer for
// the new image. EOF on fd 3 means relockd is gone: the runner lets running
// programs finish (each has its own timeout) and exits.

import { spawn } from 'node:child_process';
import net from 'node:net';

const CHANNEL_FD = 3;
const OUTPUT_MAX = 4096;

interface RunRequest {
  op: 'run';
  id: number;
  argv: string[];
  env: Record<string, string>;
  timeoutMs: number;
}

const channel = new net.Socket({ fd: CHANNEL_FD, readable: true, writable: true });
let running = 0;
let closed = false;

function send(msg: Record<string, unknown>): void {
  if (!closed) channel.write(`${JSON.stringify(msg)}\n`);
}

function run(req: RunRequest): void {
  const started = Date.now();
  let output = '';
  const collect = (b: Buffer) => {
    if (output.length < OUTPUT_MAX) output += b.toString('utf8').slice(0, OUTPUT_MAX - output.length);
  };
  let reported = false;
  let timedOut = false;
  // eslint-disable-next-line prefer-const -- assigned below, after finish(), which may run first (spawn throwing)
  let timer: NodeJS.Timeout | undefined;
  const finish = (code: number | null, signal: string | null, err?: string) => {
    if (reported) return;
    reported = true;
    clearTimeout(timer);
    running--;
    send({ ev: 'exit', id: req.id, code, signal, ms: Date.now() - started, output: output.trim(), ...(err ? { err } : {}), timedOut });
    maybeExit();
  };
  running++;
  let child;
  try {
    // Its own session: a program must not get the terminal's signals, and
    // the runner's death must not take a half-done suspend with it.
    child = spawn(req.argv[0]!, req.argv.slice(1), { env: req.env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  } catch (err) {
    finish(null, null, (err as Error).message);
    return;
  }
  timer = setTimeout(() => {
    timedOut = true;
    child.kill('SIGKILL');
  }, req.timeoutMs);
  child.stdout!.on('data', collect);
  child.stderr!.on('data', collect);
  child.once('spawn', () => send({ ev: 'started', id: req.id, pid: child.pid }));
  child.once('error', (err) => finish(null, null, err.message));
  // 'close', not 'exit': the output is complete then.
  child.once('close', (code, signal) => finish(code, signal));
}

function maybeExit(): void {
  if (closed && running === 0) process.exit(0);
}

let buf = '';
channel.setEncoding('utf8');
channel.on('data', (chunk: string) => {
  buf += chunk;
  let nl: number;
  while ((nl = buf.indexOf('\n')) >= 0) {
    const line = buf.slice(0, nl);
    buf = buf.slice(nl + 1);
    let msg: RunRequest;
    try {
      msg = JSON.parse(line) as RunRequest;
    } catch {
      send({ ev: 'error', err: `not JSON: ${line.slice(0, 200)}` });
      continue;
    }
    if (msg.op === 'run' && Array.isArray(msg.argv) && msg.argv.length > 0 && typeof msg.id === 'number') run(msg);
    else send({ ev: 'error', err: `bad request: ${line.slice(0, 200)}` });
  }
});
const gone = () => {
  closed = true;
  maybeExit();
};
channel.on('end', gone);
channel.on('close', gone);
channel.on('error', gone);
// relockd's terminal or its unit stopping: relockd handles its own shutdown;
// the runner goes when relockd closes the channel (or now, for SIGTERM).
process.on('SIGINT', () => {});
process.on('SIGHUP', () => {});
process.on('SIGTERM', () => process.exit(0));
send({ ev: 'hello', pid: process.pid });
