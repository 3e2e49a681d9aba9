/**
 * Typed access to relockd's native addon (native/relockd.cc).
 *
 * Errors:
 * - wrong argument types (and bad enum strings) throw TypeError, out-of-range
 *   numbers RangeError;
 * - failed system calls throw (or pass to the callback) a {@link NativeError}:
 *   `code` is the errno name ('EAGAIN'), `errno` the positive C errno number
 *   (Node's own errors use negative numbers; compare `code`, not `errno`),
 *   `syscall` the call label ('fcntl(F_OFD_SETLK)'), and the message reads
 *   `fcntl(F_OFD_SETLK): Resource temporarily unavailable`.
 *
 * Everything here is synchronous and cheap except lockFile/releaseFile, which
 * touch storage and therefore run on the libuv threadpool.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export type LockType = 'read' | 'write';

export type NativeError = Error & {
  code: string;
  errno: number;
  syscall: string;
  /** lockFile: 'open' | 'lock' | 'stat'; releaseFile: 'close'. */
  stage?: string;
};

export interface LockInfo {
  type: LockType;
  start: number;
  len: number;
  /** Holder's pid for a classic POSIX lock, -1 for an OFD lock. */
  pid: number;
}

export interface PeerCred {
  pid: number;
  uid: number;
  gid: number;
}

export interface LockFileOptions {
  /** Read (shared) lock instead of a write (exclusive) lock. */
  shared: boolean;
  /** O_CREAT (mode 0600), and re-check that the path still names the locked file. */
  create: boolean;
}

export interface LockFileResult {
  /** O_CLOEXEC fd holding an OFD lock on byte 0 (length 1). */
  fd: number;
  dev: number;
  ino: number;
  /** True when this call created the file. */
  created: boolean;
  /** Open+lock attempts it took (more than 1: the name moved under us, e.g. an NFS handover). */
  attempts?: number;
  /** Why the last retry happened, when there was one. */
  retried?: string;
}

export interface ReleaseFileOptions {
  /** Delete this path if it still names the fd's file; null: just close. */
  unlinkPath: string | null;
  /** Delete only if the lock can be upgraded to write, i.e. nobody else holds it. */
  onlyIfExclusive: boolean;
  /** The fd holds a classic POSIX lock (taken over from virtlockd), not an OFD lock. */
  classic?: boolean;
}

export interface ReleaseFileResult {
  unlinked: boolean;
  /** errno name of a failed upgrade/stat/unlink step (never ENOENT); the fd was closed anyway. */
  unlinkError?: string;
  /** errno name when close() reported e.g. EIO; the fd is released anyway on Linux. */
  closeError?: string;
}

/** How a process ended (a wait(2) status, decoded). */
export interface ExitInfo {
  /** Exit code, when it exited. */
  code?: number;
  /** Signal number, when a signal killed it. */
  signal?: number;
  coreDumped?: boolean;
  /** The raw wait status. */
  status: number;
}

/**
 * Reads of a connected socket that leave the kernel only when consumed: the
 * callback gets the queued bytes (MSG_PEEK), null at end of stream, or an
 * error; it must consume() or pause(), else it is called again with the same
 * bytes. Starts paused. Its poll is on a close-on-exec dup of the fd.
 */
export interface PeekReader {
  /** Takes n bytes (already shown to the callback) out of the receive queue; returns how many went. */
  consume(n: number): number;
  pause(): void;
  resume(): void;
  /** Stops watching and closes the dup; the socket itself stays open. Idempotent. */
  close(): void;
}

/** A one-shot wait on a pidfd (see watchPidfd). */
export interface PidfdWatch {
  /** Stops waiting; the callback will not run. Idempotent. */
  close(): void;
  /** Let (or stop letting) the armed watch keep the event loop alive (default: it does). */
  ref(): void;
  unref(): void;
}

