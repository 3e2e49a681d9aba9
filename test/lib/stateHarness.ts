// Shared harness for the state-example and safe-mode suites: a stand-in old
// image (test/fixtures/exec-with-state.mjs) instantiates a state document
// with real fds and locks and execs relockd into it.

import { fromDocText } from '../../src/byteString.js';
import type { Test } from 'tap';
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NODE_FLAGS, ROOT, cleanEnv, waitExit } from './relockd.js';
import { probeOne } from './probe.js';
import { LockspaceClient } from '../../src/protocol/lockspaceClient.js';
import { RpcClient, RemoteError } from '../../src/rpc/client.js';
import { serversOf } from '../../src/state/restore.js';
import type { LockPrivateData, StateDocument } from '../../src/state/document.js';
import type { Owner } from '../../src/locks/lockManager.js';

export const EXAMPLES = join(ROOT, 'state-examples');
const FIXTURE = join(ROOT, 'test', 'fixtures', 'exec-with-state.mjs');
export const exampleFiles = readdirSync(EXAMPLES).filter((f) => f.endsWith('.json')).sort();
export const readExample = (name: string) => JSON.parse(readFileSync(join(EXAMPLES, name), 'utf8')) as StateDocument;

// ---------------------------------------------------------------- harness

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function waitFor(cond: () => boolean, ms = 15000, what = 'condition'): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}


/**
 * A helper process. 'connect': connects to the socket, hands its connection
 * to us over the IPC channel (its own copy is closed; SO_PEERCRED still
 * names it) — QEMU's inherited lock connection, with us holding the fd.
 * 'idle': just lives. Either prints 'got SIGTERM' on SIGTERM and exits only
 * when told ('exit' on stdin) or killed.
 */
const HELPER = `
const net = require('node:net');
process.on('SIGTERM', () => process.stdout.write('got SIGTERM\\n'));
process.stdin.on('data', (d) => { if (String(d).includes('exit')) process.exit(0); });
if (process.argv[1] === 'connect') {
  const s = net.connect(process.argv[2], () => process.send('sock', s));
} else {
  process.stdout.write('ready\\n');
}
setInterval(() => {}, 1 << 30);
`;

export interface Helper {
  child: ChildProcess;
  pid: number;
  out(): string;
}

export function spawnHelper(mode: 'connect' | 'idle', path = ''): Promise<Helper & { socket?: net.Socket }> {
  const child = spawn('/usr/bin/env', ['-u', 'NODE_OPTIONS', process.execPath, '-e', HELPER, mode, path], {
    stdio: ['pipe', 'pipe', 'pipe', 'ipc'],
    env: cleanEnv(),
  });
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (out += d));
  const h = { child, pid: child.pid!, out: () => out };
  return new Promise((resolve, reject) => {
    child.once('exit', (c) => reject(new Error(`helper exited (${c}): ${out}`)));
    if (mode === 'connect') child.once('message', (_m, handle) => resolve({ ...h, socket: handle as net.Socket }));
    else child.stdout!.once('data', () => resolve(h));
  });
}

/** One connection the old image had: ours (helper's peer pid, or our own). */
interface Conn {
  server: 'virtlockd' | 'admin';
  index: number;
  socket: net.Socket;
  /** Everything received on it since it was made. */
  received: Buffer[];
  helper?: Helper;
  /** A lock-space client over this connection (made on first use). */
  lockspace(): LockspaceClient;
}

function makeConn(server: Conn['server'], index: number, socket: net.Socket, helper?: Helper): Conn {
  const received: Buffer[] = [];
  socket.on('data', (d: Buffer) => received.push(d));
  socket.on('error', () => {});
  let ls: LockspaceClient | undefined;
  return {
    server,
    index,
    socket,
    received,
    helper,
    lockspace() {
      // RpcClient's constructor is private: it is normally made by connect().
      ls ??= new LockspaceClient(new (RpcClient as unknown as new (s: net.Socket) => RpcClient)(socket));
      return ls;
    },
  };
}

/**
 * Names in documents are text with non-UTF-8 bytes as \udc80-\udcff
 * (src/byteString.ts); such names are handed to tests as their bytes.
 */
const docName = (s: string): string => (/[\udc80-\udcff]/.test(s) ? (Buffer.from(fromDocText(s), 'latin1') as unknown as string) : s);

export interface Resource {
  /** A string, or (typed as one) a Buffer of the exact bytes for non-UTF-8 names. */
  lockspace: string;
  name: string;
  path: string;
  flags: number;
  owners: number[];
}

export interface Instance {
  pid: number;
  dir: string;
  socketPath: string;
  /** The document as the fixture wrote it (before any corruption). */
  doc: StateDocument;
  conns: Conn[];
  helpers: Helper[];
  out(): string;
  /** relockd's JSON log lines. */
  logs(): Array<Record<string, any>>;
  readyLines(): Array<Record<string, any>>;
  resources(): Resource[];
  alive(): boolean;
}

/**
 * Runs the fixture on an example, connects the example's clients (helpers
 * for registered lock clients, ourselves for the others) and waits for
 * relockd's 'relockd ready'. Everything is stopped at teardown.
 */
