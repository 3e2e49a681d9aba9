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
while True:
    r, _, _ = select.select([s, sys.stdin], [], [])
    # Everything sent before a question is counted in its answer: the queue is drained first.
    drain()
    if sys.stdin in r:
        sys.stdin.readline()
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

  stop(): void {
    if (this.child.exitCode === null) this.child.kill('SIGKILL');
  }
}
