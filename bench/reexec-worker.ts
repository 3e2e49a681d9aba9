// Load generator for reexecbench, run as a child process (fork with IPC), so
// that the clients' work is not done by the process that reads the daemons'
// logs, and so that a re-exec is seen from outside, like a VM host sees it.
//
// It holds "cells": C registered connections to one daemon, over which the
// cell's L leases are spread (lease j is held by client j mod C). On "run" it
// performs one measured re-exec:
//
//   t0 = CLOCK_MONOTONIC; kill(daemon, SIGUSR1)
//   · EARLY: every old client sends a keepalive PING at once. It lands in the
//     old image's quiesce: answered by the old image, or carried across the
//     exec and answered by the new one. It must be answered either way; one
//     still unanswered when everything else is done (plus a grace period) is
//     a lost request, an error.
//   · the daemon's exec is watched from outside: /proc/<pid>/stat field 28
//     (startstack) changes with every execve (stack ASLR), polled every 1 ms;
//   · LATE: once the exec is seen, every old client sends ACQUIRE of its spare
//     resource (then RELEASE of it). Only the new image can answer; the
//     ACQUIRE reply is "this client is served again".
//   · NEW: also once the exec is seen, a new connection connects and sends
//     REGISTER. (Not earlier: the old image could
//     still accept and answer it before it sees the signal. And virtlockd
//     exits — status 9, every lock lost — when a connection it accepted is
//     not registered yet when it saves its state.)
//
// The blackout ends with the first reply from the new image: to a late
// ACQUIRE or to the new connection's REGISTER, whichever comes first.
//
// Every time is in ms since t0. Any error reply, connection error or
// disconnect is an error of the run ("clients see a delay, never an error");
// so is a request still unanswered at the end.

import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { LockspaceClient } from '../src/protocol/lockspaceClient.js';
import { uuidToString } from '../src/protocol/lockspace.js';
import type { Owner } from '../src/locks/lockManager.js';

// ---- messages ----------------------------------------------------------------

export interface CellSetupMsg {
  type: 'setup';
  id: string;
  socket: string;
  clients: number;
  /** Lease j is `${leaseDir}/lease-${j}.img`, held by client j mod clients; client i's spare is `${leaseDir}/spare-${i}.img`. */
  leaseDir: string;
  leases: number;
  /** Owner pids are ownerPidBase + i: above pid_max, so never a real process (no daemon kills anything). */
  ownerPidBase: number;
}

export interface CellRunMsg {
  type: 'run';
  id: string;
  /** The daemon's pid: SIGUSR1 goes there; its /proc/<pid>/stat shows the exec. */
  pid: number;
  /** Owner pid for the new connection's REGISTER. */
  newOwnerPid: number;
  timeoutMs: number;
  /** How long to wait for early PONGs once everything else is answered. */
  graceMs: number;
}

export type ToReexecWorker = CellSetupMsg | CellRunMsg | { type: 'teardown'; id: string } | { type: 'exit' };

export interface RunResult {
  /** ms from t0 to the first observation of the new image (polled every ~1 ms; -1: never seen). */
  execSeenMs: number;
  /** ms from t0 to the REGISTER reply on the new connection (-1: none). */
  newConnMs: number;
  /** ms from t0 to the first reply of the new image (late ACQUIRE or REGISTER; -1: none). */
  firstReplyMs: number;
  /** Per old client, ms from t0 to the PONG of its early PING (-1: lost). */
  early: number[];
  /** Per old client, ms from t0 to the reply to its late ACQUIRE (-1: none). */
  late: number[];
  /** Early PINGs answered before the exec was seen (by the old image). */
  earlyBeforeExec: number;
  /** Early PINGs never answered. */
  lostPings: number;
  errors: string[];
  /** The generator's own CPU during the run, ms (user + system). */
  genCpuMs: number;
  /** The generator's wall time for sending all early PINGs, ms (how long "at once" took). */
  sendEarlyMs: number;
}

export type FromReexecWorker =
  | { type: 'ready'; id: string; setupMs: number }
  | { type: 'result'; id: string; result: RunResult }
  | { type: 'closed'; id: string }
  | { type: 'error'; id: string; message: string };

// ---- helpers -----------------------------------------------------------------

