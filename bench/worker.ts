// Load generator for lockbench, run as a child process (fork with IPC) so
// its CPU is separate from the orchestrator's and can be measured on its own.
//
// It holds "groups": a set of N registered connections to one daemon that
// run one scenario. A group runs only when told to ("run"), for a measured
// window; between windows its connections stay open and idle, holding no
// lease. Per request the hot path does one socket write of a frame encoded
// at setup (only the serial is patched in place) and parses the 28-byte
// reply by offsets; reads go into a per-connection buffer (net's `onread`),
// so no Buffer is allocated per reply.
//
// The window's figures are taken here, next to the counters: the daemon's
// CPU from /proc/<pid>/stat (utime+stime, all threads) and per thread from
// /proc/<pid>/task/*/stat, the generator's own CPU (process.cpuUsage, all
// threads), and the host's busy share from /proc/stat.

import net from 'node:net';
import { randomBytes } from 'node:crypto';
import { readFileSync, readdirSync } from 'node:fs';
import { encodePacket, MessageType, MessageStatus } from '../src/rpc/packet.js';
import { LOCKSPACE_PROGRAM, LOCKSPACE_VERSION, Proc, codec, uuidToString } from '../src/protocol/lockspace.js';
import { XdrReader, XdrWriter } from '../src/rpc/xdr.js';
import { decodeWireError } from '../src/rpc/wireError.js';
import { hostJiffies } from './stats.js';

// ---- messages ----------------------------------------------------------------

export type Scenario = 'own' | 'contend' | 'dir';

export interface SetupMsg {
  type: 'setup';
  id: string;
  socket: string;
  scenario: Scenario;
  clients: number;
  /** Lock space path: '' (default) or a directory (CREATE_LOCKSPACE'd first). */
  lockspace: string;
  /** Resource name per client (same name for all in 'contend'). */
  names: string[];
  acquireFlags: number;
  /** Owner pids are ownerPidBase + i: above pid_max, so never a real process. */
  ownerPidBase: number;
  warmupMs: number;
}

export interface RunMsg {
  type: 'run';
  id: string;
  preRollMs: number;
  durationMs: number;
  daemonPid: number;
}

export interface TeardownMsg {
  type: 'teardown';
  id: string;
}

export type ToWorker = SetupMsg | RunMsg | TeardownMsg | { type: 'exit' };

export interface WindowResult {
  elapsedMs: number;
  cycles: number;
  refusals: number;
  /** utime+stime of the daemon process (all threads), clock ticks. */
  daemonTicks: number;
  /** Same, per thread group: 'main' (tid == pid) and 'other' threads, ticks. */
  daemonMainTicks: number;
  daemonOtherTicks: number;
  /** Threads of the daemon that used CPU in the window, by name. */
  daemonThreads: Record<string, number>;
  /** Context switches of all daemon threads in the window: voluntary (blocking/waiting) and not. */
  daemonVoluntarySwitches: number;
  daemonInvoluntarySwitches: number;
  /** Generator's own CPU (user+system, µs, all its threads). */
  genCpuUs: number;
  /** Host: busy jiffies / total jiffies over the window, all CPUs. */
  hostBusy: number;
  /** Per-client successful cycles, to see fairness (min/max). */
  minClientCycles: number;
  maxClientCycles: number;
}

export type FromWorker =
  | { type: 'ready'; id: string; warmupCycles: number; warmupRefusals: number }
  | { type: 'result'; id: string; result: WindowResult }
  | { type: 'closed'; id: string }
  | { type: 'error'; id: string; message: string };

// ---- /proc readers -----------------------------------------------------------

/** utime+stime (fields 14, 15) in clock ticks, from a /proc .../stat file. */
export function statTicks(path: string): number {
  const s = readFileSync(path, 'latin1');
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
  // f[0] is field 3 (state); utime is field 14 → f[11], stime f[12].
  return Number(f[11]) + Number(f[12]);
}

function statComm(s: string): string {
  return s.slice(s.indexOf('(') + 1, s.lastIndexOf(')'));
}

interface ThreadSample {
  ticks: number;
  comm: string;
  /** voluntary + nonvoluntary context switches (/proc/.../status). */
  csw: number;
  nvcsw: number;
}

