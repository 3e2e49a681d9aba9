// Tests for test/lib/virtlockd.ts, the launcher of the REAL virtlockd:
// it starts, serves PING and the lock program, holds real fcntl locks that
// another process can see, survives a SIGUSR1 re-exec with the same pid,
// stops without leftovers, never touches the host's /run, and does not leak
// when the process that started it dies.

import t from 'tap';
import { execFile, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  KEEPALIVE_PING,
  KEEPALIVE_PONG,
  VIRTLOCKD_PATH,
  startVirtlockd,
  virtlockdAvailable,
  virtlockdUnavailableReason,
  visibleTmpDir,
} from './lib/virtlockd.js';
import type { StartedDaemon } from './lib/virtlockd.js';

// ------------------------------------------------------------ child mode
// Re-run of this very file as a separate process that starts a virtlockd
// and then dies: used to prove that no virtlockd outlives its test process.
const childMode = process.env.VIRTLOCKD_HARNESS_CHILD;
if (childMode) {
  const d = await startVirtlockd();
  process.stdout.write(`VIRTLOCKD_PID=${d.pid} DIR=${d.dir}\n`, () => {
    if (childMode === 'sigkill') process.kill(process.pid, 'SIGKILL'); // pdeathsig path
    else process.exit(0); // 'exit' hook path (daemon deliberately not stopped)
  });
  await new Promise(() => {});
}

// ------------------------------------------------------------ tiny protocol helpers

const LOCK_PROG = 0x0ea7beef;
const KEEP_PROG = 0x6b656570;
const enum Type {
  CALL = 0,
  REPLY = 1,
  MESSAGE = 2,
}
const PROC_REGISTER = 1;
const PROC_ACQUIRE = 6;
const PROC_RELEASE = 7;

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
}
function xdrString(s: string): Buffer {
  const bytes = Buffer.from(s, 'utf8');
  const pad = (4 - (bytes.length % 4)) % 4;
  return Buffer.concat([u32(bytes.length), bytes, Buffer.alloc(pad)]);
}
function uuidBytes(uuid: string): Buffer {
  return Buffer.from(uuid.replace(/-/g, ''), 'hex');
}
/** length word (counts itself) + 24-byte header + payload */
function frame(prog: number, proc: number, type: number, serial: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(28);
  h.writeUInt32BE(28 + payload.length, 0);
  h.writeUInt32BE(prog, 4);
  h.writeUInt32BE(1, 8); // version
  h.writeUInt32BE(proc, 12);
  h.writeUInt32BE(type, 16);
  h.writeUInt32BE(serial, 20);
  h.writeUInt32BE(0, 24); // status OK
  return Buffer.concat([h, payload]);
}
function registerArgs(o: { uuid: string; name: string; id: number; pid: number }): Buffer {
  return Buffer.concat([uuidBytes(o.uuid), xdrString(o.name), u32(o.id), u32(o.pid), u32(0)]);
}
function resourceArgs(path: string, name: string, flags: number): Buffer {
  return Buffer.concat([xdrString(path), xdrString(name), u32(flags)]);
}

interface Packet {
  prog: number;
  vers: number;
  proc: number;
  type: number;
  serial: number;
  status: number;
  body: Buffer;
}
interface RpcError {
  code: number;
  domain: number;
  message: string | null;
}
function decodeError(body: Buffer): RpcError {
  const code = body.readInt32BE(0);
  const domain = body.readInt32BE(4);
  let message: string | null = null;
  if (body.readUInt32BE(8) !== 0) {
    const len = body.readUInt32BE(12);
    message = body.subarray(16, 16 + len).toString('utf8');
  }
  return { code, domain, message };
}

