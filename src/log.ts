// Structured logs: pino, one JSON event per line. Where lines go is a set of
// outputs in libvirt's terms (stderr, file, journald, syslog), each with its
// own minimum level, swappable at run time (SIGHUP, virt-admin). Lines are
// written synchronously, batched per event-loop turn (turnFlush.ts: one
// write(2) per turn, before that turn's replies; flushed at exit and before
// execve), and a vanished log reader never takes the daemon (and its locks)
// down.

import { closeSync, fstatSync, mkdirSync, openSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import { pino } from 'pino';
import type { Level, Logger } from 'pino';
import * as native from './native.js';
import { display } from './byteString.js';
import { atTurnEnd } from './turnFlush.js';

export type { Logger };

export const LOG_LEVELS: readonly Level[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace'];

const LEVEL_RANK: Record<string, number> = { trace: 10, debug: 20, info: 30, warn: 40, error: 50, fatal: 60 };
/** syslog/journald priorities for pino levels. */
const SYSLOG_PRIORITY: Record<string, number> = { trace: 7, debug: 7, info: 6, warn: 4, error: 3, fatal: 2 };

export interface OutputSpec {
  level: string;
  kind: 'stderr' | 'file' | 'journald' | 'syslog';
  path?: string;
  ident?: string;
}

interface Sink {
  rank: number;
  write(line: string, level: string): void;
  /** Several lines at once (stream outputs: one write). */
  writeMany?(lines: string): void;
  close(): void;
}

/** Writes all of `text` to a stream fd; gives up (drops the rest) on an error such as EAGAIN or EPIPE. */
function writeAll(fd: number, text: string): void {
  let buf = Buffer.from(text);
  try {
    for (;;) {
      const n = writeSync(fd, buf);
      if (n >= buf.length) return;
      buf = buf.subarray(n);
    }
  } catch {
    /* EPIPE/EAGAIN/disk full: a dead reader must not kill us; keep serving */
  }
}

/** "<N>" prefixes let journald (via the stderr stream) see each line's priority. */
function stderrSink(rank: number, prefixed: boolean): Sink {
  return {
    rank,
    write(line, level) {
      writeAll(2, prefixed ? `<${SYSLOG_PRIORITY[level] ?? 6}>${line}` : line);
    },
    writeMany: prefixed ? undefined : (lines) => writeAll(2, lines),
    close() {},
  };
}

function fileSink(rank: number, path: string): Sink {
  mkdirSync(dirname(path), { recursive: true });
  const fd = openSync(path, 'a', 0o600);
  return {
    rank,
    write(line) {
      writeAll(fd, line);
    },
    writeMany(lines) {
      writeAll(fd, lines);
    },
    close() {
      try {
        closeSync(fd);
      } catch {
        /* ignore */
      }
    },
  };
}

/** journald's native protocol: one datagram of KEY=value lines per event. */
function journaldSink(rank: number, ident: string, socket = '/run/systemd/journal/socket'): Sink {
  return {
    rank,
    write(line, level) {
      try {
        native.sdNotify(socket, `PRIORITY=${SYSLOG_PRIORITY[level] ?? 6}\nSYSLOG_IDENTIFIER=${ident}\nMESSAGE=${line.replace(/\n$/, '')}\n`);
      } catch {
        /* journald gone */
      }
    },
    close() {},
  };
}

function syslogSink(rank: number, ident: string, socket = '/dev/log'): Sink {
  return {
    rank,
    write(line, level) {
      try {
        native.sdNotify(socket, `<${24 + (SYSLOG_PRIORITY[level] ?? 6)}>${ident}[${process.pid}]: ${line.replace(/\n$/, '')}`);
      } catch {
        /* no syslog */
      }
    },
    close() {},
  };
}

/** True when our stderr is connected to journald (systemd sets JOURNAL_STREAM). */
function stderrIsJournal(): boolean {
  const js = process.env.JOURNAL_STREAM;
  if (!js) return false;
  try {
    const [dev, ino] = js.split(':');
    const st = fstatSync(2);
    return String(st.dev) === dev && String(st.ino) === ino;
  } catch {
    return false;
  }
}

/**
 * The pino destination: finds each line's level (our formatter writes it
 * first) and hands the line to every output whose minimum it meets.
 */
export class LogOutputs {
  private sinks: Sink[] = [];
  specs: OutputSpec[] = [];

  constructor(specs: OutputSpec[]) {
    this.set(specs);
  }

  set(specs: OutputSpec[]): void {
    this.flush(); // lines logged so far go where they were meant to
    const next = specs.map((s) => {
      const rank = LEVEL_RANK[s.level] ?? 30;
      switch (s.kind) {
        case 'file':
          return fileSink(rank, s.path!);
        case 'journald':
          return journaldSink(rank, s.ident ?? 'relockd');
        case 'syslog':
          return syslogSink(rank, s.ident ?? 'relockd');
        default:
          return stderrSink(rank, stderrIsJournal());
      }
    });
    const old = this.sinks;
    this.sinks = next;
    this.specs = specs;
    for (const s of old) s.close();
  }

  /** The lowest level any output wants (the logger's level should not be below it). */
  get minLevel(): Level {
    const r = Math.min(...this.sinks.map((s) => s.rank), 60);
    return (Object.entries(LEVEL_RANK).find(([, v]) => v === r)?.[0] ?? 'info') as Level;
  }

  /** Lines of this turn, with their levels, written at its end. */
  private pendingLines: string[] = [];
  private pendingLevels: string[] = [];
  private readonly flushNow = (): void => this.flush();

  write(line: string): void {
    // '{"level":"info",...' — the level is the first value.
    const end = line.indexOf('"', 10);
    const level = line.startsWith('{"level":"') && end > 10 ? line.slice(10, end) : 'info';
    if (this.pendingLines.length === 0) atTurnEnd(this.flushNow);
    this.pendingLines.push(line);
    this.pendingLevels.push(level);
  }

  /** Writes the pending lines: one write per stream output, one datagram per line otherwise. */
  flush(): void {
    const lines = this.pendingLines;
    const levels = this.pendingLevels;
    if (lines.length === 0) return;
    this.pendingLines = [];
    this.pendingLevels = [];
    const ranks = levels.map((l) => LEVEL_RANK[l] ?? 30);
    for (const s of this.sinks) {
      if (s.writeMany && lines.length > 1) {
        let text = '';
        for (let i = 0; i < lines.length; i++) if (ranks[i]! >= s.rank) text += lines[i];
        if (text) s.writeMany(text);
      } else {
        for (let i = 0; i < lines.length; i++) if (ranks[i]! >= s.rank) s.write(lines[i]!, levels[i]!);
      }
    }
  }
}

export interface DaemonLogger {
  log: Logger;
  outputs: LogOutputs;
  /** Applies a new level and set of outputs (SIGHUP, virt-admin). */
  apply(level: Level, outputs: OutputSpec[]): void;
}

/**
 * Lock-space paths and resource names are byte strings (src/byteString.ts):
 * these fields are logged with display(), i.e. as UTF-8 when they are, and
 * with unambiguous \xHH escapes otherwise. Error messages quote such names.
 */
const shown = (v: unknown) => (typeof v === 'string' ? display(v) : v);
const NAME_SERIALIZERS = {
  lockspace: shown,
  resource: shown,
  dir: shown,
  path: shown,
  file: shown,
  err: (e: unknown) => {
    if (typeof e === 'string') return display(e);
    const o = pino.stdSerializers.err(e as Error) as unknown as { message?: unknown };
    if (o && typeof o === 'object' && typeof o.message === 'string') o.message = display(o.message);
    return o;
  },
};

export function createDaemonLogger(level: Level, outputs: OutputSpec[]): DaemonLogger {
  const out = new LogOutputs(outputs);
  // pino children keep the level they were born with; track them so a new
  // level reaches every connection's and server's logger.
  const children = new Set<WeakRef<Logger>>();
  const log = pino(
    {
      level,
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      serializers: NAME_SERIALIZERS,
      onChild: (child) => {
        children.add(new WeakRef(child));
      },
    },
    out,
  );
  return {
    log,
    outputs: out,
    apply(l, o) {
      out.set(o);
      log.level = l;
      for (const ref of children) {
        const c = ref.deref();
        if (c) c.level = l;
        else children.delete(ref);
      }
    },
  };
}

/** A logger on stderr only (tools and tests). */
export function createLogger(level: Level | 'silent'): Logger {
  return createDaemonLogger(level === 'silent' ? 'fatal' : level, level === 'silent' ? [] : [{ level, kind: 'stderr' }]).log;
}
