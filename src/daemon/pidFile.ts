// The pid file: created, locked (an OFD write lock on byte 0, which also
// conflicts with virtlockd's classic lock on its pid file), holding our pid.
// A second instance finds it locked and refuses to start, naming the pid.
// The fd is carried across re-execs, so the lock is never let go.

import { closeSync, fstatSync, ftruncateSync, openSync, readFileSync, statSync, unlinkSync, writeSync, constants as fsc } from 'node:fs';
import * as native from '../native.js';

export class PidFileBusyError extends Error {
  override name = 'PidFileBusyError';
}

export class PidFile {
  private constructor(
    readonly path: string,
    readonly fd: number,
  ) {}

  /** Creates and locks `path`, then writes our pid into it. */
  static acquire(path: string): PidFile {
    for (let attempt = 0; attempt < 10; attempt++) {
      // libuv opens every fd O_CLOEXEC.
      const fd = openSync(path, fsc.O_RDWR | fsc.O_CREAT, 0o644);
      try {
        native.ofdLock(fd, 'write', 0, 1);
      } catch (err) {
        closeSync(fd);
        if ((err as { code?: string }).code === 'EAGAIN' || (err as { code?: string }).code === 'EACCES') {
          let holder = '?';
          try {
            holder = readFileSync(path, 'utf8').trim() || '?';
          } catch {
            /* unreadable */
          }
          throw new PidFileBusyError(`another daemon is already running (pid ${holder}; pid file ${path} is locked)`);
        }
        throw err;
      }
      // The file we locked must still be the one at `path` (another process
      // may have removed it between our open and lock).
      let same = false;
      try {
        const a = fstatSync(fd);
        const b = statSync(path);
        same = a.ino === b.ino && a.dev === b.dev;
      } catch {
        same = false;
      }
      if (!same) {
        closeSync(fd);
        continue;
      }
      ftruncateSync(fd, 0);
      writeSync(fd, String(process.pid), 0);
      return new PidFile(path, fd);
    }
    throw new PidFileBusyError(`pid file ${path} keeps being replaced`);
  }

  /** Re-takes an inherited, still locked pid file fd after a re-exec. */
  static adopt(path: string, fd: number): PidFile {
    native.setCloexec(fd, true);
    return new PidFile(path, fd);
  }

  /** At a clean exit: unlink, then close (which drops the lock). */
  remove(): void {
    try {
      unlinkSync(this.path);
    } catch {
      /* already gone */
    }
    try {
      closeSync(this.fd);
    } catch {
      /* already closed */
    }
  }
}