class Conn {
  private buf = Buffer.alloc(0);
  private waiters: Array<(p: Packet) => void> = [];
  private queue: Packet[] = [];
  private serial = 0;
  closed = false;
  private constructor(private readonly sock: net.Socket) {
    sock.on('data', (d) => {
      this.buf = Buffer.concat([this.buf, d]);
      while (this.buf.length >= 4) {
        const len = this.buf.readUInt32BE(0);
        if (this.buf.length < len) break;
        const p = this.buf.subarray(0, len);
        this.buf = this.buf.subarray(len);
        const pkt: Packet = {
          prog: p.readUInt32BE(4),
          vers: p.readUInt32BE(8),
          proc: p.readUInt32BE(12),
          type: p.readUInt32BE(16),
          serial: p.readUInt32BE(20),
          status: p.readUInt32BE(24),
          body: Buffer.from(p.subarray(28)),
        };
        const w = this.waiters.shift();
        if (w) w(pkt);
        else this.queue.push(pkt);
      }
    });
    sock.on('close', () => (this.closed = true));
    sock.on('error', () => {});
  }
  static connect(path: string): Promise<Conn> {
    return new Promise((resolve, reject) => {
      const s = net.connect(path);
      s.once('connect', () => {
        s.off('error', reject);
        resolve(new Conn(s));
      });
      s.once('error', reject);
    });
  }
  next(timeoutMs = 5000): Promise<Packet> {
    const q = this.queue.shift();
    if (q) return Promise.resolve(q);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no reply')), timeoutMs);
      this.waiters.push((p) => {
        clearTimeout(timer);
        resolve(p);
      });
    });
  }
  raw(b: Buffer): void {
    this.sock.write(b);
  }
  async call(proc: number, args: Buffer): Promise<Packet> {
    this.raw(frame(LOCK_PROG, proc, Type.CALL, this.serial++, args));
    return this.next();
  }
  async ping(): Promise<Packet> {
    this.raw(KEEPALIVE_PING);
    return this.next();
  }
  close(): void {
    this.sock.destroy();
  }
}

// ------------------------------------------------------------ probes

const PYTHON = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
const LOCK_PROBE = `
import fcntl, sys
f = open(sys.argv[1], 'r+')
try:
    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
    print('FREE')
except OSError as e:
    print('HELD', e.errno)
`;
/** From a separate process: can byte 0 of `path` be write-locked right now? */
function probeLock(path: string): Promise<'FREE' | 'HELD'> {
  return new Promise((resolve, reject) => {
    execFile(PYTHON, ['-c', LOCK_PROBE, path], (err, stdout) => {
      if (err) return reject(err);
      resolve(stdout.startsWith('FREE') ? 'FREE' : 'HELD');
    });
  });
}

/** The host's /run must never get virtlockd artefacts. */
function hostRunArtefacts(): string[] {
  return ['/run/libvirt', '/run/virtlockd.pid', '/run/virtlockd-restart-exec.json'].filter((p) => existsSync(p));
}
/** pids of running virtlockd processes (by /proc/<pid>/exe). */
function virtlockdPids(): number[] {
  const out: number[] = [];
  for (const n of readdirSync('/proc')) {
    if (!/^\d+$/.test(n)) continue;
    try {
      if (readFileSync(`/proc/${n}/cmdline`, 'utf8').split('\0')[0] === VIRTLOCKD_PATH) out.push(Number(n));
    } catch {
      /* gone */
    }
  }
  return out;
}
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  // a zombie still answers kill(0)
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}
async function waitGone(pid: number, ms: number): Promise<boolean> {
  const until = Date.now() + ms;
  while (alive(pid)) {
    if (Date.now() > until) return false;
    await new Promise((r) => setTimeout(r, 10));
  }
  return true;
}

// ------------------------------------------------------------ tests