function ctxtSwitches(path: string): [number, number] {
  try {
    const s = readFileSync(path, 'latin1');
    const v = /voluntary_ctxt_switches:\s*(\d+)/.exec(s);
    const n = /nonvoluntary_ctxt_switches:\s*(\d+)/.exec(s);
    return [Number(v?.[1] ?? 0), Number(n?.[1] ?? 0)];
  } catch {
    return [0, 0];
  }
}

function sampleThreads(pid: number): Map<number, ThreadSample> {
  const out = new Map<number, ThreadSample>();
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const t of tids) {
    try {
      const s = readFileSync(`/proc/${pid}/task/${t}/stat`, 'latin1');
      const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
      const [csw, nvcsw] = ctxtSwitches(`/proc/${pid}/task/${t}/status`);
      out.set(Number(t), { ticks: Number(f[11]) + Number(f[12]), comm: statComm(s), csw, nvcsw });
    } catch {
      /* thread exited */
    }
  }
  return out;
}

interface Snapshot {
  t: bigint;
  cycles: number;
  refusals: number;
  perClient: number[];
  daemon: number;
  threads: Map<number, ThreadSample>;
  gen: NodeJS.CpuUsage;
  host: { busy: number; total: number };
}

// ---- the client --------------------------------------------------------------

const IDLE = 0;
const ACQUIRING = 1;
const RELEASING = 2;
const SETUP = 3;

const ERR_RESOURCE_BUSY = 87;
const FROM_LOCKSPACE = 51;

function frame(proc: number, encode: (w: XdrWriter) => void): Buffer {
  const w = new XdrWriter();
  encode(w);
  return encodePacket({ prog: LOCKSPACE_PROGRAM, vers: LOCKSPACE_VERSION, proc, type: MessageType.CALL, serial: 0, status: MessageStatus.OK }, w.bytes());
}

class BenchError extends Error {}

class Client {
  readonly sock: net.Socket;
  private serial = 0;
  state = IDLE;
  cycles = 0;
  refusals = 0;
  /** Partial frame carried over between reads (rare: replies are 28 bytes). */
  private carry: Buffer | null = null;
  private setupDone: ((reply: Buffer) => void) | null = null;
  onError: (e: Error) => void = () => {};

  private constructor(
    sock: net.Socket,
    readonly group: Group,
    readonly acq: Buffer,
    readonly rel: Buffer,
  ) {
    this.sock = sock;
  }

  static connect(path: string, group: Group, acq: Buffer, rel: Buffer): Promise<Client> {
    return new Promise((resolve, reject) => {
      let c: Client | null = null;
      const sock = net.connect({
        path,
        onread: {
          buffer: Buffer.allocUnsafe(4096),
          callback: (n: number, buf: Uint8Array) => {
            c!.onRead(n, buf as Buffer);
            return true;
          },
        },
      });
      c = new Client(sock, group, acq, rel);
      sock.once('connect', () => {
        sock.removeListener('error', reject);
        sock.on('error', (e) => c!.onError(e));
        sock.on('close', () => {
          if (!group.closing) c!.onError(new BenchError(`daemon closed connection (state ${c!.state})`));
        });
        resolve(c!);
      });
      sock.once('error', reject);
    });
  }

  private send(buf: Buffer): void {
    buf.writeUInt32BE(this.serial, 20);
    this.sock.write(buf);
  }

  /** One call during setup; resolves with the whole reply frame. */
  call(buf: Buffer): Promise<Buffer> {
    this.state = SETUP;
    return new Promise((resolve, reject) => {
      this.setupDone = resolve;
      this.onError = reject;
      this.send(buf);
    }).then((reply) => {
      this.state = IDLE;
      this.onError = () => {};
      const b = reply as Buffer;
      if (b.readInt32BE(24) !== MessageStatus.OK) throw new BenchError(describeError(b));
      return b;
    });
  }

  startCycle(): void {
    this.state = ACQUIRING;
    this.send(this.acq);
  }

  private onRead(n: number, buf: Buffer): void {
    let data = buf.subarray(0, n);
    if (this.carry) {
      data = Buffer.concat([this.carry, data]);
      this.carry = null;
    }
    let off = 0;
    while (data.length - off >= 4) {
      const len = data.readUInt32BE(off);
      if (len < 28) return this.fail(new BenchError(`bad reply length ${len}`));
      if (data.length - off < len) break;
      // Views into the onread buffer are overwritten by the next read; only
      // error/setup replies (not the hot path) are copied out.
      this.onReply(data, off, len);
      off += len;
    }
    if (off < data.length) this.carry = Buffer.from(data.subarray(off));
  }

