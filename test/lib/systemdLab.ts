// A real systemd (Debian's, as PID 1 of a private pid + mount namespace: the shared lab's
// test/fixtures/systemd-ns.sh) for tests of relockd's real units: install units into it with every
// system path rewritten into the lab's own directory, start it, run commands in it, read unit
// properties and systemd's own log, probe locks from another process, and tear it all down.
//
// Reusable by every test that needs systemd (the units test, the fd-store crash proof): one
// SystemdLab per test file, opened under the machine-wide flock /tmp/relockd-systemd-lab.lock (the
// lab is exclusive), closed in a teardown.
//
// Why a copy of the tree: the lab mounts private tmpfs on /tmp, /var/tmp and /run, so a checkout
// under /tmp (a CI clone) is invisible inside it; the lab then runs a copy (hard links where the
// filesystem allows) of the runtime tree from its base directory, in the checkout or $HOME.

import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcess, ChildProcessByStdio } from 'node:child_process';
import type { Readable, Writable } from 'node:stream';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { ROOT } from './relockd.js';

const LAB_SCRIPT = join(ROOT, 'test', 'fixtures', 'systemd-ns.sh');
const LAB_LOCK = '/tmp/relockd-systemd-lab.lock';
const DEBIAN_VIRTLOCKD_UNITS = ['virtlockd.service', 'virtlockd.socket', 'virtlockd-admin.socket'].map((u) => `/lib/systemd/system/${u}`);

/** Why the lab cannot run here ('' when it can). */
export function labUnavailable(opts: { virtlockdUnits?: boolean } = {}): string {
  if (process.getuid?.() !== 0) return 'needs root';
  if (!existsSync('/lib/systemd/systemd')) return 'needs systemd (Debian package systemd)';
  if (!existsSync('/usr/bin/python3')) return 'needs python3 (lock probes)';
  if (opts.virtlockdUnits && !DEBIAN_VIRTLOCKD_UNITS.every((u) => existsSync(u))) return "needs Debian's virtlockd units (package libvirt-daemon-system)";
  return '';
}

