// Runs INSIDE a lab guest (c1, c2, …; see docs/nfs-crosshost.md): the
// crosshost runner's hands on that "host". It starts the lock daemons of that
// host (this checkout's relockd, or the real /usr/sbin/virtlockd), talks to
// them with relockd's own protocol client exactly as libvirt's lockd plugin
// would (REGISTER, CREATE_LOCKSPACE, ACQUIRE_RESOURCE, RELEASE_RESOURCE), and
// runs lock probes and hammers from separate processes (python3 fcntl).
//
//   node test/nfs/guest-driver.mjs --name c1 --port 7391 --log-dir DIR
//
// Control: one TCP connection (the runner reaches the guest's address through
// a relay inside the lab's network namespace), JSON lines both ways:
//   -> {"id":1,"op":"acquire","conn":"a","path":"/mnt/nfs4/…","name":"X","flags":2}
//   <- {"id":1,"ok":true,"result":{…}}   or   {"id":1,"ok":false,"error":"…"}
// When that connection closes (the runner finished, died or was killed) the
// driver SIGKILLs every process it started, by pid, and exits. Plain
// JavaScript on purpose: it runs in a UML guest, where compiling TypeScript
// on the fly would cost seconds.

import { spawn } from 'node:child_process';
import { closeSync, createWriteStream, existsSync, ftruncateSync, mkdirSync, openSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { hostname } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const { LockspaceClient } = await import(join(ROOT, 'dist', 'src', 'protocol', 'lockspaceClient.js'));
const { NODE_FLAGS, RELOCKD_BIN } = await import(join(ROOT, 'dist', 'test', 'lib', 'relockd.js'));

const VIRTLOCKD = '/usr/sbin/virtlockd';
const SETPRIV = '/usr/bin/setpriv';
const PYTHON = '/usr/bin/python3';

// ------------------------------------------------------------------ args

const argv = process.argv.slice(2);
function arg(name, dflt) {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < argv.length ? argv[i + 1] : dflt;
}
const NAME = arg('name', hostname());
const PORT = Number(arg('port', '7391'));
const LOG_DIR = arg('log-dir', '/tmp');
mkdirSync(LOG_DIR, { recursive: true });

const now = () => performance.timeOrigin + performance.now();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ------------------------------------------------------------------ processes we started

/** pid -> { what, child } : everything is SIGKILLed by pid on shutdown. */
const children = new Map();

function track(child, what) {
  if (!child.pid) return;
  children.set(child.pid, { what, child });
  child.once('exit', () => children.delete(child.pid));
}

function killAll() {
  for (const [pid] of children) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
}

// ------------------------------------------------------------------ lock daemons

/** name -> daemon record */
const daemons = new Map();

class Daemon {
  constructor(kind, name, child, socketPath, logFile) {
    this.kind = kind;
    this.name = name;
    this.child = child;
    this.pid = child.pid;
    this.socketPath = socketPath;
    this.logFile = logFile;
    this.log = '';
    this.exit = null;
    this.exited = new Promise((resolve) =>
      child.once('exit', (code, signal) => {
        this.exit = { code, signal, at: now() };
        resolve(this.exit);
      }),
    );
    const out = createWriteStream(logFile, { flags: 'a' });
    const onData = (d) => {
      const s = d.toString('utf8');
      this.log += s;
      if (this.log.length > 8_000_000) this.log = this.log.slice(-4_000_000);
      out.write(s);
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.once('close', () => out.end());
  }

  get running() {
    return this.exit === null;
  }
}

async function startRelockd({ name, runtimeDir, lockspaces = [] }) {
  if (daemons.get(name)?.running) throw new Error(`daemon ${name} is already running (pid ${daemons.get(name).pid})`);
  rmSync(runtimeDir, { recursive: true, force: true });
  mkdirSync(runtimeDir, { recursive: true });
  const socketPath = join(runtimeDir, 'relockd.sock');
  const logFile = join(LOG_DIR, `${NAME}-${name}.log`);
  const args = ['--pdeathsig', 'KILL', '--', '/usr/bin/env', '-u', 'NODE_OPTIONS', process.execPath, ...NODE_FLAGS, RELOCKD_BIN,
    '--runtime-dir', runtimeDir, '--socket', socketPath, '--log-level', 'debug', ...lockspaces.flatMap((d) => ['--lockspace', d])];
  const t0 = now();
  const child = spawn(SETPRIV, args, { stdio: ['ignore', 'pipe', 'pipe'], cwd: runtimeDir });
  track(child, `relockd ${name}`);
  const d = new Daemon('relockd', name, child, socketPath, logFile);
  daemons.set(name, d);
  const deadline = t0 + 60_000;
  while (!/"msg":"relockd ready"/.test(d.log)) {
    if (!d.running) throw new Error(`relockd exited during start-up (code ${d.exit.code}, signal ${d.exit.signal})\n${d.log.slice(-3000)}`);
    if (now() > deadline) {
      kill(d.pid, 'SIGKILL');
      throw new Error(`relockd not ready after 60 s\n${d.log.slice(-3000)}`);
    }
    await sleep(10);
  }
  return { pid: d.pid, socketPath, readyMs: now() - t0 };
}

async function startVirtlockd({ name, dir }) {
  if (daemons.get(name)?.running) throw new Error(`daemon ${name} is already running (pid ${daemons.get(name).pid})`);
  // As root, virtlockd serves /run/libvirt/virtlockd-sock: the guest's /run is its own tmpfs.
  const socketPath = '/run/libvirt/virtlockd-sock';
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const conf = join(dir, 'virtlockd.conf');
  writeFileSync(conf, ['# written by test/nfs/guest-driver.mjs', 'log_level = 2', 'log_outputs = "2:stderr"', 'log_filters = "3:rpc 3:util 3:event 3:object"', ''].join('\n'));
  const logFile = join(LOG_DIR, `${NAME}-${name}.log`);
  const env = { ...process.env };
  for (const k of Object.keys(env)) if (k.startsWith('LISTEN_') || k.startsWith('LIBVIRT_') || k === 'NOTIFY_SOCKET' || k === 'NODE_OPTIONS') delete env[k];
  const t0 = now();
  const child = spawn(SETPRIV, ['--pdeathsig', 'KILL', '--', VIRTLOCKD, '-f', conf, '-p', join(dir, 'virtlockd.pid')], { stdio: ['ignore', 'pipe', 'pipe'], cwd: dir, env });
  track(child, `virtlockd ${name}`);
  const d = new Daemon('virtlockd', name, child, socketPath, logFile);
  daemons.set(name, d);
  const deadline = t0 + 30_000;
  for (;;) {
    if (!d.running) throw new Error(`virtlockd exited during start-up (code ${d.exit.code}, signal ${d.exit.signal})\n${d.log.slice(-3000)}`);
    if (now() > deadline) {
      kill(d.pid, 'SIGKILL');
      throw new Error(`virtlockd did not answer a PING within 30 s\n${d.log.slice(-3000)}`);
    }
    if (existsSync(socketPath)) {
      // a stale socket file from a killed instance refuses connections; a PONG proves the new one serves
      try {
        const c = await LockspaceClient.connect(socketPath);
        try {
          await withTimeout(c.ping(), 2000, 'PING');
          break;
        } finally {
          c.close();
        }
      } catch {
        /* not yet */
      }
    }
    await sleep(20);
  }
  return { pid: d.pid, socketPath, readyMs: now() - t0 };
}

function kill(pid, sig) {
  try {
    process.kill(pid, sig);
    return true;
  } catch {
    return false;
  }
}

function daemon(name) {
  const d = daemons.get(name);
  if (!d) throw new Error(`no daemon ${name}`);
  return d;
}

/** SIGKILL (or another signal) by pid; with wait, until the process is gone. tKill is taken right before kill(2). */
async function signalDaemon({ name, signal = 'SIGKILL', wait = true, timeoutMs = 20_000 }) {
  const d = daemon(name);
  if (!d.running) throw new Error(`${d.kind} ${name} (pid ${d.pid}) is not running`);
  const tKill = now();
  kill(d.pid, signal);
  if (!wait) return { pid: d.pid, tKill };
  const e = await withTimeout(d.exited, timeoutMs, `exit of ${d.kind} ${name}`);
  return { pid: d.pid, tKill, tExit: e.at, code: e.code, signal: e.signal };
}

/** SIGUSR1 and wait for the new image's "re-exec complete" (relockd); never succeeds in safe mode. */
async function reexec({ name, timeoutMs = 90_000 }) {
  const d = daemon(name);
  if (d.kind !== 'relockd') throw new Error('re-exec is measured for relockd only');
  const mark = d.log.length;
  const t0 = now();
  kill(d.pid, 'SIGUSR1');
  for (;;) {
    const s = d.log.slice(mark);
    const m = /^.*"msg":"re-exec complete".*$/m.exec(s);
    if (m) {
      const line = JSON.parse(m[0]);
      if (/SAFE MODE/.test(s)) throw new Error(`relockd entered safe mode after re-exec\n${s.slice(-3000)}`);
      return { ms: now() - t0, blackoutMs: line.blackoutMs, resources: line.resources, clients: line.clients, bootMs: line.bootMs };
    }
    if (/"msg":"re-exec failed[^"]*"/.test(s)) throw new Error(`relockd: re-exec failed\n${s.slice(-3000)}`);
    if (!d.running) throw new Error(`relockd exited during re-exec (code ${d.exit.code}, signal ${d.exit.signal})\n${s.slice(-3000)}`);
    if (now() - t0 > timeoutMs) throw new Error(`relockd: no "re-exec complete" within ${timeoutMs} ms\n${s.slice(-3000)}`);
    await sleep(5);
  }
}

// ------------------------------------------------------------------ protocol connections

/** conn id -> { client, daemon } */
const conns = new Map();

function conn(id) {
  const c = conns.get(id);
  if (!c) throw new Error(`no connection ${id}`);
  return c.client;
}

async function connect({ conn: id, daemon: dname, owner, lockspaces = [] }) {
  const d = daemon(dname);
  conns.get(id)?.client.close();
  const t0 = now();
  const client = await withTimeout(LockspaceClient.connect(d.socketPath), 10_000, `connect to ${d.socketPath}`);
  conns.set(id, { client, daemon: dname });
  await withTimeout(client.register(owner), 10_000, 'REGISTER');
  for (const ls of lockspaces) await withTimeout(client.createLockspace(ls), 30_000, `CREATE_LOCKSPACE ${ls}`);
  return { ms: now() - t0 };
}

function closeConn({ conn: id }) {
  const c = conns.get(id);
  if (c) {
    c.client.close();
    conns.delete(id);
  }
  return {};
}

/** One RPC, timed; a refusal is a result, not an error. */
async function timed(fn) {
  const t0 = now();
  try {
    await fn();
    const t1 = now();
    return { ok: true, ms: t1 - t0, t0, t1 };
  } catch (e) {
    const t1 = now();
    return { ok: false, ms: t1 - t0, t0, t1, error: e.message, errorName: e.name };
  }
}

function acquire({ conn: id, path, name, flags = 0, timeoutMs = 30_000 }) {
  const c = conn(id);
  return timed(() => withTimeout(c.acquire(path, name, flags), timeoutMs, `ACQUIRE ${name}`));
}

function release({ conn: id, path, name, timeoutMs = 30_000 }) {
  const c = conn(id);
  return timed(() => withTimeout(c.release(path, name), timeoutMs, `RELEASE ${name}`));
}

// ------------------------------------------------------------------ loops: polls and hammers

/** loop id -> { promise, stop() } */
const loops = new Map();

/**
 * ACQUIRE back to back until it succeeds (poll) or until stopped (hammer:
 * every success is released at once and counted as a win). Resolves the
 * start request after the first attempt, so the caller knows it runs.
 */
function loopStart({ loop: lid, kind, conn: id, path, name, flags = 0, timeoutMs = 60_000 }) {
  if (loops.has(lid)) throw new Error(`loop ${lid} exists`);
  const c = conn(id);
  let stop = false;
  let firstDone;
  const first = new Promise((r) => (firstDone = r));
  const st = { attempts: 0, wins: 0, busy: 0, other: 0, otherErrors: [], first: null, tStart: now(), tOk: null, lastAttemptMs: null, maxGapMs: 0 };
  const busyRe = new RegExp(`Lockspace resource '${name.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}' is locked`);
  const promise = (async () => {
    let prevEnd = now();
    while (!stop) {
      const r = await timed(() => withTimeout(c.acquire(path, name, flags), 30_000, `ACQUIRE ${name}`));
      st.attempts++;
      st.lastAttemptMs = r.ms;
      st.maxGapMs = Math.max(st.maxGapMs, r.t1 - prevEnd);
      prevEnd = r.t1;
      if (st.first === null) {
        st.first = r;
        firstDone();
      }
      if (r.ok) {
        st.wins++;
        st.tOk ??= r.t1;
        st.okAttemptT0 ??= r.t0;
        if (kind === 'poll') break;
        await c.release(path, name).catch((e) => st.otherErrors.push(`release after win: ${e.message}`));
      } else if (busyRe.test(r.error)) st.busy++;
      else {
        st.other++;
        if (st.otherErrors.length < 5) st.otherErrors.push(r.error);
        if (/connection closed/i.test(r.error)) break;
        await sleep(2); // not a hot loop on a persistent error, but no big gap in the timing either
      }
      if (kind === 'poll' && now() - st.tStart > timeoutMs) break;
    }
    st.tEnd = now();
    return st;
  })();
  loops.set(lid, { promise, stop: () => (stop = true), kind: 'rpc' });
  return first.then(() => ({ first: st.first }));
}

async function loopWait({ loop: lid, timeoutMs = 60_000 }) {
  const l = loops.get(lid);
  if (!l) throw new Error(`no loop ${lid}`);
  const st = await withTimeout(l.promise, timeoutMs, `loop ${lid}`);
  loops.delete(lid);
  return st;
}

async function loopStop({ loop: lid, timeoutMs = 60_000 }) {
  const l = loops.get(lid);
  if (!l) throw new Error(`no loop ${lid}`);
  l.stop();
  const st = await withTimeout(l.promise, timeoutMs, `loop ${lid}`);
  loops.delete(lid);
  return st;
}

// python3 fcntl, classic (lockf: F_SETLK) or OFD (F_OFD_SETLK = 37) locks on byte 0 length 1
const PY_LOCK = `
import fcntl, os, struct, sys, json, select, time
F_OFD_SETLK = 37
def lock(fd, kind, excl):
    if kind == 'ofd':
        fcntl.fcntl(fd, F_OFD_SETLK, struct.pack('hhqqi4x', fcntl.F_WRLCK if excl else fcntl.F_RDLCK, 0, 0, 1, 0))
    else:
        fcntl.lockf(fd, (fcntl.LOCK_EX if excl else fcntl.LOCK_SH) | fcntl.LOCK_NB, 1, 0)
def unlock(fd, kind):
    if kind == 'ofd':
        fcntl.fcntl(fd, F_OFD_SETLK, struct.pack('hhqqi4x', fcntl.F_UNLCK, 0, 0, 1, 0))
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, 0)
`;

const PY_PROBE = `${PY_LOCK}
kinds, mode = sys.argv[1].split(','), sys.argv[2]
res = {}
for kind in kinds:
    res[kind] = {}
    for p in sys.argv[3:]:
        try:
            fd = os.open(p, os.O_RDWR)
        except FileNotFoundError:
            res[kind][p] = 'missing'; continue
        except OSError as e:
            res[kind][p] = 'error:' + (e.strerror or str(e)); continue
        try:
            lock(fd, kind, mode == 'write')
            res[kind][p] = 'free'
        except OSError as e:
            res[kind][p] = 'held' if e.errno in (11, 13) else 'error:' + (e.strerror or str(e))
        os.close(fd)
print(json.dumps(res))
`;

const PY_HAMMER = `${PY_LOCK}
kind = sys.argv[1]
paths = sys.argv[2:]
fds = [os.open(p, os.O_RDWR) for p in paths]
attempts = 0
wins = {}
errors = {}
sys.stdout.write('ready\\n'); sys.stdout.flush()
while True:
    r, _, _ = select.select([sys.stdin], [], [], 0)
    if r:
        break
    for p, fd in zip(paths, fds):
        attempts += 1
        try:
            lock(fd, kind, True)
            wins[p] = wins.get(p, 0) + 1
            unlock(fd, kind)
        except OSError as e:
            if e.errno not in (11, 13):
                errors[e.strerror] = errors.get(e.strerror, 0) + 1
print(json.dumps({'attempts': attempts, 'wins': wins, 'errors': errors}))
`;

/** { classic: { path: 'free'|'held'|'missing'|'error:…' }, ofd: {…} } from ONE separate process. */
async function probe({ kinds = ['classic', 'ofd'], mode = 'write', paths }) {
  const r = await sh({ cmd: null, argv: [PYTHON, '-c', PY_PROBE, kinds.join(','), mode, ...paths], timeoutMs: 30_000 });
  if (r.code !== 0) throw new Error(`probe failed (${r.code}): ${r.out}`);
  return JSON.parse(r.out.trim().split('\n').pop());
}

function fcntlHammerStart({ loop: lid, kind = 'classic', paths }) {
  if (loops.has(lid)) throw new Error(`loop ${lid} exists`);
  const child = spawn(PYTHON, ['-c', PY_HAMMER, kind, ...paths], { stdio: ['pipe', 'pipe', 'pipe'] });
  track(child, `fcntl hammer ${lid}`);
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  const exited = new Promise((r) => child.once('exit', (code) => r(code)));
  const promise = exited.then((code) => {
    if (code !== 0) throw new Error(`fcntl hammer exited ${code}: ${err.slice(-500)}`);
    return JSON.parse(out.trim().split('\n').pop());
  });
  promise.catch(() => {});
  loops.set(lid, { promise, stop: () => child.stdin.end('stop\n'), kind: 'fcntl' });
  return new Promise((resolve, reject) => {
    const check = () => {
      if (out.startsWith('ready')) return resolve({ pid: child.pid });
      if (child.exitCode !== null) return reject(new Error(`fcntl hammer exited early: ${err.slice(-500)}`));
      setTimeout(check, 10);
    };
    check();
  });
}

// ------------------------------------------------------------------ files (in-process: a shell costs ~50 ms in UML)

/**
 * On the NFS server: does each name exist on the export's own filesystem, and
 * how many locks does the server's kernel hold on the inode that name has now
 * (nfsd and lockd turn every client's lock into a POSIX lock on the server;
 * /proc/locks lists them as major:minor:inode)?
 */
function serverView({ paths }) {
  const locks = readFileSync('/proc/locks', 'utf8');
  const out = {};
  for (const p of paths) {
    let ino;
    let dev;
    try {
      ({ ino, dev } = statSync(p));
    } catch (e) {
      if (e.code === 'ENOENT') {
        out[p] = { exists: false };
        continue;
      }
      throw e;
    }
    // /proc/locks names the inode as MAJ:MIN:INO (hex device numbers): match the device
    // too, so that a lock on another filesystem's inode with the same number cannot pass
    // for a lock on this file
    const re = new RegExp(` ${devName(dev)}:${ino} `, 'g');
    out[p] = { exists: true, ino, locks: (locks.match(re) ?? []).length };
  }
  return out;
}

/** st_dev as /proc/locks prints it: "%02x:%02x" of the kernel's major and minor (glibc's encoding of dev_t). */
function devName(dev) {
  const major = ((dev >> 8) & 0xfff) | (Math.floor(dev / 2 ** 32) & ~0xfff);
  const minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
  return `${major.toString(16).padStart(2, '0')}:${minor.toString(16).padStart(2, '0')}`;
}

/** Sparse disk images for direct leases (created on this client, over NFS). */
function mkImages({ paths, size = 1 << 20 }) {
  for (const p of paths) {
    const fd = openSync(p, 'w');
    try {
      ftruncateSync(fd, size);
    } finally {
      closeSync(fd);
    }
  }
  return {};
}

// ------------------------------------------------------------------ shell

function sh({ cmd, argv: av, timeoutMs = 30_000 }) {
  return new Promise((resolve) => {
    const child = av ? spawn(av[0], av.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] }) : spawn('/bin/bash', ['-c', cmd], { stdio: ['ignore', 'pipe', 'pipe'] });
    track(child, `sh ${cmd ?? av.join(' ')}`.slice(0, 100));
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    const timer = setTimeout(() => kill(child.pid, 'SIGKILL'), timeoutMs);
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, signal, out });
    });
    child.once('error', (e) => {
      clearTimeout(timer);
      resolve({ code: 127, signal: null, out: e.message });
    });
  });
}