  private fail(e: Error): void {
    this.onError(e);
  }

  private onReply(b: Buffer, off: number, len: number): void {
    if (b.readUInt32BE(off + 4) !== LOCKSPACE_PROGRAM || b.readInt32BE(off + 16) !== MessageType.REPLY) {
      return this.fail(new BenchError('unexpected packet from daemon'));
    }
    if (b.readUInt32BE(off + 20) !== this.serial) return this.fail(new BenchError(`reply serial ${b.readUInt32BE(off + 20)}, expected ${this.serial}`));
    this.serial = (this.serial + 1) >>> 0;
    const ok = b.readInt32BE(off + 24) === MessageStatus.OK;
    switch (this.state) {
      case ACQUIRING:
        if (ok) {
          this.state = RELEASING;
          this.send(this.rel);
          return;
        }
        if (len >= 36 && b.readInt32BE(off + 28) === ERR_RESOURCE_BUSY && b.readInt32BE(off + 32) === FROM_LOCKSPACE) {
          this.refusals++;
          this.group.afterStep(this);
          return;
        }
        return this.fail(new BenchError(`acquire failed: ${describeError(Buffer.from(b.subarray(off, off + len)))}`));
      case RELEASING:
        if (!ok) return this.fail(new BenchError(`release failed: ${describeError(Buffer.from(b.subarray(off, off + len)))}`));
        this.cycles++;
        this.group.afterStep(this);
        return;
      case SETUP: {
        const done = this.setupDone;
        this.setupDone = null;
        done?.(Buffer.from(b.subarray(off, off + len)));
        return;
      }
      default:
        return this.fail(new BenchError('reply while idle'));
    }
  }
}

function describeError(full: Buffer): string {
  try {
    const e = decodeWireError(new XdrReader(full, 28));
    return `code ${e.code} domain ${e.domain}: ${e.message}`;
  } catch {
    return `undecodable error reply (${full.length} bytes)`;
  }
}

// ---- a group of clients running one scenario ---------------------------------

class Group {
  clients: Client[] = [];
  running = false;
  closing = false;
  private drained: (() => void) | null = null;
  private failed: ((e: Error) => void) | null = null;
  private active = 0;

  constructor(readonly msg: SetupMsg) {}

  async setup(): Promise<void> {
    const m = this.msg;
    for (let i = 0; i < m.clients; i++) {
      const name = m.names[i]!;
      const acq = frame(Proc.ACQUIRE_RESOURCE, (w) => codec.resource.encode(w, { path: m.lockspace, name, flags: m.acquireFlags }));
      const rel = frame(Proc.RELEASE_RESOURCE, (w) => codec.resource.encode(w, { path: m.lockspace, name, flags: 0 }));
      const c = await Client.connect(m.socket, this, acq, rel);
      this.clients.push(c);
      if (i === 0 && m.lockspace !== '') {
        await c.call(frame(Proc.CREATE_LOCKSPACE, (w) => codec.lockspace.encode(w, { path: m.lockspace })));
      }
      const owner = { uuid: uuidToString(randomBytes(16)), name: `lockbench-${m.id}-${i}`, id: i + 1, pid: m.ownerPidBase + i };
      await c.call(frame(Proc.REGISTER, (w) => codec.register.encode(w, { owner, flags: 0 })));
    }
  }

  /** Called by a client after a completed cycle or a refusal. */
  afterStep(c: Client): void {
    if (this.running) {
      c.startCycle();
      return;
    }
    c.state = IDLE;
    if (--this.active === 0) this.drained?.();
  }

  /** Starts every client; returns a promise that resolves when all are idle after stop(). */
  start(): Promise<void> {
    this.running = true;
    this.active = this.clients.length;
    const done = new Promise<void>((resolve, reject) => {
      this.drained = resolve;
      this.failed = reject;
    });
    for (const c of this.clients) {
      c.onError = (e) => {
        this.running = false;
        this.failed?.(e);
      };
      c.startCycle();
    }
    return done;
  }