export type LockFileCallback = (err: NativeError | null, res?: LockFileResult) => void;
export type ReleaseFileCallback = (err: NativeError | null, res?: ReleaseFileResult) => void;

/**
 * The addon's exports, typed (node-pty's pattern): callers use them directly,
 * `native.ofdLock(fd, 'write', 0, 1)`. The addon checks every argument itself
 * (TypeError/RangeError, see above), so there is no wrapper layer here; only
 * watchPidfd, lockFileP and releaseFileP below add something.
 */
export interface NativeBinding {
  // ---- record locks (non-blocking; conflict throws EAGAIN, or EACCES) ----
  /** F_OFD_SETLK: lock owned by the open file description, survives other closes and exec. */
  ofdLock(fd: number, type: LockType, start: number, len: number): void;
  ofdUnlock(fd: number, start: number, len: number): void;
  /** F_OFD_GETLK: the first lock that would conflict, or null. */
  ofdGetLock(fd: number, type: LockType, start: number, len: number): LockInfo | null;
  /** Classic F_SETLK (process-owned; any close of the file by this process drops it). */
  posixLock(fd: number, type: LockType, start: number, len: number): void;
  posixUnlock(fd: number, start: number, len: number): void;
  posixGetLock(fd: number, type: LockType, start: number, len: number): LockInfo | null;

  // ---- fds, sockets, processes ----
  getCloexec(fd: number): boolean;
  setCloexec(fd: number, on: boolean): void;
  /** fsync(2): Node's own is refused under the permission model. */
  fsync(fd: number): void;
  /** A close-on-exec duplicate of fd (F_DUPFD_CLOEXEC, lowest free number >= 3). */
  dup(fd: number): number;
  /**
   * fstat of many fds at once, optionally setting (1) or clearing (0)
   * FD_CLOEXEC on each (-1: leave it): [dev, ino, mode] per fd, mode = -errno
   * on failure. dev/ino are doubles, rounded like lockFile's.
   */
  fdInfo(fds: Int32Array, cloexec: -1 | 0 | 1): Float64Array;
  /**
   * fdInfo's work on a background thread (every signal blocked there) while
   * the main thread does something else; one job at a time (a previous one
   * is joined and dropped).
   */
  fdInfoStart(fds: Int32Array, cloexec: -1 | 0 | 1): void;
  /** Joins the job, then fdInfo(fds, cloexec): the job's results for the fds it did with that cloexec, the others inline. */
  fdInfoTake(fds: Int32Array, cloexec: -1 | 0 | 1): Float64Array;
  /** SO_PEERCRED of a connected AF_UNIX socket (the peer at connect time). */
  peerCred(fd: number): PeerCred;
  /**
   * SO_PEERPIDFD (Linux >= 6.5): an O_CLOEXEC pidfd for the peer. Throws
   * ENOPROTOOPT on older kernels; fall back to peerCred() then.
   */
  peerPidfd(sockfd: number): number;
  /**
   * Replace the process image (same pid). Returns only by throwing. Fds to keep
   * (including 0-2, which Node marks CLOEXEC) need setCloexec(fd, false) first.
   */
  execve(path: string, argv: readonly string[], env: readonly string[]): never;
  /**
   * One sd_notify datagram to NOTIFY_SOCKET ('/path' or '@abstract'). Non-blocking:
   * a full receiver queue throws EAGAIN.
   */
  sdNotify(socketPath: string, message: string): void;
  sdNotifyFds(socketPath: string, message: string, fds: Int32Array): void;
  memfdCreate(name: string): number;
  /**
   * pthread_sigmask on the calling (main) thread only. In plain Node 20 the libuv
   * pool threads do not block SIGUSR1, so a process-directed SIGUSR1 can still be
   * delivered through them; under --experimental-permission every thread blocks it.
   */
  sigmask(how: 'block' | 'unblock', signals: readonly number[]): void;
  /** Signals pending for the calling thread or the process. */
  sigpending(): number[];
  /** Takes these (blocked) signals out of the pending set without acting on them (sigtimedwait, no wait); returns those taken. */
  sigdrain(signals: readonly number[]): number[];
  /** Ends the signal hold of relockd_exec_hold.so when a re-exec preloaded it (src/daemon/execSignals.ts); false when it is not loaded. */
  execHoldRelease(): boolean;
  /** Until signalCaptureEnd, these signals are only noted (a re-exec's last synchronous stretch, src/daemon/execSignals.ts). */
  signalCapture(signals: readonly number[]): void;
  /** 'pending': noted signals made pending on this thread (blocked; they survive execve). 'raise': the previous handlers back, noted signals sent to the process. Returns those noted. */
  signalCaptureEnd(mode: 'pending' | 'raise'): number[];
  /** pidfd_open(pid, 0); the fd is O_CLOEXEC. Close it with fs.closeSync. */
  pidfdOpen(pid: number): number;
  /** pidfd_getfd: a close-on-exec copy of fd `targetfd` of the process behind `pidfd` (needs ptrace rights). */
  pidfdGetfd(pidfd: number, targetfd: number): number;
  /** pidfd_send_signal; sig 0 probes. Throws ESRCH once the process has exited. */
  pidfdSendSignal(pidfd: number, sig: number): void;
  /** True once the process has exited (its pidfd is readable); never waits. */
  pidfdExited(pidfd: number): boolean;
  /** waitpid(pid, WNOHANG) for a child no ChildProcess knows: its status once it exited, null while it runs; ECHILD if not our child. */
  reapChild(pid: number): ExitInfo | null;
  /**
   * PIDFD_GET_INFO with PIDFD_INFO_EXIT (Linux >= 6.15): how the process ended,
   * or null while it is not reaped yet (the kernel records the status at
   * reaping). Throws ENOTTY/EINVAL where the kernel has no PIDFD_GET_INFO and
   * ESRCH where it has it without PIDFD_INFO_EXIT and the process is gone.
   */
  pidfdExitInfo(pidfd: number): ExitInfo | null;
  PeekReader: new (fd: number, cb: (err: NativeError | null, bytes: Buffer | null) => void) => PeekReader;
  /** recv(MSG_PEEK|MSG_DONTWAIT): up to max (default 64 KiB) queued bytes, empty if none, null at end of stream. */
  recvPeek(fd: number, max?: number): Buffer | null;
  /** Takes n queued bytes out of the receive queue (never blocks); returns how many went. */
  recvDiscard(fd: number, n: number): number;
  /** See watchPidfd. */
  PidfdWatch: new (pidfd: number, cb: (err: NativeError | null) => void) => PidfdWatch;

