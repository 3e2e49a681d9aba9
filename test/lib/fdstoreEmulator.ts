// systemd's side of the fd store, for the bench and tests (no systemd as PID 1 needed):
// a python3 process on an AF_UNIX datagram socket that does what PID 1 does
// with each message: FDSTORE=1 keeps the passed fds under their FDNAME,
// FDSTOREREMOVE=1 closes every fd of that name. It counts what it got.

import { spawn } from 'node:child_process';
import type { ChildProcessWithoutNullStreams } from 'node:child_process';

const EMULATOR = `
import socket, sys, os, array, json, select
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.bind(sys.argv[1])
store = {}
counts = {'stored': 0, 'removed': 0, 'other': 0}
print(json.dumps({'ready': True}), flush=True)
def take(data, anc):
    fds = []
    for level, typ, payload in anc:
        if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
            a = array.array('i'); a.frombytes(payload[:len(payload) - len(payload) % 4]); fds.extend(a)
    kv = dict(l.split('=', 1) for l in data.decode().split('\\n') if '=' in l)
    if kv.get('FDSTORE') == '1':
        store.setdefault(kv.get('FDNAME', 'stored'), []).extend(fds); counts['stored'] += len(fds)
    elif kv.get('FDSTOREREMOVE') == '1':
        for fd in store.pop(kv.get('FDNAME', ''), []): os.close(fd)
        counts['removed'] += 1
    else:
        for fd in fds: os.close(fd)
        counts['other'] += 1
def drain():
    while True:
        try:
            data, anc, flags, addr = s.recvmsg(4096, socket.CMSG_SPACE(253 * 4), socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        take(data, anc)
def spawn(cmd):
    # What PID 1 does when it restarts the unit: the stored fds from 3 up, named, LISTEN_PID the new process.
    import signal, fcntl
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    items = [(n, fd) for n in sorted(store) for fd in store[n]]
    pid = os.fork()
    if pid == 0:
        try:
            hi = [fcntl.fcntl(fd, fcntl.F_DUPFD, 3 + len(items) + 16) for _, fd in items]
            for i, fd in enumerate(hi):
                os.dup2(fd, 3 + i, inheritable=True)
            log = os.open(cmd['log'], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(log, 1); os.dup2(log, 2)
            null = os.open('/dev/null', os.O_RDONLY); os.dup2(null, 0)
            os.closerange(3 + len(items), 65536)
            env = dict(cmd['env'], LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(len(items)), LISTEN_FDNAMES=':'.join(n for n, _ in items))
            os.execve(cmd['argv'][0], cmd['argv'], env)
        finally:
            os._exit(127)
    return pid
while True:
    r, _, _ = select.select([s, sys.stdin], [], [])
    # Everything sent before a question is counted in its answer: the queue is drained first.
    drain()
    if sys.stdin in r:
        line = sys.stdin.readline()
        if line.startswith('spawn '):
            print(json.dumps({'spawned': spawn(json.loads(line[6:]))}), flush=True)
            continue
        print(json.dumps({**counts, 'held': sum(len(v) for v in store.values()), 'names': sorted(store)}), flush=True)
`;

export class FdStoreEmulator {
  private constructor(
    readonly path: string,
    private readonly child: ChildProcessWithoutNullStreams,
  ) {}

  get pid(): number {
    return this.child.pid!;
  }

  static start(path: string): Promise<FdStoreEmulator> {
    const child = spawn('python3', ['-u', '-c', EMULATOR, path]);
    return new Promise((resolve, reject) => {
      child.once('error', reject);
      child.stdout.once('data', () => resolve(new FdStoreEmulator(path, child)));
      child.once('exit', (code) => reject(new Error(`fd store emulator exited (${code})`)));
    });
  }

  /** What it received so far. */
  counts(): Promise<{ stored: number; removed: number; other: number; held: number; names: string[] }> {
    return new Promise((resolve) => {
      this.child.stdout.once('data', (d: Buffer) => resolve(JSON.parse(d.toString().trim().split('\n').pop()!)));
      this.child.stdin.write('\n');
    });
  }

  /**
   * Starts `argv` as PID 1 restarts a unit: every stored fd passed from 3 up
   * with its name (LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID), output appended
   * to `log`. Returns the new process's pid (a child of the emulator).
   */
  spawnWithStore(argv: string[], env: NodeJS.ProcessEnv, log: string): Promise<number> {
    return new Promise((resolve) => {
      this.child.stdout.once('data', (d: Buffer) => resolve(JSON.parse(d.toString().trim().split('\n').pop()!).spawned));
      this.child.stdin.write(`spawn ${JSON.stringify({ argv, env, log })}\n`);
    });
  }

  stop(): void {
    if (this.child.exitCode === null) this.child.kill('SIGKILL');
  }
}