if (!existsSync(VIRTLOCKD_PATH)) {
  t.skip(`real virtlockd not installed: ${VIRTLOCKD_PATH} missing (apt-get install libvirt-daemon)`, async () => {});
} else {
  t.ok(virtlockdAvailable(), `harness usable (${virtlockdUnavailableReason() ?? 'ok'})`);

  const OWNER_PID = process.pid === 4242 ? 4243 : 4242; // never our own pid: see notes (kill on close)
  const owner = { uuid: '00112233-4455-6677-8899-aabbccddeeff', name: 'vm1', id: 1, pid: OWNER_PID };

  t.test('start, PING, lock held, re-exec, stop', async (t) => {
    const runBefore = hostRunArtefacts();
    const work = mkdtempSync(join(visibleTmpDir(), 'virtlockd-harness-res-')); // not under /run: hidden from virtlockd
    t.teardown(() => rmSync(work, { recursive: true, force: true }));
    const disk = join(work, 'disk.img');
    writeFileSync(disk, '');

    const d: StartedDaemon = await startVirtlockd({ logLevel: 2 });
    t.teardown(() => d.stop());
    t.comment(`virtlockd pid ${d.pid} ready after ${d.startupMs.toFixed(1)} ms in ${d.dir}`);

    // identity: the spawned pid is virtlockd itself
    t.equal(readFileSync(`/proc/${d.pid}/cmdline`, 'utf8').split('\0')[0], VIRTLOCKD_PATH, 'spawned pid is virtlockd');
    t.equal(readFileSync(d.pidFile, 'utf8'), String(d.pid), 'pid file (in the temp dir) has that pid');
    t.equal(statSync(d.socketPath).mode & 0o777, 0o600, 'socket mode 0600 like the systemd unit');
    t.ok(existsSync(`/proc/${d.pid}/root/run/libvirt`), 'virtlockd made /run/libvirt in its private /run');
    t.same(hostRunArtefacts(), runBefore, 'host /run untouched');

    // keepalive
    const c = await Conn.connect(d.socketPath);
    t.teardown(() => c.close());
    const pong = await c.ping();
    t.match(pong, { prog: KEEP_PROG, vers: 1, proc: 2, type: Type.MESSAGE, serial: 0, status: 0 }, 'PONG');

    // register + acquire
    const reg = await c.call(PROC_REGISTER, registerArgs(owner));
    t.match(reg, { prog: LOCK_PROG, proc: PROC_REGISTER, type: Type.REPLY, serial: 0, status: 0 }, 'REGISTER ok');
    t.equal(reg.body.length, 0, 'void reply');
    const acq = await c.call(PROC_ACQUIRE, resourceArgs('', disk, 0));
    t.match(acq, { proc: PROC_ACQUIRE, type: Type.REPLY, serial: 1, status: 0 }, 'ACQUIRE ok');
    t.equal(await probeLock(disk), 'HELD', 'another process cannot lock byte 0');

    const again = await c.call(PROC_ACQUIRE, resourceArgs('', disk, 0));
    t.equal(again.status, 1, 'second exclusive ACQUIRE fails');
    t.match(decodeError(again.body), { code: 87, domain: 51, message: `resource busy: Lockspace resource '${disk}' is locked` });

    // re-exec under the harness: same pid, state file found in the private /run
    const pidBefore = d.pid;
    const t0 = performance.now();
    await d.reexec();
    t.comment(`re-exec took ${(performance.now() - t0).toFixed(1)} ms`);
    t.ok(d.isRunning(), 'still running after SIGUSR1');
    t.equal(readFileSync(d.pidFile, 'utf8'), String(pidBefore), 'same pid after re-exec');
    t.notOk(existsSync(`/proc/${d.pid}/root/run/virtlockd-restart-exec.json`), 'state file consumed (unlinked)');
    t.equal(await probeLock(disk), 'HELD', 'lock survived the re-exec');
    t.match(await c.ping(), { prog: KEEP_PROG, proc: 2 }, 'old connection still served after re-exec');
    const again2 = await c.call(PROC_ACQUIRE, resourceArgs('', disk, 0));
    t.equal(again2.status, 1, 'resource table restored: ACQUIRE still refused');
    t.match(again2, { serial: 3 }, 'serials continue on the inherited connection');
    t.same(hostRunArtefacts(), runBefore, 'host /run untouched after re-exec');

    // release works on the restored state, then take it again for the stop test
    const rel = await c.call(PROC_RELEASE, resourceArgs('', disk, 0));
    t.equal(rel.status, 0, 'RELEASE ok after re-exec');
    t.equal(await probeLock(disk), 'FREE', 'released lock is free');
    t.equal((await c.call(PROC_ACQUIRE, resourceArgs('', disk, 0))).status, 0, 're-ACQUIRE ok');
    t.equal(await probeLock(disk), 'HELD', 'held again');

    // stop
    const dir = d.dir;
    await d.stop();
    t.notOk(d.isRunning(), 'stopped');
    t.match(await d.exited, { code: 0, signal: null }, 'graceful exit status 0 on SIGTERM');
    t.ok(await waitGone(pidBefore, 2000), 'no virtlockd process left');
    t.notOk(virtlockdPids().includes(pidBefore), 'not in the process list');
    t.notOk(existsSync(dir), 'temp dir removed');
    t.equal(await probeLock(disk), 'FREE', 'lock freed by the stop');
    t.same(hostRunArtefacts(), runBefore, 'host /run untouched after stop');
    await d.stop(); // idempotent
  });

  t.test('non-root peers are disconnected', async (t) => {
    const d = await startVirtlockd();
    t.teardown(() => d.stop());
    const { chmodSync } = await import('node:fs');
    chmodSync(d.dir, 0o755);
    chmodSync(d.socketPath, 0o666); // let uid 65534 reach connect(); virtlockd must still refuse it
    const py = `
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.settimeout(5)
try:
    s.sendall(bytes.fromhex(sys.argv[2]))
    print(s.recv(100).hex() or 'CLOSED')
except (ConnectionResetError, BrokenPipeError):
    print('CLOSED')`;
    const out = await new Promise<string>((resolve, reject) =>
      execFile('/usr/bin/setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', PYTHON, '-c', py, d.socketPath, KEEPALIVE_PING.toString('hex')],
        (err, stdout, stderr) => (err ? reject(new Error(`${err.message}: ${stderr}`)) : resolve(stdout.trim()))),
    );
    t.equal(out, 'CLOSED', 'uid 65534 is disconnected without any reply');
    t.comment(`virtlockd said: ${d.logs().trim().split('\n').slice(-2).join(' | ')}`);
    t.ok(await (async () => (await Conn.connect(d.socketPath).then((c) => c.ping().finally(() => c.close()))).proc === 2)(), 'root still served');
    t.equal(KEEPALIVE_PONG.length, 28);
  });

  t.test('kill() signals virtlockd by pid; stop() after its death', async (t) => {
    const d = await startVirtlockd();
    t.teardown(() => d.stop());
    d.kill('SIGKILL');
    t.match(await d.exited, { code: null, signal: 'SIGKILL' }, 'kill() signals virtlockd itself');
    const dir = d.dir;
    await d.stop();
    t.notOk(existsSync(dir), 'dir removed after stop() of a dead daemon');
  });

  for (const mode of ['sigkill', 'exit'] as const) {
    t.test(`no leak when the starting process dies (${mode})`, async (t) => {
      const self = fileURLToPath(import.meta.url);
      const child = spawn(process.execPath, [...process.execArgv, self], {
        env: { ...process.env, VIRTLOCKD_HARNESS_CHILD: mode },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let out = '';
      let err = '';
      child.stdout!.on('data', (b) => (out += b));
      child.stderr!.on('data', (b) => (err += b));
      const status = await new Promise<string>((resolve) => child.on('close', (c, s) => resolve(`${c}/${s}`)));
      const m = /VIRTLOCKD_PID=(\d+) DIR=(\S+)/.exec(out);
      if (!m) return t.fail(`child printed no pid (status ${status})\n${out}\n${err}`);
      t.equal(status, mode === 'sigkill' ? 'null/SIGKILL' : '0/null', 'child ended as planned');
      const pid = Number(m[1]);
      t.ok(await waitGone(pid, 5000), `virtlockd ${pid} died with its parent`);
      if (mode === 'exit') t.notOk(existsSync(m[2]), 'exit hook removed the temp dir');
      else rmSync(m[2], { recursive: true, force: true }); // SIGKILL leaves the dir behind
    });
  }

  t.test('no virtlockd leftovers from this file', async (t) => {
      t.same(hostRunArtefacts(), [], 'nothing under the host /run');
  });
}