  // ---- storage work, on the libuv threadpool ----
  /**
   * virtlockd's acquire: open(O_RDWR|O_CLOEXEC[|O_CREAT, 0600]), F_OFD_SETLK on
   * byte 0 (read if shared, else write), and when creating retry until the path
   * still names the locked file. Errors carry stage 'open' | 'lock' | 'stat';
   * the fd is closed on every failure. `path` (and unlinkPath) are byte strings
   * (src/byteString.ts): each char is one byte of the name, passed unchanged.
   */
  lockFile(path: string, opts: LockFileOptions, cb: LockFileCallback): void;
  /**
   * virtlockd's release: optionally unlink (see ReleaseFileOptions), then always
   * close the fd, which drops the lock. Only a bad fd (EBADF, stage 'close') is an
   * error; unlink problems are reported in the result.
   */
  releaseFile(fd: number, opts: ReleaseFileOptions, cb: ReleaseFileCallback): void;
  /**
   * The same sequences on the calling thread: only for storage that cannot
   * hang (host-local filesystems, see src/locks/storageClass.ts), where the
   * name check after an autocreate is a plain stat. Results as numbers
   * (lockFileSync/releaseFileSync below wrap them): out = fd, dev, ino,
   * created, attempts; the return value is the last retry's reason.
   */
  lockFileInline(path: string, shared: boolean, create: boolean, out: Float64Array): string | undefined;
  /** 1 unlinked, 0 not; a result object only when unlinking or closing reported an error. dev/ino: -1 when unknown. */
  releaseFileInline(fd: number, unlinkPath: string | null, onlyIfExclusive: boolean, classic: boolean, dev: number, ino: number): number | ReleaseFileResult;
  /** The C library's message for a (positive) errno, e.g. 11 → 'Resource temporarily unavailable'. */
  strerror(errno: number): string;
  setCloexecAll(fds: Int32Array, on: boolean): void;
  /**
   * Unmaps, from this process only, the resident pages of the loaded ELF
   * objects' read-only segments that are still the file's own (code and
   * constants of node, libc, the addon); they stay in the page cache and come
   * back on the next access. Written (anonymous) pages are kept.
   */
  dropCleanFilePages(): { bytes: number; objects: number };
  /** malloc_trim(0): returns free C-heap memory of every arena; true if some was released. */
  mallocTrim(): boolean;
  /** mallopt(3): M_ARENA_MAX, M_TRIM_THRESHOLD, M_MMAP_THRESHOLD; true if accepted. */
  mallopt(param: 'arenaMax' | 'trimThreshold' | 'mmapThreshold', value: number): boolean;
  probeStorage(dir: string, leases: ProbeLeaseArg[], methods: number, cb: (err: NativeError | null, res?: ProbeStorageResult) => void): void;
}

