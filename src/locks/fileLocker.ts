// The kernel side of a lease: open a file, take an OFD lock on byte 0
// length 1, and later close it. Everything here runs off the event loop (the
// addon's worker threads, or libuv's pool), because any of these calls can
// hang on a dead NFS server.

import { promises as fsp } from 'node:fs';
import * as native from '../native.js';
import { toBuffer } from '../byteString.js';

export interface LockedFile {
  fd: number;
  dev: number;
  ino: number;
  /** More than 1 when the lease file moved under us and the lock was retried. */
  attempts?: number;
  retried?: string;
}

export interface LockRequest {
  shared: boolean;
  /** AUTOCREATE: O_CREAT 0600 and the inode re-check loop. */
  create: boolean;
}

export interface ReleaseRequest {
  /** Unlink this path (if it still names the locked file) before closing. */
  unlinkPath: string | null;
  /** Only unlink if the lock can first be upgraded to exclusive. */
  onlyIfExclusive: boolean;
  /** The fd holds a classic POSIX lock (inherited from virtlockd). */
  classic?: boolean;
}

export interface ReleaseResult {
  unlinked: boolean;
  unlinkError?: string;
}

/** Every path here is a byte string (src/byteString.ts): file names are bytes. */
export interface FileLocker {
  lock(path: string, req: LockRequest): Promise<LockedFile>;
  release(fd: number, req: ReleaseRequest): Promise<ReleaseResult>;
  /** The same on the calling thread, for host-local storage (it cannot hang). */
  lockSync(path: string, req: LockRequest): LockedFile;
  /** `id`: the fd's identity recorded at lock time (spares an fstat before an unlink). */
  releaseSync(fd: number, req: ReleaseRequest, id?: { dev: number; ino: number }): ReleaseResult;
  /** CREATE_RESOURCE: open O_WRONLY|O_CREAT 0600, close. */
  touch(path: string): Promise<void>;
  /** DELETE_RESOURCE: unlink; ENOENT is success. */
  unlink(path: string): Promise<void>;
  /** 'dir' | 'other' | 'missing' */
  kind(path: string): Promise<'dir' | 'other' | 'missing'>;
  mkdirp(path: string, mode: number): Promise<void>;
  /** dev/ino of a path (stat, no open), or null when it does not exist. */
  identity(path: string): Promise<{ dev: number; ino: number } | null>;
}

export class NativeFileLocker implements FileLocker {
  lock(path: string, req: LockRequest): Promise<LockedFile> {
    return native.lockFileP(path, req);
  }

  release(fd: number, req: ReleaseRequest): Promise<ReleaseResult> {
    return native.releaseFileP(fd, req);
  }

  lockSync(path: string, req: LockRequest): LockedFile {
    return native.lockFileSync(path, req);
  }

  releaseSync(fd: number, req: ReleaseRequest, id?: { dev: number; ino: number }): ReleaseResult {
    return native.releaseFileSync(fd, req, id);
  }

  async touch(path: string): Promise<void> {
    // Never touch a file we hold a lock on through another lock space: the
    // manager checks that before calling (OFD locks would survive anyway).
    const fh = await fsp.open(toBuffer(path), 'a', 0o600);
    await fh.close();
  }

  async unlink(path: string): Promise<void> {
    try {
      await fsp.unlink(toBuffer(path));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }

  async kind(path: string): Promise<'dir' | 'other' | 'missing'> {
    try {
      const st = await fsp.stat(toBuffer(path));
      return st.isDirectory() ? 'dir' : 'other';
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 'missing';
      throw err;
    }
  }

  async mkdirp(path: string, mode: number): Promise<void> {
    await fsp.mkdir(toBuffer(path), { recursive: true, mode });
  }

  async identity(path: string): Promise<{ dev: number; ino: number } | null> {
    try {
      const st = await fsp.stat(toBuffer(path));
      return { dev: st.dev, ino: st.ino };
    } catch {
      return null;
    }
  }
}
