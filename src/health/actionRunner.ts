// relockd's side of the action runner (runnerMain.ts): relockd never spawns
// a process while it may hold lease fds (a child's execve closing them
// blocks on a hung FUSE/NFS server, and uv_spawn with it). The runner is
// spawned only when relockd holds no lease fd and no storage call is in
// flight (at a fresh start, before anything is locked), and kept across
// re-execs: its pid and channel fd go into the state document, the fd is
// inherited like a lease fd, and the new image reads the results the runner
// wrote meanwhile. If it dies, nothing respawns it while leases are held:
// programs cannot run, so a killpath/pause owner is terminated through its
// pidfd instead (no fork needed), logged loudly; a new runner is started the
// next time relockd holds nothing.
//
// A runner must never get a lease fd, not even for the instant between fork
// and execve: each program it spawns would then close a copy of it in its
// own execve, which blocks on a hung FUSE/NFS server (the very moment the
// programs are needed), and a copy kept open would keep the OFD lock after
// relockd released it: a lock nobody was granted. So after a crash-restart,
// whose process holds every stored lease fd from its first instruction, no
// runner can be spawned: the old one is kept instead. Its channel is in
// systemd's fd store (daemon/crashStore.ts), so the runner never sees EOF
// while relockd is down, the restarted image gets the channel back (found
// by dev/ino, fdstore/remap.ts) and adopts it as after a re-exec; results
// written meanwhile wait in the socket buffer. After a re-exec the runner
// is still our child, but no ChildProcess object knows it: adopt() watches
// its pidfd and reaps it when it exits (no zombie).

import { spawn } from 'node:child_process';
import net from 'node:net';
import { closeSync, fstatSync, readFileSync } from 'node:fs';
import type { Logger } from 'pino';
import * as native from '../native.js';

export interface RunResult {
  id: number;
  code: number | null;
  signal: string | null;
  ms: number;
  output: string;
  err?: string;
  timedOut?: boolean;
}

/** What the state document keeps of the runner across a re-exec. */
export interface RunnerSaved {
  pid: number;
  fd: number;
  nextId: number;
  /** Bytes of an unfinished line the old image had read. */
  partial: string;
  /** Request ids whose result has not arrived. */
  pending: number[];
  /** The channel's identity, to find it again among the fds systemd hands back after a crash. */
  dev?: string;
  ino?: string;
}

export interface RunnerEvents {
  started(id: number, pid: number): void;
  result(r: RunResult): void;
}

export class ActionRunner {
  private sock: net.Socket | null = null;
  private buf = '';
  private nextId = 1;
  private readonly pending = new Set<number>();
  pid = 0;
  /** Epoch ms of the spawn, for the hello latency log. */
  private spawnedAt = 0;
  /** Bumped whenever another channel is attached (the fd store follows it). */
  generation = 0;
  /** The reap watch of an adopted runner that is our child (after a re-exec); referenced while armed. */
  reapWatch: native.PidfdWatch | null = null;

  constructor(
    private readonly log: Logger,
    private readonly events: RunnerEvents,
  ) {}

  get available(): boolean {
    return this.sock !== null;
  }