  stop(): void {
    this.running = false;
  }

  counters(): { cycles: number; refusals: number; perClient: number[] } {
    let cycles = 0;
    let refusals = 0;
    const perClient: number[] = [];
    for (const c of this.clients) {
      cycles += c.cycles;
      refusals += c.refusals;
      perClient.push(c.cycles);
    }
    return { cycles, refusals, perClient };
  }

  close(): void {
    this.closing = true;
    for (const c of this.clients) c.sock.destroy();
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function snapshot(g: Group, daemonPid: number): Snapshot {
  const t = process.hrtime.bigint();
  const k = g.counters();
  return {
    t,
    ...k,
    daemon: statTicks(`/proc/${daemonPid}/stat`),
    threads: sampleThreads(daemonPid),
    gen: process.cpuUsage(),
    host: hostJiffies(),
  };
}

async function runWindow(g: Group, m: RunMsg): Promise<WindowResult> {
  const done = g.start();
  // (asserted, not annotated: TS would narrow it to null and miss the catch)
  let failure = null as Error | null;
  done.catch((e: Error) => (failure = e));
  await sleep(m.preRollMs);
  const a = snapshot(g, m.daemonPid);
  await sleep(m.durationMs);
  const b = snapshot(g, m.daemonPid);
  g.stop();
  await done;
  if (failure) throw failure;
  let main = 0;
  let other = 0;
  let csw = 0;
  let nvcsw = 0;
  const byName: Record<string, number> = {};
  for (const [tid, s] of b.threads) {
    const d = s.ticks - (a.threads.get(tid)?.ticks ?? 0);
    if (tid === m.daemonPid) main += d;
    else other += d;
    if (d > 0) byName[s.comm] = (byName[s.comm] ?? 0) + d;
    csw += s.csw - (a.threads.get(tid)?.csw ?? 0);
    nvcsw += s.nvcsw - (a.threads.get(tid)?.nvcsw ?? 0);
  }
  const per = b.perClient.map((v, i) => v - a.perClient[i]!);
  const genCpu = process.cpuUsage(a.gen);
  return {
    elapsedMs: Number(b.t - a.t) / 1e6,
    cycles: b.cycles - a.cycles,
    refusals: b.refusals - a.refusals,
    daemonTicks: b.daemon - a.daemon,
    daemonMainTicks: main,
    daemonOtherTicks: other,
    daemonThreads: byName,
    daemonVoluntarySwitches: csw,
    daemonInvoluntarySwitches: nvcsw,
    genCpuUs: genCpu.user + genCpu.system,
    hostBusy: (b.host.busy - a.host.busy) / Math.max(1, b.host.total - a.host.total),
    minClientCycles: Math.min(...per),
    maxClientCycles: Math.max(...per),
  };
}

// ---- IPC loop ------------------------------------------------------------------

const groups = new Map<string, Group>();

function send(m: FromWorker): void {
  process.send!(m);
}

async function handle(m: ToWorker): Promise<void> {
  switch (m.type) {
    case 'setup': {
      const g = new Group(m);
      groups.set(m.id, g);
      await g.setup();
      let warm = { cycles: 0, refusals: 0 };
      if (m.warmupMs > 0) {
        const done = g.start();
        await sleep(m.warmupMs);
        g.stop();
        await done;
        warm = g.counters();
      }
      send({ type: 'ready', id: m.id, warmupCycles: warm.cycles, warmupRefusals: warm.refusals });
      return;
    }
    case 'run': {
      const g = groups.get(m.id);
      if (!g) throw new Error(`no group ${m.id}`);
      send({ type: 'result', id: m.id, result: await runWindow(g, m) });
      return;
    }
    case 'teardown': {
      groups.get(m.id)?.close();
      groups.delete(m.id);
      send({ type: 'closed', id: m.id });
      return;
    }
    case 'exit':
      for (const g of groups.values()) g.close();
      process.exit(0);
  }
}

if (process.send) {
  // Messages are handled one at a time, in order.
  let queue = Promise.resolve();
  process.on('message', (m: ToWorker) => {
    queue = queue.then(() =>
      handle(m).catch((e: Error) => send({ type: 'error', id: 'id' in m ? m.id : '', message: e.message })),
    );
  });
  process.on('disconnect', () => process.exit(0));
}