export interface InLabResult {
  code: number | null;
  out: string;
  err: string;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` until it returns a truthy value or `ms` pass; returns the last value. */
export async function waitFor<T>(fn: () => T, ms = 10_000, every = 100): Promise<T> {
  const end = Date.now() + ms;
  let v = fn();
  while (!v && Date.now() < end) {
    await sleep(every);
    v = fn();
  }
  return v;
}

export class SystemdLab {
  /** The lab's own directory (not under /tmp, /var/tmp or /run): units, state, files the units use. */
  readonly base: string;
  /** The relockd tree the lab runs (the checkout, or a copy of its runtime parts). */
  readonly app: string;
  readonly unitDir: string;
  /** The lab script's STATEDIR (pid, systemd.log); also where tests put their files. */
  readonly state: string;
  private lock: ChildProcess | null = null;
  private upPid = '';
  private spawned: ChildProcess[] = [];

  private constructor(prefix: string) {
    const hidden = /^\/(tmp|var\/tmp|run)\//.test(`${ROOT}/`);
    this.base = mkdtempSync(join(hidden ? homedir() : ROOT, `.lab-systemd-${prefix}-`));
    this.app = hidden ? join(this.base, 'app') : ROOT;
    if (hidden) {
      mkdirSync(this.app);
      for (const d of ['bin', 'dist', 'build', 'node_modules', 'schemas', 'units', 'package.json', 'test']) {
        if (spawnSync('cp', ['-al', join(ROOT, d), this.app]).status !== 0) spawnSync('cp', ['-a', join(ROOT, d), this.app]);
      }
    }
    this.unitDir = join(this.base, 'units');
    this.state = join(this.base, 'state');
    mkdirSync(this.unitDir, { recursive: true });
    mkdirSync(this.state, { recursive: true });
  }

  /** Takes the lab's machine-wide lock (waits up to `waitSec`), then makes the lab's directories. */
  static async open(prefix: string, waitSec = 900): Promise<SystemdLab> {
    const lock = spawn('flock', ['-w', String(waitSec), LAB_LOCK, 'sh', '-c', 'echo locked; exec cat'], { stdio: ['pipe', 'pipe', 'inherit'] });
    const ok = await new Promise<boolean>((resolve) => {
      lock.stdout!.once('data', () => resolve(true));
      lock.once('exit', () => resolve(false));
    });
    if (!ok) throw new Error(`could not take ${LAB_LOCK} within ${waitSec} s`);
    const lab = new SystemdLab(prefix);
    lab.lock = lock;
    return lab;
  }

  writeUnit(name: string, text: string): void {
    writeFileSync(join(this.unitDir, name), text);
  }

  dropIn(unit: string, name: string, text: string): void {
    mkdirSync(join(this.unitDir, `${unit}.d`), { recursive: true });
    writeFileSync(join(this.unitDir, `${unit}.d`, name), text);
  }

  /**
   * Starts systemd. (Its own log goes to the console of PID 1, i.e. the host's /dev/console, not to
   * STATEDIR/systemd.log: read states with show(), and let services log to files.)
   */
  up(): InLabResult {
    const r = spawnSync('bash', [LAB_SCRIPT, 'up', this.unitDir, this.state], { encoding: 'utf8', timeout: 60_000 });
    if (r.status === 0) this.upPid = r.stdout.trim();
    return { code: r.status, out: r.stdout ?? '', err: r.stderr ?? '' };
  }

  get isUp(): boolean {
    return this.upPid !== '';
  }

  /** Runs a command inside the lab (its pid and mount namespace) and waits for it. */
  run(args: string[], timeout = 120_000): InLabResult {
    if (process.env.RELOCKD_LAB_TRACE) process.stderr.write(`${new Date().toISOString()} lab: ${args.join(' ').slice(0, 160)}\n`);
    const r = spawnSync('bash', [LAB_SCRIPT, 'run', this.state, ...args], { encoding: 'utf8', timeout, env: { ...process.env, NODE_OPTIONS: '' } });
    return { code: r.status, out: r.stdout ?? '', err: r.stderr ?? '' };
  }

  /** Starts a long-running command inside the lab (killed with the lab). */
  spawn(args: string[]): ChildProcess {
    const c = spawn('bash', [LAB_SCRIPT, 'run', this.state, ...args], { stdio: 'ignore', env: { ...process.env, NODE_OPTIONS: '' } });
    this.spawned.push(c);
    return c;
  }

  /** Starts a long-running command inside the lab with its stdin and stdout piped to the test (killed with the lab). */
  spawnPiped(args: string[]): ChildProcessByStdio<Writable, Readable, null> {
    const c = spawn('bash', [LAB_SCRIPT, 'run', this.state, ...args], { stdio: ['pipe', 'pipe', 'inherit'], env: { ...process.env, NODE_OPTIONS: '' } });
    this.spawned.push(c);
    return c;
  }

  /** `systemctl show UNIT -p …` as a map. */
  show(unit: string, props: string[]): Record<string, string> {
    const out = this.run(['systemctl', 'show', unit, ...props.flatMap((p) => ['-p', p])]).out;
    const m: Record<string, string> = {};
    for (const line of out.split('\n')) {
      const i = line.indexOf('=');
      if (i > 0) m[line.slice(0, i)] = line.slice(i + 1);
    }
    return m;
  }

  /** relockctl (this tree's) inside the lab; `json` is its parsed output when it printed JSON. */
  relockctl(args: string[], timeout = 120_000): InLabResult & { json: any } {
    const r = this.run(['/usr/bin/env', '-u', 'NODE_OPTIONS', process.execPath, join(this.app, 'bin', 'relockctl.cjs'), ...args], timeout);
    let json: any = null;
    try {
      json = JSON.parse(r.out);
    } catch {
      /* text */
    }
    return { ...r, json };
  }

  /** The argv that starts `relockctl run … -- COMMAND` inside the lab (for spawn). */
  relockctlArgv(args: string[]): string[] {
    return ['/usr/bin/env', '-u', 'NODE_OPTIONS', process.execPath, join(this.app, 'bin', 'relockctl.cjs'), ...args];
  }

  /** 'held' or 'free': a fcntl F_SETLK probe of byte 0 from a fresh process (classic and OFD locks conflict). */
  probe(path: string): string {
    return this.run(['python3', '-c', 'import fcntl,os,sys\ntry: fd=os.open(sys.argv[1],os.O_RDWR)\nexcept FileNotFoundError: print("free"); sys.exit(0)\ntry:\n  fcntl.lockf(fd,fcntl.LOCK_EX|fcntl.LOCK_NB,1,0); print("free")\nexcept OSError: print("held")', path]).out.trim();
  }

  file(name: string): string {
    return join(this.state, name);
  }

  read(name: string): string {
    const f = this.file(name);
    return existsSync(f) ? readFileSync(f, 'utf8') : '';
  }

  /** SIGKILLs the lab's systemd (everything inside dies with it), releases the lock, removes the base. */
  close(): void {
    if (this.upPid) spawnSync('bash', [LAB_SCRIPT, 'down', this.state]);
    this.upPid = '';
    for (const c of this.spawned) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    this.lock?.stdin?.end();
    this.lock?.kill();
    this.lock = null;
    // RELOCKD_LAB_KEEP=1 keeps the lab's directory (logs, units) for a post-mortem.
    if (!process.env.RELOCKD_LAB_KEEP) rmSync(this.base, { recursive: true, force: true });
  }
}

/** Path prefixes a unit installed into the lab must not name (host system paths). */
const SYSTEM_PATHS = /(^|[\s=:'"-])\/(etc|run|var\/lib|var\/run|usr\/sbin\/relockd)\b/m;

/**
 * relockd's own units (units/relockd.service, relockd.socket, relockd-admin.socket) as they ship,
 * with only their system paths rewritten into the lab: /run/relockd → STATE/run,
 * /etc/default/relockd → STATE/default-relockd, /usr/sbin/relockd → this tree's bin/relockd.cjs.
 * A drop-in 50-lab.conf adds what the lab lacks: a log file (no journal) and node on PATH.
 * Returns the rewritten runtime directory.
 */
export function installRelockdUnits(lab: SystemdLab): { runtimeDir: string; socket: string; adminSocket: string; defaults: string } {
  const runtimeDir = lab.file('run');
  const defaults = lab.file('default-relockd');
  for (const u of ['relockd.service', 'relockd.socket', 'relockd-admin.socket']) {
    const text = rewrite(readFileSync(join(ROOT, 'units', u), 'utf8'), lab, { '/run/relockd': runtimeDir, '/etc/default/relockd': defaults });
    lab.writeUnit(u, text);
  }
  lab.dropIn('relockd.service', '50-lab.conf', labDropIn(lab, 'relockd.log'));
  return { runtimeDir, socket: join(runtimeDir, 'relockd-sock'), adminSocket: join(runtimeDir, 'relockd-admin-sock'), defaults };
}

/**
 * Debian's virtlockd units (/lib/systemd/system) with the takeover drop-in
 * (units/virtlockd-takeover/virtlockd.service.d/relockd.conf), paths rewritten into the lab as for
 * installRelockdUnits (/run/libvirt → STATE/run-libvirt, /etc/default/* → STATE/default-*).
 */
export function installVirtlockdTakeoverUnits(lab: SystemdLab): { runtimeDir: string; socket: string; adminSocket: string; defaults: string } {
  const runtimeDir = lab.file('run-libvirt');
  const defaults = lab.file('default-relockd');
  const map = { '/run/libvirt': runtimeDir, '/etc/default/relockd': defaults, '/etc/default/virtlockd': lab.file('default-virtlockd') };
  for (const u of DEBIAN_VIRTLOCKD_UNITS) lab.writeUnit(u.replace(/.*\//, ''), rewrite(readFileSync(u, 'utf8'), lab, map));
  lab.dropIn('virtlockd.service', 'relockd.conf', rewrite(readFileSync(join(ROOT, 'units', 'virtlockd-takeover', 'virtlockd.service.d', 'relockd.conf'), 'utf8'), lab, map));
  lab.dropIn('virtlockd.service', '50-lab.conf', labDropIn(lab, 'relockd.log'));
  return { runtimeDir, socket: join(runtimeDir, 'virtlockd-sock'), adminSocket: join(runtimeDir, 'virtlockd-admin-sock'), defaults };
}

/** Writes the EnvironmentFile the units read: relockd's flags (a config file in the lab, and `args`). */
export function writeRelockdDefaults(lab: SystemdLab, defaults: string, args: string[], conf = ''): void {
  const cf = lab.file('relockd.conf');
  writeFileSync(cf, conf);
  // A pid and state file in the lab whatever the unit's runtime dir (virtlockd's defaults are in /run).
  writeFileSync(defaults, `RELOCKD_ARGS="-f ${cf} ${args.join(' ')}"\n`);
}

function rewrite(text: string, lab: SystemdLab, map: Record<string, string>): string {
  let s = text.replace(/\/usr\/sbin\/relockd\b/g, join(lab.app, 'bin', 'relockd.cjs'));
  for (const [from, to] of Object.entries(map)) s = s.split(from).join(to);
  // Only directives matter (comments may name the real paths they document).
  const directives = s.split('\n').filter((l) => !/^\s*[#;]/.test(l)).join('\n');
  const bad = SYSTEM_PATHS.exec(directives);
  if (bad) throw new Error(`unit still names a system path after the rewrite: ${bad[0]}\n${directives}`);
  return s;
}

function labDropIn(lab: SystemdLab, log: string): string {
  // bin/relockd.cjs starts with `#!/usr/bin/env -S node …`: this node on PATH.
  return `[Service]\nEnvironment=PATH=${dirname(process.execPath)}:/usr/sbin:/usr/bin:/sbin:/bin\nStandardOutput=append:${lab.file(log)}\nStandardError=inherit\n`;
}