/** /proc/<pid>/stat field 28 (startstack): new on every execve (ASLR). */
export function startStack(pid: number): string {
  const s = readFileSync(`/proc/${pid}/stat`, 'latin1');
  return s.slice(s.lastIndexOf(')') + 2).split(' ')[25]!;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function owner(name: string, id: number, pid: number): Owner {
  return { uuid: uuidToString(randomBytes(16)), name, id, pid };
}

/** Runs fn over items with at most `limit` in flight. */
async function pool<T>(items: T[], limit: number, fn: (x: T) => Promise<void>): Promise<void> {
  let next = 0;
  const runners = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) await fn(items[next++]!);
  });
  await Promise.all(runners);
}

// ---- a cell ------------------------------------------------------------------

interface Client {
  i: number;
  lc: LockspaceClient;
  spare: string;
}

/** The measurement in progress. */
interface Current {
  t0: bigint;
  early: number[];
  errors: string[];
}

class Cell {
  clients: Client[] = [];
  closing = false;
  /** Errors seen outside a run (a connection closed while idle): reported by the next run. */
  idleErrors: string[] = [];
  private cur: Current | null = null;

  constructor(readonly msg: CellSetupMsg) {}

  private error(e: string): void {
    (this.cur?.errors ?? this.idleErrors).push(e);
  }

  /**
   * A PONG arrived on client c. Keepalive replies carry no serial and
   * RpcClient resolves its ping() promises in order, so a PONG lost in an
   * earlier run would shift the pairing: count arrivals, not promises.
   */
  private onPong(c: Client): void {
    const cur = this.cur;
    if (cur && cur.early[c.i] === -1) cur.early[c.i] = Number(process.hrtime.bigint() - cur.t0) / 1e6;
  }

  async setup(): Promise<number> {
    const m = this.msg;
    const t = process.hrtime.bigint();
    const idx = Array.from({ length: m.clients }, (_, i) => i);
    // The harness's virtlockd listens with backlog 30: stay below it.
    await pool(idx, 16, async (i) => {
      const lc = await LockspaceClient.connect(m.socket);
      const c: Client = { i, lc, spare: `${m.leaseDir}/spare-${i}.img` };
      lc.rpc.socket.on('close', () => {
        if (!this.closing) this.error(`client ${i}: connection closed by the daemon`);
      });
      lc.rpc.socket.on('error', (e) => this.error(`client ${i}: ${e.message}`));
      await lc.register(owner(`reexecbench-${m.id}-${i}`, i + 1, m.ownerPidBase + i));
      this.clients[i] = c;
    });
    // Leases: every client pipelines its share (up to 32 in flight).
    await pool(this.clients, 64, async (c) => {
      const mine: number[] = [];
      for (let j = c.i; j < m.leases; j += m.clients) mine.push(j);
      await pool(mine, 32, (j) => c.lc.acquire('', `${m.leaseDir}/lease-${j}.img`, 0));
    });
    if (this.idleErrors.length) throw new Error(`setup: ${this.idleErrors.join('; ')}`);
    return Number(process.hrtime.bigint() - t) / 1e6;
  }

