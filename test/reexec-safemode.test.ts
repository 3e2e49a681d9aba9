// What happens when the re-exec hand-over goes wrong after execve (the old
// image is gone, so there is nobody to fall back to): the new image must
// stay up in SAFE MODE, keep every lock it inherited (no fd closed), keep
// its clients, refuse new acquisitions with a clear error, still allow
// releases of what it could restore, and retry on SIGUSR1. Damage is
// applied by the stand-in old image test/fixtures/exec-with-state.mjs:
// a truncated document, a schema-invalid one, a resource fd closed behind
// our back, a resource fd replaced by another file. Also: a stale document
// (not ours) found at a normal start is moved aside, never trusted.

import t from 'tap';
import type { Test } from 'tap';
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NODE_FLAGS, ROOT, cleanEnv, startRelockd, waitExit } from './lib/relockd.js';
import { probeOne } from './lib/probe.js';
import { LockspaceClient } from '../src/protocol/lockspaceClient.js';
import { RpcClient, RemoteError } from '../src/rpc/client.js';
import type { LockPrivateData, ServerState, StateDocument } from '../src/state/document.js';
import type { Owner } from '../src/locks/lockManager.js';

const EXAMPLES = join(ROOT, 'state-examples');
const FIXTURE = join(ROOT, 'test', 'fixtures', 'exec-with-state.mjs');
const readExample = (name: string) => JSON.parse(readFileSync(join(EXAMPLES, name), 'utf8')) as StateDocument;

// The harness below is the one of test/state-examples.test.ts (tests may
// only share code through test/lib/, which this change does not touch).
// ---------------------------------------------------------------- harness

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitFor(cond: () => boolean, ms = 15000, what = 'condition'): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