  /**
   * Starts a runner. The caller guarantees that no lease fd is open (the
   * child gets a copy of every close-on-exec fd until its execve).
   */
  spawn(argv: readonly string[]): void {
    this.spawnedAt = Date.now();
    const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'ignore', 'inherit', 'pipe'], detached: false });
    child.on('error', (err) => this.log.error({ err: err.message, argv }, 'action runner could not start'));
    child.on('exit', (code, signal) => this.log.info({ runnerPid: child.pid, code, signal }, 'action runner process exited'));
    this.pid = child.pid ?? 0;
    this.attach(child.stdio[3] as net.Socket);
    this.log.info({ runnerPid: this.pid, argv }, 'action runner started (before any lease fd is open; it runs lock-failure programs for relockd)');
  }

  /** In a re-exec'd image: the runner the old image had, on its inherited fd. */
  adopt(saved: RunnerSaved): boolean {
    let sock: net.Socket;
    try {
      sock = new net.Socket({ fd: saved.fd, readable: true, writable: true });
    } catch (err) {
      this.log.error({ err: (err as Error).message, fd: saved.fd, runnerPid: saved.pid }, 'action runner channel not usable after the re-exec');
      if (parentOf(saved.pid) === process.pid) this.watchForReap(saved.pid);
      return false;
    }
    this.pid = saved.pid;
    this.nextId = saved.nextId;
    this.buf = saved.partial;
    for (const id of saved.pending) this.pending.add(id);
    this.attach(sock);
    const child = parentOf(saved.pid) === process.pid;
    if (child) this.watchForReap(saved.pid);
    this.log.info({ runnerPid: saved.pid, fd: saved.fd, pending: saved.pending, ourChild: child }, child ? 'action runner carried over the re-exec' : 'action runner carried over the crash (its channel was in the fd store)');
    // Results already complete in the saved bytes.
    this.onData('');
    return true;
  }

  /** Sends a program to run; its id, or null when there is no runner. */
  run(argv: readonly string[], env: Record<string, string>, timeoutMs: number): number | null {
    if (!this.sock) return null;
    const id = this.nextId++;
    this.pending.add(id);
    this.sock.write(`${JSON.stringify({ op: 'run', id, argv, env, timeoutMs })}\n`);
    return id;
  }

  isPending(id: number): boolean {
    return this.pending.has(id);
  }

  /** For the state document (called in the synchronous stretch before execve, so no read comes in between). */
  save(): RunnerSaved | null {
    const fd = this.fd();
    if (!this.sock || fd === null) return null;
    let id: { dev?: string; ino?: string } = {};
    try {
      const st = fstatSync(fd, { bigint: true });
      id = { dev: String(st.dev), ino: String(st.ino) };
    } catch {
      /* no identity: a crash-restart then drops the runner */
    }
    return { pid: this.pid, fd, nextId: this.nextId, partial: this.buf, pending: [...this.pending], ...id };
  }

  /**
   * An adopted runner is our child (a re-exec keeps the pid) but libuv does
   * not know it: reap it ourselves when its pidfd says it exited.
   */
  private watchForReap(pid: number): void {
    let pidfd: number;
    try {
      pidfd = native.pidfdOpen(pid);
    } catch {
      this.reapNow(pid); // already gone
      return;
    }
    this.reapWatch = native.watchPidfd(pidfd, () => {
      this.reapWatch = null;
      closeSync(pidfd);
      this.reapNow(pid);
    });
    this.reapWatch.unref();
  }

  private reapNow(pid: number): void {
    try {
      const st = native.reapChild(pid);
      if (st) this.log.info({ runnerPid: pid, code: st.code ?? null, signal: st.signal ?? null }, 'action runner process exited (reaped)');
    } catch {
      /* not our child (any more) */
    }
  }

  fd(): number | null {
    const h = (this.sock as unknown as { _handle?: { fd?: number } } | null)?._handle;
    return typeof h?.fd === 'number' && h.fd >= 0 ? h.fd : null;
  }

  close(): void {
    this.sock?.destroy();
    this.sock = null;
  }

  private attach(sock: net.Socket): void {
    this.sock = sock;
    this.generation++;
    sock.setEncoding('utf8');
    sock.on('data', (c: string) => this.onData(c));
    const lost = (why: string) => {
      if (this.sock !== sock) return;
      this.sock = null;
      const lostIds = [...this.pending];
      this.pending.clear();
      this.log.error({ runnerPid: this.pid, why, pendingLost: lostIds }, 'ACTION RUNNER GONE: lock-failure programs cannot run until relockd holds no lease (owners of a failed lock space are terminated through their pidfd instead)');
      for (const id of lostIds) this.events.result({ id, code: null, signal: null, ms: 0, output: '', err: 'the action runner died before reporting' });
    };
    sock.on('end', () => lost('channel closed'));
    sock.on('close', () => lost('channel closed'));
    sock.on('error', (err) => lost(err.message));
  }

  private onData(chunk: string): void {
    this.buf += chunk;
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl);
      this.buf = this.buf.slice(nl + 1);
      let m: Record<string, unknown>;
      try {
        m = JSON.parse(line) as Record<string, unknown>;
      } catch {
        this.log.error({ line: line.slice(0, 200) }, 'action runner sent a line that is not JSON');
        continue;
      }
      switch (m.ev) {
        case 'hello':
          this.log.info({ runnerPid: m.pid, ms: this.spawnedAt ? Date.now() - this.spawnedAt : undefined }, 'action runner ready');
          break;
        case 'started':
          this.events.started(Number(m.id), Number(m.pid));
          break;
        case 'exit': {
          const id = Number(m.id);
          if (!this.pending.delete(id)) break;
          this.events.result({
            id,
            code: typeof m.code === 'number' ? m.code : null,
            signal: typeof m.signal === 'string' ? m.signal : null,
            ms: Number(m.ms),
            output: String(m.output ?? ''),
            ...(typeof m.err === 'string' ? { err: m.err } : {}),
            ...(m.timedOut ? { timedOut: true } : {}),
          });
          break;
        }
        default:
          this.log.error({ report: m }, 'action runner reported an error');
      }
    }
  }
}

/** The parent pid of `pid` (/proc, never storage), or 0. */
function parentOf(pid: number): number {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return Number(s.slice(s.lastIndexOf(')') + 2).split(' ')[1]);
  } catch {
    return 0;
  }
}