function withTimeout(p, ms, what) {
  let timer;
  const t = new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms)));
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

// ------------------------------------------------------------------ dispatch

function pids() {
  return [...children].map(([pid, c]) => ({ pid, what: c.what }));
}

async function shutdown() {
  for (const c of conns.values()) c.client.close();
  conns.clear();
  for (const l of loops.values()) l.stop();
  killAll();
  const end = now() + 10_000;
  while (children.size > 0 && now() < end) await sleep(10);
  return { left: pids() };
}

const ops = {
  hello: () => ({ host: hostname(), pid: process.pid, node: process.version, now: now() }),
  now: () => ({ now: now() }),
  sh,
  serverView,
  mkImages,
  startRelockd,
  startVirtlockd,
  signal: signalDaemon,
  reexec,
  daemonInfo: ({ name }) => {
    const d = daemon(name);
    return { pid: d.pid, running: d.running, exit: d.exit, logFile: d.logFile, logLength: d.log.length };
  },
  connect,
  close: closeConn,
  acquire,
  release,
  loopStart,
  loopWait,
  loopStop,
  probe,
  fcntlHammerStart,
  pids,
  shutdown,
};

let controlSeen = false;
const server = net.createServer((sock) => {
  if (controlSeen) {
    sock.destroy();
    return;
  }
  controlSeen = true;
  sock.setNoDelay(true);
  let buf = '';
  const send = (o) => {
    if (!sock.destroyed) sock.write(`${JSON.stringify(o)}\n`);
  };
  sock.on('data', (d) => {
    buf += d.toString('utf8');
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      if (!line.trim()) continue;
      let req;
      try {
        req = JSON.parse(line);
      } catch {
        send({ id: null, ok: false, error: `bad request: ${line.slice(0, 200)}` });
        continue;
      }
      const fn = ops[req.op];
      if (!fn) {
        send({ id: req.id, ok: false, error: `unknown op ${req.op}` });
        continue;
      }
      Promise.resolve()
        .then(() => fn(req))
        .then(
          (result) => {
            send({ id: req.id, ok: true, result });
            if (req.op === 'shutdown') setTimeout(() => process.exit(0), 50);
          },
          (e) => send({ id: req.id, ok: false, error: e?.stack ?? String(e) }),
        );
    }
  });
  // The runner is gone: nothing we started may outlive it.
  sock.on('close', () => {
    void shutdown().finally(() => process.exit(0));
  });
  sock.on('error', () => {});
});
server.listen(PORT, '0.0.0.0', () => {
  process.stdout.write(`guest-driver ${NAME} pid ${process.pid} listening on ${PORT}\n`);
});
for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP']) {
  process.once(sig, () => {
    killAll();
    process.exit(1);
  });
}
process.on('exit', killAll);
