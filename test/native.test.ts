// Tests of the native addon. A lock only counts as held when ANOTHER process
// fails to take it: python3's fcntl.lockf (classic POSIX locks, like QEMU and
// virtlockd) and test/fixtures/native-child.mjs play the other processes.
import t from 'tap';
import type { Test } from 'tap';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

import * as native from '../src/native.js';
import type { NativeError } from '../src/native.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const FIXTURE = path.join(here, 'fixtures', 'native-child.mjs');
const PERMISSION_FLAGS = [
  '--experimental-permission',
  '--allow-fs-read=*',
  '--allow-fs-write=*',
  '--allow-addons',
  '--no-warnings',
];
const SIGUSR1 = os.constants.signals.SIGUSR1;
const SIGUSR2 = os.constants.signals.SIGUSR2;
const O_CLOEXEC = 0o2000000;

// ---- shared helpers ---------------------------------------------------------------

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'relockd-native-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));

const children = new Set<ChildProcess>();
t.teardown(() => {
  for (const c of children) {
    if (c.exitCode === null && c.signalCode === null && c.pid) {
      try {
        process.kill(c.pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
  }
});

let fileSeq = 0;
function tmpFile(content = ''): string {
  const p = path.join(tmp, `f${++fileSeq}`);
  fs.writeFileSync(p, content);
  return p;
}

// python3: try a classic lock; "hold" keeps it until stdin closes.
const PY_LOCK = `
import errno, fcntl, os, sys
path, kind, start, length = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
fd = os.open(path, os.O_RDWR)
try:
    fcntl.lockf(fd, (fcntl.LOCK_SH if kind == 'read' else fcntl.LOCK_EX) | fcntl.LOCK_NB, length, start)
except OSError as e:
    print(errno.errorcode[e.errno], flush=True)
    sys.exit(1)
print('locked', flush=True)
if len(sys.argv) > 5:
    sys.stdin.read()
`;

/** Can another process take a classic lock right now? */
function otherCanLock(file: string, kind: 'read' | 'write', start = 0, len = 1): boolean {
  const r = spawnSync('python3', ['-c', PY_LOCK, file, kind, String(start), String(len)], {
    encoding: 'utf8',
    timeout: 30_000,
  });
  if (r.status === 0 && r.stdout.trim() === 'locked') return true;
  if (r.status === 1 && /^(EAGAIN|EACCES)$/.test(r.stdout.trim())) return false;
  throw new Error(`python lock probe failed: ${r.status} ${r.stdout} ${r.stderr}`);
}

interface Child {
  proc: ChildProcess;
  pid: number;
  line(): Promise<string>;
  send(line: string): void;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

function start(cmd: string, args: string[]): Child {
  const proc = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  children.add(proc);
  const lines: string[] = [];
  const waiters: ((l: string) => void)[] = [];
  let stderr = '';
  proc.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  readline.createInterface({ input: proc.stdout! }).on('line', (l) => {
    const w = waiters.shift();
    if (w) w(l);
    else lines.push(l);
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    proc.on('close', (code, signal) => resolve({ code, signal })), // after stdio closed
  );
  return {
    proc,
    pid: proc.pid!,
    exited,
    send: (l) => proc.stdin!.write(l + '\n'),
    line: () =>
      new Promise<string>((resolve, reject) => {
        const l = lines.shift();
        if (l !== undefined) return resolve(l);
        const timer = setTimeout(() => reject(new Error(`no output from ${cmd}; stderr: ${stderr}`)), 20_000);
        waiters.push((v) => {
          clearTimeout(timer);
          resolve(v);
        });
        void exited.then(() => setTimeout(() => reject(new Error(`${cmd} exited; stderr: ${stderr}`)), 100));
      }),
  };
}

/**
 * A node child running the fixture. tap re-injects its NODE_OPTIONS hooks into
 * every spawn (whatever env we pass), and under the permission model those
 * hooks die (process.binding is denied), so env(1) drops them; env execs node,
 * so the pid is node's.
 */
function startFixture(nodeFlags: string[], args: string[]): Child {
  return start('/usr/bin/env', ['-u', 'NODE_OPTIONS', process.execPath, ...nodeFlags, FIXTURE, ...args]);
}

/** A python3 process holding a classic lock until release(). */
async function holdClassic(file: string, kind: 'read' | 'write', startAt = 0, len = 1) {
  const c = start('python3', ['-c', PY_LOCK, file, kind, String(startAt), String(len), 'hold']);
  const first = await c.line();
  if (first !== 'locked') throw new Error(`holder could not lock: ${first}`);
  return {
    pid: c.pid,
    release: async () => {
      c.proc.stdin!.end();
      await c.exited;
    },
  };
}

function fdCount(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

function fdIsOpen(fd: number): boolean {
  try {
    fs.fstatSync(fd);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EBADF') return false;
    throw e;
  }
}

function fdinfoFlags(fd: number): number {
  const m = /^flags:\s+([0-7]+)$/m.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
  return parseInt(m![1]!, 8);
}

function caught(fn: () => unknown): NativeError {
  try {
    fn();
  } catch (e) {
    return e as NativeError;
  }
  throw new Error('expected a throw');
}

async function rejected(p: Promise<unknown>): Promise<NativeError> {
  try {
    await p;
  } catch (e) {
    return e as NativeError;
  }
  throw new Error('expected a rejection');
}

const isBusy = (code: string) => code === 'EAGAIN' || code === 'EACCES';

// ---- record locks -------------------------------------------------------------------

t.test('OFD write lock blocks classic locks of another process; unlock frees it', async (t) => {
  const file = tmpFile();
  const fd = fs.openSync(file, 'r+');
  t.teardown(() => fs.closeSync(fd));
  t.ok(otherCanLock(file, 'write'), 'free at first');
  native.ofdLock(fd, 'write', 0, 1);
  t.notOk(otherCanLock(file, 'write'), 'write refused');
  t.notOk(otherCanLock(file, 'read'), 'read refused');
  t.ok(otherCanLock(file, 'write', 1, 10), 'other bytes are free');
  native.ofdUnlock(fd, 0, 1);
  t.ok(otherCanLock(file, 'write'), 'free after unlock');
});

t.test('OFD read lock allows other readers, blocks writers', async (t) => {
  const file = tmpFile();
  const fd = fs.openSync(file, 'r+');
  t.teardown(() => fs.closeSync(fd));
  native.ofdLock(fd, 'read', 0, 1);
  t.ok(otherCanLock(file, 'read'), 'read allowed');
  t.notOk(otherCanLock(file, 'write'), 'write refused');
  native.ofdLock(fd, 'write', 0, 1); // upgrade in place
  t.notOk(otherCanLock(file, 'read'), 'read refused after upgrade');
});

t.test('byte ranges and len 0 (to end of file)', async (t) => {
  const file = tmpFile();
  const fd = fs.openSync(file, 'r+');
  t.teardown(() => fs.closeSync(fd));
  native.ofdLock(fd, 'write', 0, 100);
  t.notOk(otherCanLock(file, 'write', 50, 10), '[50,60) inside');
  t.ok(otherCanLock(file, 'write', 100, 100), '[100,200) outside');
  native.ofdUnlock(fd, 0, 100);
  native.ofdLock(fd, 'write', 1000, 0);
  t.notOk(otherCanLock(file, 'write', 2 ** 40, 1), 'len 0 reaches far beyond EOF');
  t.ok(otherCanLock(file, 'write', 0, 1000), 'below the start is free');
  native.ofdLock(fd, 'write', 2 ** 53 - 1, 1); // largest exact offset is accepted
});

t.test('ofdGetLock / posixGetLock report another process\'s classic lock', async (t) => {
  const file = tmpFile();
  const fd = fs.openSync(file, 'r+');
  t.teardown(() => fs.closeSync(fd));
  t.equal(native.ofdGetLock(fd, 'write', 0, 1), null, 'nothing held');

  const w = await holdClassic(file, 'write', 0, 1);
  const expected = { type: 'write', start: 0, len: 1, pid: w.pid };
  t.same(native.ofdGetLock(fd, 'read', 0, 1), expected, 'ofd: write holder');
  t.same(native.posixGetLock(fd, 'read', 0, 10), expected, 'posix: write holder');
  t.equal(native.ofdGetLock(fd, 'read', 1, 5), null, 'other bytes free');
  t.equal(isBusy(caught(() => native.ofdLock(fd, 'read', 0, 1)).code), true, 'ofdLock refused');
  await w.release();

  const r = await holdClassic(file, 'read', 0, 1);
  t.equal(native.ofdGetLock(fd, 'read', 0, 1), null, 'read does not conflict with read');
  t.same(native.ofdGetLock(fd, 'write', 0, 1), { type: 'read', start: 0, len: 1, pid: r.pid });
  await r.release();
  t.equal(native.ofdGetLock(fd, 'write', 0, 1), null, 'free again');
});

t.test('an OFD holder is reported with pid -1', async (t) => {
  const file = tmpFile();
  const h = startFixture([], ['hold', file, 'write', '0', '1']);
  t.equal(await h.line(), 'locked');
  const fd = fs.openSync(file, 'r+');
  t.teardown(() => fs.closeSync(fd));
  t.same(native.ofdGetLock(fd, 'write', 0, 1), { type: 'write', start: 0, len: 1, pid: -1 });
  t.same(native.posixGetLock(fd, 'write', 0, 1), { type: 'write', start: 0, len: 1, pid: -1 });
  t.notOk(otherCanLock(file, 'read'), 'classic lock refused by the OFD lock');
  h.proc.stdin!.end();
  await h.exited;
  t.ok(otherCanLock(file, 'write'), 'free once the holder exits');
});

t.test('OFD locks conflict between two fds of one process; error shape', async (t) => {
  const file = tmpFile();
  const a = fs.openSync(file, 'r+');
  const b = fs.openSync(file, 'r+');
  t.teardown(() => {
    fs.closeSync(a);
    fs.closeSync(b);
  });
  native.ofdLock(a, 'write', 0, 1);
  const e = caught(() => native.ofdLock(b, 'write', 0, 1));
  t.type(e, Error);
  t.equal(e.code, 'EAGAIN');
  t.equal(e.errno, os.constants.errno.EAGAIN);
  t.equal(e.syscall, 'fcntl(F_OFD_SETLK)');
  t.equal(e.message, 'fcntl(F_OFD_SETLK): Resource temporarily unavailable');
  t.ok(native.isNativeError(e, 'EAGAIN'));
  t.same(native.ofdGetLock(b, 'read', 0, 1), { type: 'write', start: 0, len: 1, pid: -1 });
  // Classic locks of one process never conflict with each other...
  native.posixLock(b, 'write', 5, 1);
  native.posixLock(b, 'write', 5, 1);
  // ...but they do conflict with the process's own OFD lock.
  t.ok(isBusy(caught(() => native.posixLock(b, 'write', 0, 1)).code));
});

t.test('an OFD lock survives fs.readFileSync of the file; a classic lock does not', async (t) => {
  const file = tmpFile('data');
  const fd = fs.openSync(file, 'r+');
  t.teardown(() => fs.closeSync(fd));
  native.ofdLock(fd, 'write', 0, 1);
  fs.readFileSync(file);
  t.notOk(otherCanLock(file, 'write'), 'OFD lock still held');
  native.ofdUnlock(fd, 0, 1);

  native.posixLock(fd, 'write', 0, 1);
  t.notOk(otherCanLock(file, 'write'), 'classic lock held');
  fs.readFileSync(file); // open+close of another fd drops the process's classic locks
  t.ok(otherCanLock(file, 'write'), 'classic lock silently lost (the pitfall)');
});

t.test('posixLock / posixUnlock', async (t) => {
  const file = tmpFile();
  const fd = fs.openSync(file, 'r+');
  t.teardown(() => fs.closeSync(fd));
  native.posixLock(fd, 'read', 0, 1);
  t.ok(otherCanLock(file, 'read'));
  t.notOk(otherCanLock(file, 'write'));
  native.posixLock(fd, 'write', 0, 1);
  t.notOk(otherCanLock(file, 'read'));
  native.posixUnlock(fd, 0, 1);
  t.ok(otherCanLock(file, 'write'));
  const h = await holdClassic(file, 'read', 0, 1);
  t.ok(isBusy(caught(() => native.posixLock(fd, 'write', 0, 1)).code));
  await h.release();
});

t.test('lock calls on a closed fd throw EBADF', async (t) => {
  const fd = fs.openSync(tmpFile(), 'r+');
  fs.closeSync(fd);
  for (const fn of [
    () => native.ofdLock(fd, 'write', 0, 1),
    () => native.ofdUnlock(fd, 0, 1),
    () => native.ofdGetLock(fd, 'write', 0, 1),
    () => native.posixLock(fd, 'write', 0, 1),
    () => native.getCloexec(fd),
    () => native.setCloexec(fd, true),
  ]) {
    const e = caught(fn);
    t.equal(e.code, 'EBADF');
    t.equal(e.errno, os.constants.errno.EBADF);
  }
  const e = caught(() => native.ofdLock(fd, 'read', 0, 1));
  t.equal(e.message, 'fcntl(F_OFD_SETLK): Bad file descriptor');
});

// ---- cloexec ----------------------------------------------------------------------------

t.test('getCloexec / setCloexec round trip, checked in /proc/self/fdinfo', async (t) => {
  const fd = fs.openSync(tmpFile(), 'r');
  t.teardown(() => fs.closeSync(fd));
  t.equal(native.getCloexec(fd), true, 'Node opens files O_CLOEXEC');
  t.ok(fdinfoFlags(fd) & O_CLOEXEC);
  native.setCloexec(fd, false);
  t.equal(native.getCloexec(fd), false);
  t.notOk(fdinfoFlags(fd) & O_CLOEXEC, 'fdinfo agrees');
  native.setCloexec(fd, false); // idempotent
  native.setCloexec(fd, true);
  t.equal(native.getCloexec(fd), true);
  t.ok(fdinfoFlags(fd) & O_CLOEXEC);
});

// ---- sockets ----------------------------------------------------------------------------

/** A UNIX socket pair through a real listener: our client end, the accepted end and its fd. */
async function acceptedPair(t: Test, name: string, opts: net.ServerOpts = {}): Promise<{ client: net.Socket; conn: net.Socket; fd: number }> {
  const sock = path.join(tmp, name);
  const accepted = new Promise<net.Socket>((resolve) => {
    const srv = net.createServer(opts, resolve).listen(sock);
    t.teardown(() => srv.close());
  });
  const client = net.connect(sock);
  t.teardown(() => client.destroy());
  const conn = await accepted;
  t.teardown(() => conn.destroy());
  return { client, conn, fd: (conn as unknown as { _handle: { fd: number } })._handle.fd };
}

t.test('peerCred and peerPidfd on a server-accepted UNIX socket', async (t) => {
  const { fd } = await acceptedPair(t, 'peer.sock');
  t.ok(fd > 2, `accepted fd ${fd}`);

  t.same(native.peerCred(fd), { pid: process.pid, uid: process.getuid!(), gid: process.getgid!() });

  let pidfd: number;
  try {
    pidfd = native.peerPidfd(fd);
  } catch (e) {
    const err = e as NativeError;
    t.match(err.code, /^(ENOPROTOOPT|EINVAL)$/, 'unsupported kernel: callers fall back');
    return;
  }
  t.teardown(() => fs.closeSync(pidfd));
  t.equal(native.getCloexec(pidfd), true, 'pidfd is CLOEXEC');
  t.match(fs.readFileSync(`/proc/self/fdinfo/${pidfd}`, 'utf8'), new RegExp(`^Pid:\\s+${process.pid}$`, 'm'));
  native.pidfdSendSignal(pidfd, 0);
});

t.test('peerCred / peerPidfd on a non-socket throw ENOTSOCK', async (t) => {
  const fd = fs.openSync(tmpFile(), 'r');
  t.teardown(() => fs.closeSync(fd));
  const e = caught(() => native.peerCred(fd));
  t.equal(e.code, 'ENOTSOCK');
  t.equal(e.syscall, 'getsockopt(SO_PEERCRED)');
  t.equal(caught(() => native.peerPidfd(fd)).code, 'ENOTSOCK');
});

// python3 receiver: binds, reports ready, prints the datagram (hex) and sender pid.
const PY_RECV = `
import json, socket, struct, sys
addr = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(b'\\0' + addr[1:].encode() if addr.startswith('@') else addr.encode())
s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
s.settimeout(20)
print('ready', flush=True)
msg, anc, flags, _ = s.recvmsg(65536, socket.CMSG_SPACE(12))
pid = None
for level, typ, data in anc:
    if level == socket.SOL_SOCKET and typ == socket.SCM_CREDENTIALS:
        pid = struct.unpack('iII', data[:12])[0]
print(json.dumps({'hex': msg.hex(), 'pid': pid}), flush=True)
`;

for (const kind of ['path', 'abstract'] as const) {
  t.test(`sdNotify to a ${kind} socket delivers the exact bytes`, async (t) => {
    const addr =
      kind === 'path'
        ? path.join(tmp, 'notify.sock')
        : `@relockd-test-${process.pid}-${Math.random().toString(36).slice(2)}`;
    const rx = start('python3', ['-c', PY_RECV, addr]);
    t.equal(await rx.line(), 'ready');
    const message = 'READY=1\nSTATUS=héllo wörld\nMAINPID=' + process.pid;
    const before = fdCount();
    native.sdNotify(addr, message);
    // One unbound datagram socket serves every message: made at the first, kept afterwards.
    t.ok(fdCount() - before <= 1, 'at most the one notify socket is added');
    const kept = fdCount();
    t.throws(() => native.sdNotify(path.join(tmp, 'no-such.sock'), 'READY=1'), 'another datagram (to nowhere)');
    t.equal(fdCount(), kept, 'the next datagram opens no socket of its own');
    const got = JSON.parse(await rx.line()) as { hex: string; pid: number };
    t.equal(got.hex, Buffer.from(message, 'utf8').toString('hex'), 'exact bytes');
    t.equal(got.pid, process.pid, 'SCM_CREDENTIALS names us');
    await rx.exited;
  });
}

t.test('sdNotify errors', async (t) => {
  const before = fdCount();
  const e = caught(() => native.sdNotify(path.join(tmp, 'no-such.sock'), 'READY=1'));
  t.equal(e.code, 'ENOENT');
  t.equal(e.syscall, 'sendto');
  t.equal(caught(() => native.sdNotify(`@relockd-nobody-${process.pid}`, 'READY=1')).code, 'ECONNREFUSED');
  t.equal(fdCount(), before, 'no fd leaked on failure');
  t.throws(() => native.sdNotify('/' + 'x'.repeat(107), 'READY=1'), RangeError, 'path too long');
  t.throws(() => native.sdNotify('@' + 'x'.repeat(108), 'READY=1'), RangeError, 'abstract name too long');
  t.throws(() => native.sdNotify('', 'READY=1'), RangeError);
  // 107-byte path and 108-byte abstract name are the maxima: only the lookup fails.
  t.equal(caught(() => native.sdNotify('/' + 'x'.repeat(106), 'READY=1')).code, 'ENOENT');
  t.equal(caught(() => native.sdNotify('@' + 'x'.repeat(107), 'READY=1')).code, 'ECONNREFUSED');
});

// ---- execve -------------------------------------------------------------------------------

t.test('execve keeps the pid, the un-CLOEXEC fd and its OFD lock', async (t) => {
  const file = tmpFile();
  const c = startFixture([], ['execve', file]);
  const before = /^before pid=(\d+) keep=(\d+) drop=(\d+)$/.exec(await c.line());
  t.ok(before, 'fixture started');
  t.equal(Number(before![1]), c.pid);
  t.equal(await c.line(), `after pid=${c.pid} env=ok keep=yes drop=no`, 'same pid, env replaced, fds');
  t.notOk(otherCanLock(file, 'read'), 'lock still held by the new image');
  c.send('');
  t.equal(await c.line(), 'bye');
  t.same(await c.exited, { code: 0, signal: null });
  t.ok(otherCanLock(file, 'write'), 'released when the new image exits');
});

t.test('execve of a missing path throws ENOENT and the process carries on', async (t) => {
  const c = startFixture([], ['execve-missing']);
  t.same(JSON.parse(await c.line()), {
    name: 'Error',
    message: 'execve: No such file or directory',
    code: 'ENOENT',
    errno: os.constants.errno.ENOENT,
    syscall: 'execve',
  });
  t.equal(await c.line(), `continued pid=${c.pid}`);
  t.same(await c.exited, { code: 0, signal: null });
});

// ---- signals --------------------------------------------------------------------------------

t.test('sigmask holds SIGUSR1 pending until unblocked (permission-model child)', async (t) => {
  // Under --experimental-permission Node keeps SIGUSR1 blocked in every thread,
  // so the main thread's mask decides. (In plain Node the libuv pool threads do
  // not block it and a process-directed SIGUSR1 slips through them.)
  const c = startFixture(PERMISSION_FLAGS, ['sigmask']);
  t.equal(await c.line(), `blocked pid=${c.pid}`);
  c.send('pending');
  t.equal(await c.line(), 'pending []');
  process.kill(c.pid, 'SIGUSR1');
  await new Promise((r) => setTimeout(r, 300));
  c.send('pending');
  t.equal(await c.line(), `pending [${SIGUSR1}]`, 'pending, not delivered');
  c.send('unblock');
  t.equal(await c.line(), 'unblocking');
  t.equal(await c.line(), 'got SIGUSR1', 'listener ran after unblock');
  t.same(await c.exited, { code: 0, signal: null });
});

t.test('sigmask changes only the calling thread', async (t) => {
  const sigBlk = (tid: number) =>
    BigInt('0x' + /^SigBlk:\s+([0-9a-f]+)$/m.exec(fs.readFileSync(`/proc/self/task/${tid}/status`, 'utf8'))![1]);
  const bit = 1n << BigInt(SIGUSR2 - 1);
  const others = fs.readdirSync('/proc/self/task').map(Number).filter((tid) => tid !== process.pid);
  const othersBefore = others.map(sigBlk);
  t.equal(sigBlk(process.pid) & bit, 0n);
  native.sigmask('block', [SIGUSR2]);
  try {
    t.equal(sigBlk(process.pid) & bit, bit, 'main thread blocks SIGUSR2');
    t.same(others.map(sigBlk), othersBefore, 'other threads unchanged');
    t.same(native.sigpending(), []);
  } finally {
    native.sigmask('unblock', [SIGUSR2]);
  }
  t.equal(sigBlk(process.pid) & bit, 0n, 'unblocked again');
  native.sigmask('block', []); // empty set is a no-op
});

t.test('relockd_exec_hold.so keeps signals blocked through Node\'s start-up until released', async (t) => {
  // What a re-exec'd image is started with (src/daemon/execSignals.ts): the
  // library first in LD_PRELOAD, what was there before in RELOCKD_EXEC_HOLD_PRELOAD.
  const lib = path.join(path.dirname(native.addonPath), 'relockd_exec_hold.so');
  const before = spawnSync('sh', ['-c', 'ls /lib/x86_64-linux-gnu/libdl.so.2 /usr/lib/x86_64-linux-gnu/libdl.so.2 2>/dev/null | head -1']).stdout.toString().trim();
  t.ok(before, 'a harmless library to stand for an LD_PRELOAD that was there before');
  const SIGTERM = os.constants.signals.SIGTERM;
  const c = start('/usr/bin/env', ['-u', 'NODE_OPTIONS', `LD_PRELOAD=${lib} ${before}`, `RELOCKD_EXEC_HOLD=${SIGUSR2},${SIGTERM}`, `RELOCKD_EXEC_HOLD_PRELOAD=${before}`, process.execPath, FIXTURE, 'exec-hold']);
  t.equal(await c.line(), `env ${JSON.stringify([before, null, null])}`, 'the library took itself and its variables out of the environment (children do not inherit it)');
  t.equal(await c.line(), `pending ${JSON.stringify([SIGUSR2, SIGTERM])}`, 'SIGUSR2 and SIGTERM (no handlers) stayed pending instead of ending the process');
  t.equal(await c.line(), 'child SigBlk:\t0000000000000000', 'a child started during the hold blocks nothing (the hold is not inherited)');
  t.equal(await c.line(), 'released true', 'execHoldRelease found the library');
  t.equal(await c.line(), `drained [${SIGUSR2}]`, 'sigdrain took SIGUSR2 out without acting on it');
  t.equal(await c.line(), 'got SIGTERM', 'unblocked: the pending SIGTERM reached the handler installed meanwhile');
  t.same(await c.exited, { code: 0, signal: null });
  t.equal(native.execHoldRelease(), false, 'without the library (this process) execHoldRelease says so');
  t.same(native.sigdrain([SIGUSR2]), [], 'nothing pending: sigdrain takes nothing');
});

t.test('signalCapture notes signals; signalCaptureEnd makes them pending or sends them again', async (t) => {
  let got = 0;
  const onUsr2 = () => got++;
  process.on('SIGUSR2', onUsr2);
  try {
    // 'raise' (an exec that failed): the previous handler (libuv's) back, the signal sent again.
    native.signalCapture([SIGUSR2]);
    process.kill(process.pid, 'SIGUSR2');
    await new Promise((r) => setTimeout(r, 100));
    t.equal(got, 0, 'while captured, the JS listener does not run');
    t.same(native.signalCaptureEnd('raise'), [SIGUSR2], 'the noted signal is returned');
    t.ok(await waitForCount(() => got, 1), 'and reaches the JS listener once sent again');
    // 'pending' (just before execve): made pending on this thread, which blocks it.
    native.sigmask('block', [SIGUSR2]);
    native.signalCapture([SIGUSR2]);
    process.kill(process.pid, 'SIGUSR2'); // blocked here: another thread takes it, asynchronously
    await new Promise((r) => setTimeout(r, 100));
    t.same(native.signalCaptureEnd('pending'), [SIGUSR2], 'noted');
    t.ok(native.sigpending().includes(SIGUSR2), 'pending again (as it would cross execve)');
    t.same(native.signalCaptureEnd('raise'), [], 'handlers restored; nothing noted since');
    t.same(native.sigdrain([SIGUSR2]), [SIGUSR2], 'taken out');
    native.sigmask('unblock', [SIGUSR2]);
    t.equal(got, 1, 'the listener ran only for the first');
    t.throws(() => native.signalCaptureEnd('later' as never), TypeError);
  } finally {
    process.removeListener('SIGUSR2', onUsr2);
  }
});

async function waitForCount(get: () => number, n: number, ms = 3000): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (get() >= n) return true;
    await new Promise((r) => setTimeout(r, 10));
  }
  return get() >= n;
}

// ---- pidfds -----------------------------------------------------------------------------------

t.test('pidfdOpen / pidfdSendSignal', async (t) => {
  const child = spawn('sleep', ['1000'], { stdio: 'ignore' });
  children.add(child);
  const exited = new Promise<NodeJS.Signals | null>((r) => child.on('exit', (_c, s) => r(s)));
  const pidfd = native.pidfdOpen(child.pid!);
  t.teardown(() => fs.closeSync(pidfd));
  t.equal(native.getCloexec(pidfd), true, 'CLOEXEC');
  t.match(fs.readFileSync(`/proc/self/fdinfo/${pidfd}`, 'utf8'), new RegExp(`^Pid:\\s+${child.pid}$`, 'm'));
  native.pidfdSendSignal(pidfd, 0);
  native.pidfdSendSignal(pidfd, os.constants.signals.SIGTERM);
  t.equal(await exited, 'SIGTERM');
  const e = caught(() => native.pidfdSendSignal(pidfd, 0));
  t.equal(e.code, 'ESRCH');
  t.equal(e.syscall, 'pidfd_send_signal');
  t.equal(e.message, 'pidfd_send_signal: No such process');
  // The pid is gone now; pidfd_open of it fails the same way.
  t.equal(caught(() => native.pidfdOpen(child.pid!)).code, 'ESRCH');
});

t.test('pidfdSendSignal on a non-pidfd throws EBADF', async (t) => {
  const fd = fs.openSync(tmpFile(), 'r');
  t.teardown(() => fs.closeSync(fd));
  t.equal(caught(() => native.pidfdSendSignal(fd, 0)).code, 'EBADF');
});

// ---- lockFile / releaseFile ------------------------------------------------------------------

t.test('lockFile create: new 0600 file, write-locked, CLOEXEC; release unlinks', async (t) => {
  const file = path.join(tmp, 'created.lock');
  const res = await native.lockFileP(file, { shared: false, create: true });
  const st = fs.fstatSync(res.fd);
  t.equal(res.created, true);
  t.equal(st.mode & 0o777, 0o600, 'mode 0600');
  t.equal(res.dev, st.dev);
  t.equal(res.ino, st.ino);
  t.equal(fs.statSync(file).ino, res.ino, 'the path names the locked file');
  t.equal(native.getCloexec(res.fd), true);
  t.notOk(otherCanLock(file, 'read'), 'write-locked');

  const rel = await native.releaseFileP(res.fd, { unlinkPath: file, onlyIfExclusive: true });
  t.same(rel, { unlinked: true });
  t.notOk(fs.existsSync(file), 'unlinked');
  t.notOk(fdIsOpen(res.fd), 'closed');
});

t.test('lockFile shared: readers coexist; release unlinks only when exclusive', async (t) => {
  const file = path.join(tmp, 'shared.lock');
  const a = await native.lockFileP(file, { shared: true, create: true });
  const b = await native.lockFileP(file, { shared: true, create: true });
  t.equal(a.created, true);
  t.equal(b.created, false, 'second opener did not create');
  t.equal(b.ino, a.ino);
  t.ok(otherCanLock(file, 'read'), 'another reader is fine');
  t.notOk(otherCanLock(file, 'write'), 'a writer is not');
  t.ok(isBusy((await rejected(native.lockFileP(file, { shared: false, create: true }))).code));

  // Our own second fd still holds a read lock, so the upgrade fails.
  t.same(await native.releaseFileP(a.fd, { unlinkPath: file, onlyIfExclusive: true }), { unlinked: false });
  t.ok(fs.existsSync(file));
  t.notOk(fdIsOpen(a.fd));
  t.same(await native.releaseFileP(b.fd, { unlinkPath: file, onlyIfExclusive: true }), { unlinked: true });
  t.notOk(fs.existsSync(file));
});

t.test('lockFile create through a dangling symlink creates the target (as virtlockd)', async (t) => {
  const target = path.join(tmp, 'symlink-target.lock');
  const link = path.join(tmp, 'symlink.lock');
  fs.symlinkSync(target, link);
  const res = await native.lockFileP(link, { shared: false, create: true });
  t.equal(res.created, false, 'O_EXCL refuses symlinks, so creation is not attributed');
  t.equal(fs.statSync(target).ino, res.ino);
  t.notOk(otherCanLock(target, 'write'));
  t.same(await native.releaseFileP(res.fd, { unlinkPath: link, onlyIfExclusive: true }), { unlinked: true });
  t.notOk(fs.existsSync(link), 'the link is what gets unlinked');
  t.ok(fs.existsSync(target));
});

t.test('lockFile without create on a missing file: ENOENT at stage open', async (t) => {
  const before = fdCount();
  const e = await rejected(native.lockFileP(path.join(tmp, 'missing'), { shared: false, create: false }));
  t.type(e, Error);
  t.equal(e.code, 'ENOENT');
  t.equal(e.stage, 'open');
  t.equal(e.syscall, 'open');
  t.equal(e.message, 'open: No such file or directory');
  t.equal(fdCount(), before);
  t.equal((await rejected(native.lockFileP(path.join(tmp, 'no/dir'), { shared: false, create: true }))).code, 'ENOENT');
  const d = await rejected(native.lockFileP(tmp, { shared: false, create: false }));
  t.equal(d.code, 'EISDIR');
  t.equal(d.stage, 'open');
});

t.test('lockFile on a file locked by another process: busy at stage lock, no fd leak', async (t) => {
  const file = tmpFile();
  const h = await holdClassic(file, 'write');
  t.teardown(h.release);
  for (const opts of [
    { shared: false, create: false },
    { shared: true, create: false },
    { shared: false, create: true },
  ]) {
    const before = fdCount();
    const e = await rejected(native.lockFileP(file, opts));
    t.ok(isBusy(e.code), `code ${e.code}`);
    t.equal(e.stage, 'lock');
    t.equal(e.syscall, 'fcntl(F_OFD_SETLK)');
    t.equal(fdCount(), before, 'fd closed after the failure');
  }
});

t.test('lockFile without create locks an existing file; callback form', async (t) => {
  const file = tmpFile('keep me');
  const res = await new Promise<native.LockFileResult>((resolve, reject) =>
    native.lockFile(file, { shared: false, create: false }, (err, r) => (err ? reject(err) : resolve(r!))),
  );
  t.equal(res.created, false);
  t.notOk(otherCanLock(file, 'read'));
  const rel = await new Promise<native.ReleaseFileResult>((resolve, reject) =>
    native.releaseFile(res.fd, { unlinkPath: null, onlyIfExclusive: false }, (err, r) =>
      err ? reject(err) : resolve(r!),
    ),
  );
  t.same(rel, { unlinked: false });
  t.equal(fs.readFileSync(file, 'utf8'), 'keep me', 'not unlinked');
  t.ok(otherCanLock(file, 'write'), 'closing released the lock');
});

t.test('releaseFile onlyIfExclusive with another process reading: kept, but closed', async (t) => {
  const file = path.join(tmp, 'contended.lock');
  const res = await native.lockFileP(file, { shared: true, create: true });
  const h = await holdClassic(file, 'read');
  const rel = await native.releaseFileP(res.fd, { unlinkPath: file, onlyIfExclusive: true });
  t.same(rel, { unlinked: false });
  t.ok(fs.existsSync(file));
  t.notOk(fdIsOpen(res.fd), 'fd closed');
  await h.release();
  t.ok(otherCanLock(file, 'write'), 'our read lock went with the close');
});

t.test('releaseFile without onlyIfExclusive unlinks even while others read', async (t) => {
  const file = path.join(tmp, 'forced.lock');
  const res = await native.lockFileP(file, { shared: true, create: true });
  const h = await holdClassic(file, 'read');
  t.teardown(h.release);
  t.same(await native.releaseFileP(res.fd, { unlinkPath: file, onlyIfExclusive: false }), { unlinked: true });
  t.notOk(fs.existsSync(file));
});

t.test('releaseFile does not unlink a file that replaced ours, nor a vanished one', async (t) => {
  const file = path.join(tmp, 'replaced.lock');
  const res = await native.lockFileP(file, { shared: false, create: true });
  fs.renameSync(file, file + '.old');
  fs.writeFileSync(file, 'somebody else');
  t.same(await native.releaseFileP(res.fd, { unlinkPath: file, onlyIfExclusive: true }), { unlinked: false });
  t.equal(fs.readFileSync(file, 'utf8'), 'somebody else');
  t.notOk(fdIsOpen(res.fd));

  const gone = await native.lockFileP(file, { shared: false, create: false });
  fs.unlinkSync(file);
  t.same(await native.releaseFileP(gone.fd, { unlinkPath: file, onlyIfExclusive: false }), { unlinked: false });
  t.notOk(fdIsOpen(gone.fd));
});

t.test('releaseFile reports unlink-step errors in the result and still closes', async (t) => {
  const file = tmpFile();
  const res = await native.lockFileP(file, { shared: false, create: false });
  const rel = await native.releaseFileP(res.fd, { unlinkPath: path.join(file, 'x'), onlyIfExclusive: true });
  t.same(rel, { unlinked: false, unlinkError: 'ENOTDIR' });
  t.notOk(fdIsOpen(res.fd));
  t.ok(otherCanLock(file, 'write'));
});

t.test('releaseFile on a bad fd: EBADF at stage close', async (t) => {
  const fd = fs.openSync(tmpFile(), 'r');
  fs.closeSync(fd);
  const e = await rejected(native.releaseFileP(fd, { unlinkPath: null, onlyIfExclusive: false }));
  t.equal(e.code, 'EBADF');
  t.equal(e.stage, 'close');
  t.equal(e.syscall, 'close');
});

// python3: create, lock, unlink, close in a tight loop for argv[2] seconds.
const PY_HAMMER = `
import fcntl, os, sys, time
path, end = sys.argv[1], time.time() + float(sys.argv[2])
print('go', flush=True)
while time.time() < end:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
        os.unlink(path)
    except OSError:
        pass
    os.close(fd)
`;

t.test('lock/unlink races: a successful lockFile always names the file on disk', async (t) => {
  // Another process keeps locking and unlinking the path. Without the
  // stat/fstat re-check, lockFile sometimes returns a lock on an inode that
  // was unlinked between its open and its lock (measured: ~40 in 2.5 s).
  const file = path.join(tmp, 'race.lock');
  const before = fdCount();
  const hammer = start('python3', ['-c', PY_HAMMER, file, '1.5']);
  t.equal(await hammer.line(), 'go');
  let wins = 0;
  let busy = 0;
  let stale = 0;
  const t0 = Date.now();
  while (Date.now() - t0 < 1200) {
    let res: native.LockFileResult;
    try {
      res = await native.lockFileP(file, { shared: false, create: true });
    } catch (e) {
      if (!isBusy((e as NativeError).code)) throw e;
      busy++;
      continue;
    }
    wins++;
    const st = fs.statSync(file, { throwIfNoEntry: false });
    if (!st || st.ino !== res.ino || st.dev !== res.dev) stale++;
    await native.releaseFileP(res.fd, { unlinkPath: null, onlyIfExclusive: false });
  }
  await hammer.exited;
  t.ok(wins > 0 && busy > 0, `${wins} acquisitions, ${busy} busy`);
  t.equal(stale, 0, 'never a lock on an unlinked or replaced file');
  t.equal(fdCount(), before, 'no fd leaked');
});

// ---- argument checks ---------------------------------------------------------------------------

t.test('argument checks throw TypeError / RangeError', async (t) => {
  const noop = () => {};
  const cases: [string, () => unknown, ErrorConstructor][] = [
    ['ofdLock fd string', () => native.ofdLock('3' as never, 'write', 0, 1), TypeError],
    ['ofdLock no args', () => (native.ofdLock as () => void)(), TypeError],
    ['ofdLock bad type', () => native.ofdLock(0, 'exclusive' as never, 0, 1), TypeError],
    ['ofdLock start string', () => native.ofdLock(0, 'read', '0' as never, 1), TypeError],
    ['ofdLock negative fd', () => native.ofdLock(-1, 'read', 0, 1), RangeError],
    ['ofdLock fractional len', () => native.ofdLock(0, 'read', 0, 1.5), RangeError],
    ['ofdLock negative start', () => native.ofdLock(0, 'read', -1, 1), RangeError],
    ['ofdLock huge start', () => native.ofdLock(0, 'read', 2 ** 53, 1), RangeError],
    ['ofdLock NaN len', () => native.ofdLock(0, 'read', 0, NaN), RangeError],
    ['ofdUnlock len bigint', () => native.ofdUnlock(0, 0, 1n as never), TypeError],
    ['ofdGetLock type number', () => native.ofdGetLock(0, 1 as never, 0, 1), TypeError],
    ['posixLock fd null', () => native.posixLock(null as never, 'read', 0, 1), TypeError],
    ['posixUnlock fd Infinity', () => native.posixUnlock(Infinity, 0, 1), RangeError],
    ['posixGetLock type', () => native.posixGetLock(0, 'READ' as never, 0, 1), TypeError],
    ['getCloexec fd too big', () => native.getCloexec(2 ** 31), RangeError],
    ['setCloexec on number', () => native.setCloexec(0, 1 as never), TypeError],
    ['peerCred fd string', () => native.peerCred('x' as never), TypeError],
    ['peerPidfd fd object', () => native.peerPidfd({} as never), TypeError],
    ['execve path number', () => native.execve(1 as never, ['x'], []), TypeError],
    ['execve argv not array', () => native.execve('/bin/true', 'x' as never, []), TypeError],
    ['execve argv number item', () => native.execve('/bin/true', ['x', 1 as never], []), TypeError],
    ['execve env NUL', () => native.execve('/bin/true', ['x'], ['A=\0']), TypeError],
    ['execve path NUL', () => native.execve('/bin/true\0x', ['x'], []), TypeError],
    ['execve argv empty', () => native.execve('/bin/true', [], []), RangeError],
    ['sdNotify path number', () => native.sdNotify(1 as never, 'READY=1'), TypeError],
    ['sdNotify message missing', () => (native.sdNotify as (p: string) => void)('/x'), TypeError],
    ['sigmask how', () => native.sigmask('set' as never, [SIGUSR1]), TypeError],
    ['sigmask signals not array', () => native.sigmask('block', SIGUSR1 as never), TypeError],
    ['sigmask signal string', () => native.sigmask('block', ['SIGUSR1' as never]), TypeError],
    ['sigdrain signals not array', () => native.sigdrain(SIGUSR1 as never), TypeError],
    ['sigdrain signal out of range', () => native.sigdrain([0]), RangeError],
    ['sigmask signal 0', () => native.sigmask('block', [0]), RangeError],
    ['sigmask signal 32 (glibc internal)', () => native.sigmask('block', [32]), RangeError],
    ['sigmask signal 65', () => native.sigmask('block', [65]), RangeError],
    ['pidfdOpen pid 0', () => native.pidfdOpen(0), RangeError],
    ['pidfdOpen pid string', () => native.pidfdOpen('1' as never), TypeError],
    ['pidfdSendSignal sig -1', () => native.pidfdSendSignal(0, -1), RangeError],
    ['pidfdSendSignal sig string', () => native.pidfdSendSignal(0, 'SIGTERM' as never), TypeError],
    ['lockFile path number', () => native.lockFile(1 as never, { shared: false, create: false }, noop), TypeError],
    ['lockFile empty path', () => native.lockFile('', { shared: false, create: false }, noop), RangeError],
    ['lockFile opts missing', () => native.lockFile('/x', undefined as never, noop), TypeError],
    ['lockFile opts.shared missing', () => native.lockFile('/x', { create: false } as never, noop), TypeError],
    ['lockFile opts.create string', () => native.lockFile('/x', { shared: false, create: 'yes' } as never, noop), TypeError],
    ['lockFile cb missing', () => native.lockFile('/x', { shared: false, create: false }, undefined as never), TypeError],
    ['releaseFile fd string', () => native.releaseFile('1' as never, { unlinkPath: null, onlyIfExclusive: false }, noop), TypeError],
    ['releaseFile unlinkPath undefined', () => native.releaseFile(1, { onlyIfExclusive: false } as never, noop), TypeError],
    ['releaseFile unlinkPath number', () => native.releaseFile(1, { unlinkPath: 1, onlyIfExclusive: false } as never, noop), TypeError],
    ['releaseFile onlyIfExclusive missing', () => native.releaseFile(1, { unlinkPath: null } as never, noop), TypeError],
    ['releaseFile cb not function', () => native.releaseFile(1, { unlinkPath: null, onlyIfExclusive: false }, {} as never), TypeError],
  ];
  for (const [name, fn, cls] of cases) t.throws(fn, cls, name);
  // Promise forms reject instead of throwing.
  t.type(await rejected(native.lockFileP(1 as never, { shared: false, create: false })), TypeError);
  t.type(await rejected(native.releaseFileP(-1, { unlinkPath: null, onlyIfExclusive: false })), RangeError);
});

t.test('strerror', async (t) => {
  t.equal(native.strerror(os.constants.errno.EAGAIN), 'Resource temporarily unavailable');
  t.equal(native.strerror(os.constants.errno.ENOENT), 'No such file or directory');
  t.equal(native.strerror(0), 'Success');
  t.equal(native.strerror(100000), 'Unknown error 100000');
  t.throws(() => native.strerror(-1), RangeError);
  t.throws(() => native.strerror('1' as never), TypeError);
});

t.test('addonPath points at the built addon', async (t) => {
  t.match(native.addonPath, /build\/Release\/relockd_native\.node$/);
  t.ok(fs.existsSync(native.addonPath));
});

// ---- added with inline storage and re-exec: the synchronous and batched calls ----

t.test('lockFileSync / releaseFileSync: the same sequences on the calling thread', async (t) => {
  const file = path.join(tmp, 'sync.lock');
  const res = native.lockFileSync(file, { shared: false, create: true });
  t.equal(res.created, true);
  t.equal(fs.statSync(file).ino, res.ino, 'the path names the locked file');
  t.equal(native.getCloexec(res.fd), true);
  t.notOk(otherCanLock(file, 'read'), 'write-locked, seen from another process');
  const busy = (() => {
    try {
      native.lockFileSync(file, { shared: false, create: true });
      return null;
    } catch (e) {
      return e as NativeError;
    }
  })();
  t.ok(busy, 'a second write lock from this process (another fd) conflicts');
  t.equal(busy?.code, 'EAGAIN');
  t.equal(busy?.stage, 'lock');
  try {
    native.lockFileSync(path.join(tmp, 'nope', 'x'), { shared: false, create: false });
    t.fail('expected ENOENT');
  } catch (e) {
    t.match(e, { code: 'ENOENT', stage: 'open', syscall: 'open' });
  }
  const rel = native.releaseFileSync(res.fd, { unlinkPath: file, onlyIfExclusive: true });
  t.same(rel, { unlinked: true });
  t.notOk(fs.existsSync(file), 'unlinked');
  t.notOk(fdIsOpen(res.fd), 'closed');
  t.throws(() => native.releaseFileSync(res.fd, { unlinkPath: null, onlyIfExclusive: false }), { code: 'EBADF', stage: 'close' });
});

t.test('lockFileSync on local storage: create tries O_EXCL first; existing files and dangling symlinks still work', async (t) => {
  const file = path.join(tmp, 'inline-existing.lock');
  fs.writeFileSync(file, '');
  const ino = fs.statSync(file).ino;
  const a = native.lockFileSync(file, { shared: false, create: true });
  t.equal(a.created, false, 'an existing file is opened, not created');
  t.equal(a.ino, ino);
  t.notOk(otherCanLock(file, 'read'), 'locked, seen from another process');
  t.same(native.releaseFileSync(a.fd, { unlinkPath: file, onlyIfExclusive: false }, { dev: a.dev, ino: a.ino }), { unlinked: true }, 'unlinked with the identity given (no fstat)');
  t.notOk(fs.existsSync(file));
  const target = path.join(tmp, 'inline-target.lock');
  const link = path.join(tmp, 'inline-link.lock');
  fs.symlinkSync(target, link);
  const b = native.lockFileSync(link, { shared: false, create: true });
  t.ok(fs.existsSync(target), 'a dangling symlink: its target is created (as virtlockd does)');
  t.equal(fs.statSync(target).ino, b.ino);
  t.same(native.releaseFileSync(b.fd, { unlinkPath: null, onlyIfExclusive: false }), { unlinked: false });
  const c = native.lockFileSync(path.join(tmp, 'inline-new.lock'), { shared: true, create: true });
  t.equal(c.created, true);
  t.equal(c.attempts, undefined, 'one attempt: no retry reported');
  const other = path.join(tmp, 'inline-other.lock');
  fs.writeFileSync(other, '');
  t.same(
    native.releaseFileSync(c.fd, { unlinkPath: path.join(tmp, 'inline-new.lock'), onlyIfExclusive: true }, { dev: fs.statSync(other).dev, ino: fs.statSync(other).ino }),
    { unlinked: false },
    'an identity that is not the path\'s file: nothing unlinked',
  );
  t.ok(fs.existsSync(path.join(tmp, 'inline-new.lock')));
});

t.test('dup: a close-on-exec duplicate of the same open file (the lock is shared)', async (t) => {
  const file = tmpFile();
  const fd = fs.openSync(file, 'r+');
  native.ofdLock(fd, 'write', 0, 1);
  const d = native.dup(fd);
  t.not(d, fd);
  t.ok(d >= 3);
  t.equal(native.getCloexec(d), true, 'CLOEXEC on the duplicate');
  fs.closeSync(fd);
  t.notOk(otherCanLock(file, 'write'), 'the OFD lock lives on through the duplicate');
  fs.closeSync(d);
  t.ok(otherCanLock(file, 'write'), 'and goes with the last fd');
  t.throws(() => native.dup(d), { code: 'EBADF' });
});

t.test('fsync works where Node refuses it under the permission model', async (t) => {
  const fd = fs.openSync(tmpFile('data'), 'r+');
  t.doesNotThrow(() => native.fsync(fd));
  fs.closeSync(fd);
  t.throws(() => native.fsync(fd), { code: 'EBADF' });
});

t.test('fdInfo: dev/ino/mode of many fds in one call, setting or clearing FD_CLOEXEC', async (t) => {
  const a = fs.openSync(tmpFile(), 'r');
  const b = fs.openSync(tmpFile(), 'r');
  const closed = fs.openSync(tmpFile(), 'r');
  fs.closeSync(closed);
  const info = native.fdInfo(Int32Array.from([a, b, closed]), 0);
  t.equal(info.length, 9);
  const st = fs.fstatSync(a);
  t.same([info[0], info[1]], [st.dev, st.ino], 'dev and ino');
  t.equal(info[2]! & 0o170000, 0o100000, 'a regular file');
  t.equal(info[8], -9, 'a closed fd reports -EBADF');
  t.equal(native.getCloexec(a), false, 'cleared');
  t.equal(native.getCloexec(b), false);
  native.fdInfo(Int32Array.from([a, b]), 1);
  t.equal(native.getCloexec(a), true, 'set again');
  native.fdInfo(Int32Array.from([a]), -1);
  t.equal(native.getCloexec(a), true, '-1 leaves it alone');
  t.throws(() => native.fdInfo([a] as unknown as Int32Array, 0), TypeError);
  t.throws(() => native.fdInfo(Int32Array.from([a]), 2 as 1), RangeError);
  fs.closeSync(a);
  fs.closeSync(b);
});

t.test('fdInfo: FD_CLOEXEC set on runs of consecutive fds at once, and on no fd between them', async (t) => {
  // Eight consecutive fds: fdInfo gets the first three, a closed one, the sixth and eighth (runs [0..3], [5], [7]).
  // Open until the last eight are consecutive (the lowest free numbers fill the holes other tests left first).
  const opened: number[] = [];
  const last8 = () => opened.slice(-8);
  while (opened.length < 8 || !last8().every((fd, i, a) => i === 0 || fd === a[i - 1]! + 1)) opened.push(fs.openSync(tmpFile(), 'r'));
  const fds = last8();
  for (const fd of opened.slice(0, -8)) fs.closeSync(fd);
  t.ok(fds.every((fd, i) => i === 0 || fd === fds[i - 1]! + 1), `consecutive fds ${fds[0]}..${fds[7]}`);
  fs.closeSync(fds[3]!);
  native.fdInfo(Int32Array.from(fds.filter((_, i) => i !== 3)), 0);
  const asked = [0, 1, 2, 3, 5, 7].map((i) => fds[i]!);
  const info = native.fdInfo(Int32Array.from(asked), 1);
  t.equal(info[3 * 3 + 2], -9, 'the closed fd in the run: -EBADF');
  t.same(
    fds.map((fd, i) => (i === 3 ? 'closed' : native.getCloexec(fd))),
    [true, true, true, 'closed', false, true, false, true],
    'set on the asked fds; fds 4 and 6, between runs, left as they were',
  );
  // The same on the background thread.
  native.fdInfo(Int32Array.from(fds.filter((_, i) => i !== 3)), 0);
  native.fdInfoStart(Int32Array.from(asked), 1);
  native.fdInfoTake(Int32Array.from(asked), 1);
  t.same(fds.map((fd, i) => (i === 3 ? 'closed' : native.getCloexec(fd))), [true, true, true, 'closed', false, true, false, true], 'fdInfoStart: the same');
  for (const [i, fd] of fds.entries()) if (i !== 3) fs.closeSync(fd);
});

t.test('fdInfoStart/fdInfoTake: fdInfo on a background thread, the fds it did not have done inline', async (t) => {
  const a = fs.openSync(tmpFile(), 'r');
  const b = fs.openSync(tmpFile(), 'r');
  const c = fs.openSync(tmpFile(), 'r');
  const closed = fs.openSync(tmpFile(), 'r');
  fs.closeSync(closed);
  native.fdInfo(Int32Array.from([a, b, c]), 0);
  native.fdInfoStart(Int32Array.from([a, closed, b]), 1);
  // c was not in the job: done inline, in the order asked.
  const got = native.fdInfoTake(Int32Array.from([c, b, a, closed]), 1);
  native.fdInfo(Int32Array.from([a, b, c]), 0);
  const want = native.fdInfo(Int32Array.from([c, b, a, closed]), 1);
  t.same([...got], [...want], 'the same answers as fdInfo, fd by fd');
  t.equal(got[11], -9, 'the closed fd: -EBADF');
  for (const fd of [a, b, c]) t.equal(native.getCloexec(fd), true, `FD_CLOEXEC set on ${fd}`);

  // A job made with another cloexec is not used: the take does its own.
  native.fdInfo(Int32Array.from([a]), 0);
  native.fdInfoStart(Int32Array.from([a]), -1);
  native.fdInfoTake(Int32Array.from([a]), 1);
  t.equal(native.getCloexec(a), true, 'a job with cloexec -1 does not stand in for 1');
  // No job: plain fdInfo. A second start drops the first job.
  native.fdInfo(Int32Array.from([a, b]), 0);
  t.same([...native.fdInfoTake(Int32Array.from([a]), -1)].slice(0, 2), [...native.fdInfo(Int32Array.from([a]), -1)].slice(0, 2));
  native.fdInfoStart(Int32Array.from([a]), 1);
  native.fdInfoStart(Int32Array.from([b]), 1);
  native.fdInfoTake(new Int32Array(0), 1);
  t.equal(native.getCloexec(b), true, 'the second job ran');
  t.throws(() => native.fdInfoStart([a] as unknown as Int32Array, 1), TypeError);
  t.throws(() => native.fdInfoStart(Int32Array.from([a]), 2 as 1), RangeError);
  t.throws(() => native.fdInfoTake(Int32Array.from([a]), -2 as -1), RangeError);
  for (const fd of [a, b, c]) fs.closeSync(fd);
});

t.test('peek reads: bytes stay queued in the socket until consumed; pause, end of stream, writes unaffected', async (t) => {
  const { client, conn, fd } = await acceptedPair(t, 'peek.sock', { pauseOnConnect: true });
  const until = async (cond: () => boolean) => {
    for (let i = 0; i < 200 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
  };

  t.same(native.recvPeek(fd), Buffer.alloc(0), 'nothing queued: an empty buffer');
  client.write('hello world');
  await until(() => (native.recvPeek(fd)?.length ?? 0) === 11);
  t.equal(native.recvPeek(fd)?.toString(), 'hello world', 'peeked');
  t.equal(native.recvPeek(fd, 5)?.toString(), 'hello', 'at most max bytes');
  t.equal(native.recvPeek(fd)?.toString(), 'hello world', 'a peek takes nothing out');

  const seen: Array<string | null> = [];
  let consumeNext = 6;
  const r = native.peekReader(fd, (err, bytes) => {
    t.equal(err, null);
    seen.push(bytes === null ? null : bytes.toString());
    if (bytes === null) return;
    if (consumeNext > 0) {
      const n = Math.min(consumeNext, bytes.length);
      t.equal(r.consume(n), n);
      consumeNext = consumeNext === 6 ? 0 : consumeNext; // "hello " only, then pause
    } else r.pause(); // neither consumed nor paused: called again at once
  });
  t.teardown(() => r.close());
  t.same(seen, [], 'created paused');
  r.resume();
  await until(() => seen.length >= 2);
  t.same(seen.slice(0, 2), ['hello world', 'world'], 'level-triggered: what is not consumed is shown again');
  t.equal(native.recvPeek(fd)?.toString(), 'world', 'paused with bytes queued: they stay');
  await new Promise((r2) => setTimeout(r2, 50));
  t.equal(seen.length, 2, 'no callback while paused');
  t.equal(native.recvDiscard(fd, 5), 5, 'recvDiscard takes them out');
  t.same(native.recvPeek(fd), Buffer.alloc(0), 'queue empty');

  // Writes go through Node's own handle meanwhile.
  const got = new Promise<string>((resolve) => client.once('data', (b) => resolve(b.toString())));
  conn.write('pong');
  t.equal(await got, 'pong', 'the socket still writes');

  consumeNext = 100;
  r.resume();
  client.end();
  await until(() => seen.at(-1) === null);
  t.equal(seen.at(-1), null, 'end of stream: null');
  t.equal(native.recvPeek(fd), null, 'recvPeek says end of stream too');
  r.close();
  r.close();
  t.pass('close is idempotent');
  t.throws(() => r.consume(1), /closed/, 'consume after close throws');
});