export async function instantiate(t: Test, example: string, opts: { args?: string[]; ownerHelpers?: Helper[] } = {}): Promise<Instance> {
  const dir = mkdtempSync(join(tmpdir(), 'relockd-ex-'));
  const socketPath = join(dir, 'relockd.sock');
  const ex = readExample(example);
  const helpers: Helper[] = [...(opts.ownerHelpers ?? [])];
  const conns: Conn[] = [];
  const child = spawn('/usr/bin/env', ['-u', 'NODE_OPTIONS', process.execPath, ...NODE_FLAGS, FIXTURE, join(EXAMPLES, example), dir, ...(opts.ownerHelpers ?? []).flatMap((h) => ['--owner-pid', String(h.pid)]), ...(opts.args ?? [])], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: cleanEnv(),
  });
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (out += d));
  let dead = false;
  child.once('exit', () => (dead = true));
  t.teardown(async () => {
    if (!dead) {
      // relockd refuses SIGTERM while leases are held: SIGKILL, by pid.
      process.kill(child.pid!, 'SIGKILL');
      await waitExit(child, 10000);
    }
    for (const c of conns) c.socket.destroy();
    for (const h of helpers) {
      if (h.child.exitCode === null && h.child.signalCode === null) {
        h.child.kill('SIGKILL');
        await waitExit(h.child, 5000);
      }
    }
    rmSync(dir, { recursive: true, force: true });
  });
  const lines = () => out.split('\n');
  const has = (prefix: string) => lines().some((l) => l.startsWith(prefix));
  const until = async (cond: () => boolean, what: string) => {
    try {
      await waitFor(() => cond() || dead, 20000, what);
    } catch (e) {
      throw new Error(`${(e as Error).message}\n--- output ---\n${out}`, { cause: e });
    }
    if (!cond()) throw new Error(`fixture/daemon exited while waiting for ${what}\n--- output ---\n${out}`);
  };

  const servers = serversOf(ex);
  for (const name of ['virtlockd', 'admin'] as const) {
    const st = servers[name];
    if (!st || st.clients.length === 0) continue;
    const path = name === 'virtlockd' ? socketPath : join(dir, 'virtlockd-admin-sock');
    await until(() => has(`listening ${path} ${st.clients.length}`), `listening ${path}`);
    for (let i = 0; i < st.clients.length; i++) {
      const pd = st.clients[i]!.privateData as Partial<LockPrivateData>;
      if (name === 'virtlockd' && pd.ownerId !== 0) {
        const h = await spawnHelper('connect', path);
        helpers.push(h);
        conns.push(makeConn(name, i, h.socket!, h));
      } else {
        const s = net.connect(path);
        await new Promise<void>((resolve, reject) => {
          s.once('connect', () => resolve());
          s.once('error', reject);
        });
        conns.push(makeConn(name, i, s));
      }
      await until(() => has(`accepted ${path} ${i} `), `accepted ${path} ${i}`);
    }
  }
  const logs = () =>
    lines()
      .filter((l) => l.startsWith('{'))
      .map((l) => {
        try {
          return JSON.parse(l) as Record<string, any>;
        } catch {
          return {};
        }
      });
  const readyLines = () => logs().filter((l) => l.msg === 'relockd ready');
  await until(() => readyLines().length > 0, "'relockd ready'");
  const doc = JSON.parse(readFileSync(join(dir, 'state.instantiated.json'), 'utf8')) as StateDocument;
  t.equal(readyLines()[0]!.pid, child.pid, 'relockd runs as the fixture pid (execve keeps the pid)');
  return {
    pid: child.pid!,
    dir,
    socketPath,
    doc,
    conns,
    helpers,
    out: () => out,
    logs,
    readyLines,
    alive: () => !dead,
    resources: () => [
      ...doc.defaultLockspace.resources.map((r) => ({ lockspace: '', name: docName(r.name), path: docName(r.path), flags: r.flags, owners: r.owners })),
      ...doc.lockspaces.flatMap((ls) => ls.resources.map((r) => ({ lockspace: docName(ls.directory!), name: docName(r.name), path: docName(r.path), flags: r.flags, owners: r.owners }))),
    ],
  };
}

const RELEASER_UUID = '99999999-8888-7777-6666-555555555555';
export const asOwner = (pid: number): Owner => ({ uuid: RELEASER_UUID, name: `owner-${pid}`, id: 1, pid });

/** REGISTER as `pid` on a NEW connection (as libvirtd does) and RELEASE. */
export async function releaseAs(sock: string, pid: number, r: Resource): Promise<void> {
  const c = await LockspaceClient.connect(sock);
  try {
    await c.register(asOwner(pid));
    await c.release(r.lockspace, r.name);
  } finally {
    c.close();
  }
}

export async function expectRemote(t: Test, p: Promise<unknown>, code: number, domain: number, what: string): Promise<RemoteError | undefined> {
  try {
    await p;
    t.fail(`${what}: expected error ${code}/${domain}`);
  } catch (err) {
    if (!(err instanceof RemoteError)) throw err;
    t.same({ code: err.code, domain: err.domain }, { code, domain }, `${what}: ${err.message}`);
    return err;
  }
  return undefined;
}

export function assertAllHeld(t: Test, inst: Instance): void {
  for (const r of inst.resources()) t.equal(probeOne(r.path), 'held', `held after exec: ${r.path.slice(inst.dir.length)}`);
}