function serversOf(doc: StateDocument): { virtlockd?: ServerState; admin?: ServerState } {
  const d = doc.daemon;
  if (d && 'servers' in d) return Array.isArray(d.servers) ? { virtlockd: d.servers[0] } : { virtlockd: d.servers.virtlockd, admin: d.servers.admin };
  if (d) return { virtlockd: d as ServerState };
  return { virtlockd: doc.server };
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

interface Helper {
  child: ChildProcess;
  pid: number;
  out(): string;
}

function spawnHelper(mode: 'connect' | 'idle', path = ''): Promise<Helper & { socket?: net.Socket }> {
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

interface Resource {
  lockspace: string;
  name: string;
  path: string;
  flags: number;
  owners: number[];
}

interface Instance {
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
async function instantiate(t: Test, example: string, opts: { args?: string[]; ownerHelpers?: Helper[] } = {}): Promise<Instance> {
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
      throw new Error(`${(e as Error).message}\n--- output ---\n${out}`);
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
      ...doc.defaultLockspace.resources.map((r) => ({ lockspace: '', name: r.name, path: r.path, flags: r.flags, owners: r.owners })),
      ...doc.lockspaces.flatMap((ls) => ls.resources.map((r) => ({ lockspace: ls.directory!, name: r.name, path: r.path, flags: r.flags, owners: r.owners }))),
    ],
  };
}

const RELEASER_UUID = '99999999-8888-7777-6666-555555555555';
const asOwner = (pid: number): Owner => ({ uuid: RELEASER_UUID, name: `owner-${pid}`, id: 1, pid });

/** REGISTER as `pid` on a NEW connection (as libvirtd does) and RELEASE. */
async function releaseAs(sock: string, pid: number, r: Resource): Promise<void> {
  const c = await LockspaceClient.connect(sock);
  try {
    await c.register(asOwner(pid));
    await c.release(r.lockspace, r.name);
  } finally {
    c.close();
  }
}

async function expectRemote(t: Test, p: Promise<unknown>, code: number, domain: number, what: string): Promise<RemoteError | undefined> {
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

function assertAllHeld(t: Test, inst: Instance): void {
  for (const r of inst.resources()) t.equal(probeOne(r.path), 'held', `held after exec: ${r.path.slice(inst.dir.length)}`);
}

const freeOrGone = (path: string) => !existsSync(path) || probeOne(path) === 'free';

function fatalSafeMode(inst: Instance, nth: number): Record<string, any> | undefined {
  return inst.logs().filter((l) => l.level === 'fatal' && /^SAFE MODE/.test(String(l.msg)))[nth];
}

// ---------------------------------------------------------------- damaged hand-overs

interface Case {
  name: string;
  example: string;
  args: string[];
  /** Index (default lockspace first) of the resource whose fd the old image damaged. */
  damaged?: number;
  /** The document itself is readable and valid (restore ran, with problems). */
  docValid: boolean;
}

const cases: Case[] = [];
for (const example of ['relockd-directory-lockspaces.json', 'virtlockd-9.0.json']) {
  const n = example.startsWith('virtlockd') ? 0 : 1;
  cases.push(
    { name: `${example}: truncated (not JSON)`, example, args: ['--corrupt', 'json'], docValid: false },
    { name: `${example}: schema-invalid (no lockspaces)`, example, args: ['--corrupt', 'schema'], docValid: false },
    { name: `${example}: resource fd closed behind our back`, example, args: ['--close-fd', `resource:${n}`], damaged: n, docValid: true },
    { name: `${example}: resource fd replaced by another file`, example, args: ['--replace-fd', `resource:${n}`], damaged: n, docValid: true },
  );
}

for (const c of cases) {
  t.test(c.name, async (t) => {
    const inst = await instantiate(t, c.example, { args: c.args });
    const ready = inst.readyLines()[0]!;
    t.equal(ready.boot, 'safe-mode', 'boot: safe-mode');
    const fatal = fatalSafeMode(inst, 0);
    t.ok(fatal, 'a fatal SAFE MODE line');
    t.comment(`SAFE MODE: ${JSON.stringify({ problems: fatal?.problems, orphans: fatal?.orphans, keptFds: fatal?.keptFds })}`);
    t.ok(inst.alive(), 'the daemon stays up');

    const all = inst.resources();
    const damaged = c.damaged !== undefined ? all[c.damaged]! : null;
    const others = all.filter((r) => r !== damaged);
    t.ok(others.length >= 1, `${others.length} undamaged resource(s)`);
    if (damaged) t.equal(probeOne(damaged.path), 'free', 'the damaged resource lost its lock when the old image closed its fd (the damage itself)');
    for (const r of others) t.equal(probeOne(r.path), 'held', `every other lock is held: ${r.path.slice(inst.dir.length)}`);
    if (damaged && c.docValid) {
      t.equal(ready.resources, others.length, 'the damaged resource is not adopted as held');
    }

    // The connections that existed still work.
    for (const conn of inst.conns) await conn.lockspace().ping();
    t.pass(`${inst.conns.length} inherited connection(s) answer PING`);

    // New acquisitions are refused, clearly.
    const nc = await LockspaceClient.connect(inst.socketPath);
    t.teardown(() => nc.close());
    await nc.register(asOwner(41001));
    const img = join(inst.dir, 'new.img');
    writeFileSync(img, '');
    const err = await expectRemote(t, nc.acquire('', img, 0), 29, 51, 'ACQUIRE refused in safe mode');
    t.match(err?.message, /safe mode/, 'the error says why');
    t.equal(probeOne(img), 'free', 'nothing was locked');
    if (damaged) {
      await expectRemote(t, nc.acquire(damaged.lockspace, damaged.name, damaged.flags), 29, 51, 'ACQUIRE of the lost resource refused too');
      t.ok(freeOrGone(damaged.path), 'and not re-locked');
    }

    // RELEASE of restored resources works where the document was valid.
    const victim = others[0]!;
    if (c.docValid) {
      for (const pid of victim.owners) await releaseAs(inst.socketPath, pid, victim);
      t.ok(freeOrGone(victim.path), `RELEASE works for a restored resource: ${victim.name}`);
    } else {
      const rc = await LockspaceClient.connect(inst.socketPath);
      await rc.register(asOwner(victim.owners[0]!));
      try {
        await rc.release(victim.lockspace, victim.name);
        t.fail('RELEASE of a resource that was never restored should fail');
      } catch (e) {
        t.ok(e instanceof RemoteError, `RELEASE refused (nothing was restored): ${(e as Error).message}`);
      } finally {
        rc.close();
      }
      t.equal(probeOne(victim.path), 'held', 'and its lock is still held (kept as an orphan fd)');
    }
    const stillHeld = c.docValid ? others.filter((r) => r !== victim) : others;

    // A later SIGUSR1 retries the hand-over.
    process.kill(inst.pid, 'SIGUSR1');
    await waitFor(() => inst.readyLines().length >= 2 || !inst.alive(), 20000, 'the image after SIGUSR1');
    t.ok(inst.alive(), 'still up after SIGUSR1');
    const again = inst.readyLines()[1]!;
    t.equal(again.pid, inst.pid, 'same pid (it re-exec\'d)');
    const fatal2 = fatalSafeMode(inst, 1);
    const orphans: number[] = fatal2?.orphans ?? fatal2?.keptFds ?? [];
    const problems: string[] = fatal2?.problems ?? [];
    t.comment(`after SIGUSR1: boot=${again.boot} problems=${JSON.stringify(problems)} orphans=${JSON.stringify(orphans)}`);
    if (orphans.length > 0) {
      t.equal(again.boot, 'safe-mode', `still in safe mode: ${orphans.length} inherited fd(s) it cannot interpret`);
    } else {
      // Nothing left in doubt: no orphan, no problem. The retry still says
      // safe mode, because startFromState also ORs in the previous image's
      // safeMode flag, so "send SIGUSR1 to retry" can never succeed.
      t.equal(again.boot, 'restored', 'a retry with no orphan and no problem leaves safe mode');
    }
    for (const r of stillHeld) t.equal(probeOne(r.path), 'held', `still held after the retry: ${r.path.slice(inst.dir.length)}`);
    for (const conn of inst.conns) await conn.lockspace().ping();
    t.pass('the inherited connections still answer PING');
    if (again.boot === 'safe-mode') {
      await expectRemote(t, nc.acquire('', img, 0), 29, 51, 'ACQUIRE still refused after the retry');
    }
  });
}

// ---------------------------------------------------------------- stale documents

for (const variant of ['a valid document of another pid', 'unreadable JSON'] as const) {
  t.test(`a stale state file (${variant}) at a normal start is moved aside, not trusted`, async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'relockd-stale-'));
    const state = join(dir, 'state.json');
    const doc = readExample('relockd-restricted-client.json');
    doc.magic = '1'; // never our pid
    const text = variant === 'unreadable JSON' ? JSON.stringify(doc).slice(0, 200) : JSON.stringify(doc, null, 2);
    writeFileSync(state, text, { mode: 0o600 });
    const d = await startRelockd({ dir, args: ['--state-file', state] });
    t.teardown(async () => {
      await d.stop();
      rmSync(dir, { recursive: true, force: true });
    });
    await waitFor(() => d.logs().includes('relockd ready'), 15000, 'relockd ready');
    const logs = d.logs().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, any>);
    const warn = logs.find((l) => l.msg === 'stale state file moved aside, not trusted');
    t.ok(warn, 'warned');
    t.equal(warn?.level, 'warn', 'at warning level');
    t.match(String(warn?.why), variant === 'unreadable JSON' ? /not valid JSON/ : /magic "1" is not our pid/, `why: ${warn?.why}`);
    const ready = logs.find((l) => l.msg === 'relockd ready')!;
    t.equal(ready.boot, 'fresh', 'a fresh start');
    t.equal(ready.resources, 0, 'nothing adopted from it');
    t.notOk(existsSync(state), 'the state path is free');
    const aside = readdirSync(dir).filter((f) => f.startsWith('state.json.stale-'));
    t.equal(aside.length, 1, `moved to ${aside[0]}`);
    t.equal(readFileSync(join(dir, aside[0]!), 'utf8'), text, 'unchanged, for inspection');
    t.notOk(logs.some((l) => l.level === 'fatal'), 'no safe mode');
    // and it serves normally
    const c = await LockspaceClient.connect(d.socketPath);
    t.teardown(() => c.close());
    await c.register(asOwner(42001));
    const img = join(dir, 'img');
    writeFileSync(img, '');
    await c.acquire('', img, 0);
    t.equal(probeOne(img), 'held', 'acquisitions work');
    await c.release('', img);
  });
}
