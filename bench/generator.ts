// The load generator: a separate, plain node process (none of the daemon's
// flags) that holds the client connections, driven over IPC by a benchmark.
// Requests carry an id; the worker answers each with a message of the same id.

import { fork } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cleanEnv, waitExit } from '../test/lib/relockd.js';

const HERE = dirname(fileURLToPath(import.meta.url));

export class Generator<ToWorker extends { type: string }, FromWorker extends { id: string; type: string; message?: string }> {
  private readonly waiters = new Map<string, { resolve: (m: FromWorker) => void; reject: (e: Error) => void }>();
  private exitErr: Error | null = null;

  private constructor(readonly child: ChildProcess) {
    child.on('message', (m: FromWorker) => {
      const w = this.waiters.get(m.id);
      if (!w) return;
      this.waiters.delete(m.id);
      if (m.type === 'error') w.reject(new Error(`generator: ${m.message}`));
      else w.resolve(m);
    });
    child.once('exit', (code, sig) => {
      this.exitErr = new Error(`generator exited (${code ?? sig})`);
      for (const w of this.waiters.values()) w.reject(this.exitErr);
      this.waiters.clear();
    });
  }

  /** Starts `workerFile` (a compiled module next to this one). */
  static start<T extends { type: string }, F extends { id: string; type: string; message?: string }>(workerFile: string): Generator<T, F> {
    return new Generator<T, F>(fork(join(HERE, workerFile), [], { execArgv: [], stdio: ['ignore', 'inherit', 'inherit', 'ipc'], env: cleanEnv() }));
  }

  get dead(): boolean {
    return this.exitErr !== null;
  }

  request(m: ToWorker & { id: string }): Promise<FromWorker> {
    if (this.exitErr) return Promise.reject(this.exitErr);
    return new Promise((resolve, reject) => {
      this.waiters.set(m.id, { resolve, reject });
      this.child.send(m);
    });
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    try {
      this.child.send({ type: 'exit' });
    } catch {
      /* channel closed */
    }
    if (!(await waitExit(this.child, 3000))) {
      this.child.kill('SIGKILL');
      await waitExit(this.child, 3000);
    }
  }
}