/** What a storage probe does (bitmask; see src/health/probe.ts). */
export const ProbeMethod = {
  DIR_STATX: 1,
  DIRECT_READ: 2,
  RELOCK: 4,
  FSTAT_SYNC: 8,
  /** The fds are the leases' own (not dups): leave them open. */
  KEEP_FDS: 16,
} as const;

export interface ProbeLeaseArg {
  /** A dup of the lease fd, which the probe closes (or the lease's own fd, with KEEP_FDS). */
  fd: number;
  /** The lock type held, for a RELOCK probe; null: not re-asserted. */
  lock: LockType | null;
}

export interface ProbeStorageResult {
  dirError?: NativeError;
  leases: Array<{ error?: NativeError; buffered: boolean }>;
}

const ADDON = path.join('build', 'Release', 'relockd_native.node');

/**
 * The package root is the first directory above this module holding both
 * package.json and the built addon. This works from src/ (tests run the .ts)
 * and from dist/src/ (compiled).
 */
function findAddon(): string {
  const start = path.dirname(fileURLToPath(import.meta.url));
  for (let dir = start; ; dir = path.dirname(dir)) {
    const candidate = path.join(dir, ADDON);
    if (existsSync(path.join(dir, 'package.json')) && existsSync(candidate)) return candidate;
    if (path.dirname(dir) === dir) {
      throw new Error(
        `relockd: native addon ${ADDON} not found above ${start}; run "sh scripts/build-native.sh"`,
      );
    }
  }
}

/** Absolute path of the loaded .node file (fixtures and diagnostics use it). */
export const addonPath: string = findAddon();

const binding = createRequire(import.meta.url)(addonPath) as NativeBinding;

// The addon's functions do not use `this`, so they are exported as they are.
export const {
  ofdLock,
  ofdUnlock,
  ofdGetLock,
  posixLock,
  posixUnlock,
  posixGetLock,
  getCloexec,
  setCloexec,
  setCloexecAll,
  fsync,
  dup,
  fdInfo,
  fdInfoStart,
  fdInfoTake,
  peerCred,
  peerPidfd,
  execve,
  sdNotify,
  memfdCreate,
  sigmask,
  sigpending,
  sigdrain,
  execHoldRelease,
  signalCapture,
  signalCaptureEnd,
  pidfdOpen,
  pidfdGetfd,
  pidfdSendSignal,
  pidfdExited,
  pidfdExitInfo,
  reapChild,
  recvPeek,
  recvDiscard,
  lockFile,
  releaseFile,
  strerror,
  dropCleanFilePages,
  mallocTrim,
  mallopt,
} = binding;

