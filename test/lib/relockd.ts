// Starts the real relockd as a separate process on a socket in a temp dir.

import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import net from 'node:net';
import { linesWithDuplicateKeys } from './logKeys.js';

/** The package root, whether this runs from test/lib or dist/test/lib. */
export const ROOT: string = (() => {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) dir = dirname(dir);
  return dir;
})();
export const RELOCKD_BIN = join(ROOT, 'bin', 'relockd.cjs');
/** The flags of the bin's shebang line, for spawning with process.execPath. */
export const NODE_FLAGS = ['--experimental-permission', '--allow-fs-read=*', '--allow-fs-write=*', '--allow-addons', '--allow-child-process', '--no-warnings'];

/**
 * The environment for processes under test: tap's NODE_OPTIONS (its loader
 * and process-on-spawn hooks) must not leak into the daemon, whose
 * permission model refuses them.
 */
export function cleanEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, ...extra };
  delete env.NODE_OPTIONS;
  for (const k of Object.keys(env)) if (k.startsWith('TAP') || k.startsWith('_TAPJS')) delete env[k];
  return env;
}

/**
 * tap wraps child_process.spawn and re-injects its NODE_OPTIONS into every
 * child; env(1) drops it again right before exec (the pid stays the same).
 */
export const ENV_PREFIX = ['-u', 'NODE_OPTIONS'];

export interface StartedDaemon {
  kind: 'relockd' | 'virtlockd';
  pid: number;
  socketPath: string;
  /** relockd: DIR/virtlockd-admin-sock (the --runtime-dir default). */
  adminSocketPath?: string;
  dir: string;
  logs(): string;
  stop(): Promise<void>;
  kill(signal?: NodeJS.Signals): void;
  /** SIGUSR1, then wait until the new image reports back (relockd: 're-exec complete'). */
  reexec?(timeoutMs?: number): Promise<void>;
  child: ChildProcess;
}

export interface RelockdOptions {
  dir?: string;
  /** Entry script (default: this checkout's bin/relockd.cjs). */
  bin?: string;
  /** Node binary (default: the one running the tests). */
  node?: string;
  args?: string[];
  env?: NodeJS.ProcessEnv;
  /** null: no --log-level (the configuration file decides). */
  logLevel?: string | null;
  /** NODE_OPTIONS for the daemon (set after env(1) has dropped tap's). */
  nodeOptions?: string;
  /** node's own flags, instead of NODE_FLAGS (the permission model). */
  nodeFlags?: string[];
}

export function waitForSocket(path: string, timeoutMs = 15000, isDead?: () => boolean): Promise<void> {
  const start = Date.now();
  return new Promise((resolve, reject) => {
    const attempt = () => {
      if (isDead?.()) return reject(new Error('daemon exited during start-up'));
      if (!existsSync(path)) return retry();
      const s = net.connect(path);
      s.once('connect', () => {
        s.destroy();
        resolve();
      });
      s.once('error', () => {
        s.destroy();
        retry();
      });
    };
    const retry = () => {
      if (Date.now() - start > timeoutMs) return reject(new Error(`socket ${path} not ready after ${timeoutMs} ms`));
      setTimeout(attempt, 20);
    };
    attempt();
  });
}

export function waitExit(child: ChildProcess, timeoutMs: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(false), timeoutMs);
    child.once('exit', () => {
      clearTimeout(t);
      resolve(true);
    });
  });
}

export async function startRelockd(opts: RelockdOptions = {}): Promise<StartedDaemon> {
  const ownDir = !opts.dir;
  const dir = opts.dir ?? mkdtempSync(join(tmpdir(), 'relockd-test-'));
  const socketPath = join(dir, 'relockd.sock');
  let logs = '';
  const child = spawn('/usr/bin/env', [...ENV_PREFIX, ...(opts.nodeOptions ? [`NODE_OPTIONS=${opts.nodeOptions}`] : []), opts.node ?? process.execPath, ...(opts.nodeFlags ?? NODE_FLAGS), opts.bin ?? RELOCKD_BIN, '--runtime-dir', dir, '--socket', socketPath, ...(opts.logLevel === null ? [] : ['--log-level', opts.logLevel ?? 'debug']), ...(opts.args ?? [])], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: cleanEnv(opts.env),
  });
  child.stdout!.on('data', (d) => (logs += d));
  child.stderr!.on('data', (d) => (logs += d));
  let dead = false;
  child.once('exit', () => (dead = true));
  try {
    await waitForSocket(socketPath, 15000, () => dead);
  } catch (e) {
    child.kill('SIGKILL');
    throw new Error(`${(e as Error).message}\n${logs}`, { cause: e });
  }
  return {
    kind: 'relockd',
    pid: child.pid!,
    socketPath,
    adminSocketPath: join(dir, 'virtlockd-admin-sock'),
    dir,
    child,
    logs: () => logs,
    kill: (sig = 'SIGKILL') => {
      if (!dead) process.kill(child.pid!, sig);
    },
    reexec: async (timeoutMs = 15000) => {
      const n = (re: RegExp) => (logs.match(re) ?? []).length;
      const DONE = /"msg":"re-exec complete"/g;
      const FAILED = /"msg":"re-exec failed before execve[^"]*"/g;
      const done0 = n(DONE);
      const failed0 = n(FAILED);
      process.kill(child.pid!, 'SIGUSR1');
      const end = Date.now() + timeoutMs;
      while (n(DONE) === done0 && n(FAILED) === failed0) {
        if (dead) throw new Error(`daemon died during re-exec\n${logs.slice(-4000)}`);
        if (Date.now() > end) throw new Error(`re-exec did not complete in ${timeoutMs} ms\n${logs.slice(-4000)}`);
        await new Promise((r) => setTimeout(r, 5));
      }
      if (n(FAILED) > failed0) throw new Error(`re-exec failed\n${logs.slice(-3000)}`);
    },
    stop: async () => {
      if (!dead) {
        // relockd refuses SIGTERM while leases are held: SIGKILL is the test's hammer.
        process.kill(child.pid!, 'SIGKILL');
        await waitExit(child, 10000);
      }
      if (ownDir) rmSync(dir, { recursive: true, force: true });
      // Every test's daemon: no log line names a key twice (a reader keeps one of them).
      const dups = linesWithDuplicateKeys(logs);
      if (dups.length) throw new Error(`relockd logged ${dups.length} line(s) with a key twice:\n${dups.slice(0, 5).join('\n')}`);
    },
  };
}