  async run(r: CellRunMsg): Promise<RunResult> {
    const m = this.msg;
    const n = this.clients.length;
    const errors: string[] = this.idleErrors.splice(0);
    const early = new Array<number>(n).fill(-1);
    const late = new Array<number>(n).fill(-1);
    let newConnMs = -1;
    let execSeenMs = -1;
    // Late ACQUIRE + RELEASE per client, and the new connection.
    let outstanding = 2 * n + 1;
    let finish!: () => void;
    const finished = new Promise<void>((resolve) => (finish = resolve));
    const done = () => {
      if (--outstanding === 0) finish();
    };
    const fail = (what: string) => (e: unknown) => {
      errors.push(`${what}: ${(e as Error).message ?? String(e)}`);
      done();
    };
    let t0 = 0n;
    const now = () => Number(process.hrtime.bigint() - t0) / 1e6;
    let newConn: LockspaceClient | null = null;
    let newConnClosing = false;
    const startNewConn = () => {
      const t = now();
      void LockspaceClient.connect(m.socket)
        .then((lc) => {
          newConn = lc;
          lc.rpc.socket.on('close', () => {
            if (!newConnClosing) errors.push('new connection: closed by the daemon');
          });
          return lc.register(owner(`reexecbench-new-${m.id}`, 1, r.newOwnerPid));
        })
        .then(() => {
          newConnMs = now();
          done();
        }, fail(`new connection (connect at ${t.toFixed(1)} ms)`));
    };
    const sendLate = () => {
      for (const c of this.clients) {
        c.lc.acquire('', c.spare, 0).then(
          () => {
            late[c.i] = now();
            done();
            c.lc.release('', c.spare, 0).then(done, fail(`client ${c.i}: RELEASE of the spare`));
          },
          (e) => {
            fail(`client ${c.i}: late ACQUIRE`)(e);
            done(); // no RELEASE follows
          },
        );
      }
    };
    const stack0 = startStack(r.pid);
    let timer: NodeJS.Timeout | undefined;
    const checkExec = (): boolean => {
      let s: string;
      try {
        s = startStack(r.pid);
      } catch {
        errors.push('daemon process gone');
        clearInterval(timer);
        finish();
        return true;
      }
      if (s === stack0) return false;
      clearInterval(timer);
      execSeenMs = now();
      startNewConn();
      sendLate();
      return true;
    };

    const cpu0 = process.cpuUsage();
    // ---- t0 ------------------------------------------------------------------
    t0 = process.hrtime.bigint();
    this.cur = { t0, early, errors };
    process.kill(r.pid, 'SIGUSR1');
    for (const c of this.clients) void c.lc.ping().then(() => this.onPong(c));
    const sendEarlyMs = now();
    if (!checkExec()) timer = setInterval(checkExec, 1);
    const deadline = setTimeout(finish, r.timeoutMs);
    await finished;
    clearInterval(timer);
    // Early PONGs: requests are answered in order on a connection, so once
    // the late ones are answered a missing PONG is lost; the grace period
    // only covers the generator reading them.
    const graceEnd = Date.now() + r.graceMs;
    while (early.includes(-1) && Date.now() < graceEnd && outstanding <= 0) await sleep(5);
    clearTimeout(deadline);
    const cpu = process.cpuUsage(cpu0);
    this.cur = null;
    const lostPings = early.filter((x) => x < 0).length;
    if (execSeenMs < 0) errors.push(`exec not seen within ${r.timeoutMs} ms`);
    if (outstanding > 0) {
      const l = late.filter((x) => x < 0).length;
      errors.push(`unanswered after ${r.timeoutMs} ms: ${l} late ACQUIREs (or their RELEASEs)${newConnMs < 0 ? ', the new connection' : ''}`);
    }
    if (lostPings) errors.push(`${lostPings} keepalive PINGs sent right after SIGUSR1 never answered`);
    // The new connection has done its job; a registered owner without leases
    // closing is harmless for both daemons.
    newConnClosing = true;
    (newConn as LockspaceClient | null)?.close();
    const replies = [newConnMs, ...late].filter((x) => x >= 0);
    return {
      execSeenMs,
      newConnMs,
      firstReplyMs: replies.length ? Math.min(...replies) : -1,
      early,
      late,
      earlyBeforeExec: execSeenMs < 0 ? 0 : early.filter((x) => x >= 0 && x < execSeenMs).length,
      lostPings,
      errors,
      genCpuMs: (cpu.user + cpu.system) / 1000,
      sendEarlyMs,
    };
  }

  close(): void {
    this.closing = true;
    for (const c of this.clients) c?.lc.close();
  }
}

// ---- IPC loop ------------------------------------------------------------------

const cells = new Map<string, Cell>();

function send(m: FromReexecWorker): void {
  process.send!(m);
}

async function handle(m: ToReexecWorker): Promise<void> {
  switch (m.type) {
    case 'setup': {
      const c = new Cell(m);
      cells.set(m.id, c);
      send({ type: 'ready', id: m.id, setupMs: await c.setup() });
      return;
    }
    case 'run': {
      const c = cells.get(m.id);
      if (!c) throw new Error(`no cell ${m.id}`);
      send({ type: 'result', id: m.id, result: await c.run(m) });
      return;
    }
    case 'teardown': {
      cells.get(m.id)?.close();
      cells.delete(m.id);
      await sleep(10);
      send({ type: 'closed', id: m.id });
      return;
    }
    case 'exit':
      for (const c of cells.values()) c.close();
      process.exit(0);
  }
}

if (process.send) {
  // Messages are handled one at a time, in order.
  let queue = Promise.resolve();
  process.on('message', (m: ToReexecWorker) => {
    queue = queue.then(() => handle(m).catch((e: Error) => send({ type: 'error', id: 'id' in m ? m.id : '', message: e.message })));
  });
  process.on('disconnect', () => process.exit(0));
}