const lockOut = new Float64Array(5);

/** lockFile on the calling thread, for host-local storage only (see lockFileInline). */
export function lockFileSync(path: string, opts: LockFileOptions): LockFileResult {
  const retried = binding.lockFileInline(path, opts.shared, opts.create, lockOut);
  const res: LockFileResult = { fd: lockOut[0]!, dev: lockOut[1]!, ino: lockOut[2]!, created: lockOut[3] === 1 };
  if (lockOut[4]! > 1) {
    res.attempts = lockOut[4]!;
    if (retried !== undefined) res.retried = retried;
  }
  return res;
}

const UNLINKED: ReleaseFileResult = Object.freeze({ unlinked: true });
const KEPT: ReleaseFileResult = Object.freeze({ unlinked: false });

/**
 * releaseFile on the calling thread, for host-local storage only. `id`: the
 * fd's identity as recorded when it was locked, which spares an fstat
 * before an unlink.
 */
export function releaseFileSync(fd: number, opts: ReleaseFileOptions, id?: { dev: number; ino: number }): ReleaseFileResult {
  const r = binding.releaseFileInline(fd, opts.unlinkPath, opts.onlyIfExclusive, opts.classic === true, id ? id.dev : -1, id ? id.ino : -1);
  return r === 1 ? UNLINKED : r === 0 ? KEPT : (r as ReleaseFileResult);
}

/**
 * Calls `cb` once, on the event loop, when the pidfd becomes readable: the
 * process has exited (it may not be reaped yet). A uv_poll_t, no thread.
 */
export function watchPidfd(pidfd: number, cb: (err: NativeError | null) => void): PidfdWatch {
  return new binding.PidfdWatch(pidfd, cb);
}

/** See PeekReader. */
export function peekReader(fd: number, cb: (err: NativeError | null, bytes: Buffer | null) => void): PeekReader {
  return new binding.PeekReader(fd, cb);
}

/** lockFile as a promise. */
export function lockFileP(file: string, opts: LockFileOptions): Promise<LockFileResult> {
  return new Promise((resolve, reject) => {
    binding.lockFile(file, opts, (err, res) => (err ? reject(err) : resolve(res!)));
  });
}

/** releaseFile as a promise. */
export function releaseFileP(fd: number, opts: ReleaseFileOptions): Promise<ReleaseFileResult> {
  return new Promise((resolve, reject) => {
    binding.releaseFile(fd, opts, (err, res) => (err ? reject(err) : resolve(res!)));
  });
}

/** sd_notify with `fds` attached (SCM_RIGHTS): systemd's fd store (FDSTORE=1). Non-blocking. */
export function sdNotifyFds(socketPath: string, message: string, fds: readonly number[]): void {
  binding.sdNotifyFds(socketPath, message, Int32Array.from(fds));
}

/** True if e is an error from this addon (optionally with the given code). */
export function isNativeError(e: unknown, code?: string): e is NativeError {
  return (
    e instanceof Error &&
    typeof (e as Partial<NativeError>).code === 'string' &&
    typeof (e as Partial<NativeError>).errno === 'number' &&
    typeof (e as Partial<NativeError>).syscall === 'string' &&
    (code === undefined || (e as NativeError).code === code)
  );
}

/**
 * One health probe of a lock space (src/health/), on the libuv pool: statx
 * of `dir` that must reach the server, then I/O through each lease's own
 * open file description. Every fd in `leases` is closed by the probe.
 */
export function probeStorageP(dir: string, leases: ProbeLeaseArg[], methods: number): Promise<ProbeStorageResult> {
  return new Promise((resolve, reject) => {
    binding.probeStorage(dir, leases, methods, (err, res) => (err ? reject(err) : resolve(res!)));
  });
}
